"""Torch datasets over a slice cache.

``LabeledSlices``: 2D slices of labeled frames (ED / ES) of the given subjects, for
supervised training and validation. ``UnlabeledSlices``: every 2D slice of every frame,
labels never read, for pretraining. ``PseudoLabeledSlices``: every slice of every frame with a
teacher's pseudo-labels in place of labels (self-training), the cache's labels never read.

Both carry per-slice targets that come from the acquisition geometry alone (PCL and the
anatomical position pretext of Bai et al. 2019 need them; labels are never involved):
``position`` (relative slice position base 0 -> apex 1), ``view`` ("SA", "LA") and
``plane_normal`` (unit normal of the slice plane in the world frame of the file's affine,
see :func:`plane_normal`; NaN when the affine holds no scanner orientation).

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


def plane_normal(geometry: dict) -> np.ndarray:
    """Unit normal (3,) of the slice plane in world coordinates: the direction cosines of the
    slice axis, i.e. the affine's third column over its length (sign = file order; n and -n
    are the same plane). NaN when the affine holds no scanner orientation, which shows as
    in-plane column lengths that differ from the voxel spacing (ACDC's files: a +-identity
    affine with 1.56 mm pixels); the slice column is not checked, single-slice long-axis
    files often give it length 1."""
    affine = np.asarray(geometry["affine"], dtype=np.float64)[:3, :3]
    lengths = np.linalg.norm(affine, axis=0)
    spacing = np.asarray(geometry["spacing"], dtype=np.float64)[:2]
    if lengths[2] == 0 or not np.allclose(lengths[:2], spacing, rtol=0.01, atol=1e-3):
        return np.full(3, np.nan, dtype=np.float32)
    return (affine[:, 2] / lengths[2]).astype(np.float32)


class GeometryTargets:
    """The slices of manifest ``rows`` (subject, frame, slice, phase) and their geometry targets
    (position, view, plane normal)."""

    def _init_rows(self, cache: SliceCache, rows, transform, empty: str) -> None:
        """Keep ``rows``' columns as arrays; ``empty``: the problem when there are none."""
        if len(rows) == 0:
            raise DataError(cache.path, empty)
        self.cache, self.transform = cache, transform
        self.subject = rows["subject"].to_numpy()
        self.frame = rows["frame"].to_numpy()
        self.slice = rows["slice"].to_numpy()
        self.phase = rows["phase"].to_numpy()
        self.position = rows["position"].to_numpy(dtype=np.float32)
        views = rows["view"].fillna("SA") if "view" in rows else None
        self.view = views.astype(str).to_numpy() if views is not None else np.full(len(rows), "SA", dtype=object)
        self._normals: dict[str, torch.Tensor] = {}

    def geometry_targets(self, i: int) -> dict:
        s = self.subject[i]
        if s not in self._normals:
            self._normals[s] = torch.from_numpy(plane_normal(self.cache.meta(s)["geometry"]))
        return {"position": torch.tensor(float(self.position[i])), "view": str(self.view[i]),
                "plane_normal": self._normals[s]}


class LabeledSlices(GeometryTargets, Dataset):
    def __init__(
        self,
        cache: SliceCache,
        subjects: Sequence[str],
        phases: Sequence[str] = ("ED", "ES"),
        transform: Callable[[dict], dict] | None = None,
    ):
        rows = cache.rows(subjects=subjects, labeled=True, phases=phases)
        self._init_rows(cache, rows, transform, f"no labeled slices for {len(subjects)} subjects and phases "
                                                f"{list(phases)}")
        self.label_index = rows["label_index"].to_numpy()

    def __len__(self) -> int:
        return len(self.subject)

    def _segmentation(self, i: int) -> np.ndarray:
        return self.cache.label(self.subject[i], int(self.label_index[i]), int(self.slice[i]))

    def __getitem__(self, i: int) -> dict:
        s, z = self.subject[i], int(self.slice[i])
        image = torch.from_numpy(self.cache.image(s, int(self.frame[i]), z))[None]
        seg = torch.from_numpy(self._segmentation(i).astype(np.int64))[None]
        item = {"image": image, "segmentation": seg}
        if self.transform is not None:
            item = self.transform(item)
        item["subject"] = s
        item.update(self.geometry_targets(i))
        return item


class UnlabeledSlices(GeometryTargets, Dataset):
    def __init__(self, cache: SliceCache, subjects: Sequence[str], transform: Callable[[dict], dict] | None = None):
        self._init_rows(cache, cache.rows(subjects=subjects), transform, f"no slices for {len(subjects)} subjects")

    def __len__(self) -> int:
        return len(self.subject)

    def __getitem__(self, i: int) -> dict:
        s = self.subject[i]
        image = torch.from_numpy(self.cache.image(s, int(self.frame[i]), int(self.slice[i])))[None]
        item = {"image": image, **self.geometry_targets(i), "subject": s}
        if self.transform is not None:
            out = self.transform(item)
            out.setdefault("position", item["position"])
            out["subject"] = s
            return out
        return item


class PseudoLabeledSlices(LabeledSlices):
    """Every 2D slice of every cached frame of ``subjects``, with a teacher's pseudo-labels
    (``data.pseudo.PseudoLabels``) as the segmentation: self-training's unlabeled batch. The cache's
    own label arrays are never opened. ``frames``: only these (subject, frame) pairs (e.g.
    ``PseudoLabels.most_confident_frames``); None: every frame."""

    def __init__(self, cache: SliceCache, pseudo, subjects: Sequence[str],
                 transform: Callable[[dict], dict] | None = None, frames: set[tuple[str, int]] | None = None):
        self.pseudo = pseudo
        rows = cache.rows(subjects=subjects)
        if frames is not None:
            rows = rows[[(s, int(t)) in frames for s, t in zip(rows["subject"], rows["frame"])]]
        self._init_rows(cache, rows, transform, f"no slices for {len(subjects)} subjects")

    def _segmentation(self, i: int) -> np.ndarray:
        return self.pseudo.label(self.subject[i], int(self.frame[i]), int(self.slice[i]))
