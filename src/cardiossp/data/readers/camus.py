"""CAMUS (Leclerc et al., IEEE TMI 38(9) 2019): 2D apical two- and four-chamber echocardiography.

Layout (one folder per patient, optionally under ``training/`` and ``testing/``)::

    patientNNNN/Info_2CH.cfg, Info_4CH.cfg        ED, ES (1-based frame numbers), NbFrame, Sex, Age,
                                                  ImageQuality, LVedv, LVesv, LVef
    patientNNNN/patientNNNN_{2CH,4CH}_{ED,ES}.mhd (+ .raw)      the two annotated frames
    patientNNNN/patientNNNN_{2CH,4CH}_{ED,ES}_gt.mhd (+ .raw)   labels 1 LV endocardium, 2 myocardium,
                                                                3 left atrium
    patientNNNN/patientNNNN_{2CH,4CH}_sequence.mhd (+ .raw)     the half cycle ED -> ES (full release)

The 2023 re-release names the cine ``_half_sequence`` and stores NIfTI (``.nii.gz``); both are
read (SimpleITK reads either). ``.mhd`` headers give ``ElementSpacing`` in mm.

One ``Subject`` per patient and view (``patient0001_2CH``; ``extra["patient"]`` groups the two
views so that splits keep them together), ``view`` "2CH" / "4CH". Image (X, Y, 1, T) with X the
ITK x index (image column) and Y the row (depth), as SimpleITK orders voxels; z spacing is a
nominal 1 mm (one 2D plane: areas are meaningful, "volumes" are area x 1 mm, not mL). With the
cine, T is its frame count and ED / ES are ``Info`` ED - 1 / ES - 1; without it, T = 2 (t=0 ED,
t=1 ES). Labels: LV and MYO map to the internal 1 and 2; the left atrium (3) is *not* the RV and
becomes background, its mask kept as ``extra["left_atrium"]`` (t -> bool (X, Y, 1)); see
``cardiossp.data.labels``. All CAMUS images come from one GE Vivid E95 scanner at the University
Hospital of Saint-Etienne (Leclerc et al. 2019 §III); ``vendor`` stays None (the M&Ms vendor
letters describe MR scanners).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ...errors import DataError
from ..labels import DATASET_LABEL_MAPS, map_labels
from ..subject import Subject
from .base import READERS, Reader, check_not_constant
from .itk import check_itk_claim

_PATIENT = re.compile(r"^patient\d{4}$")
VIEWS = ("2CH", "4CH")
_EXTENSIONS = (".mhd", ".nii.gz", ".nii")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NUMERIC = ("Age", "LVedv", "LVesv", "LVef")


def read_camus_cfg(path: Path) -> dict:
    """``Info_{2CH,4CH}.cfg`` (``key: value`` lines) -> dict; ED, ES, NbFrame int, Age, LVedv, LVesv, LVef float."""
    info: dict = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if not str(info.get(key, "")).isdigit() or int(info[key]) < 1:
            raise DataError(path, f"missing or invalid {key!r} entry (expected a 1-based frame number)")
        info[key] = int(info[key])
    if info["ED"] == info["ES"]:
        raise DataError(path, f"ED and ES are the same frame ({info['ED']})")
    if "NbFrame" in info:
        if not str(info["NbFrame"]).isdigit():
            raise DataError(path, f"NbFrame {info['NbFrame']!r} is not a whole number")
        info["NbFrame"] = int(info["NbFrame"])
    for key in _NUMERIC:
        try:
            info[key] = float(info[key]) if key in info else None
        except ValueError:
            raise DataError(path, f"{key} {info[key]!r} is not a number") from None
    return info


def find_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` with the first extension of ``.mhd``, ``.nii.gz``, ``.nii`` that exists."""
    return next((folder / f"{stem}{ext}" for ext in _EXTENSIONS if (folder / f"{stem}{ext}").is_file()), None)


