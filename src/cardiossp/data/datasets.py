"""Torch datasets over a slice cache.

``LabeledSlices``: 2D slices of labeled frames (ED / ES) of the given subjects, for
supervised training and validation. ``UnlabeledSlices``: every 2D slice of every frame,
labels never read, for pretraining (carries the relative slice position PCL needs).

Each item is a dict; ``transform`` receives ``{"image": (1, S, S) float32 tensor,
"segmentation": (1, S, S) int64 tensor}`` (no segmentation for unlabeled slices) and
returns the dict the model consumes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .slices import SliceCache


class LabeledSlices(Dataset):
    def __init__(
        self,
        cache: SliceCache,
        subjects: Sequence[str],
        phases: Sequence[str] = ("ED", "ES"),
        transform: Callable[[dict], dict] | None = None,
    ):
        self.cache = cache
        self.transform = transform
        rows = cache.rows(subjects=subjects, labeled=True, phases=phases)
        if len(rows) == 0:
            raise DataError(cache.path, f"no labeled slices for {len(subjects)} subjects and phases {list(phases)}")
        self.subject = rows["subject"].to_numpy()
        self.frame = rows["frame"].to_numpy()
        self.slice = rows["slice"].to_numpy()
        self.label_index = rows["label_index"].to_numpy()
        self.phase = rows["phase"].to_numpy()

    def __len__(self) -> int:
        return len(self.subject)

    def __getitem__(self, i: int) -> dict:
        s, z = self.subject[i], int(self.slice[i])
        image = torch.from_numpy(self.cache.image(s, int(self.frame[i]), z))[None]
        seg = torch.from_numpy(self.cache.label(s, int(self.label_index[i]), z).astype(np.int64))[None]
        item = {"image": image, "segmentation": seg}
        if self.transform is not None:
            item = self.transform(item)
        item["subject"] = s
        return item


class UnlabeledSlices(Dataset):
    def __init__(self, cache: SliceCache, subjects: Sequence[str], transform: Callable[[dict], dict] | None = None):
        self.cache = cache
        self.transform = transform
        rows = cache.rows(subjects=subjects)
        if len(rows) == 0:
            raise DataError(cache.path, f"no slices for {len(subjects)} subjects")
        self.subject = rows["subject"].to_numpy()
        self.frame = rows["frame"].to_numpy()
        self.slice = rows["slice"].to_numpy()
        self.position = rows["position"].to_numpy(dtype=np.float32)

    def __len__(self) -> int:
        return len(self.subject)

    def __getitem__(self, i: int) -> dict:
        s = self.subject[i]
        image = torch.from_numpy(self.cache.image(s, int(self.frame[i]), int(self.slice[i])))[None]
        item = {"image": image, "position": torch.tensor(float(self.position[i])), "subject": s}
        if self.transform is not None:
            out = self.transform(item)
            out.setdefault("position", item["position"])
            out["subject"] = s
            return out
        return item
