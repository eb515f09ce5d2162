"""The one record every reader produces.

A ``Subject`` is one short-axis (or long-axis) cine: a 4D image (x, y, slice, time) in
the voxel order of its file, its geometry, and label maps for the frames that have them,
in the internal label convention of ``cardiossp.data.labels`` (0 bg, 1 LV, 2 MYO, 3 RV).
Subjects without any label map are first-class: pretraining never needs labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError


@dataclass
class Subject:
    subject_id: str
    dataset: str
    image: np.ndarray  # (X, Y, Z, T) float32; a 3D file becomes T=1
    spacing: tuple[float, float, float]  # mm along x, y, z (slice)
    affine: np.ndarray  # 4x4 voxel -> world (RAS+ mm), as nibabel gives it
    labels: dict[int, np.ndarray] = field(default_factory=dict)  # t -> (X, Y, Z) uint8, internal
    ed_frame: int | None = None  # index into the T axis of ``image``
    es_frame: int | None = None
    frame_numbers: list[int] | None = None  # original cine frame number of each t (0-based)
    vendor: str | None = None
    centre: str | None = None
    pathology: str | None = None
    view: str = "SA"  # "SA" short axis, "LA" long axis
    source: str = ""  # file or folder the subject was read from (for error messages)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """The last line of defence for every reader: a record that cannot be right is a ``DataError``
        naming ``source`` (readers check first and name the exact file)."""
        where = self.source or None
        if self.image.ndim != 4:
            raise DataError(where, f"image must be 4D (x, y, slice, time), got {self.image.shape}")
        n_t = self.image.shape[3]
        if self.frame_numbers is None:
            self.frame_numbers = list(range(n_t))
        if len(self.frame_numbers) != n_t:
            raise DataError(where, f"{len(self.frame_numbers)} frame numbers for {n_t} frames")
        for what, t in (("ED", self.ed_frame), ("ES", self.es_frame)):
            if t is not None and not 0 <= int(t) < n_t:
                raise DataError(where, f"{what} frame index {t} is outside the image's {n_t} frames (0..{n_t - 1})")
        if self.ed_frame is not None and self.ed_frame == self.es_frame:
            raise DataError(where, f"ED and ES are the same frame ({self.ed_frame})")
        for t, lab in self.labels.items():
            if not 0 <= int(t) < n_t:
                raise DataError(where, f"labels of frame {t}, outside the image's {n_t} frames")
            if lab.shape != self.image.shape[:3]:
                raise DataError(where, f"label of frame {t} has shape {lab.shape}, image frame {self.image.shape[:3]}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]

    @property
    def n_frames(self) -> int:
        return self.image.shape[3]

    @property
    def n_slices(self) -> int:
        return self.image.shape[2]

    @property
    def is_labeled(self) -> bool:
        return bool(self.labels)

    def phase(self, t: int) -> str:
        """'ED', 'ES' or 'unlabeled'/'frame' naming of time index ``t``."""
        if t == self.ed_frame:
            return "ED"
        if t == self.es_frame:
            return "ES"
        return "other"
