"""Per-sample view makers for self-supervised pretraining (CPU, DataLoader workers).

A *view maker* is a small picklable callable ``sample -> dict of tensors``; it holds the
augmentation but no network, so the engine can hand ``method.view_maker`` to a Dataset
without shipping model weights to worker processes.

Input sample: ``{"image": (1, H, W) float tensor (z-scored), "position": float in [0, 1]
(relative slice position base -> apex), "subject": str}``. Every view maker passes
``position`` (float32 scalar tensor) and ``subject`` (str) through, so a batch can name
its subjects when something goes wrong.

Augmentation callables follow ``cardiossp.data.augment``: ``aug({"image": (1, h, w)})
-> {"image": (1, h', w'), ...}``. They receive a clone, because some batchgeneratorsv2
transforms work in place and several views are drawn from one image.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError, DataError

Augment = Callable[[dict], dict]


def as_size(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``256`` or ``(256, 256)`` -> ``(256, 256)``; rejects non-positive sizes."""
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ConfigError(f"input size must be an int or (H, W) of positive ints, got {size}")
    return size  # type: ignore[return-value]


def check_sample(sample: dict) -> tuple[Tensor, Tensor, str]:
    """Validate a pretraining sample; return ``(image (1,H,W) float32, position, subject)``."""
    subject = str(sample.get("subject", "?"))
    image = sample.get("image")
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise DataError(sample.get("path"), f"subject {subject}: 'image' must be a (1, H, W) tensor, got {shape}")
    if not torch.is_floating_point(image):
        raise DataError(sample.get("path"), f"subject {subject}: 'image' must be float, got {image.dtype}")
    position = float(sample.get("position", 0.0))
    if not (0.0 <= position <= 1.0) or math.isnan(position):
        raise DataError(sample.get("path"), f"subject {subject}: 'position' must be in [0, 1], got {position}")
    return image.float(), torch.tensor(position, dtype=torch.float32), subject


def apply(augment: Augment, image: Tensor) -> Tensor | dict:
    """Run an augmentation callable on a clone of ``image`` (1, H, W); return (1, h, w).

    A device-side augmentation (``data.batch_augment.SeededParams``) is deferred: the view is then
    ``{"image": (1, H, W) unchanged, "aug_params": (P,), "patch": (2,)}``, which collates to a batch
    that the engine augments on the training device (``PretrainModule.on_after_batch_transfer``)."""
    out = augment({"image": image.clone()})
    if "aug_params" in out:
        return {"image": out["image"], "aug_params": out["aug_params"],
                "patch": torch.tensor(augment.patch_size)}
    return torch.as_tensor(out["image"], dtype=torch.float32).contiguous()


def view_size(view: Tensor | dict) -> tuple[int, int]:
    """The (h, w) a view has once augmented (a deferred view: its patch size)."""
    if isinstance(view, dict):
        return tuple(int(v) for v in view["patch"])  # type: ignore[return-value]
    return tuple(view.shape[-2:])  # type: ignore[return-value]


