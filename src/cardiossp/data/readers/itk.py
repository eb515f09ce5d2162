"""3D / 4D images in the formats SimpleITK reads besides NIfTI: NRRD (``.nrrd``, detached ``.nhdr``) and
MetaImage (``.mha``, ``.mhd`` + data file); label maps written back on the same grid.

Voxel order: ``(X, Y, Z[, T])`` with X the ITK x index (image column), as nibabel orders a NIfTI's
voxels and as the rest of cardiossp expects (``sitk.GetArrayFromImage`` gives the reverse, ``(T,) Z, Y, X``).
Geometry: ITK's origin, spacing and direction are LPS+; ``ItkGeometry.affine`` is the voxel -> world matrix
converted to RAS+ like nibabel's (the first two rows negated). Labels are written with the input's exact
ITK geometry (``ItkGeometry.apply``: size, spacing, origin, direction, all dimensions), so the output lies on
the input's grid in any viewer.

Before SimpleITK allocates anything, the header's claimed image is checked against the bytes its data can
be in (``check_itk_claim``, built on ``base.check_claim``): uncompressed data must fit in the file,
gzip / zlib data cannot expand more than deflate allows; other encodings get the voxel limit only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DataError
from .base import check_claim, check_nifti_claim, check_not_constant

ITK_EXTENSIONS = (".nrrd", ".nhdr", ".mha", ".mhd")  # read through SimpleITK
_OUTPUT_SUFFIX = {".nrrd": ".nrrd", ".nhdr": ".nrrd", ".mha": ".mha", ".mhd": ".mha"}  # one file, written atomically
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}
_NRRD_BYTES = {}
for _size, _names in {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short",
        "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
        "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"),
}.items():
    for _n in _names:
        _NRRD_BYTES[_n] = _size


def is_itk_file(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(ITK_EXTENSIONS)


def itk_stem(path: str | Path) -> str:
    name = Path(path).name
    return name[: name.rfind(".")] if is_itk_file(name) else name


def output_suffix(path: str | Path) -> str:
    """The label file's extension for an ITK input: ``.nrrd`` for NRRD, ``.mha`` for MetaImage (a ``.mhd``
    input gets a one-file ``.mha``, so the write is one atomic rename, not a header plus a data file)."""
    name = Path(path).name.lower()
    return next(v for k, v in _OUTPUT_SUFFIX.items() if name.endswith(k))


def _header_lines(path: Path, raw: bytes, end: int) -> dict[str, str]:
    try:
        text = raw[:end].decode("latin-1")
    except UnicodeDecodeError as e:  # pragma: no cover - latin-1 decodes every byte
        raise DataError(path, f"cannot read the image header: {e}") from None
    return {k.strip().lower(): v.strip() for k, _, v in (ln.partition("=") for ln in text.splitlines()) if _}


def _metaimage_claim(path: Path) -> None:
    """``check_claim`` for a MetaImage header (``.mhd`` with a data file, or ``.mha`` with the data after it)."""
    try:
        raw = path.read_bytes()[:65536] if path.suffix.lower() == ".mha" else path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read MetaImage header: {e}") from None
    m = re.search(rb"ElementDataFile\s*=\s*([^\r\n]*)\r?\n?", raw, re.IGNORECASE)
    head = _header_lines(path, raw, m.end() if m else len(raw))
    try:
        dims = [int(v) for v in head["dimsize"].split()]
        channels = int(head.get("elementnumberofchannels", "1"))
        itemsize = _MET_BYTES[head["elementtype"].upper()]
        header_size = int(head.get("headersize", "0"))
    except (KeyError, ValueError) as e:
        raise DataError(path, f"MetaImage header lacks or garbles DimSize / ElementType ({e})") from None
    compressed = head.get("compresseddata", "false").lower() == "true"
    data = head.get("elementdatafile", "")
    shape = dims + [channels]
    if data.upper() == "LOCAL":
        if m is None:  # pragma: no cover - LOCAL was found by the search
            raise DataError(path, "MetaImage header has no ElementDataFile")
        size = path.stat().st_size - m.end()
        if compressed:
            check_claim(path, shape, itemsize, gzip_bytes=max(size, 1))
        else:
            check_claim(path, shape, itemsize, raw_bytes=size - max(header_size, 0))
        return
    if not data or data.upper() == "LIST" or "%" in data:
        check_claim(path, shape, itemsize)  # a file list: the voxel limit only
        return
    data_file = path.parent / data
    if not data_file.is_file():
        raise DataError(path, f"cannot read image: its data file {data_file.name} is missing")
    size = data_file.stat().st_size
    if compressed:
        check_claim(path, shape, itemsize, gzip_bytes=size, holder=data_file.name)  # zlib: deflate bound
    else:
        check_claim(path, shape, itemsize, raw_bytes=size - max(header_size, 0), holder=data_file.name)


def _nrrd_claim(path: Path) -> None:
    """``check_claim`` for a NRRD header (attached data after the blank line, or a detached data file)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(65536)
    except OSError as e:
        raise DataError(path, f"cannot read NRRD header: {e}") from None
    if not raw.startswith(b"NRRD"):
        raise DataError(path, "not a NRRD file (no NRRD magic line)")
    m = re.search(rb"\r?\n\r?\n", raw)
    end = m.end() if m else len(raw)
    text = raw[:end].decode("latin-1")
    head = {}
    for line in text.splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        head[key.strip().lower()] = value.lstrip("=").strip()
    try:
        shape = [int(v) for v in head["sizes"].split()]
        kind = head["type"].lower()
    except (KeyError, ValueError) as e:
        raise DataError(path, f"NRRD header lacks or garbles 'sizes' / 'type' ({e})") from None
    if kind not in _NRRD_BYTES:
        raise DataError(path, f"NRRD type {kind!r} is not supported (give integer or float voxels)")
    itemsize = _NRRD_BYTES[kind]
    encoding = head.get("encoding", "raw").lower()
    data = head.get("data file", head.get("datafile"))
    if data is None:
        if m is None:
            raise DataError(path, "NRRD header has no blank line before the data, and no 'data file'")
        holder, size = None, path.stat().st_size - end
    elif data.upper().startswith("LIST") or len(data.split()) > 1:
        check_claim(path, shape, itemsize)  # several data files: the voxel limit only
        return
    else:
        data_file = path.parent / data
        if not data_file.is_file():
            raise DataError(path, f"cannot read image: its data file {data_file.name} is missing")
        holder, size = data_file.name, data_file.stat().st_size
    skip = int(head.get("byte skip", "0") or 0)
    if encoding == "raw":
        check_claim(path, shape, itemsize, raw_bytes=size - max(skip, 0), holder=holder)
    elif encoding in ("gzip", "gz"):
        check_claim(path, shape, itemsize, gzip_bytes=max(size, 1), holder=holder)
    elif encoding in ("ascii", "text", "txt"):
        check_claim(path, shape, 1, raw_bytes=size, holder=holder)  # at least one character per value
    elif encoding == "hex":
        check_claim(path, shape, 2 * itemsize, raw_bytes=size, holder=holder)
    else:
        check_claim(path, shape, itemsize, holder=holder)  # bzip2: the voxel limit only


