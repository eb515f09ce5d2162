"""Sunnybrook Cardiac Data (Radau et al., MIDAS Journal 2009): DICOM cine + expert contour polygons.

Layout: ``dicoms/SCDxxxxxxx/*.dcm`` (one short-axis cine series, slices x phases),
``contourfiles/<original id>/{i-contours,o-contours}/IM-0001-NNNN-{icontour,ocontour}-manual.txt``
(``x y`` pixel coordinates per line; NNNN is the DICOM file number, i.e. ``NNNN.dcm`` /
``IM-0001-NNNN.dcm``, which equals its InstanceNumber), and ``link.csv`` (patient_id, original_id).

Image: files are grouped into slices by ImagePositionPatient projected on the slice normal
(row cosine x column cosine) and sorted in time by TriggerTime (then InstanceNumber), giving
(X, Y, Z, T) float32 with X = DICOM column index, Y = row index (``pixel_array.T``, as dcm2niix
and SimpleITK order voxels). The affine follows DICOM PS3.3 C.7.6.2.1.1 (LPS), converted to
RAS+ like nibabel by negating the first two rows.

Labels (internal convention 0 bg, 1 LV, 2 MYO; **no RV**): LV inside the i-contour, MYO inside
the o-contour minus the i-contour (only where both exist). Contours are rasterised with
``skimage.draw.polygon`` (pixel centres inside the polygon). Labels are **partial**: only
contoured slices carry labels, the others are zero; ``extra["labeled_slices"]`` (t -> slices with
an i-contour) and ``extra["myo_slices"]`` (t -> slices with both contours) say which;
``extra["file_numbers"][z][t]`` is the DICOM file number of each 2D image. Of the
labeled phases, the one with the larger LV volume (over slices contoured in every labeled phase)
is ED, the smallest ES.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from skimage.draw import polygon

from ...errors import DataError
from ..labels import LV, MYO
from ..subject import Subject
from .base import READERS, Reader, check_claim, check_not_constant
from .mnms import vendor_letter

_CONTOUR = re.compile(r"^IM-(\d+)-(\d+)-(icontour|ocontour|p1contour|p2contour)-manual\.txt$")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def file_number(path: Path, ds) -> int:
    """DICOM file number: ``NNNN`` of ``NNNN.dcm`` or ``IM-0001-NNNN.dcm``, else the InstanceNumber."""
    m = re.fullmatch(r"(?:IM-\d+-)?(\d+)", path.stem)
    if m:
        return int(m.group(1))
    if ds.get("InstanceNumber") is None:
        raise DataError(path, "cannot tell the file number: name is not NNNN.dcm / IM-xxxx-NNNN.dcm "
                              "and no InstanceNumber")
    return int(ds.InstanceNumber)


def check_dicom_claim(path: Path, ds) -> None:
    """Refuse a DICOM header whose Rows x Columns x NumberOfFrames x SamplesPerPixel image cannot be in
    its PixelData (uncompressed transfer syntaxes) or exceeds ``MAX_VOXELS``, before decoding it."""
    if "PixelData" not in ds:
        raise DataError(path, "no PixelData: not an image")
    try:
        shape = [int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1),
                 int(ds.get("SamplesPerPixel", 1) or 1)]
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as e:
        raise DataError(path, f"cannot read the image size from the DICOM header: {e}") from None
    if bits not in (1, 8, 16, 32, 64):
        raise DataError(path, f"BitsAllocated {bits} is not 1, 8, 16, 32 or 64")
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    compressed = bool(getattr(syntax, "is_compressed", False))
    if bits == 1:  # packed bits: compare bytes
        shape, itemsize = [max(1, (int(np.prod(shape, dtype=object)) + 7) // 8)], 1
    else:
        itemsize = bits // 8
    # encapsulated (JPEG, RLE, ...) PixelData has no safe expansion bound: the voxel limit only
    check_claim(path, shape, itemsize, raw_bytes=None if compressed else len(ds.PixelData), holder="its PixelData")


def _read_header(f: Path):
    try:
        return pydicom.dcmread(f, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError) as e:
        raise DataError(f, f"cannot read DICOM image: {e}") from None


def list_series(folder: Path) -> list[dict]:
    """The DICOM series of a folder's ``.dcm`` files (headers only), most images first:
    ``[{"uid", "description", "files"}]``."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".dcm")
    if not files:
        raise DataError(folder, "no .dcm files")
    groups: dict[str, dict] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Sunnybrook UIDs have leading zeros, pydicom warns about each
        for f in files:
            ds = _read_header(f)
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            description = " ".join(str(ds.get("SeriesDescription", "") or "").split())
            g = groups.setdefault(uid, {"uid": uid, "description": description, "files": []})
            g["files"].append(f)
    return sorted(groups.values(), key=lambda g: (-len(g["files"]), g["uid"]))