def random_resized_crop(
    image: Tensor,
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """torchvision's RandomResizedCrop on a (C, H, W) tensor: crop an area fraction in
    ``scale`` with aspect ratio in ``ratio``, resize (bilinear, antialiased) to ``size``."""
    top, left, h, w = RandomResizedCrop.get_params(image, list(scale), list(ratio))
    return TF.resized_crop(image, top, left, h, w, size=list(size), antialias=True)


class FallbackAugment:
    """Tiny stand-in used only when ``cardiossp.data.augment`` is not importable:
    random resized crop (area 0.5-1) to ``size``, flips p=0.5 per axis, intensity
    ``x * U(0.8, 1.2) + U(-0.2, 0.2)``. Far milder than the paper preset."""

    def __init__(self, size: int | tuple[int, int], scale: tuple[float, float] = (0.5, 1.0)):
        self.size = as_size(size)
        self.scale = scale

    def __call__(self, data: dict) -> dict:
        x = random_resized_crop(data["image"], self.size, self.scale)
        for dim in (-1, -2):
            if torch.rand(()) < 0.5:
                x = x.flip(dim)
        x = x * torch.empty(()).uniform_(0.8, 1.2) + torch.empty(()).uniform_(-0.2, 0.2)
        return {**data, "image": x}


class Resize:
    """Augmentation for preset ``none``: only bring the image to ``size`` (bilinear)."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = as_size(size)

    def __call__(self, data: dict) -> dict:
        x = data["image"]
        if tuple(x.shape[-2:]) != self.size:
            x = TF.resize(x, list(self.size), antialias=True)
        return {**data, "image": x}


def default_augment(preset: str, size: int | tuple[int, int], on_device: bool = False) -> Augment:
    """``cardiossp.data.augment.build_transforms(preset, size)`` when that module exists,
    else :class:`FallbackAugment` (or :class:`Resize` for preset ``none``); with ``on_device``
    the batched device-side version (``data.batch_augment.SeededParams``)."""
    size = as_size(size)
    if on_device:
        from ..data.batch_augment import SeededParams

        return SeededParams(preset, size)
    try:
        from ..data.augment import build_transforms
    except ImportError:
        return Resize(size) if preset == "none" else FallbackAugment(size)
    return build_transforms(preset, size)


class TwoViews:
    """SimCLR / PCL views: two independent augmentations of one slice.

    Returns ``{"view0": (1,h,w), "view1": (1,h,w), "position": (), "subject": str}``.
    """

    def __init__(self, augment: Augment):
        self.augment = augment

    def __call__(self, sample: dict) -> dict:
        image, position, subject = check_sample(sample)
        return {
            "view0": apply(self.augment, image),
            "view1": apply(self.augment, image),
            "position": position,
            "subject": subject,
        }


class MultiCropViews:
    """DINO multi-crop (Caron et al. 2021): ``n_global`` crops of area ``global_scale``
    resized to ``global_size`` and ``n_local`` crops of area ``local_scale`` resized to
    ``local_size``, each then augmented (``augment_global`` / ``augment_local``).

    Returns ``{"global0".., "local0"..: (1,h,w), "position", "subject"}``.
    """

    def __init__(
        self,
        augment_global: Augment,
        augment_local: Augment,
        global_size: tuple[int, int],
        local_size: tuple[int, int],
        n_global: int = 2,
        n_local: int = 6,
        global_scale: tuple[float, float] = (0.14, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.14),
    ):
        if n_global < 1 or n_local < 0:
            raise ConfigError(f"DINO needs n_global >= 1 and n_local >= 0, got {n_global}, {n_local}")
        for name, s in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not (0.0 < s[0] <= s[1] <= 1.0):
                raise ConfigError(f"{name} must satisfy 0 < lo <= hi <= 1, got {s}")
        self.augment_global, self.augment_local = augment_global, augment_local
        self.global_size, self.local_size = as_size(global_size), as_size(local_size)
        self.n_global, self.n_local = n_global, n_local
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)

    def __call__(self, sample: dict) -> dict:
        image, position, subject = check_sample(sample)
        out: dict = {"position": position, "subject": subject}
        for i in range(self.n_global):
            crop = random_resized_crop(image, self.global_size, self.global_scale)
            out[f"global{i}"] = apply(self.augment_global, crop)
        for i in range(self.n_local):
            crop = random_resized_crop(image, self.local_size, self.local_scale)
            out[f"local{i}"] = apply(self.augment_local, crop)
        return out


def random_patch_mask(size: tuple[int, int], patch: tuple[int, int], ratio: float) -> Tensor:
    """Boolean (1, H, W) mask, True on exactly ``round(ratio * n_patches)`` randomly
    chosen ``patch``-sized squares (the grid must tile the image)."""
    (h, w), (ph, pw) = size, patch
    if h % ph or w % pw:
        raise ConfigError(f"MIM patch size {patch} does not tile the image size {size}")
    gh, gw = h // ph, w // pw
    n_masked = round(ratio * gh * gw)
    flat = torch.zeros(gh * gw, dtype=torch.bool)
    flat[torch.randperm(gh * gw)[:n_masked]] = True
    grid = flat.view(gh, gw)
    return grid.repeat_interleave(ph, 0).repeat_interleave(pw, 1).unsqueeze(0)


class MaskedImageViews:
    """MIM views: one augmented slice and its patch mask (masking happens after
    normalisation and augmentation, as in de Mooij et al. 2024).

    ``patch_size=None`` scales the paper's 32 px at 256 px: ``patch = size // 8``.
    Returns ``{"image": (1,h,w) target, "mask": (1,h,w) bool (True = masked),
    "position", "subject"}``; the engine-side method builds the masked input.
    """

    def __init__(self, augment: Augment, patch_size: int | tuple[int, int] | None, mask_ratio: float):
        if not (0.0 < mask_ratio < 1.0):
            raise ConfigError(f"MIM mask_ratio must be in (0, 1), got {mask_ratio}")
        self.augment = augment
        self.patch_size = None if patch_size is None else as_size(patch_size)
        self.mask_ratio = float(mask_ratio)

    def __call__(self, sample: dict) -> dict:
        image, position, subject = check_sample(sample)
        x = apply(self.augment, image)
        size = view_size(x)
        patch = self.patch_size or (max(1, size[0] // 8), max(1, size[1] // 8))
        mask = random_patch_mask(size, patch, self.mask_ratio)  # type: ignore[arg-type]
        return {"image": x, "mask": mask, "position": position, "subject": subject}
