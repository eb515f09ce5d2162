"""Tiny files in the original dataset layouts for the bad-input tests (tests/data/test_guards.py and
tests/corpus/test_data.py): an ACDC patient folder (Bernard et al., IEEE TMI 2018), M&Ms frames
layout (Campello et al., IEEE TMI 2021), and NIfTI files whose header claims more than they hold."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np

SHAPE = (24, 24, 3)  # x, y, slices
SPACING = (1.5, 1.5, 8.0)
AFFINE = np.diag([*SPACING, 1.0])


# ---------------------------------------------------------------- fixture builders
def save(path, data, affine=AFFINE, nifti2=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    klass = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    nib.save(klass(np.asarray(data), affine), str(path))
    return path


def heart(shape=SHAPE, shift=0):
    """ACDC-convention labels (1 RV, 2 MYO, 3 LV): an LV disk in a myocardial ring, an RV box beside it."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(x - 12 - shift, y - 12)
    lab2d = np.zeros(shape[:2], np.uint8)
    lab2d[r < 7] = 2
    lab2d[r < 4] = 3
    lab2d[2:8, 3:21] = np.where(lab2d[2:8, 3:21] == 0, 1, lab2d[2:8, 3:21])
    return np.repeat(lab2d[:, :, None], shape[2], axis=2)


def image_for(lab, seed):
    rng = np.random.default_rng(seed)
    return (lab * 40.0 + rng.normal(100, 10, lab.shape)).astype(np.float32)


def acdc_patient(root, n=1, ed=1, es=3, n_frames=5, cine=False, blank=False):
    """``patientNNN/`` with Info.cfg, the ED/ES frames and their _gt files (and the 4D cine if ``cine``)."""
    pid = f"patient{n:03d}"
    folder = root / pid
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180\nWeight: 80\nNbFrame: {n_frames}\n")
    frames = []
    for t in range(1, n_frames + 1):
        lab = heart(shift=1 if t == es else 0)
        frames.append(np.zeros(SHAPE, np.float32) if blank else image_for(lab, seed=100 * n + t))
        if t in (ed, es):
            save(folder / f"{pid}_frame{t:02d}.nii.gz", frames[-1])
            save(folder / f"{pid}_frame{t:02d}_gt.nii.gz", lab)
    if cine:
        save(folder / f"{pid}_4d.nii.gz", np.stack(frames, axis=-1))
    return folder


def lying_header(path, shape, dtype=np.int16, payload=1 << 16, nifti2=False):
    """A NIfTI file whose header claims ``shape`` but holds only ``payload`` bytes of (random) data."""
    header = (nib.Nifti2Header if nifti2 else nib.Nifti1Header)()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms((1.0,) * len(shape))
    header.set_sform(np.eye(4), code=1)
    offset = 544 if nifti2 else 352
    header["vox_offset"] = offset
    block = header.binaryblock
    raw = block + b"\0" * (offset - len(block)) + np.random.default_rng(0).bytes(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, 1) if path.name.endswith(".gz") else raw)
    return path


def mnms_frames(root, ids, csv_text):
    for i, sid in enumerate(ids):
        for phase, shift in (("ED", 0), ("ES", 1)):
            lab = heart(shift=shift)  # values 1..3 are valid M&Ms labels too
            save(root / sid / f"{sid}_sa_{phase}.nii.gz", image_for(lab, 10 * i + shift))
            save(root / sid / f"{sid}_sa_{phase}_gt.nii.gz", lab)
    (root / "subjects.csv").write_text(csv_text)