def describe_series(series: list[dict]) -> str:
    """``1.2.3 "SA cine" (240 images), 1.2.4 "localizer" (3 images)``."""
    def images(n: int) -> str:
        return f"{n} image" if n == 1 else f"{n} images"

    return ", ".join(f"{g['uid'] or '(no SeriesInstanceUID)'} \"{g['description']}\" ({images(len(g['files']))})"
                     for g in series)


def read_series(folder: Path, series: str | None = None, several: str = "largest",
                ) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, int]], dict]:
    """Read one DICOM cine folder -> (image (X, Y, Z, T) float32, affine RAS 4x4, file number -> (z, t), info).

    The series is chosen by SeriesInstanceUID: ``series`` if given (``DataError`` listing the folder's
    series if it is not there); else the only one; else, with several, the one with the most images
    (``several="largest"``, the Sunnybrook reader: ``info["series_ignored"]`` counts the others) or a
    ``DataError`` listing them all (``several="error"``, ``predict``).
    """
    found = list_series(folder)
    if series is not None:
        chosen = next((g for g in found if g["uid"] == str(series).strip()), None)
        if chosen is None:
            raise DataError(folder, f"has no DICOM series {series!r}; its series: {describe_series(found)}")
    elif len(found) > 1 and several == "error":
        raise DataError(folder, f"holds {len(found)} DICOM series; choose one with --series UID: "
                                f"{describe_series(found)}")
    else:
        chosen = found[0]
    items = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in chosen["files"]:
            try:
                ds = pydicom.dcmread(f)
            except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError) as e:
                raise DataError(f, f"cannot read DICOM image: {e}") from None
            check_dicom_claim(f, ds)
            try:
                px = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
            except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError, KeyError) as e:
                raise DataError(f, f"cannot read DICOM image: {e}") from None
            except MemoryError:
                raise DataError(f, "not enough memory to decode its pixel data") from None
            for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
                if tag not in ds:
                    raise DataError(f, f"missing DICOM tag {tag} (needed for the geometry)")
            items.append((f, ds, px))

    iop = np.array(items[0][1].ImageOrientationPatient, dtype=np.float64)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    for f, ds, px in items:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=np.float64), iop, atol=1e-4):
            raise DataError(f, "ImageOrientationPatient differs from the rest of the series (not one stack)")
        if px.shape != items[0][2].shape:
            raise DataError(f, f"image size {px.shape} differs from {items[0][2].shape} in the same series")

    pos = np.array([np.dot(np.array(ds.ImagePositionPatient, dtype=np.float64), normal) for _, ds, _ in items])
    order = np.argsort(pos, kind="stable")
    slices: list[list] = []
    last = None
    for i in order:
        if last is None or pos[i] - last > 0.1:  # a new slice position (0.1 mm tolerance)
            slices.append([])
        slices[-1].append(items[i])
        last = pos[i]
    counts = [len(s) for s in slices]
    if len(set(counts)) != 1:
        raise DataError(folder, f"slices have different numbers of phases {counts}: incomplete cine series")
    n_z, n_t = len(slices), counts[0]
    rows, cols = items[0][2].shape
    image = np.zeros((cols, rows, n_z, n_t), dtype=np.float32)
    index: dict[int, tuple[int, int]] = {}
    for z, group in enumerate(slices):
        group.sort(key=lambda it: (float(it[1].get("TriggerTime", 0) or 0), int(it[1].get("InstanceNumber", 0) or 0)))
        for t, (f, ds, px) in enumerate(group):
            image[:, :, z, t] = px.T
            index[file_number(f, ds)] = (z, t)

    check_not_constant(folder, image, "DICOM series")
    ds0 = slices[0][0][1]
    ps_row, ps_col = (float(v) for v in ds0.PixelSpacing)  # row spacing (between rows), column spacing
    ipp = [np.array(s[0][1].ImagePositionPatient, dtype=np.float64) for s in slices]
    if n_z > 1:
        step = (ipp[-1] - ipp[0]) / (n_z - 1)
        gaps = np.diff([np.dot(p, normal) for p in ipp])
    else:
        step = normal * float(ds0.get("SpacingBetweenSlices", ds0.get("SliceThickness", 1.0)) or 1.0)
        gaps = np.array([np.linalg.norm(step)])
    lps = np.eye(4)
    lps[:3, 0] = row_cos * ps_col  # X = column index moves along the row direction
    lps[:3, 1] = col_cos * ps_row
    lps[:3, 2] = step
    lps[:3, 3] = ipp[0]
    info = {
        "manufacturer": str(ds0.get("Manufacturer", "")) or None,
        "model": str(ds0.get("ManufacturerModelName", "")) or None,
        "field_strength": float(ds0.MagneticFieldStrength) if ds0.get("MagneticFieldStrength") else None,
        "slice_gap_irregular": bool(np.ptp(gaps) > 0.1 * max(abs(float(np.mean(gaps))), 1e-6)),
        "series_ignored": len(found) - 1,
        "series_uid": chosen["uid"],
        "series_description": chosen["description"] or None,
    }
    return image, _LPS_TO_RAS @ lps, index, info


