"""A generic NIfTI folder: nnU-Net's raw-dataset layout, or any folder of NIfTI files.

(a) nnU-Net layout (Isensee et al., Nature Methods 2021), detected by ``dataset.json`` in the root:
    ``imagesTr/CASE_0000.nii.gz`` + ``labelsTr/CASE.nii.gz`` (labeled), ``imagesTs/CASE_0000.nii.gz``
    (+ ``labelsTs/CASE.nii.gz`` if present). Only channel 0000 is read. ``dataset.json`` "labels" (v2
    ``{"background": 0, "LV": 1}`` or v1 ``{"0": "background", "1": "LV"}``) names each value;
    names are mapped case-insensitively to the internal convention (0 bg, 1 LV, 2 MYO, 3 RV):
    e.g. LV / LVC / left ventricle / LV blood pool -> 1, MYO / MLV / myocardium -> 2, RV / RVC /
    right ventricle -> 3. An unknown name is a ``DataError`` naming dataset.json.
(b) plain folder (no dataset.json): every ``*.nii`` / ``*.nii.gz`` below root is one unlabeled subject
    whose id is the file name without extension.

Geometry: a 3D file is one frame (T=1); a 4D file (x, y, slice, time) keeps all frames. A 4D label
file with the image's frame count labels every frame that has a nonzero voxel; a 3D label file
belongs to a 3D image (frame 0). An optional ``metadata.csv`` in root, columns
``subject,vendor,centre,pathology,ed_frame,es_frame`` (0-based frame indices; optional ``dataset``
and ``view``; more columns go to ``extra``), fills metadata in both layouts; ``subject`` is the file
name without extension (or nnU-Net case name). Without ED/ES there, a 4D label map with exactly two
labeled frames gives ED = the frame with the larger LV volume.

Per-frame cases (nnU-Net's own ACDC conversion, Dataset027_ACDC: ``imagesTr/patient001_frame01_0000.nii.gz`` +
``labelsTr/patient001_frame01.nii.gz``): cases named ``<patient>_frame<XX>`` in one images folder become **one
subject per patient** (id ``imagesTr/patient001``, subject id ``patient001``), a 4D image of its 3D frames
ordered by XX (every frame must have the first's shape and affine), labeled where a frame's label file
exists. ``frame_numbers`` are XX - 1 (ACDC counts frames from 1), or XX if some frame is numbered 00.
ED / ES: ``metadata.csv`` ``ed_frame`` / ``es_frame`` given as the XX of the file names (as ACDC's
Info.cfg gives them); else, of the labeled frames, the earliest is ED and the later one ES (with more
than two, the one with the smallest LV volume).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from ...errors import DataError
from ..labels import BACKGROUND, LV, MYO, RV
from ..subject import Subject
from .base import READERS, Reader, is_label_file, load_label_nifti, load_nifti, to_4d
from .mnms import csv_int, ed_es_by_lv_volume, read_info_csvs

LABEL_NAMES: dict[str, int] = {}
for _value, _names in {
    BACKGROUND: ("background", "bg", "bkg"),
    LV: ("lv", "lvc", "lv cavity", "lv blood pool", "lv bp", "lv endo", "left ventricle", "left ventricular cavity",
         "left ventricle cavity", "left ventricular blood pool", "lv pool"),
    MYO: ("myo", "myocardium", "mlv", "lvm", "lv myo", "lv myocardium", "left ventricular myocardium",
          "left ventricle myocardium", "myocardium lv"),
    RV: ("rv", "rvc", "rv cavity", "rv blood pool", "rv bp", "rv endo", "right ventricle", "right ventricular cavity",
         "right ventricle cavity", "right ventricular blood pool", "rv pool"),
}.items():
    for _n in _names:
        LABEL_NAMES[_n] = _value


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def label_map_from_dataset_json(path: Path) -> tuple[dict[int, int], dict]:
    """Parse nnU-Net's dataset.json -> (file label value -> internal value, the json dict)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(path, f"cannot read dataset.json: {e}") from None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise DataError(path, 'no "labels" mapping (expected e.g. {"background": 0, "LV": 1, "MYO": 2, "RV": 3})')
    if all(str(k).strip().isdigit() for k in labels):  # nnU-Net v1: {"0": "background", ...}
        pairs = [(str(v), k) for k, v in labels.items()]
    else:
        pairs = list(labels.items())
    mapping: dict[int, int] = {}
    for name, value in pairs:
        if not isinstance(value, (int, str)) or not str(value).strip().isdigit():
            raise DataError(path, f"label {name!r} has value {value!r}; only one integer per label is supported "
                                  "(no nnU-Net regions)")
        internal = LABEL_NAMES.get(_norm(str(name)))
        if internal is None:
            raise DataError(path, f"unknown label name {name!r}; known names map to LV, MYO, RV, e.g. "
                                  "'LV'/'left ventricle', 'MYO'/'myocardium', 'RV'/'right ventricle', 'background'")
        mapping[int(value)] = internal
    mapping.setdefault(0, BACKGROUND)
    return mapping, meta


