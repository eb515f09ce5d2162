"""M&Ms, the multi-centre, multi-vendor, multi-disease challenge (Campello et al., IEEE TMI 40(12) 2021).

Two layouts are read, detected per subject folder (searched up to three levels deep, so the
release's ``Training/Labeled``, ``Training/Unlabeled``, ``Validation``, ``Testing`` folders work):

* original release: ``ID/ID_sa.nii.gz`` (4D cine, x, y, slice, time) and ``ID/ID_sa_gt.nii.gz``
  (4D, labels only at the ED and ES frames, other frames zero), plus an information CSV in the
  root (``211230_M&Ms_Dataset_information_diagnosis_opendataset.csv`` or any ``*.csv`` with an
  ``External code`` or ``SubjectID`` column; ``ED``/``ES`` are 0-based frame indices). The
  subject holds every frame; labels at ED and ES. No ``_gt`` file: an unlabeled subject.
* frames layout (the sample in ``shared/data/mnms``): ``ID/ID_sa_ED.nii.gz``, ``ID_sa_ED_gt.nii.gz``,
  ``ID_sa_ES...`` and ``subjects.csv`` (SubjectID, Vendor, Centre). The subject holds two frames
  (t=0 ED, t=1 ES); a missing ``_gt`` leaves that frame unlabeled.

M&Ms labels 1 LV, 2 MYO, 3 RV are already the internal convention (0 bg, 1 LV, 2 MYO, 3 RV).
``vendor`` is the M&Ms letter (A Siemens, B Philips, C GE, D Canon); the name is in
``extra["vendor_name"]``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import DataError
from ..labels import DATASET_LABEL_MAPS, LV, map_labels
from ..subject import Subject
from .base import READERS, Reader, load_label_nifti, load_nifti

VENDOR_NAMES = {"A": "Siemens", "B": "Philips", "C": "GE", "D": "Canon"}


def vendor_letter(name: str | None) -> str | None:
    """Manufacturer name (DICOM style, any case) -> M&Ms vendor letter; unknown names are returned as is."""
    if name is None:
        return None
    low = name.strip().lower()
    if low.upper() in VENDOR_NAMES:
        return low.upper()
    if "siemens" in low:
        return "A"
    if "philips" in low:
        return "B"
    if re.search(r"\bge\b", low) or "general electric" in low:
        return "C"
    if "canon" in low or "toshiba" in low:
        return "D"
    return name.strip()


def clean_value(v) -> str | None:
    """CSV cell -> str (None for empty/NaN; '1.0' -> '1')."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    s = str(v).strip()
    if not s or s.lower() == "nan":
        return None
    try:
        f = float(s)
        if f.is_integer() and re.fullmatch(r"[+-]?\d+(\.0*)?", s):
            return str(int(f))
    except ValueError:
        pass
    return s


def csv_int(value: str | None, path: Path, what: str) -> int | None:
    if value is None:
        return None
    try:
        f = float(value)
    except ValueError:
        f = float("nan")
    if not f.is_integer() or f < 0:
        raise DataError(path, f"{what} is {value!r}, expected a non-negative integer frame index")
    return int(f)


def read_info_csvs(root: Path, id_columns: tuple[str, ...]) -> dict[str, tuple[Path, dict[str, str | None]]]:
    """Every ``*.csv`` in ``root`` (or one folder below) with one of ``id_columns`` (case-insensitive).

    Returns subject id -> (csv path, {lower-case column: cleaned value}); the first CSV to
    mention a subject wins.
    """
    return scan_info_csvs(root, id_columns)[0]


def scan_info_csvs(root: Path, id_columns: tuple[str, ...]) -> tuple[dict, list[str]]:
    """``read_info_csvs`` plus notes on the CSVs it could not use (no id column: garbled or wrong
    delimiter), for the metadata-missing report of subjects that no CSV describes."""
    rows: dict[str, tuple[Path, dict[str, str | None]]] = {}
    notes: list[str] = []
    for path in sorted(root.glob("*.csv")) + sorted(root.glob("*/*.csv")):
        try:
            table = pd.read_csv(path, dtype=str, encoding_errors="replace")
        except pd.errors.EmptyDataError:
            notes.append(f"{path} is empty")
            continue
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise DataError(path, f"cannot read CSV: {e}") from None
        cols = {str(c).strip().lower(): c for c in table.columns}
        key = next((cols[c] for c in id_columns if c in cols), None)
        if key is None:
            shown = ", ".join(repr(str(c)) for c in list(table.columns)[:4])
            notes.append(f"{path} has no {' or '.join(repr(c) for c in id_columns)} column (columns {shown}: "
                         "garbled, or not comma-separated?)")
            continue
        for rec in table.to_dict("records"):
            raw = rec[key]
            sid = None if raw is None or (isinstance(raw, float) and math.isnan(raw)) else str(raw).strip()
            if sid and sid not in rows:
                rows[sid] = (path, {str(c).strip().lower(): clean_value(v) for c, v in rec.items()})
    return rows, notes


