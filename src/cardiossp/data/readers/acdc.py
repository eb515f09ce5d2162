"""ACDC (Bernard et al., IEEE TMI 2018) in its original layout.

``patientNNN/Info.cfg`` (ED, ES, Group, Height, Weight, NbFrame),
``patientNNN_frameXX.nii.gz`` + ``_gt`` for the ED and ES frames, and optionally
``patientNNN_4d.nii.gz`` (x, y, slice, time). ACDC labels 1 RV, 2 MYO, 3 LV are mapped
to the internal convention (1 LV, 2 MYO, 3 RV).

With the 4D cine present the subject holds every frame (labels at ED and ES); without it,
the subject holds the two labeled frames only (t=0 ED, t=1 ES).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..labels import DATASET_LABEL_MAPS
from ..subject import Subject
from .base import READERS, Reader, load_label_nifti, load_nifti

_PATIENT = re.compile(r"^patient\d{3}$")


def read_info_cfg(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DataError(path, "Info.cfg not found (needed for the ED/ES frame numbers)")
    info: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if key not in info or not info[key].isdigit():
            raise DataError(path, f"missing or non-integer {key!r} entry")
        if int(info[key]) < 1:
            raise DataError(path, f"{key}: {info[key]} is not a frame number: Info.cfg counts frames from 1")
    if int(info["ED"]) == int(info["ES"]):
        raise DataError(path, f"ED and ES are the same frame ({info['ED']})")
    n = info.get("NbFrame")
    if n is not None and n.isdigit():
        for key in ("ED", "ES"):
            if int(info[key]) > int(n):
                raise DataError(path, f"{key}: {info[key]} is beyond NbFrame: {n}")
    return info


@READERS.register("acdc")
class ACDCReader(Reader):
    name = "acdc"
    description = "ACDC challenge: patientNNN/ folders with Info.cfg, ED/ES frames (+_gt) and optional _4d cine"

    def subject_ids(self, root: Path) -> list[str]:
        # Accept the release root, or its training/ or testing/ sub-folders together.
        folders = [p for p in root.iterdir() if p.is_dir() and _PATIENT.match(p.name)]
        for sub in ("training", "testing"):
            if (root / sub).is_dir():
                folders += [p for p in (root / sub).iterdir() if p.is_dir() and _PATIENT.match(p.name)]
        return sorted(str(p.relative_to(root)) for p in folders)

    def load(self, root: Path, subject_id: str) -> Subject:
        folder = root / subject_id
        pid = folder.name
        info = read_info_cfg(folder / "Info.cfg")
        ed, es = int(info["ED"]) - 1, int(info["ES"]) - 1  # Info.cfg is 1-based
        mapping = DATASET_LABEL_MAPS["acdc"]
        frame_files = {t: folder / f"{pid}_frame{t + 1:02d}.nii.gz" for t in (ed, es)}
        cine_path = folder / f"{pid}_4d.nii.gz"

        if cine_path.is_file():
            image, affine, zooms = load_nifti(cine_path, ndims=(4,))
            frame_numbers = list(range(image.shape[3]))
            t_of = {ed: ed, es: es}
            for t in (ed, es):
                if t >= image.shape[3]:
                    raise DataError(cine_path, f"Info.cfg frame {t + 1} is beyond the cine's {image.shape[3]} frames")
        else:
            frames, affine, zooms = [], None, None
            for t in (ed, es):
                data, aff, z = load_nifti(frame_files[t], ndims=(3,))
                if affine is not None and data.shape != frames[0].shape:
                    raise DataError(frame_files[t], f"shape {data.shape} differs from the ED frame {frames[0].shape}")
                frames.append(data)
                affine, zooms = (aff, z) if affine is None else (affine, zooms)
            image = np.stack(frames, axis=-1)
            frame_numbers = [ed, es]
            t_of = {ed: 0, es: 1}

        labels = {}
        for t in (ed, es):
            gt = folder / f"{pid}_frame{t + 1:02d}_gt.nii.gz"
            if gt.is_file():
                labels[t_of[t]] = load_label_nifti(gt, mapping, "acdc", like=(image.shape[:3], affine))
        return Subject(
            subject_id=pid,
            dataset="acdc",
            image=image,
            spacing=tuple(zooms[:3]),
            affine=affine,
            labels=labels,
            ed_frame=t_of[ed],
            es_frame=t_of[es],
            frame_numbers=frame_numbers,
            vendor="A",  # M&Ms vendor letters everywhere: A Siemens, B Philips, C GE, D Canon
            centre="Dijon",
            pathology=info.get("Group"),
            source=str(folder),
            extra={"vendor_name": "Siemens", **{k: info[k] for k in ("Height", "Weight", "NbFrame") if k in info}},
        )
