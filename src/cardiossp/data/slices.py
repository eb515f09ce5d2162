"""Lazy read access to a slice cache written by ``cardiossp.data.cache.prepare``.

Arrays are opened as read-only memory maps on first use of a subject, per process (the
maps are not pickled, so DataLoader workers open their own): reading one slice reads
one slice from disk, never the whole dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .preprocess import Geometry


class SliceCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        info = self.path / "cache.json"
        if not info.is_file():
            raise DataError(self.path, "not a cardiossp cache (no cache.json); run `cardiossp prepare` first")
        self.info = json.loads(info.read_text())
        self.manifest = pd.read_csv(self.path / "manifest.csv", dtype={"subject": str, "vendor": str, "centre": str})
        self.subjects = pd.read_csv(self.path / "subjects.csv", dtype={"subject": str, "vendor": str, "centre": str})
        self.size = int(self.info["size"])
        self.spacing = float(self.info["spacing"])
        self._images: dict[str, np.ndarray] = {}
        self._labels: dict[str, np.ndarray] = {}
        self._meta: dict[str, dict] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"], state["_labels"] = {}, {}
        return state

    def __len__(self) -> int:
        return len(self.manifest)

    def subject_ids(self) -> list[str]:
        return self.subjects["subject"].tolist()

    def meta(self, subject: str) -> dict:
        if subject not in self._meta:
            path = self.path / "subjects" / subject / "meta.json"
            if not path.is_file():
                raise DataError(path, f"subject {subject!r} is not in this cache")
            self._meta[subject] = json.loads(path.read_text())
        return self._meta[subject]

    def geometry(self, subject: str) -> Geometry:
        return Geometry.from_dict(self.meta(subject)["geometry"])

    def arrays(self, subject: str) -> tuple[np.ndarray, np.ndarray]:
        """(image (T, Z, S, S) float16 memmap, labels (L, Z, S, S) uint8 memmap)."""
        return self.image_array(subject), self.label_array(subject)

    def image_array(self, subject: str) -> np.ndarray:
        """The image memmap alone: reading unlabeled slices never opens a label file."""
        if subject not in self._images:
            self._images[subject] = np.load(self.path / "subjects" / subject / "image.npy", mmap_mode="r")
        return self._images[subject]

    def label_array(self, subject: str) -> np.ndarray:
        if subject not in self._labels:
            self._labels[subject] = np.load(self.path / "subjects" / subject / "labels.npy", mmap_mode="r")
        return self._labels[subject]

    def native_labels(self, subject: str) -> dict[int, np.ndarray]:
        """Labeled frame t -> (X, Y, Z) uint8 labels on the subject's native grid."""
        arr = np.load(self.path / "subjects" / subject / "native_labels.npy", mmap_mode="r")
        return {t: np.asarray(arr[i]) for i, t in enumerate(self.meta(subject)["label_frames"])}

    def image(self, subject: str, frame: int, z: int) -> np.ndarray:
        return np.asarray(self.image_array(subject)[frame, z], dtype=np.float32)

    def label(self, subject: str, label_index: int, z: int) -> np.ndarray:
        return np.asarray(self.label_array(subject)[label_index, z])

    def rows(self, subjects=None, labeled: bool | None = None, phases=None) -> pd.DataFrame:
        """Manifest rows filtered by subject keys, labeled flag and phases ('ED', 'ES', 'unlabeled')."""
        m = self.manifest
        mask = np.ones(len(m), dtype=bool)
        if subjects is not None:
            unknown = set(subjects) - set(self.subjects["subject"])
            if unknown:
                raise DataError(self.path, f"subjects not in this cache: {sorted(unknown)[:5]}")
            mask &= m["subject"].isin(list(subjects)).to_numpy()
        if labeled is not None:
            mask &= (m["labeled"] == labeled).to_numpy()
        if phases is not None:
            mask &= m["phase"].isin(list(phases)).to_numpy()
        return m[mask]
