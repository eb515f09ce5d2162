"""A store of pseudo-labels in a slice cache's grid, for self-training (``semi.self_training``).

A teacher model's predictions for the unlabeled subjects of a split, written once by
``cardiossp pseudo-label`` and read by the training loader in place of the labels those subjects
do not have (their label arrays in the cache are never opened)::

    DIR/pseudo.json              record: format, teacher checkpoint and its SHA-256, cache path and grid,
                                 TTA / clean-up used, and per subject its frames, shape and array SHA-256
    DIR/<subject>.npy            (T, Z, S, S) uint8 internal labels, one per cached frame (``cache.image_array``)

Every array is written under a temporary name and renamed; the record is rewritten after each subject,
so an interrupted run resumes with the subjects it has not written yet. Opening a store checks each array's
header against the record and the cache (shape of the subject's image, the cache's grid): a stale or
foreign store is a ``DataError`` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_json
from ..checksum import sha256_file
from ..errors import DataError
from .slices import SliceCache, npy_header

FORMAT = "cardiossp-pseudo-labels-1"
RECORD = "pseudo.json"


def read_record(folder: str | Path) -> dict:
    path = Path(folder) / RECORD
    if not path.is_file():
        raise DataError(path, "not a pseudo-label folder (no pseudo.json); run `cardiossp pseudo-label` first")
    try:
        record = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(path, f"not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("subjects"), dict):
        raise DataError(path, f"not a pseudo-label record of format {FORMAT}")
    return record


def write_subject(folder: str | Path, record: dict, subject: str, labels: np.ndarray, confidence: list[float]) -> None:
    """Write one subject's (T, Z, S, S) uint8 pseudo-labels, then the record naming them."""
    folder = Path(folder)
    path = folder / f"{subject}.npy"
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.ascontiguousarray(labels, dtype=np.uint8))
    record["subjects"][subject] = {"shape": list(labels.shape), "sha256": sha256_file(path),
                                   "mean_confidence": [round(float(c), 4) for c in confidence]}
    write_json(folder / RECORD, record)


class PseudoLabels:
    """Read access to a store, checked against ``cache`` (grid and each subject's image shape)."""

    def __init__(self, folder: str | Path, cache: SliceCache):
        self.folder = Path(folder)
        self.record = read_record(self.folder)
        grid = (float(self.record.get("spacing", -1)), int(self.record.get("size", -1)))
        if grid != (float(cache.spacing), int(cache.size)):
            raise DataError(self.folder / RECORD, f"pseudo-labels on a {grid[0]} mm / {grid[1]} px grid, but the "
                                                  f"cache {cache.path} is {cache.spacing} mm / {cache.size} px")
        self.cache = cache
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def subjects(self) -> list[str]:
        return sorted(self.record["subjects"])

    def require(self, subjects) -> None:
        """Every one of ``subjects`` has pseudo-labels that fit the cache and match their recorded SHA-256."""
        missing = sorted(set(subjects) - set(self.record["subjects"]))
        if missing:
            shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
            raise DataError(self.folder / RECORD, f"no pseudo-labels for {len(missing)} subject(s) of the unlabeled "
                                                  f"pool: {shown}; run `cardiossp pseudo-label` with this split")
        for s in subjects:
            self.array(s)
            if sha256_file(self.folder / f"{s}.npy") != self.record["subjects"][s].get("sha256"):
                raise DataError(self.folder / f"{s}.npy", "contents differ from the SHA-256 in pseudo.json "
                                                          "(damaged or replaced); run `cardiossp pseudo-label` again")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def most_confident_frames(self, subjects, fraction: float) -> set[tuple[str, int]]:
        """The ``fraction`` of the frames of ``subjects`` whose pseudo-labels the teacher was surest of, by
        each frame's recorded mean max-probability (ST++'s reliable images), as (subject, frame) pairs;
        at least one frame. Ties go to the earlier subject and frame."""
        frames = [(-float(c), s, t) for s in sorted(subjects)
                  for t, c in enumerate(self.record["subjects"][s].get("mean_confidence", []))]
        if not frames:
            raise DataError(self.folder / RECORD, "records no per-frame confidence to rank the frames by; "
                                                  "run `cardiossp pseudo-label` again")
        keep = max(1, int(np.floor(fraction * len(frames) + 0.5)))
        return {(s, t) for _, s, t in sorted(frames)[:keep]}

    def array(self, subject: str) -> np.ndarray:
        if subject not in self._arrays:
            path = self.folder / f"{subject}.npy"
            if not path.is_file():
                raise DataError(path, "pseudo-label array missing")
            try:
                shape, dtype, _ = npy_header(path)
            except (OSError, ValueError) as e:
                raise DataError(path, f"not a readable .npy array ({e})") from None
            want = tuple(self.cache.image_array(subject).shape)
            if tuple(shape) != want or dtype != np.uint8:
                raise DataError(path, f"pseudo-labels {tuple(shape)} {dtype} do not fit the cached image {want} "
                                      f"(made for another cache?)")
            self._arrays[subject] = np.load(path, mmap_mode="r", allow_pickle=False)
        return self._arrays[subject]

    def label(self, subject: str, frame: int, z: int) -> np.ndarray:
        return np.asarray(self.array(subject)[frame, z])