def missing_row_reason(root: Path, sid: str, notes: list[str], found: bool) -> str:
    """Why subject ``sid`` has no metadata row: no CSV, unusable CSVs (``notes``), or not listed."""
    if notes:
        return "; ".join(notes)
    if not found:
        return f"no info CSV in {root}"
    return f"{sid} is in no row of the info CSV(s) in {root}"


def check_ed_es(ed: int | None, es: int | None, path: Path | None, sid: str, names=("ED", "ES")) -> None:
    """ED and ES from a metadata table: both or neither, and not the same frame."""
    if (ed is None) != (es is None):
        given, missing = (names[0], names[1]) if es is None else (names[1], names[0])
        raise DataError(path, f"{sid} has {given} but no {missing}: give both frame indices or neither")
    if ed is not None and ed == es:
        raise DataError(path, f"{names[0]} and {names[1]} of {sid} are the same frame ({ed})")


def find_subject_folders(root: Path, is_subject, max_depth: int = 3) -> list[Path]:
    """Folders below ``root`` (depth 1..max_depth) for which ``is_subject(folder)`` is true."""
    found, level = [], [root]
    for _ in range(max_depth):
        nxt = []
        for parent in level:
            try:
                entries = sorted(os.scandir(parent), key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                if e.is_dir() and not e.name.startswith("."):
                    p = Path(e.path)
                    (found if is_subject(p) else nxt).append(p)
        level = nxt
    return sorted(found)


def ed_es_by_lv_volume(labels: dict[int, np.ndarray]) -> tuple[int | None, int | None]:
    """With exactly two labeled frames: ED is the one with the larger LV volume, ES the other."""
    if len(labels) != 2:
        return None, None
    a, b = sorted(labels)
    va, vb = (int((labels[t] == LV).sum()) for t in (a, b))
    return (a, b) if va >= vb else (b, a)


@READERS.register("mnms")
class MnMsReader(Reader):
    name = "mnms"
    description = "M&Ms 2020: ID/ID_sa.nii.gz (+_sa_gt) 4D with info CSV, or ID/ID_sa_ED|ES[_gt].nii.gz + subjects.csv"

    def __init__(self) -> None:
        self._csv_cache: dict[Path, dict] = {}

    @staticmethod
    def _is_subject(folder: Path) -> bool:
        n = folder.name
        return (folder / f"{n}_sa.nii.gz").is_file() or (folder / f"{n}_sa_ED.nii.gz").is_file()

    def subject_ids(self, root: Path) -> list[str]:
        return [str(p.relative_to(root)) for p in find_subject_folders(root, self._is_subject)]

    def info(self, root: Path) -> dict[str, tuple[Path, dict[str, str | None]]]:
        return self._scan(root)[0]

    def _scan(self, root: Path) -> tuple[dict, list[str]]:
        root = Path(root)
        if root not in self._csv_cache:
            self._csv_cache[root] = scan_info_csvs(root, ("external code", "subjectid"))
        return self._csv_cache[root]

    def load(self, root: Path, subject_id: str) -> Subject:
        root = Path(root)
        folder = root / subject_id
        sid = folder.name
        if not folder.is_dir():
            raise DataError(folder, "subject folder not found")
        rows, notes = self._scan(root)
        csv_path, row = rows.get(sid, (None, {}))
        ed_csv = csv_int(row.get("ed"), csv_path, f"ED of {sid}") if row else None
        es_csv = csv_int(row.get("es"), csv_path, f"ES of {sid}") if row else None
        check_ed_es(ed_csv, es_csv, csv_path, sid)

        cine = folder / f"{sid}_sa.nii.gz"
        if cine.is_file():
            image, affine, zooms, labels, ed, es = self._load_cine(folder, sid, ed_csv, es_csv, csv_path)
            frame_numbers, layout = list(range(image.shape[3])), "original"
        else:
            image, affine, zooms, labels = self._load_frames(folder, sid)
            ed, es, layout = 0, 1, "frames"
            known = ed_csv is not None and es_csv is not None
            frame_numbers = [ed_csv, es_csv] if known else [0, 1]

        letter = vendor_letter(row.get("vendor"))
        known = {"external code", "subjectid", "vendor", "vendorname", "centre", "center", "ed", "es", "pathology"}
        extra = {k: v for k, v in row.items() if k not in known and v is not None and not k.startswith("unnamed")}
        extra["vendor_name"] = row.get("vendorname") or VENDOR_NAMES.get(letter or "")
        extra["layout"] = layout
        extra["split"] = str(folder.parent.relative_to(root)) if folder.parent != root else ""
        if layout == "frames" and frame_numbers == [0, 1]:
            extra["frame_numbers_unknown"] = True
        if not row:
            extra["metadata_missing"] = missing_row_reason(root, sid, notes, bool(rows))
        elif letter is None:
            extra["metadata_missing"] = f"{csv_path} gives no Vendor for {sid}"
        return Subject(
            subject_id=sid,
            dataset="mnms",
            image=image,
            spacing=tuple(zooms[:3]),
            affine=affine,
            labels=labels,
            ed_frame=ed,
            es_frame=es,
            frame_numbers=frame_numbers,
            vendor=letter,
            centre=row.get("centre") or row.get("center"),
            pathology=row.get("pathology"),
            view="SA",
            source=str(folder),
            extra=extra,
        )

    def _load_cine(self, folder: Path, sid: str, ed: int | None, es: int | None, csv_path: Path | None):
        cine = folder / f"{sid}_sa.nii.gz"
        image, affine, zooms = load_nifti(cine, ndims=(4,))
        n_t = image.shape[3]
        for what, t in (("ED", ed), ("ES", es)):
            if t is not None and t >= n_t:
                raise DataError(csv_path, f"{what} of {sid} is frame {t} (0-based), but {cine.name} has {n_t} frames")
        gt = folder / f"{sid}_sa_gt.nii.gz"
        if not gt.is_file():
            return image, affine, zooms, {}, ed, es
        data, gt_affine, _ = load_nifti(gt, ndims=(4,), allow_constant=True)  # a label map
        if data.shape != image.shape:
            raise DataError(gt, f"label shape {data.shape} does not match image shape {image.shape}")
        if not np.allclose(gt_affine, affine, atol=1e-3, rtol=1e-4):
            raise DataError(gt, "label affine does not match the image affine")
        labeled = [t for t in range(n_t) if data[..., t].any()]
        frames = [t for t in (ed, es) if t is not None] if (ed is not None or es is not None) else labeled
        labels = {}
        for t in frames:
            if t not in labeled:
                raise DataError(gt, f"frame {t} (ED/ES from {csv_path}) has no labels; labeled frames are {labeled}")
            lab = data[..., t]
            if not np.allclose(lab, np.round(lab)):
                raise DataError(gt, f"frame {t} has non-integer label values")
            try:
                labels[t] = map_labels(np.round(lab).astype(np.int64), DATASET_LABEL_MAPS["mnms"], "mnms")
            except ValueError as e:
                raise DataError(gt, f"frame {t}: {e}") from None
        if ed is None and es is None:
            ed, es = ed_es_by_lv_volume(labels)
        return image, affine, zooms, labels, ed, es

    def _load_frames(self, folder: Path, sid: str):
        frames, labels, affine, zooms = [], {}, None, None
        for t, phase in enumerate(("ED", "ES")):
            path = folder / f"{sid}_sa_{phase}.nii.gz"
            data, aff, z = load_nifti(path, ndims=(3,))
            if affine is None:
                affine, zooms = aff, z
            else:
                if data.shape != frames[0].shape:
                    raise DataError(path, f"shape {data.shape} differs from the ED frame {frames[0].shape}")
                if not np.allclose(aff, affine, atol=1e-3, rtol=1e-4):
                    raise DataError(path, "affine differs from the ED frame's affine")
            frames.append(data)
            gt = folder / f"{sid}_sa_{phase}_gt.nii.gz"
            if gt.is_file():
                labels[t] = load_label_nifti(gt, DATASET_LABEL_MAPS["mnms"], "mnms", like=(data.shape, affine))
        return np.stack(frames, axis=-1), affine, zooms, labels
