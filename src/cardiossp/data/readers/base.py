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

# A header is believed only if the data it claims can be in the file, and is not absurd.
MAX_VOXELS = 2**31  # 8 GiB as float32; a whole-heart 4D cine is ~4e7 voxels (256 x 256 x 20 x 30)
GZIP_MAX_RATIO = 1032  # deflate cannot expand more than ~1032:1 (RFC 1951: 258-byte match per ~2 bits)


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


def load_nifti(path: Path, ndims: tuple[int, ...] = (3, 4),
               allow_constant: bool = False) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Read a NIfTI file -> (data float32, affine 4x4, zooms).

    Every failure becomes a ``DataError`` naming the file: a header claiming more data than the
    file can hold (checked before reading, see ``check_claim``), unreadable or truncated file,
    unexpected number of dimensions, non-finite voxels, and (unless ``allow_constant``, which
    label maps use) a blank image whose voxels all have one value.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    errors = (EOFError, OSError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError, ValueError)
    try:
        img = nib.load(str(path))  # the header only
    except errors as e:
        raise DataError(path, f"cannot read NIfTI (truncated or corrupt?): {e}") from None
    check_nifti_claim(path, img)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except errors as e:
        raise DataError(path, f"cannot read NIfTI (truncated or corrupt?): {e}") from None
    except MemoryError:
        raise DataError(path, f"not enough memory to read an image of shape {tuple(img.shape)}") from None
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
    if not allow_constant:
        check_not_constant(path, data)
    return data, np.asarray(img.affine, dtype=np.float64), zooms


def check_claim(path: Path, shape, itemsize: int, raw_bytes: int | None = None, gzip_bytes: int | None = None,
                holder: str | None = None) -> None:
    """Refuse a header whose claimed image (``shape`` voxels of ``itemsize`` bytes) cannot be in the file,
    or has more than ``MAX_VOXELS`` voxels, before anything is allocated.

    ``raw_bytes``: bytes of uncompressed image data the file holds (the claim must fit in them);
    ``gzip_bytes``: size of the gzip file the data is in (deflate expands at most ``GZIP_MAX_RATIO``:1);
    neither (other compressions): only the voxel limit applies. ``holder`` names the data file in the
    message when it is not ``path`` (a .mhd's .raw).
    """
    shape = tuple(int(v) for v in shape)
    if not shape or any(v <= 0 for v in shape):
        raise DataError(path, f"header gives image shape {shape}: a dimension is zero or negative")
    voxels = int(np.prod(shape, dtype=object))
    what = f"{' x '.join(str(v) for v in shape)} voxels"
    if voxels > MAX_VOXELS:
        raise DataError(path, f"header claims {what}, more than the limit of {MAX_VOXELS:,}: corrupt header?")
    claimed = voxels * int(itemsize)
    holder = holder or Path(path).name
    if raw_bytes is not None and claimed > raw_bytes:
        raise DataError(path, f"header claims {what} ({claimed:,} bytes) but {holder} holds {max(raw_bytes, 0):,} "
                              "bytes of image data: truncated file or corrupt header")
    if gzip_bytes is not None and claimed > GZIP_MAX_RATIO * gzip_bytes:
        raise DataError(path, f"header claims {what} ({claimed:,} bytes), more than the {gzip_bytes:,}-byte "
                              f"gzip file {holder} can hold (deflate expands at most {GZIP_MAX_RATIO}:1): "
                              "truncated file or corrupt header")


def check_nifti_claim(path: Path, img) -> None:
    """``check_claim`` for a nibabel image whose header is loaded (its data is not read yet)."""
    proxy = img.dataobj
    data_file = getattr(proxy, "file_like", None)
    data_file = Path(data_file) if isinstance(data_file, (str, Path)) else Path(path)
    try:
        size = data_file.stat().st_size
    except OSError:
        raise DataError(data_file, "image data file not found") from None
    offset = int(getattr(proxy, "offset", 0) or 0)
    name = data_file.name.lower()
    holder = None if data_file == Path(path) else data_file.name
    if name.endswith(".gz"):
        check_claim(path, img.shape, img.get_data_dtype().itemsize, gzip_bytes=size, holder=holder)
    elif name.endswith((".bz2", ".zst")):
        check_claim(path, img.shape, img.get_data_dtype().itemsize, holder=holder)
    else:
        check_claim(path, img.shape, img.get_data_dtype().itemsize, raw_bytes=size - offset, holder=holder)


def check_not_constant(path: Path, data: np.ndarray, what: str = "image") -> None:
    """A blank or constant image has nothing to segment and z-scores to zeros: refuse it naming the file."""
    if data.size and float(data.max()) == float(data.min()):
        raise DataError(path, f"{what} is blank: every voxel is {float(data.min()):g} (empty or failed export?)")


def load_label_nifti(
    path: Path, mapping: dict[int, int], dataset: str, like: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Read a label map, check it against its image (shape, affine) and map it to internal labels.

    ``like`` is ``(image_shape_xyz, image_affine)`` of the image this label belongs to.
    """
    data, affine, _ = load_nifti(path, ndims=(3, 4), allow_constant=True)  # an all-background label is valid
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


_LABEL_FOLDERS = {"labelstr", "labelsts", "labelsval"}  # nnU-Net's label folders


def is_label_file(path: str | Path) -> bool:
    """Does the file name say it is a label map, not an image? ``*_gt``, ``*_seg`` (ACDC, M&Ms, M&Ms-2,
    CAMUS, our own predictions), ``labels*`` files, or any file in nnU-Net's ``labelsTr`` / ``labelsTs``."""
    p = Path(path)
    stem = p.name
    for ext in (".nii.gz", ".nii", ".mhd", ".nrrd", ".nhdr", ".mha"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    low = stem.lower()
    return (low.endswith(("_gt", "_seg")) or low.startswith("labels")
            or p.parent.name.lower() in _LABEL_FOLDERS)


def to_4d(data: np.ndarray) -> np.ndarray:
    """(X, Y, Z) -> (X, Y, Z, 1); 4D unchanged."""
    return data[..., None] if data.ndim == 3 else data
