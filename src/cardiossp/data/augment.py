"""Augmentation presets for 2D cine slices, built from batchgeneratorsv2 (nnU-Net's augmentation library).

A transform takes and returns one sample ``{"image": (1, H, W) float, "segmentation": (1, H, W) int}``
(``segmentation`` optional: unlabeled slices for pretraining have none; other keys pass through) and
returns the image as a (1, ph, pw) float32 patch and the labels as int64 - a (1, ph, pw) tensor, or with
deep-supervision scales a list ``[(1, ph, pw), (1, ph/2, pw/2), ...]`` downsampled by nearest neighbour
('nearest-exact') as nnU-Net does. The input is never modified in place (it may be a memory map).

Presets (``PRESETS``):

* ``paper`` - the "more extreme" augmentation of de Mooij et al. 2024 (repo q-cardIA/ssp-cmr-cine-
  segmentation, baseline-config.yaml), which their baseline needs (0.89 vs 0.69 DSC without it):
  translation ±40 px at 256² (40/256 of the patch edge, per axis), rotation ±180°, isotropic scale
  0.7-1.4 (all p=1), flips p=0.5 per axis, Gaussian noise p=0.2 with std ~ U(0, 0.2), Gaussian blur
  p=0.2 with σ ~ U(0.5, 1.5) per axis, intensity ×U(0.6, 1.5), shift +U(-0.4, 0.4) and range-preserving
  gamma U(0.7, 1.5) (all p=1). Their code multiplied by 1 + U(0.6, 1.5) (MONAI RandScaleIntensity
  semantics) by mistake; we multiply by U(0.6, 1.5) as intended. Image bicubic, labels nearest, as
  their resampling did. Translation: batchgeneratorsv2's SpatialTransform has none, so
  ``RandomTranslateSpatialTransform`` draws the patch centre uniformly within ±t px of the image
  centre (its random-crop centre), before rotation/scaling about the patch centre.
* ``nnunet`` - nnU-Net v2's default ``nnUNetTrainer.get_training_transforms`` for 2D (rotation ±180°
  p=0.2 [±15° if the patch aspect ratio > 1.5], scale 0.7-1.4 p=0.2, noise, blur, brightness,
  contrast, low-resolution simulation, gamma with and without inversion, mirroring on both axes),
  parameter values copied; the patch is cut around the image centre (nnU-Net's data loader picks
  that centre, with foreground oversampling, before this pipeline).
* ``none`` - only crop/pad to the patch size around the image centre (identity for patch-sized input).

Randomness and seeding: batchgeneratorsv2 draws from **both** NumPy's global RNG (``np.random``:
spatial parameters, ranges) and torch's global RNG (``torch.rand``: apply-probabilities, flips,
noise). ``seed_augmentation(seed)`` seeds both for reproducible single-process runs. In DataLoader
workers torch is seeded per worker (base_seed + worker_id, base_seed drawn from the parent's torch
RNG each epoch), but NumPy is not - forked workers would repeat each other's augmentations - so pass
``worker_init_fn=seed_worker``, which seeds NumPy (and ``random``) from the worker's torch seed; with
``torch.manual_seed`` set in the parent the whole run is then reproducible.
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import numpy as np
import torch
from batchgeneratorsv2.helpers.scalar_type import RandomScalar, sample_scalar
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform

from ..errors import ConfigError, DataError

PRESETS = ("paper", "nnunet", "none")
PAPER_TRANSLATION_FRACTION = 40 / 256  # ±40 px on the paper's 256x256 slices


class RandomTranslateSpatialTransform(SpatialTransform):
    """SpatialTransform whose patch centre is uniform within ±max_translation px of the image centre.

    Implemented through SpatialTransform's own random-crop centre (``patch_center_dist_from_border``
    recomputed from each input's shape), so translation, rotation and scaling share one resampling.
    """

    def __init__(self, patch_size: Sequence[int], max_translation: Sequence[float], **kwargs):
        super().__init__(tuple(patch_size), patch_center_dist_from_border=0, random_crop=True, **kwargs)
        self.max_translation = tuple(float(t) for t in max_translation)
        if len(self.max_translation) != len(self.patch_size) or min(self.max_translation) < 0:
            raise ConfigError(f"max_translation must be {len(self.patch_size)} values >= 0")

    def get_parameters(self, **data_dict) -> dict:
        shape = data_dict["image"].shape[1:]
        # SpatialTransform draws the centre from U(d, s - d) = s/2 ± t with d = s/2 - t
        self.patch_center_dist_from_border = [s / 2 - t for s, t in zip(shape, self.max_translation)]
        return super().get_parameters(**data_dict)


class AdditiveBrightnessTransform(ImageOnlyTransform):
    """Adds a shift drawn from ``shift_range`` (uniform for a (lo, hi) tuple) to each selected channel.

    (batchgeneratorsv2's BrightnessAdditiveTransform draws Gaussian shifts; the paper's MONAI
    RandShiftIntensity draws uniform ones.)
    """

    def __init__(self, shift_range: RandomScalar, synchronize_channels: bool = True, p_per_channel: float = 1.0):
        super().__init__()
        self.shift_range = shift_range
        self.synchronize_channels = synchronize_channels
        self.p_per_channel = p_per_channel

    def get_parameters(self, **data_dict) -> dict:
        img = data_dict["image"]
        channels = torch.where(torch.rand(img.shape[0]) < self.p_per_channel)[0].tolist()
        if self.synchronize_channels:
            shifts = [sample_scalar(self.shift_range, image=img, channel=None)] * len(channels)
        else:
            shifts = [sample_scalar(self.shift_range, image=img, channel=c) for c in channels]
        return {"channels": channels, "shifts": shifts}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        for c, s in zip(params["channels"], params["shifts"]):
            img[c].add_(float(s))
        return img


def _crop_only(patch_size: tuple[int, int]) -> SpatialTransform:
    return SpatialTransform(patch_size, patch_center_dist_from_border=0, random_crop=False,
                            p_elastic_deform=0, p_rotation=0, p_scaling=0)


def _paper(patch_size: tuple[int, int]) -> list[BasicTransform]:
    return [
        RandomTranslateSpatialTransform(
            patch_size, [p * PAPER_TRANSLATION_FRACTION for p in patch_size],
            p_elastic_deform=0, p_rotation=1, rotation=(-math.pi, math.pi), p_scaling=1, scaling=(0.7, 1.4),
            p_synchronize_scaling_across_axes=1, mode_image="bicubic", mode_seg="nearest",
        ),
        MirrorTransform(allowed_axes=(0, 1)),
        # batchgeneratorsv2 uses the sampled "noise_variance" as the standard deviation: std ~ U(0, 0.2)
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.2), p_per_channel=1,
                                               synchronize_channels=True), apply_probability=0.2),
        RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.5), synchronize_channels=True,
                                              synchronize_axes=False, p_per_channel=1), apply_probability=0.2),
        MultiplicativeBrightnessTransform(multiplier_range=(0.6, 1.5), synchronize_channels=True, p_per_channel=1),
        AdditiveBrightnessTransform(shift_range=(-0.4, 0.4)),
        GammaTransform(gamma=(0.7, 1.5), p_invert_image=0, synchronize_channels=True, p_per_channel=1,
                       p_retain_stats=0),
    ]


def _nnunet(patch_size: tuple[int, int]) -> list[BasicTransform]:
    # nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size, 2D branch
    if max(patch_size) / min(patch_size) > 1.5:
        rotation = (-15.0 / 360 * 2.0 * math.pi, 15.0 / 360 * 2.0 * math.pi)
    else:
        rotation = (-math.pi, math.pi)
    return [
        SpatialTransform(patch_size, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
                         p_rotation=0.2, rotation=rotation, p_scaling=0.2, scaling=(0.7, 1.4),
                         p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False),
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1,
                                               synchronize_channels=True), apply_probability=0.1),
        RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.0), synchronize_channels=False,
                                              synchronize_axes=False, p_per_channel=0.5, benchmark=True),
                        apply_probability=0.2),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.75, 1.25)),
                                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.15),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.75, 1.25)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1), apply_probability=0.15),
        RandomTransform(SimulateLowResolutionTransform(scale=(0.5, 1), synchronize_channels=False,
                                                       synchronize_axes=True, ignore_axes=None,
                                                       allowed_channels=None, p_per_channel=0.5),
                        apply_probability=0.25),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=1, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.1),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.3),
        MirrorTransform(allowed_axes=(0, 1)),
    ]


_BUILDERS = {"paper": _paper, "nnunet": _nnunet, "none": lambda ps: [_crop_only(ps)]}


def _check_patch(patch_size: int | Sequence[int]) -> tuple[int, int]:
    """``(ph, pw)`` from an int (square) or two positive integers."""
    if isinstance(patch_size, (int, np.integer)):
        patch_size = (patch_size, patch_size)
    try:
        ps = tuple(int(p) for p in patch_size)
        ok = len(ps) == 2 and min(ps) >= 1 and all(int(p) == p for p in patch_size)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"patch_size must be two positive integers (ph, pw), got {patch_size!r}")
    return ps


def _check_scales(scales: Sequence | None) -> list | None:
    if scales is None:
        return None
    out = []
    for s in scales:
        pair = list(s) if isinstance(s, (list, tuple)) else [s, s]
        if len(pair) != 2 or not all(0 < float(v) <= 1 for v in pair):
            raise ConfigError(f"deep-supervision scales must be numbers or pairs in (0, 1], got {scales!r}")
        out.append([float(v) for v in pair])
    if not out:
        raise ConfigError("deep_supervision_scales is empty; pass None for no deep supervision")
    return out


def _as_tensor(x) -> torch.Tensor:
    """A tensor view of ``x``; read-only arrays (memory maps) are viewed without torch's warning."""
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    if not arr.flags.writeable:
        arr = np.array(arr)  # torch.from_numpy warns on read-only memory; the caller copies anyway
    return torch.from_numpy(arr)