def read_itk(path: Path) -> tuple[np.ndarray, tuple[float, float], np.ndarray]:
    """A 2D image or 2D+t cine -> (array (X, Y, N) float32, in-plane spacing (sx, sy) mm, RAS affine 4x4).

    A 2D file gives N = 1, a 3D file N = its third dimension (frames of a CAMUS cine).
    """
    check_itk_claim(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise DataError(path, f"cannot read image (missing .raw, truncated or corrupt?): {e}") from None
    arr = sitk.GetArrayFromImage(img)  # (Y, X) or (N, Y, X)
    if img.GetNumberOfComponentsPerPixel() != 1 or arr.ndim not in (2, 3):
        raise DataError(path, f"expected a 2D image or a 2D+t sequence, got array of shape {arr.shape}")
    arr = (arr[None] if arr.ndim == 2 else arr).transpose(2, 1, 0).astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(path, f"{int((~np.isfinite(arr)).sum())} pixels are NaN or infinite")
    spacing = tuple(float(s) for s in img.GetSpacing()[:2])
    if min(spacing) <= 0:
        raise DataError(path, f"ElementSpacing {spacing} is not positive")
    dim = img.GetDimension()
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    lps = np.eye(4)
    lps[:dim, :2] = direction[:, :2] * np.asarray(spacing)
    lps[:dim, 3] = img.GetOrigin()
    return arr, spacing, _LPS_TO_RAS @ lps


@READERS.register("camus")
class CAMUSReader(Reader):
    name = "camus"
    description = "CAMUS echo: patientNNNN/ with Info_{2CH,4CH}.cfg, _{2CH,4CH}_{ED,ES}[_gt].mhd and optional _sequence"

    def subject_ids(self, root: Path) -> list[str]:
        folders = [p for p in root.iterdir() if p.is_dir() and _PATIENT.match(p.name)]
        for sub in ("training", "testing"):
            if (root / sub).is_dir():
                folders += [p for p in (root / sub).iterdir() if p.is_dir() and _PATIENT.match(p.name)]
        ids = []
        for folder in sorted(folders):
            for view in VIEWS:
                if find_file(folder, f"{folder.name}_{view}_ED") or self._sequence(folder, view):
                    ids.append(f"{folder.relative_to(root).as_posix()}/{folder.name}_{view}")
        return ids

    def source_files(self, root: Path, subject_id: str) -> list[Path]:
        folder, name = (root / subject_id).parent, Path(subject_id).name
        view = name.rsplit("_", 1)[1]
        files = [p for p in folder.glob(f"{name}_*") if p.is_file()] + [folder / f"Info_{view}.cfg"]
        return sorted(p for p in files if p.is_file())

    @staticmethod
    def _sequence(folder: Path, view: str) -> Path | None:
        return find_file(folder, f"{folder.name}_{view}_sequence") or find_file(
            folder, f"{folder.name}_{view}_half_sequence"
        )

    def load(self, root: Path, subject_id: str) -> Subject:
        folder, name = (Path(root) / subject_id).parent, Path(subject_id).name
        pid, view = name.rsplit("_", 1)
        if not folder.is_dir() or view not in VIEWS:
            raise DataError(root / subject_id, "not a CAMUS patient folder / view (patientNNNN/patientNNNN_2CH)")
        cfg_path = folder / f"Info_{view}.cfg"
        info = read_camus_cfg(cfg_path) if cfg_path.is_file() else {}
        sequence = self._sequence(folder, view)
        if sequence is not None:
            if not info:
                raise DataError(cfg_path, "not found: needed to find ED and ES in the cine")
            image, spacing, affine = read_itk(sequence)
            check_not_constant(sequence, image)
            n = image.shape[2]
            if info.get("NbFrame") is not None and info["NbFrame"] != n:
                raise DataError(sequence, f"has {n} frames but {cfg_path.name} says NbFrame {info['NbFrame']}")
            ed, es = info["ED"] - 1, info["ES"] - 1
            for key, t in (("ED", ed), ("ES", es)):
                if t >= n:
                    raise DataError(cfg_path, f"{key} frame {t + 1} is beyond the {n} frames of {sequence.name}")
            frame_numbers, t_of = list(range(n)), {"ED": ed, "ES": es}
        else:
            frames = []
            for phase in ("ED", "ES"):
                path = find_file(folder, f"{pid}_{view}_{phase}")
                if path is None:
                    raise DataError(folder / f"{pid}_{view}_{phase}.mhd", "not found (and no _sequence cine)")
                arr, spacing, affine = read_itk(path)
                check_not_constant(path, arr)
                if arr.shape[2] != 1 or (frames and arr.shape != frames[0].shape):
                    raise DataError(path, f"expected one frame of the ED frame's shape, got {arr.shape[:2]}")
                frames.append(arr)
            image = np.concatenate(frames, axis=2)
            frame_numbers = [info["ED"] - 1, info["ES"] - 1] if info else [0, 1]
            t_of = {"ED": 0, "ES": 1}
        labels, left_atrium = {}, {}
        for phase, t in t_of.items():
            gt = find_file(folder, f"{pid}_{view}_{phase}_gt")
            if gt is not None:
                labels[t], left_atrium[t] = self._labels(gt, image.shape[:2])
        return Subject(
            subject_id=name,
            dataset="camus",
            image=image[:, :, None, :],
            spacing=(spacing[0], spacing[1], 1.0),
            affine=affine,
            labels=labels,
            ed_frame=t_of["ED"],
            es_frame=t_of["ES"],
            frame_numbers=frame_numbers,
            vendor=None,
            centre="Saint-Etienne",
            view=view,
            source=str(folder),
            extra={
                "patient": pid,
                "vendor_name": "GE Vivid E95",
                "nominal_z_spacing": True,
                "left_atrium": left_atrium,
                **{
                    k: info[k]
                    for k in ("NbFrame", "Sex", "Age", "ImageQuality", "LVedv", "LVesv", "LVef")
                    if info.get(k) is not None
                },
            },
        )

    @staticmethod
    def _labels(path: Path, shape_xy: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """A ``_gt`` file -> (internal labels (X, Y, 1) uint8, left-atrium mask (X, Y, 1) bool)."""
        arr, _, _ = read_itk(path)
        if arr.shape != (*shape_xy, 1):
            raise DataError(path, f"label shape {arr.shape[:2]} (x, y) does not match the image's {tuple(shape_xy)}")
        if not np.allclose(arr, np.round(arr)):
            raise DataError(path, "label map has non-integer values")
        raw = np.round(arr).astype(np.int64)
        try:
            labels = map_labels(raw, DATASET_LABEL_MAPS["camus"], "camus")
        except ValueError as e:
            raise DataError(path, str(e)) from None
        return labels, raw == 3
