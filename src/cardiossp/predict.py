"""Files in, files out: images (3D or 4D) or folders of them, or DICOM cine folders -> label maps (uint8).

Formats and outputs (each output on the input's voxel grid):

* NIfTI (``.nii``, ``.nii.gz``, read by nibabel) -> ``<name>_seg.nii.gz`` with the input's shape, affine and header;
* NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``), read by SimpleITK -> ``<name>_seg.nrrd`` /
  ``<name>_seg.mha`` in the input's format with its exact ITK geometry (size, spacing, origin, direction; a
  ``.mhd`` input gets a one-file ``.mha``), the convention in the ``cardiossp_labels`` header field;
* a DICOM folder -> ``<folder>_seg.nii.gz`` in RAS+ (as the readers build it). The series is chosen by
  SeriesInstanceUID: a folder with several series is refused with a list of them (UID, description, number
  of images) unless ``series`` (CLI ``--series UID``) names one.

Header claims are checked against the file's bytes before anything is allocated (``readers.base.check_claim``).
Labels: internal (0 bg, 1 LV, 2 MYO, 3 RV) unless ``labels`` names a dataset convention (``acdc``: 1 RV,
2 MYO, 3 LV; ``mnms`` / ``mnms2``) or a YAML mapping file (``data.labels.output_convention``); the NIfTI
``descrip`` field says which (e.g. ``cardiossp labels (acdc) 0 bg 1 RV 2 MYO 3 LV``).
Each output is written to a temporary name and renamed; a bad input raises a ``DataError`` naming it
and leaves nothing behind.

Label maps are never segmented as images: in a folder, files named ``*_gt``, ``*_seg``,
``labels*`` and everything in nnU-Net's ``labelsTr`` / ``labelsTs`` are skipped (an ACDC
patient folder gives its frames and 4D cine only); such a file named on its own is refused.
A blank image (or a blank frame of a cine) is refused: the network would still draw a heart on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .data.labels import OutputConvention, output_convention
from .data.readers.itk import ITK_EXTENSIONS, ItkGeometry, is_itk_file, itk_stem, output_suffix
from .errors import ConfigError, DataError
from .inference import Segmenter

_NII = (".nii.gz", ".nii")
FORMATS = ".nii, .nii.gz, " + ", ".join(ITK_EXTENSIONS)


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(_NII)


def _stem(path: Path) -> str:
    name = path.name
    for ext in _NII:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return itk_stem(name)


def output_name(kind: str, path: Path) -> str:
    """``<stem>_seg.nii.gz`` (NIfTI, DICOM), ``<stem>_seg.nrrd`` / ``.mha`` (NRRD, MetaImage)."""
    return f"{_stem(path)}_seg{output_suffix(path) if kind == 'itk' else '.nii.gz'}"


def expand_inputs(inputs) -> list[tuple[str, Path]]:
    """Paths -> ``[("nifti" | "itk" | "dicom", path)]``: a folder means its image files (NIfTI, NRRD,
    MetaImage; label maps skipped, see ``is_label_file``), or, if it has none, the DICOM series of its .dcm files."""
    from .data.readers.base import is_label_file

    jobs: list[tuple[str, Path]] = []
    for item in [inputs] if isinstance(inputs, (str, Path)) else inputs:
        p = Path(item)
        if p.is_dir():
            if p.name.lower() in ("labelstr", "labelsts"):
                raise DataError(p, "is an nnU-Net label folder: give imagesTr / imagesTs")
            files = sorted(f for f in p.iterdir() if f.is_file() and (_is_nifti(f) or is_itk_file(f)))
            images = [f for f in files if not is_label_file(f)]
            if images:
                jobs += [("nifti" if _is_nifti(f) else "itk", f) for f in images]
            elif any(f.suffix.lower() == ".dcm" for f in p.iterdir()):
                jobs.append(("dicom", p))
            elif files:
                raise DataError(p, "folder holds only label maps (*_gt, *_seg, labels*), no image to segment")
            else:
                raise DataError(p, f"folder holds no {'/'.join(_NII[::-1] + ITK_EXTENSIONS)} image and no .dcm series")
        elif p.is_file():
            if p.suffix.lower() == ".dcm":
                raise DataError(p, "a single DICOM file: give the folder of the series' .dcm files")
            if not (_is_nifti(p) or is_itk_file(p)):
                raise DataError(p, f"not an image format predict reads ({FORMATS}; DICOM as a folder)")
            if is_label_file(p):
                raise DataError(p, "is named as a label map (*_gt, *_seg, labels*, labelsTr/): give the image")
            jobs.append(("nifti" if _is_nifti(p) else "itk", p))
        else:
            raise DataError(p, "input not found")
    return jobs


def _read_input(kind: str, path: Path, series: str | None = None):
    """-> (image (X, Y, Z[, T]) float32, spacing, affine, header, shape to write). ``header``: the NIfTI header,
    the ITK geometry (``ItkGeometry``) of a NRRD / MetaImage, or None (DICOM)."""
    import nibabel as nib

    if kind == "dicom":
        from .data.readers.sunnybrook import read_series

        image, affine, _, _ = read_series(path, series=series, several="error")  # refuses a blank series
        spacing = tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3))
        if min(spacing) <= 0:
            raise DataError(path, f"DICOM geometry gives voxel spacing {spacing}")
        _check_frames(path, image)
        image = image[..., 0] if image.shape[3] == 1 else image
        return image, spacing, affine, None, image.shape
    if kind == "itk":
        from .data.readers.itk import read_itk_image

        # DataError on a header claiming more than the data holds, 2D, vector voxels, non-finite or blank voxels
        image, spacing, affine, geometry = read_itk_image(path)
        _check_frames(path, image)
        return image, spacing, affine, geometry, image.shape
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


def _write_labels(labels: np.ndarray, affine: np.ndarray, header, shape, out: Path,
                  convention: OutputConvention | None = None) -> None:
    """Write uint8 labels (internal convention) in ``convention`` (default internal) to ``out`` (temp name, then
    rename): a ``.nrrd`` / ``.mha`` on the ITK geometry ``header``; else NIfTI with the input's shape, affine
    and header (a new header when ``header`` is None or an ITK geometry)."""
    import nibabel as nib

    convention = convention or output_convention("internal")
    labels = convention.apply(np.asarray(labels).reshape(shape))
    if isinstance(header, ItkGeometry) and is_itk_file(out):
        from .data.readers.itk import write_itk_labels

        write_itk_labels(labels, header, out, convention.describe())
        return
    if header is None or isinstance(header, ItkGeometry):
        img = nib.Nifti1Image(labels, affine)
        img.header.set_xyzt_units("mm")
    else:
        klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        img = klass(labels, affine, header=header.copy())
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(None, None)
    img.header["cal_min"], img.header["cal_max"] = 0, int(convention.lut.max())
    img.header.set_intent("label")
    img.header["descrip"] = convention.describe().encode()
    with atomic_path(out, suffix=".nii.gz") as tmp:  # nibabel picks the format from the name
        nib.save(img, str(tmp))


def predict_files(model, inputs, out_dir, tta: bool = False, largest_component: bool = False,
                  progress=None, device: str = "cpu", labels: str | Path = "internal",
                  series: str | None = None) -> list[Path]:
    """Segment images (3D, or 4D: every frame), folders of them, or DICOM cine folders (formats: module docstring).

    ``model``: a ``Segmenter`` or a run folder / ``.ckpt`` (loaded on ``device``). Writes
    ``out_dir/<name>_seg.<ext>`` (uint8) on each input's grid (see the module docstring); ``labels``: the
    output convention (``internal``, ``acdc``, ``mnms``, ``mnms2`` or a YAML mapping file); ``series``: the
    SeriesInstanceUID to read from DICOM folders holding several series.
    ``progress(name, i, n)`` is called after each output. Bad input (not 3D/4D, missing or zero
    spacing, unreadable) raises ``DataError`` naming the file; nothing is written for it
    (outputs of earlier inputs stay). Returns the written paths.
    """
    convention = labels if isinstance(labels, OutputConvention) else output_convention(labels)
    jobs = expand_inputs(inputs)
    if series is not None and not any(kind == "dicom" for kind, _ in jobs):
        raise ConfigError(f"--series {series} picks a DICOM series, but no input is a DICOM folder")
    out_dir = Path(out_dir)
    outs = [out_dir / output_name(kind, p) for kind, p in jobs]
    seen: dict[Path, Path] = {}
    for (_, p), o in zip(jobs, outs):
        if o in seen:
            raise DataError(p, f"gives the same output name {o.name} as {seen[o]}; predict them into separate folders")
        seen[o] = p
    seg = model if isinstance(model, Segmenter) else Segmenter.from_checkpoint(model, device=device)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, ((kind, path), out) in enumerate(zip(jobs, outs)):
        image, spacing, affine, header, shape = _read_input(kind, path, series=series)
        try:
            pred = seg(image, spacing, affine, tta=tta, largest_component=largest_component)
        except DataError as e:
            raise DataError(path, e.problem) from None
        _write_labels(pred, affine, header, shape, out, convention)
        if progress:
            progress(path.name, i + 1, len(jobs))
    return outs