def checked_sample(sample: Any) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
    """(the sample without None entries, image (C, H, W) tensor, segmentation (1, H, W) integer tensor or
    None), both views of the input; a malformed sample is a DataError naming its ``path``."""
    where = sample.get("path") if isinstance(sample, dict) else None
    if not isinstance(sample, dict) or sample.get("image") is None:
        raise DataError(where, "augmentation needs a dict with an 'image' entry")
    image = _as_tensor(sample["image"])
    if image.ndim != 3 or image.is_complex():
        raise DataError(where, f"image must be a real (C, H, W) array, got {image.dtype} {tuple(image.shape)}")
    seg = sample.get("segmentation")
    if seg is not None:
        seg = _as_tensor(seg)
        if seg.is_floating_point() or seg.is_complex() or seg.dtype == torch.bool:
            raise DataError(where, f"segmentation must hold integer labels, got dtype {seg.dtype}")
        if seg.ndim != 3 or seg.shape[1:] != image.shape[1:]:
            raise DataError(where, f"segmentation shape {tuple(seg.shape)} does not match image "
                                   f"{tuple(image.shape)}; expected (1, H, W)")
    return {k: v for k, v in sample.items() if v is not None}, image, seg


class Augmenter:
    """Callable ``sample dict -> augmented sample dict`` around a batchgeneratorsv2 pipeline."""

    def __init__(self, preset: str, patch_size: tuple[int, int], transforms: list[BasicTransform],
                 deep_supervision_scales: list | None):
        self.preset = preset
        self.patch_size = patch_size
        self.deep_supervision_scales = deep_supervision_scales
        if deep_supervision_scales is not None:
            transforms = transforms + [DownsampleSegForDSTransform(ds_scales=deep_supervision_scales)]
        self.transform = ComposeTransforms(transforms)

    def __repr__(self) -> str:
        return f"Augmenter(preset={self.preset!r}, patch_size={self.patch_size}, ds={self.deep_supervision_scales})"

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out, image, seg = checked_sample(sample)
        out["image"] = image.to(torch.float32, copy=True)  # the pipeline works in place
        if seg is not None:
            out["segmentation"] = seg.to(torch.int16, copy=True)
        res = self.transform(**out)
        if res.get("segmentation") is not None:
            s = res["segmentation"]
            res["segmentation"] = [t.long() for t in s] if isinstance(s, list) else s.long()
        return res


