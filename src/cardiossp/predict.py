"""Files in, files out: NIfTI (3D/4D) files or folders, or DICOM cine folders -> label NIfTI
(``<name>_seg.nii.gz``, uint8, internal labels 1 LV, 2 MYO, 3 RV) with the input's shape,
affine and header. Each output is written to a temporary name and renamed; a bad input
raises a ``DataError`` naming it and leaves nothing behind.

Label maps are never segmented as images: in a folder, files named ``*_gt``, ``*_seg``,
``labels*`` and everything in nnU-Net's ``labelsTr`` / ``labelsTs`` are skipped (an ACDC
patient folder gives its frames and 4D cine only); such a file named on its own is refused.
A blank image (or a blank frame of a cine) is refused: the network would still draw a heart on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .data.labels import NUM_CLASSES
from .errors import DataError
from .inference import Segmenter

_NII = (".nii.gz", ".nii")


def _stem(path: Path) -> str:
    name = path.name
    for ext in _NII:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def expand_inputs(inputs) -> list[tuple[str, Path]]:
    """Paths -> ``[("nifti" | "dicom", path)]``: a folder means its .nii/.nii.gz image files (label maps
    skipped, see ``is_label_file``), or, if it has none, the DICOM series of its .dcm files."""
    from .data.readers.base import is_label_file

    jobs: list[tuple[str, Path]] = []
    for item in [inputs] if isinstance(inputs, (str, Path)) else inputs:
        p = Path(item)
        if p.is_dir():
            if p.name.lower() in ("labelstr", "labelsts"):
                raise DataError(p, "is an nnU-Net label folder: give imagesTr / imagesTs")
            nii = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(_NII) and not is_label_file(f))
            if nii:
                jobs += [("nifti", f) for f in nii]
            elif any(f.suffix.lower() == ".dcm" for f in p.iterdir()):
                jobs.append(("dicom", p))
            elif any(f.name.endswith(_NII) for f in p.iterdir()):
                raise DataError(p, "folder holds only label maps (*_gt, *_seg, labels*), no image to segment")
            else:
                raise DataError(p, "folder holds no .nii/.nii.gz files and no .dcm series")
        elif p.is_file():
            if not p.name.endswith(_NII):
                raise DataError(p, "not a NIfTI file (.nii/.nii.gz); give DICOM series as a folder")
            if is_label_file(p):
                raise DataError(p, "is named as a label map (*_gt, *_seg, labels*, labelsTr/): give the image")
            jobs.append(("nifti", p))
        else:
            raise DataError(p, "input not found")
    return jobs


def _read_input(kind: str, path: Path):
    """-> (image (X, Y, Z[, T]) float32, spacing, affine, header or None, shape to write)."""
    import nibabel as nib

    if kind == "dicom":
        from .data.readers.sunnybrook import read_series

        image, affine, _, _ = read_series(path)  # refuses a blank series
        spacing = tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3))
        if min(spacing) <= 0:
            raise DataError(path, f"DICOM geometry gives voxel spacing {spacing}")
        _check_frames(path, image)
        image = image[..., 0] if image.shape[3] == 1 else image
        return image, spacing, affine, None, image.shape
    from .data.readers.base import load_nifti

    # DataError on a header claiming more than the file holds, 2D, corrupt file, non-finite or blank voxels
    data, affine, zooms = load_nifti(path, ndims=(3, 4))
    if data.ndim == 4:
        _check_frames(path, data)
    img = nib.load(str(path))  # for its header: the labels are written with the input's
    return data, zooms[:3], affine, img.header, img.shape


def _check_frames(path: Path, image: np.ndarray) -> None:
    """Refuse a cine (X, Y, Z, T) with a blank frame: it would get a segmentation all the same."""
    if image.ndim != 4:
        return
    flat = image.reshape(-1, image.shape[3])
    blank = np.nonzero(flat.max(axis=0) == flat.min(axis=0))[0]
    if len(blank):
        raise DataError(path, f"frame(s) {blank.tolist()[:8]} of {image.shape[3]} are blank (one value everywhere)")


def _write_labels(labels: np.ndarray, affine: np.ndarray, header, shape, out: Path) -> None:
    """Write uint8 labels with the input's shape, affine and header to ``out`` (temp name, then rename)."""
    import nibabel as nib

    labels = labels.reshape(shape)
    if header is None:
        img = nib.Nifti1Image(labels, affine)
        img.header.set_xyzt_units("mm")
    else:
        klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        img = klass(labels, affine, header=header.copy())
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(None, None)
    img.header["cal_min"], img.header["cal_max"] = 0, NUM_CLASSES - 1
    img.header.set_intent("label")
    img.header["descrip"] = b"cardiossp labels 0 bg 1 LV 2 MYO 3 RV"
    with atomic_path(out, suffix=".nii.gz") as tmp:  # nibabel picks the format from the name
        nib.save(img, str(tmp))


def predict_files(model, inputs, out_dir, tta: bool = False, largest_component: bool = False,
                  progress=None, device: str = "cpu") -> list[Path]:
    """Segment NIfTI files (3D, or 4D: every frame), folders of them, or DICOM cine folders.

    ``model``: a ``Segmenter`` or a run folder / ``.ckpt`` (loaded on ``device``). Writes
    ``out_dir/<name>_seg.nii.gz`` (uint8, internal labels 0 bg, 1 LV, 2 MYO, 3 RV) with the input's
    shape, affine and header;
    DICOM folders give ``<folder>_seg.nii.gz`` in RAS+ (as the readers build it).
    ``progress(name, i, n)`` is called after each output. Bad input (not 3D/4D, missing or zero
    spacing, unreadable) raises ``DataError`` naming the file; nothing is written for it
    (outputs of earlier inputs stay). Returns the written paths.
    """
    seg = model if isinstance(model, Segmenter) else Segmenter.from_checkpoint(model, device=device)
    jobs = expand_inputs(inputs)
    out_dir = Path(out_dir)
    outs = [out_dir / f"{_stem(p)}_seg.nii.gz" for _, p in jobs]
    seen: dict[Path, Path] = {}
    for (_, p), o in zip(jobs, outs):
        if o in seen:
            raise DataError(p, f"gives the same output name {o.name} as {seen[o]}; predict them into separate folders")
        seen[o] = p
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, ((kind, path), out) in enumerate(zip(jobs, outs)):
        image, spacing, affine, header, shape = _read_input(kind, path)
        try:
            labels = seg(image, spacing, affine, tta=tta, largest_component=largest_component)
        except DataError as e:
            raise DataError(path, e.problem) from None
        _write_labels(labels, affine, header, shape, out)
        if progress:
            progress(path.name, i + 1, len(jobs))
    return outs
