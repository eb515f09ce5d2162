"""M&Ms-2, multi-disease, multi-view (Martín-Isla et al., IEEE JBHI 27(7) 2023), original layout.

One folder per subject, ``NNN/``, holding for each view V in {SA, LA}:
``NNN_V_ED.nii.gz``, ``NNN_V_ED_gt.nii.gz``, ``NNN_V_ES...`` (3D; the LA files are one
4-chamber slice, z=1) and optionally the cine ``NNN_V_CINE.nii.gz`` (x, y, slice, time).

Each folder gives up to two subjects: the short-axis one with id ``NNN`` (view "SA") and,
when long-axis files exist, ``NNN_LA`` (view "LA").

* with the cine, the subject holds every frame; the ED/ES frame indices come from the
  info CSV (columns ``ED``/``ES`` for SA, ``LA_ED``/``LA_ES`` for LA) when it has them, else from
  matching the ED/ES 3D images to the cine frames (closest frame by mean absolute difference;
  the distances are kept in ``extra["frame_match_mad"]``).
* without the cine, the subject holds the two frames (t=0 ED, t=1 ES).

The release's ``dataset_information.csv`` (any ``*.csv`` in root with a ``SUBJECT_CODE`` column;
SUBJECT_CODE, DISEASE, VENDOR, SCANNER, FIELD, ...) fills pathology and vendor. ``vendor`` is
the M&Ms letter (A Siemens, B Philips, C GE, D Canon) so that M&Ms and M&Ms-2 share vendor groups;
the manufacturer name is in ``extra["vendor_name"]``.

M&Ms-2 labels (SA and LA) 1 LV, 2 MYO, 3 RV are the internal convention (0 bg, 1 LV, 2 MYO, 3 RV).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from ..labels import DATASET_LABEL_MAPS
from ..subject import Subject
from .base import READERS, Reader, load_label_nifti, load_nifti
from .mnms import csv_int, find_subject_folders, missing_row_reason, scan_info_csvs, vendor_letter

PHASES = ("ED", "ES")


def _has_view(folder: Path, view: str) -> bool:
    n = folder.name
    return any((folder / f"{n}_{view}_{kind}.nii.gz").is_file() for kind in ("ED", "ES", "CINE"))


def closest_frame(cine: np.ndarray, frame: np.ndarray) -> tuple[int, np.ndarray]:
    """Index of the cine frame (cine (X, Y, Z, T)) closest to ``frame`` (X, Y, Z) by mean |difference|.

    Returns (index, mean absolute difference per frame (T,)).
    """
    mad = np.array([np.abs(cine[..., t] - frame).mean() for t in range(cine.shape[3])])
    return int(np.argmin(mad)), mad


@READERS.register("mnms2")
class MnMs2Reader(Reader):
    name = "mnms2"
    description = "M&Ms-2: NNN/NNN_{SA,LA}_{ED,ES}[_gt].nii.gz (+ optional _CINE); ids NNN (short axis), NNN_LA"

    def __init__(self) -> None:
        self._csv_cache: dict[Path, dict] = {}

    def subject_ids(self, root: Path) -> list[str]:
        ids = []
        for folder in find_subject_folders(root, lambda f: _has_view(f, "SA") or _has_view(f, "LA")):
            rel = str(folder.relative_to(root))
            if _has_view(folder, "SA"):
                ids.append(rel)
            if _has_view(folder, "LA"):
                ids.append(rel + "_LA")
        return ids

    def info_row(self, root: Path, name: str) -> tuple[Path | None, dict]:
        return self._scan(root)[0].get(int(name) if name.isdigit() else name, (None, {}))

    def _scan(self, root: Path) -> tuple[dict, list[str]]:
        if root not in self._csv_cache:
            table = {}
            rows, notes = scan_info_csvs(root, ("subject_code",))
            for sid, value in rows.items():
                table[int(sid) if sid.isdigit() else sid] = value
            self._csv_cache[root] = (table, notes)
        return self._csv_cache[root]

    def load(self, root: Path, subject_id: str) -> Subject:
        root = Path(root)
        view = "SA"
        if subject_id.endswith("_LA") and not (root / subject_id).is_dir():
            view, subject_id = "LA", subject_id[: -len("_LA")]
        folder = root / subject_id
        name = folder.name
        if not folder.is_dir():
            raise DataError(folder, "subject folder not found")
        csv_path, row = self.info_row(root, name)
        prefix = folder / f"{name}_{view}"
        cine = Path(f"{prefix}_CINE.nii.gz")
        extra: dict = {}
        if cine.is_file():
            keys = ("ed", "es") if view == "SA" else ("la_ed", "la_es")
            given = {p: csv_int(row.get(k), csv_path, f"{k.upper()} of {name}") for p, k in zip(PHASES, keys)}
            image, affine, zooms, t_of, extra = self._load_cine(prefix, cine, given, csv_path)
            frame_numbers = list(range(image.shape[3]))
        else:
            frames, affine, zooms = [], None, None
            for phase in PHASES:
                path = Path(f"{prefix}_{phase}.nii.gz")
                data, aff, z = load_nifti(path, ndims=(3,))
                if affine is None:
                    affine, zooms = aff, z
                elif data.shape != frames[0].shape:
                    raise DataError(path, f"shape {data.shape} differs from the ED image {frames[0].shape}")
                elif not np.allclose(aff, affine, atol=1e-3, rtol=1e-4):
                    raise DataError(path, "affine differs from the ED image's affine")
                frames.append(data)
            image = np.stack(frames, axis=-1)
            t_of = {"ED": 0, "ES": 1}
            frame_numbers = [0, 1]
            extra["frame_numbers_unknown"] = True

        labels = {}
        for phase in PHASES:
            gt = Path(f"{prefix}_{phase}_gt.nii.gz")
            if not gt.is_file():
                continue
            if t_of.get(phase) is None:
                raise DataError(gt, f"cannot place this label in {cine.name}: no {phase} image to match and no "
                                    f"{phase} frame in the info CSV")
            labels[t_of[phase]] = load_label_nifti(gt, DATASET_LABEL_MAPS["mnms2"], "mnms2",
                                                   like=(image.shape[:3], affine))

        vendor_name = row.get("vendor")
        extra.update({k: row[k] for k in ("scanner", "field", "sex", "age") if row.get(k) is not None})
        extra["vendor_name"] = vendor_name
        if not row:
            table, notes = self._scan(root)
            extra["metadata_missing"] = missing_row_reason(root, name, notes, bool(table))
        elif vendor_name is None:
            extra["metadata_missing"] = f"{csv_path} gives no VENDOR for {name}"
        return Subject(
            subject_id=name if view == "SA" else f"{name}_LA",
            dataset="mnms2",
            image=image,
            spacing=tuple(zooms[:3]),
            affine=affine,
            labels=labels,
            ed_frame=t_of.get("ED"),
            es_frame=t_of.get("ES"),
            frame_numbers=frame_numbers,
            vendor=vendor_letter(vendor_name),
            centre=row.get("centre") or row.get("center"),
            pathology=row.get("disease"),
            view=view,
            source=str(folder),
            extra=extra,
        )

    def _load_cine(self, prefix: Path, cine: Path, given: dict, csv_path: Path | None):
        image, affine, zooms = load_nifti(cine, ndims=(4,))
        t_of: dict[str, int | None] = {}
        mads: dict[str, float] = {}
        if given["ED"] is not None and given["ED"] == given["ES"]:
            raise DataError(csv_path, f"ED and ES of {prefix.name} are the same frame ({given['ED']})")
        for phase in PHASES:
            t = given[phase]
            if t is not None:
                if t >= image.shape[3]:
                    raise DataError(csv_path, f"{phase} frame {t} is beyond the {image.shape[3]} frames of {cine.name}")
                t_of[phase] = t
                continue
            path = Path(f"{prefix}_{phase}.nii.gz")
            if not path.is_file():
                t_of[phase] = None
                continue
            frame, _, _ = load_nifti(path, ndims=(3,))
            if frame.shape != image.shape[:3]:
                raise DataError(path, f"shape {frame.shape} does not match the cine frames {image.shape[:3]} "
                                      f"of {cine.name}")
            t_of[phase], mad = closest_frame(image, frame)
            mads[phase] = float(mad[t_of[phase]])
        if t_of["ED"] is not None and t_of["ED"] == t_of["ES"]:
            raise DataError(cine, f"the ED and ES images both match cine frame {t_of['ED']}")
        extra = {"frame_match_mad": mads, "ed_es_from": "csv" if not mads else "image matching"}
        return image, affine, zooms, t_of, extra