def check_itk_claim(path: Path) -> None:
    """Refuse a header (NIfTI, MetaImage ``.mhd`` / ``.mha``, NRRD ``.nrrd`` / ``.nhdr``) whose claimed image
    cannot be in its data, before SimpleITK allocates it (see ``readers.base.check_claim``)."""
    import nibabel as nib

    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        try:
            img = nib.load(str(path))
        except Exception as e:  # noqa: BLE001 - any header failure: one clear message
            raise DataError(path, f"cannot read NIfTI header (truncated or corrupt?): {e}") from None
        check_nifti_claim(path, img)
    elif name.endswith((".mhd", ".mha")):
        _metaimage_claim(path)
    elif name.endswith((".nrrd", ".nhdr")):
        _nrrd_claim(path)


@dataclass
class ItkGeometry:
    """An ITK image's grid: what a label file needs to lie on the input's voxels."""

    size: tuple[int, ...]  # ITK order (x, y, z[, t])
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major dim x dim

    @classmethod
    def of(cls, img) -> "ItkGeometry":
        return cls(tuple(img.GetSize()), tuple(img.GetSpacing()), tuple(img.GetOrigin()), tuple(img.GetDirection()))

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel (x, y, z) -> world RAS+ mm (ITK's LPS+ with the first two rows negated)."""
        dim = len(self.size)
        d = np.asarray(self.direction, dtype=np.float64).reshape(dim, dim)[:3, :3]
        lps = np.eye(4)
        lps[:3, :3] = d * np.asarray(self.spacing[:3], dtype=np.float64)
        lps[:3, 3] = self.origin[:3]
        return _LPS_TO_RAS @ lps

    def apply(self, img) -> None:
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)


def read_itk_image(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, ItkGeometry]:
    """A 3D or 4D NRRD / MetaImage -> (data (X, Y, Z[, T]) float32, spacing (sx, sy, sz) mm, RAS affine, geometry).

    ``DataError`` naming the file: claimed size the data cannot hold, unreadable file, not 3D / 4D, several
    components per voxel (colour or vector image), non-positive spacing, non-finite or blank voxels.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    check_itk_claim(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        problem = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise DataError(path, f"cannot read image (missing data file, truncated or corrupt?): {problem}") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(path, f"has {img.GetNumberOfComponentsPerPixel()} components per voxel (a colour or vector "
                              "image); give one grey value per voxel (a cine as a 4D image)")
    if img.GetDimension() not in (3, 4):
        raise DataError(path, f"expected a 3D or 4D image, got a {img.GetDimension()}D image of size {img.GetSize()}")
    geometry = ItkGeometry.of(img)
    spacing = tuple(float(s) for s in geometry.spacing[:3])
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise DataError(path, f"voxel spacing {spacing} is not positive (missing spacing?)")
    try:
        arr = sitk.GetArrayFromImage(img)
    except MemoryError:
        raise DataError(path, f"not enough memory to read an image of size {img.GetSize()}") from None
    data = np.ascontiguousarray(arr.transpose(tuple(range(arr.ndim))[::-1]), dtype=np.float32)
    if not np.isfinite(data).all():
        raise DataError(path, f"{int((~np.isfinite(data)).sum())} voxels are NaN or infinite")
    check_not_constant(path, data)
    return data, spacing, geometry.affine, geometry


def write_itk_labels(labels: np.ndarray, geometry: ItkGeometry, out: Path, description: str) -> None:
    """(X, Y, Z[, T]) uint8 labels -> ``out`` (``.nrrd`` / ``.mha``, compressed) on ``geometry``'s grid, with
    ``description`` in the ``cardiossp_labels`` header field. ``out`` is written to a temporary name and renamed."""
    import SimpleITK as sitk

    from ...atomic import atomic_path

    labels = np.asarray(labels, dtype=np.uint8).reshape(tuple(geometry.size))
    zyx = np.ascontiguousarray(labels.transpose(tuple(range(labels.ndim))[::-1]))
    img = sitk.GetImageFromArray(zyx, isVector=False)  # a 4D array is a 4D image, not 3D vectors
    geometry.apply(img)
    img.SetMetaData("cardiossp_labels", description)
    with atomic_path(out, suffix=Path(out).suffix) as tmp:  # SimpleITK picks the format from the name
        sitk.WriteImage(img, str(tmp), useCompression=True)
