"""``cardiossp pseudo-label``: a teacher's predictions for a split's unlabeled subjects, for self-training.

Self-training (Yang et al., ST++, CVPR 2022; Xie et al., Noisy Student, CVPR 2020): a model trained on the
few labeled subjects (any of ours: supervised, UniMatch, BCP, ...) labels every cached frame of the
unlabeled subjects once; a student then trains on the true labels plus these (``--semi self-training``,
``semi.self_training``). Each frame goes through the teacher as at test time, on the cache's grid (no
resampling): the whole slice, the mean softmax over the 4 in-plane mirrorings (``tta``) and one 3D
connected component per class (``largest_component``; ``data.labels.keep_connected_heart`` since stop
20, recorded as ``clean_up``), which is what lifted BCP's 5-subject test Dice from 0.753 to 0.801
(docs/RESULTS.md). Subjects: the split's training and unlabeled subjects, never
val or test; the cache's label arrays are never opened. Output: ``data.pseudo`` (resumable).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .checksum import sha256_file
from .data.budgets import pretraining_subjects
from .data.labels import CONNECTED_HEART, keep_connected_heart
from .data.pseudo import FORMAT, RECORD, read_record, write_subject
from .data.slices import SliceCache
from .data.splits import load_split
from .errors import DataError


def pseudo_label(model: str | Path, cache: str | Path, split: str | Path, out: str | Path, tta: bool = True,
                 largest_component: bool = True, device: str = "auto", progress=None,
                 ema_teacher: bool = False) -> Path:
    """Write (or complete) the pseudo-label store ``out`` for ``split``'s training and unlabeled subjects;
    ``progress(subject, i, n)`` after each subject. ``ema_teacher``: label with a mean-teacher / bcp run's
    EMA teacher instead of its student."""
    from .inference import Segmenter

    sc, sp, out = SliceCache(cache), load_split(split), Path(out)
    seg = Segmenter.from_checkpoint(model, device=device, tta=tta, ema_teacher=ema_teacher)
    if (seg.spacing, seg.size) != (float(sc.spacing), int(sc.size)):
        raise DataError(sc.path, f"the teacher {seg.checkpoint} was trained on a {seg.spacing} mm / {seg.size} px "
                                 f"grid, this cache is {sc.spacing} mm / {sc.size} px; use a cache of its grid")
    ckpt = Path(seg.checkpoint)
    record = {"format": FORMAT, "teacher": str(ckpt.resolve()), "teacher_sha256": sha256_file(ckpt),
              "cache": str(sc.path.resolve()), "spacing": float(sc.spacing), "size": int(sc.size), "tta": bool(tta),
              "largest_component": bool(largest_component), "clean_up": CONNECTED_HEART if largest_component else None,
              "ema_teacher": bool(ema_teacher), "subjects": {}}
    if (out / RECORD).is_file():
        old = read_record(out)
        settings = [k for k in record if k != "subjects"]
        # stores written before these keys: labelled by the student, cleaned up per class
        old = {"ema_teacher": False, "clean_up": "largest-per-class" if old.get("largest_component") else None, **old}
        if any(old.get(k) != record[k] for k in settings):
            raise DataError(out / RECORD, "holds pseudo-labels of another teacher, cache or setting; "
                                          "choose another --out or delete it")
        record["subjects"] = {s: r for s, r in old["subjects"].items()
                              if (out / f"{s}.npy").is_file() and sha256_file(out / f"{s}.npy") == r.get("sha256")}
    subjects = [s for s in pretraining_subjects(sp) if s not in record["subjects"]]
    for i, subject in enumerate(subjects, 1):
        labels, confidence = label_subject(seg, sc, subject, largest_component)
        write_subject(out, record, subject, labels, confidence)
        if progress is not None:
            progress(subject, i, len(subjects))
    if not (out / RECORD).is_file():  # nothing left to do, but the record must exist
        from .atomic import write_json

        write_json(out / RECORD, record)
    return out


def label_subject(seg, sc: SliceCache, subject: str, largest_component: bool) -> tuple[np.ndarray, list[float]]:
    """Every cached frame of ``subject`` -> ((T, Z, S, S) uint8 labels, per-frame mean max-probability)."""
    image = sc.image_array(subject)
    labels = np.zeros(image.shape, dtype=np.uint8)
    confidence = []
    for t in range(image.shape[0]):
        probs = seg.forward_slices(np.asarray(image[t], dtype=np.float32))  # (Z, C, S, S)
        conf, lab = probs.max(1)
        lab = lab.to(torch.uint8).numpy()
        labels[t] = keep_connected_heart(lab) if largest_component else lab
        confidence.append(float(conf.mean()))
    return labels, confidence
