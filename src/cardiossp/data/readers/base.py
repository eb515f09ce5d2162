"""Reader contract, registry and the NIfTI loading helpers every reader shares."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np

from ...errors import DataError
from ...registry import Registry
from ..labels import map_labels
from ..subject import Subject


class Reader:
    """A source layout. Subclasses set ``name`` and implement ``subject_ids`` and ``load``.

    ``subject_ids(root)`` must be cheap (file listing only); ``load`` reads one subject.
    """

    name: str = ""
    description: str = ""

    def subject_ids(self, root: Path) -> list[str]:
        raise NotImplementedError

    def load(self, root: Path, subject_id: str) -> Subject:
        raise NotImplementedError

    def source_files(self, root: Path, subject_id: str) -> list[Path]:
        """Files a subject is read from (the cache fingerprints them). Default: the subject's
        folder ``root/subject_id`` if there is one, else files in ``root`` named ``subject_id*``."""
        folder = root / subject_id
        if folder.is_dir():
            return sorted(p for p in folder.rglob("*") if p.is_file())
        return sorted(p for p in root.rglob(f"{Path(subject_id).name}*") if p.is_file())


READERS: Registry[type[Reader]] = Registry("reader")


def get_reader(name: str) -> Reader:
    return READERS.get(name)()


def iter_subjects(reader: str | Reader, root: str | Path) -> Iterator[Subject]:
    """Yield every subject of ``root`` one at a time (lazily: one subject in memory)."""
    r = get_reader(reader) if isinstance(reader, str) else reader
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "is not a folder")
    ids = r.subject_ids(root)
    if not ids:
        raise DataError(root, f"no subjects found for reader {r.name!r} (is this the right layout?)")
    for sid in ids:
        yield r.load(root, sid)


def load_nifti(path: Path, ndims: tuple[int, ...] = (3, 4)) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Read a NIfTI file -> (data float32, affine 4x4, zooms).

    Every failure becomes a ``DataError`` naming the file: unreadable or truncated file,
    unexpected number of dimensions, non-finite voxels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError, ValueError) as e:
        raise DataError(path, f"cannot read NIfTI (truncated or corrupt?): {e}") from None
    # Drop trailing singleton dims (some tools write (x, y, z, 1)).
    while data.ndim > 3 and data.shape[-1] == 1 and data.ndim not in ndims:
        data = data[..., 0]
    if data.ndim not in ndims:
        raise DataError(path, f"expected a {' or '.join(f'{n}D' for n in ndims)} image, got shape {data.shape}")
    if not np.isfinite(data).all():
        n = int((~np.isfinite(data)).sum())
        raise DataError(path, f"{n} voxels are NaN or infinite")
    zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
    if any(z <= 0 for z in zooms[:3]):
        raise DataError(path, f"voxel spacing {zooms[:3]} is not positive (missing spacing?)")
    # nibabel replaces zero pixdims by 1 on load (with a log message only): look at the raw header
    with nib.openers.ImageOpener(str(path)) as f:
        raw = type(img.header).from_fileobj(f, check=False)["pixdim"][1:4]
    if not np.all(np.isfinite(raw)) or np.any(raw == 0):
        raise DataError(path, f"voxel spacing (pixdim) {tuple(float(v) for v in raw)} is zero or missing")
    return data, np.asarray(img.affine, dtype=np.float64), zooms


def load_label_nifti(
    path: Path, mapping: dict[int, int], dataset: str, like: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Read a label map, check it against its image (shape, affine) and map it to internal labels.

    ``like`` is ``(image_shape_xyz, image_affine)`` of the image this label belongs to.
    """
    data, affine, _ = load_nifti(path, ndims=(3, 4))
    if not np.allclose(data, np.round(data)):
        raise DataError(path, "label map has non-integer values")
    data = np.round(data).astype(np.int64)
    if like is not None:
        shape, img_affine = like
        if data.shape != tuple(shape):
            raise DataError(path, f"label shape {data.shape} does not match image shape {tuple(shape)}")
        if not np.allclose(affine, img_affine, atol=1e-3, rtol=1e-4):
            raise DataError(path, "label affine does not match the image affine")
    try:
        return map_labels(data, mapping, dataset)
    except ValueError as e:
        raise DataError(path, str(e)) from None


def to_4d(data: np.ndarray) -> np.ndarray:
    """(X, Y, Z) -> (X, Y, Z, 1); 4D unchanged."""
    return data[..., None] if data.ndim == 3 else data