_PER_FRAME = re.compile(r"^(?P<patient>.+)_frame(?P<frame>\d+)$")


def _strip_ext(name: str) -> str:
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


_ROW_KEYS = {"subject", "dataset", "vendor", "centre", "center", "pathology", "ed_frame", "es_frame", "view"}


def _row_fields(row: dict) -> dict:
    """Subject fields from a metadata-table row (``center`` accepted for ``centre``)."""
    return {"vendor": row.get("vendor"), "centre": row.get("centre") or row.get("center"),
            "pathology": row.get("pathology"), "view": row.get("view") or "SA"}


def _other_columns(row: dict) -> dict:
    """The row's other non-empty columns, kept in ``Subject.extra``."""
    return {k: v for k, v in row.items() if v is not None and k not in _ROW_KEYS}


@READERS.register("nifti")
class NiftiFolderReader(Reader):
    name = "nifti"
    description = "NIfTI folder: nnU-Net imagesTr/labelsTr/imagesTs + dataset.json, or any folder of .nii(.gz) files"

    def __init__(self) -> None:
        self._cache: dict[tuple[Path, str], object] = {}

    def _cached(self, root: Path, kind: str, make):
        if (root, kind) not in self._cache:
            self._cache[(root, kind)] = make()
        return self._cache[(root, kind)]

    def subject_ids(self, root: Path) -> list[str]:
        root = Path(root)
        if (root / "dataset.json").is_file():
            return sorted(self._cases(root))
        # label maps (``*_gt``, ``*_seg``, ``labels*``, labelsTr/) are never taken as unlabeled images
        files = [p for p in root.rglob("*") if p.name.endswith((".nii", ".nii.gz")) and p.is_file()
                 and not is_label_file(p)]
        return sorted(_strip_ext(str(p.relative_to(root))) for p in files)

    def _cases(self, root: Path) -> dict[str, list[tuple[int, str]] | None]:
        """nnU-Net subject id (``imagesTr/case``) -> None for a one-case subject, or its per-frame cases
        ``[(XX, "patient001_frameXX"), ...]`` ordered by XX (see the module docstring)."""
        def make():
            ending = self._dataset(root)[1].get("file_ending", ".nii.gz")
            suffix = f"_0000{ending}"
            out: dict[str, list[tuple[int, str]] | None] = {}
            for sub in ("imagesTr", "imagesTs"):
                names = sorted(p.name[: -len(suffix)] for p in (root / sub).glob(f"*{suffix}"))
                plain = {n for n in names if not _PER_FRAME.match(n)}
                for n in sorted(plain):
                    out[f"{sub}/{n}"] = None
                for n in names:
                    m = _PER_FRAME.match(n)
                    if m is None:
                        continue
                    sid = f"{sub}/{m.group('patient')}"
                    if m.group("patient") in plain:
                        raise DataError(root / sub / f"{n}{suffix}", f"per-frame case of {m.group('patient')}, "
                                        f"but {m.group('patient')}{suffix} is a case of its own: rename one")
                    out.setdefault(sid, []).append((int(m.group("frame")), n))
                for sid, frames in out.items():
                    if frames is not None:
                        frames.sort()
                        numbers = [f for f, _ in frames]
                        if len(set(numbers)) != len(numbers):
                            raise DataError(root / sub, f"{sid} has two cases with the same frame number: "
                                                        f"{[n for _, n in frames]}")
            return out

        return self._cached(root, "cases", make)

    def source_files(self, root: Path, subject_id: str) -> list[Path]:
        root = Path(root)
        frames = self._cases(root).get(subject_id) if (root / "dataset.json").is_file() else None
        if not frames:
            return super().source_files(root, subject_id)
        ending = self._dataset(root)[1].get("file_ending", ".nii.gz")
        sub = subject_id.split("/", 1)[0]
        files = [root / sub / f"{case}_0000{ending}" for _, case in frames]
        files += [root / sub.replace("images", "labels") / f"{case}{ending}" for _, case in frames]
        return sorted(f for f in files if f.is_file())

    def _dataset(self, root: Path) -> tuple[dict[int, int], dict]:
        return self._cached(root, "json", lambda: label_map_from_dataset_json(root / "dataset.json"))

    def _metadata(self, root: Path) -> dict:
        path = root / "metadata.csv"
        return self._cached(root, "meta", lambda: read_info_csvs(path.parent, ("subject",)) if path.is_file() else {})

    def load(self, root: Path, subject_id: str) -> Subject:
        root = Path(root)
        labels: dict[int, np.ndarray] = {}
        label_path: Path | None = None
        extra: dict = {}
        frames = self._cases(root).get(subject_id) if (root / "dataset.json").is_file() else None
        if frames:
            return self._load_per_frame(root, subject_id, frames)
        if (root / "dataset.json").is_file():
            mapping, meta = self._dataset(root)
            ending = meta.get("file_ending", ".nii.gz")
            sub, case = subject_id.split("/", 1)
            image_path = root / sub / f"{case}_0000{ending}"
            label_path = root / sub.replace("images", "labels") / f"{case}{ending}"
            image, affine, zooms = load_nifti(image_path, ndims=(3, 4))
            if label_path.is_file():
                labels = self._labels(label_path, image, affine, mapping)
            image = to_4d(image)
            extra.update(dataset_name=meta.get("name"), split=sub, layout="nnunet")
        else:
            case = Path(subject_id).name
            image_path = next((root / f"{subject_id}{e}" for e in (".nii.gz", ".nii")
                               if (root / f"{subject_id}{e}").is_file()), root / f"{subject_id}.nii.gz")
            image, affine, zooms = load_nifti(image_path, ndims=(3, 4))
            image = to_4d(image)
            extra["layout"] = "plain"

        meta_rows = self._metadata(root)
        csv_path, row = meta_rows.get(subject_id) or meta_rows.get(case) or (None, {})
        ed = csv_int(row.get("ed_frame"), csv_path, f"ed_frame of {case}") if row else None
        es = csv_int(row.get("es_frame"), csv_path, f"es_frame of {case}") if row else None
        for what, t in (("ed_frame", ed), ("es_frame", es)):
            if t is not None and t >= image.shape[3]:
                raise DataError(csv_path, f"{what} of {case} is {t} (0-based), but {image_path.name} has "
                                          f"{image.shape[3]} frames")
            if t is not None and labels and t not in labels:
                raise DataError(csv_path, f"{what} of {case} is frame {t}, which has no labels in "
                                          f"{label_path.name}; labeled frames are {sorted(labels)}")
        if ed is not None and ed == es:
            raise DataError(csv_path, f"ed_frame and es_frame of {case} are the same frame ({ed})")
        if ed is None and es is None and image.shape[3] > 1:
            ed, es = ed_es_by_lv_volume(labels)
        extra.update(_other_columns(row))
        return Subject(
            subject_id=case,
            dataset=row.get("dataset") or "nifti",
            image=image,
            spacing=tuple(zooms[:3]),
            affine=affine,
            labels=labels,
            ed_frame=ed,
            es_frame=es,
            **_row_fields(row),
            source=str(image_path),
            extra=extra,
        )

    def _load_per_frame(self, root: Path, subject_id: str, frames: list[tuple[int, str]]) -> Subject:
        """One patient of per-frame nnU-Net cases -> one 4D subject (see the module docstring)."""
        mapping, meta = self._dataset(root)
        ending = meta.get("file_ending", ".nii.gz")
        sub, patient = subject_id.split("/", 1)
        images, labels, first = [], {}, None
        for t, (_, case) in enumerate(frames):
            path = root / sub / f"{case}_0000{ending}"
            data, affine, zooms = load_nifti(path, ndims=(3,))
            if first is None:
                first = (path, data.shape, affine, zooms)
            elif data.shape != first[1]:
                raise DataError(path, f"frame of {patient} has shape {data.shape}, {first[0].name} {first[1]}: "
                                      "the frames of one patient must share one grid")
            elif not np.allclose(affine, first[2], atol=1e-3, rtol=1e-4):
                raise DataError(path, f"frame of {patient} has another affine than {first[0].name}: the frames "
                                      "of one patient must share one grid")
            images.append(data)
            label_path = root / sub.replace("images", "labels") / f"{case}{ending}"
            if label_path.is_file():
                labels[t] = self._labels(label_path, data, affine, mapping)[0]
        image_path, _, affine, zooms = first
        numbers = [n for n, _ in frames]
        base = 0 if min(numbers) == 0 else 1  # ACDC counts frames from 1
        meta_rows = self._metadata(root)
        csv_path, row = meta_rows.get(subject_id) or meta_rows.get(patient) or (None, {})
        ed = es = None
        for what in ("ed_frame", "es_frame"):
            value = csv_int(row.get(what), csv_path, f"{what} of {patient}") if row else None
            if value is None:
                continue
            if value not in numbers:
                raise DataError(csv_path, f"{what} of {patient} is {value}: for per-frame cases it is the frame "
                                          f"number XX of the file names, and {patient} has frames {numbers}")
            t = numbers.index(value)
            if labels and t not in labels:
                raise DataError(csv_path, f"{what} of {patient} is frame {value}, which has no label file; "
                                          f"labeled frames are {[numbers[k] for k in sorted(labels)]}")
            ed, es = (t, es) if what == "ed_frame" else (ed, t)
        if ed is not None and ed == es:
            raise DataError(csv_path, f"ed_frame and es_frame of {patient} are the same frame ({numbers[ed]})")
        if ed is None and es is None and len(labels) >= 2:
            ed, *rest = sorted(labels)
            es = rest[0] if len(rest) == 1 else min(rest, key=lambda k: (int((labels[k] == LV).sum()), k))
        extra = {"dataset_name": meta.get("name"), "split": sub, "layout": "nnunet-per-frame",
                 **_other_columns(row)}
        return Subject(
            subject_id=patient,
            dataset=row.get("dataset") or "nifti",
            image=np.stack(images, axis=-1),
            spacing=tuple(zooms[:3]),
            affine=affine,
            labels=labels,
            ed_frame=ed,
            es_frame=es,
            frame_numbers=[n - base for n in numbers],
            **_row_fields(row),
            source=str(image_path),
            extra=extra,
        )

    @staticmethod
    def _labels(path: Path, image: np.ndarray, affine: np.ndarray, mapping: dict[int, int]) -> dict[int, np.ndarray]:
        try:
            label_shape = tuple(nib.load(str(path)).shape)
        except Exception as e:  # noqa: BLE001 - header unreadable: one clear message
            raise DataError(path, f"cannot read NIfTI header: {e}") from None
        img4 = to_4d(image)
        n_t = img4.shape[3]
        if len(label_shape) == 3 or (len(label_shape) == 4 and image.ndim == 3 and label_shape[3] == 1):
            if n_t != 1:
                raise DataError(path, f"3D label map for a 4D image with {n_t} frames: cannot tell which frame it "
                                      "labels (give a 4D label map with the same number of frames)")
            expected = img4.shape[:3] + ((1,) if len(label_shape) == 4 else ())
            lab = load_label_nifti(path, mapping, "dataset.json", like=(expected, affine))
            return {0: lab.reshape(img4.shape[:3])}
        if len(label_shape) == 4 and image.ndim == 4:
            lab = load_label_nifti(path, mapping, "dataset.json", like=(image.shape, affine))
            return {t: np.ascontiguousarray(lab[..., t]) for t in range(n_t) if lab[..., t].any()}
        raise DataError(path, f"label shape {label_shape} does not fit image shape {image.shape}: a 3D image needs "
                              "a 3D label map, a 4D image a 4D one with the same number of frames")