def read_contour(path: Path) -> np.ndarray:
    """Contour file -> (N, 2) float array of (x, y) = (column, row) pixel coordinates."""
    try:
        pts = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DataError(path, f"cannot parse contour (expected 'x y' per line): {e}") from None
    if pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
        raise DataError(path, f"contour must have at least 3 finite 'x y' points, got array of shape {pts.shape}")
    return pts


def rasterise(pts: np.ndarray, n_x: int, n_y: int) -> np.ndarray:
    """Polygon of (x=column, y=row) points -> boolean mask (X, Y) = (columns, rows)."""
    mask = np.zeros((n_x, n_y), dtype=bool)
    cc, rr = polygon(pts[:, 0], pts[:, 1], shape=(n_x, n_y))
    mask[cc, rr] = True
    return mask


@READERS.register("sunnybrook")
class SunnybrookReader(Reader):
    name = "sunnybrook"
    description = "Sunnybrook Cardiac Data: dicoms/SCD*/ DICOM cine + contourfiles/<id>/{i,o}-contours + link.csv"

    def subject_ids(self, root: Path) -> list[str]:
        d = Path(root) / "dicoms"
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_dir() and any(p.glob("*.dcm")))

    def contour_folder(self, root: Path, subject_id: str) -> Path | None:
        contours, link = root / "contourfiles", root / "link.csv"
        if not contours.is_dir():
            return None
        if not link.is_file():
            raise DataError(link, "not found: needed to find the contours of each DICOM folder")
        with open(link, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if rows and not {"patient_id", "original_id"} <= set(rows[0]):
            raise DataError(link, f"expected columns patient_id, original_id, got {list(rows[0])}")
        original = next((r["original_id"].strip() for r in rows if r["patient_id"].strip() == subject_id), None)
        if original is None:
            return None
        folder = contours / original
        if not folder.is_dir():
            raise DataError(folder, f"contour folder of {subject_id} (from link.csv) not found")
        return folder

    def load(self, root: Path, subject_id: str) -> Subject:
        root = Path(root)
        folder = root / "dicoms" / subject_id
        if not folder.is_dir():
            raise DataError(folder, "DICOM folder not found")
        image, affine, index, info = read_series(folder)
        n_x, n_y, n_z, n_t = image.shape
        cfolder = self.contour_folder(root, subject_id)
        contours: dict[str, dict[tuple[int, int], np.ndarray]] = {"icontour": {}, "ocontour": {}}
        for path in sorted(cfolder.rglob("*.txt")) if cfolder is not None else []:
            m = _CONTOUR.match(path.name)
            if m is None or m.group(3) not in contours:
                continue  # papillary-muscle contours (p1/p2) and other files are not used
            num = int(m.group(2))
            if num not in index:
                raise DataError(path, f"refers to image {num}, which is not in {folder}")
            contours[m.group(3)][index[num]] = rasterise(read_contour(path), n_x, n_y)

        labels: dict[int, np.ndarray] = {}
        labeled: dict[int, list[int]] = defaultdict(list)
        myo: dict[int, list[int]] = defaultdict(list)
        for (z, t), inner in sorted(contours["icontour"].items()):
            lab = labels.setdefault(t, np.zeros((n_x, n_y, n_z), dtype=np.uint8))
            outer = contours["ocontour"].get((z, t))
            if outer is not None:
                lab[outer & ~inner, z] = MYO
                myo[t].append(z)
            lab[inner, z] = LV
            labeled[t].append(z)

        file_numbers = np.zeros((n_z, n_t), dtype=np.int64)
        for num, (z, t) in index.items():
            file_numbers[z, t] = num
        ed = es = None
        if len(labels) >= 2:
            common = sorted(set.intersection(*(set(v) for v in labeled.values()))) or list(range(n_z))
            vol = {t: int((lab[:, :, common] == LV).sum()) for t, lab in labels.items()}
            ed, es = max(vol, key=vol.get), min(vol, key=vol.get)
            if ed == es:
                raise DataError(cfolder, f"cannot tell ED from ES: the {len(labels)} contoured phases of "
                                         f"{subject_id} have the same LV area ({vol[ed]} pixels)")
        original = cfolder.name if cfolder is not None else None
        spacing = tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3))
        return Subject(
            subject_id=subject_id,
            dataset="sunnybrook",
            image=image,
            spacing=spacing,
            affine=affine,
            labels=labels,
            ed_frame=ed,
            es_frame=es,
            vendor=vendor_letter(info["manufacturer"]),
            centre="Sunnybrook",
            pathology=original[3:].rsplit("-", 1)[0] if original and original.startswith("SC-") else None,
            view="SA",
            source=str(folder),
            extra={
                **info,
                "vendor_name": info["manufacturer"],
                "original_id": original,
                "partial_labels": "only contoured slices are labeled; other slices of a labeled frame are 0",
                "no_rv": True,
                "labeled_slices": {t: sorted(v) for t, v in labeled.items()},
                "file_numbers": file_numbers.tolist(),  # [z][t] -> DICOM file number
                "myo_slices": {t: sorted(v) for t, v in myo.items()},
            },
        )