def build_transforms(preset: str, patch_size: int | Sequence[int],
                     deep_supervision_scales: Sequence | None = None) -> Augmenter:
    """Training transform of ``preset`` (see ``PRESETS``) producing (1, *patch_size) patches.

    ``deep_supervision_scales``: e.g. ``models.deep_supervision_scales(model)``
    (``[[1, 1], [0.5, 0.5], ...]``); the segmentation is then returned as one tensor per scale.
    """
    if preset not in _BUILDERS:
        raise ConfigError(f"unknown augmentation preset {preset!r}; presets: {', '.join(PRESETS)}")
    ps = _check_patch(patch_size)
    return Augmenter(preset, ps, _BUILDERS[preset](ps), _check_scales(deep_supervision_scales))


def spatial_transforms(preset: str, patch_size: int | Sequence[int]) -> Augmenter:
    """The geometric part of ``preset`` alone (crop, translation, rotation, scaling, mirroring; no
    intensity change): the *weak* view of unlabeled slices for semi-supervised training, whose
    strong views add intensity perturbations on the training device (``cardiossp.semi.perturb``)."""
    if preset not in _BUILDERS:
        raise ConfigError(f"unknown augmentation preset {preset!r}; presets: {', '.join(PRESETS)}")
    ps = _check_patch(patch_size)
    spatial = [t for t in _BUILDERS[preset](ps) if isinstance(t, (SpatialTransform, MirrorTransform))]
    return Augmenter(f"{preset}-spatial", ps, spatial, None)


def val_transforms(patch_size: int | Sequence[int], deep_supervision_scales: Sequence | None = None) -> Augmenter:
    """Validation transform: centre crop/pad to ``patch_size`` only (plus DS targets if asked)."""
    ps = _check_patch(patch_size)
    return Augmenter("val", ps, [_crop_only(ps)], _check_scales(deep_supervision_scales))


def seed_augmentation(seed: int) -> None:
    """Seed every RNG batchgeneratorsv2 draws from (NumPy global, torch global, ``random``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:  # noqa: ARG001 - DataLoader's worker_init_fn signature
    """``DataLoader(worker_init_fn=seed_worker)``: seed NumPy and ``random`` from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
