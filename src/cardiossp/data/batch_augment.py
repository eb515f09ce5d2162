"""Device-side (batched) augmentation: workers draw parameters, the training device applies them.

The per-sample batchgeneratorsv2 pipelines of :mod:`cardiossp.data.augment` resample every slice in a
DataLoader worker, which needs ~5 loader cores per GPU. Here the work is split:

* in the worker, :class:`SeededParams` leaves the cached slice as it is - ``image`` (1, S, S) float32,
  ``segmentation`` (1, S, S) int64 (if present) - and adds ``aug_params`` (P,) float32, drawn by
  :func:`draw_params` from ``np.random.default_rng(seed)``. The seed is the sample's ``"aug_seed"`` entry
  if it has one, else one draw from NumPy's global RNG, which the engine's ``SeededItems`` seeds from the
  per-item seed of ``SeededSampler``; so the parameters are a pure function of that seed and a resumed run
  sees exactly the batches of an uninterrupted one;
* on the training device, :func:`apply_batch` takes the collated batch - ``params`` (B, P), ``image``
  (B, 1, S, S), ``segmentation`` (B, 1, S, S) or None - and returns the image patch (B, 1, ph, pw)
  float32 and the labels (B, 1, ph, pw) int64, or with deep-supervision scales a list
  ``[(B, 1, ph, pw), (B, 1, ph/2, pw/2), ...]`` (nearest-exact downsampling, as batchgeneratorsv2's
  ``DownsampleSegForDSTransform``). One ``F.affine_grid`` / ``F.grid_sample`` does translation, rotation,
  isotropic scaling, flips and the crop (image bicubic, labels nearest, zeros padding,
  ``align_corners=False``); then Gaussian noise, Gaussian blur, multiplicative brightness, additive
  shift and range-preserving gamma, batched.

The parameter vector (``PARAM_NAMES``, in this order; lengths in pixels, "y" = rows, "x" = columns):

===================  ==========================================================================
``rotation``         angle in radians; the patch grid is rotated by it about the patch centre
``scale``            isotropic scale; > 1 samples a larger region, i.e. zooms *out* (objects get smaller),
                     as batchgeneratorsv2's ``SpatialTransform`` ("larger numbers = smaller objects")
``shift_y/shift_x``  patch centre minus image centre, in input pixels
``flip_y/flip_x``    1.0: mirror the patch along rows / columns (after resampling, as ``MirrorTransform``)
``noise``            1.0: add Gaussian noise of std ``noise_std``
``noise_std``        noise standard deviation (batchgeneratorsv2 calls it ``noise_variance``)
``blur``             1.0: Gaussian blur with ``blur_sigma_y`` / ``blur_sigma_x`` (separable, reflect padding,
                     kernels truncated at 6 sigma, exactly as batchgeneratorsv2's ``blur_dimension``)
``multiplier``       intensity factor
``additive``         intensity shift
``gamma``            range-preserving gamma: ``((x - min) / max(max - min, 1e-7)) ** gamma * (max - min) + min``
                     with the min / max of each patch (batchgeneratorsv2's ``GammaTransform``, p_retain_stats=0)
``noise_seed``       integer < 2**24 seeding the item's noise when ``apply_batch`` gets no generator
===================  ==========================================================================

Geometry, as batchgeneratorsv2's ``SpatialTransform`` with ``align_corners=False``: output pixel (i, j) of a
(ph, pw) patch samples the input at ``A @ (i - (ph-1)/2, j - (pw-1)/2) + (shift_y, shift_x) + ((H-1)/2, (W-1)/2)``
with ``A = R(rotation) * scale``, ``R = [[cos, -sin], [sin, cos]]`` in (row, col) coordinates. Samples whose
spatial parameters are the identity are cut out by integer slicing around ``(H//2, W//2)`` instead (exactly
batchgeneratorsv2's ``crop_tensor`` path, zero padding if the patch is larger), so ``none`` is an exact
centre crop.

Presets (``draw_params``):

* ``paper`` - the "more extreme" augmentation of de Mooij et al. 2024 (q-cardIA/ssp-cmr-cine-segmentation,
  baseline-config.yaml), with the ranges of ``augment._paper``: translation U(±40/256 of the patch edge) per
  axis, rotation U(-pi, pi), scale U(0.7, 1.4) (all p=1), flips p=0.5 per axis, noise p=0.2 with std ~
  U(0, 0.2), blur p=0.2 with sigma ~ U(0.5, 1.5) per axis, multiplier U(0.6, 1.5), shift U(-0.4, 0.4),
  gamma U(0.7, 1.5) (all p=1). The order of operations is that of the per-sample pipeline.
* ``none`` - identity parameters: centre crop only.
* ``nnunet`` - nnU-Net v2's default 2D augmentation (Isensee et al. 2021, Nature Methods 18:203) is not
  on the device yet (its contrast, low-resolution and inverted-gamma steps are missing): ``draw_params``
  raises ``ConfigError``; use :func:`cardiossp.data.augment.build_transforms` for it.

Randomness: ``draw_params`` always consumes the same number of draws from ``rng`` whatever is applied, so
one parameter never shifts the stream of another. Noise is the only random part of ``apply_batch``: from
``generator`` if given (one ``randn`` of shape (B, 1, ph, pw) per call, on the generator's device), else per
item from ``torch.Generator().manual_seed(noise_seed)`` - both deterministic.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from .augment import PAPER_TRANSLATION_FRACTION, _check_patch, _check_scales, checked_sample

PRESETS = ("paper", "none")  # presets draw_params supports; "nnunet" raises ConfigError
PARAM_NAMES = (
    "rotation", "scale", "shift_y", "shift_x", "flip_y", "flip_x",
    "noise", "noise_std", "blur", "blur_sigma_y", "blur_sigma_x",
    "multiplier", "additive", "gamma", "noise_seed",
)
N_PARAMS = len(PARAM_NAMES)
_I = {name: i for i, name in enumerate(PARAM_NAMES)}
_GAMMA_EPS = 1e-7  # batchgeneratorsv2 GammaTransform
_BLUR_TRUNCATE = 6  # batchgeneratorsv2 blur_dimension's default


def identity_params() -> np.ndarray:
    """(P,) float32 parameters that change nothing: a centre crop."""
    p = np.zeros(N_PARAMS, dtype=np.float32)
    p[_I["scale"]] = p[_I["multiplier"]] = p[_I["gamma"]] = 1
    return p


def draw_params(preset: str, rng: np.random.Generator, patch_size: int | Sequence[int],
                image_size: int | Sequence[int]) -> np.ndarray:
    """(P,) float32 augmentation parameters of ``preset`` (see ``PARAM_NAMES``) for one sample.

    ``patch_size`` sets the translation range (±40/256 of the patch edge per axis for ``paper``);
    ``image_size`` (S or (H, W), the size of the cached slice) is only checked: the shift is measured
    from the image centre in input pixels whatever the image size (as batchgeneratorsv2's random crop).
    """
    ph, pw = _check_patch(patch_size)
    _check_patch(image_size)
    if preset == "none":
        return identity_params()
    if preset == "nnunet":
        raise ConfigError("augmentation preset 'nnunet' is not yet on the device; use "
                          "cardiossp.data.augment.build_transforms('nnunet', ...) in the loader workers")
    if preset != "paper":
        raise ConfigError(f"unknown device augmentation preset {preset!r}; presets: {', '.join(PRESETS)}")
    # one fixed block of draws, in one order, whatever gets applied
    u = rng.random(16)
    t_y, t_x = ph * PAPER_TRANSLATION_FRACTION, pw * PAPER_TRANSLATION_FRACTION
    p = np.empty(N_PARAMS, dtype=np.float64)
    p[_I["rotation"]] = -math.pi + 2 * math.pi * u[0]
    p[_I["scale"]] = 0.7 + 0.7 * u[1]
    p[_I["shift_y"]] = -t_y + 2 * t_y * u[2]
    p[_I["shift_x"]] = -t_x + 2 * t_x * u[3]
    p[_I["flip_y"]] = u[4] < 0.5
    p[_I["flip_x"]] = u[5] < 0.5
    p[_I["noise"]] = u[6] < 0.2
    p[_I["noise_std"]] = 0.2 * u[7]
    p[_I["blur"]] = u[8] < 0.2
    p[_I["blur_sigma_y"]] = 0.5 + u[9]
    p[_I["blur_sigma_x"]] = 0.5 + u[10]
    p[_I["multiplier"]] = 0.6 + 0.9 * u[11]
    p[_I["additive"]] = -0.4 + 0.8 * u[12]
    p[_I["gamma"]] = 0.7 + 0.8 * u[13]
    p[_I["noise_seed"]] = math.floor(u[14] * 2**24)  # exact in float32
    # u[15]: spare, keeps the block size if a parameter is added
    return p.astype(np.float32)


class SeededParams:
    """Worker-side transform: ``sample dict -> sample dict`` plus ``aug_params`` (P,) float32.

    ``image`` (1, S, S) becomes a float32 tensor, ``segmentation`` (1, S, S) (if present) an int64 tensor,
    both at the cached size S (copies when the input is a read-only memory map); other keys pass through.
    The generator is ``np.random.default_rng(sample["aug_seed"])`` if the sample carries that key, else
    ``np.random.default_rng(np.random.randint(2**31))`` - a pure function of the item seed under
    ``SeededItems``, which seeds NumPy's global RNG per item.
    """

    def __init__(self, preset: str, patch_size: int | Sequence[int]):
        self.preset = preset
        self.patch_size = _check_patch(patch_size)
        if preset not in PRESETS:
            draw_params(preset, np.random.default_rng(0), self.patch_size, self.patch_size)  # raises
            raise ConfigError(f"unknown device augmentation preset {preset!r}")

    def __repr__(self) -> str:
        return f"SeededParams(preset={self.preset!r}, patch_size={self.patch_size})"

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out, image, seg = checked_sample(sample)
        out["image"] = image.to(torch.float32)
        if seg is not None:
            out["segmentation"] = seg.to(torch.int64)
        seed = sample.get("aug_seed")
        seed = int(seed) if seed is not None else int(np.random.randint(2**31))
        params = draw_params(self.preset, np.random.default_rng(seed), self.patch_size, tuple(image.shape[1:]))
        out["aug_params"] = torch.from_numpy(params)
        return out


INTENSITY_IDENTITY = {"noise": 0.0, "blur": 0.0, "multiplier": 1.0, "additive": 0.0, "gamma": 1.0}


def spatial_only(params: torch.Tensor) -> torch.Tensor:
    """``params`` (B, P) with every intensity operation switched off: the weak view of semi-supervised
    training (geometry only; the method adds its own strong photometric views)."""
    out = params.clone()
    for name, value in INTENSITY_IDENTITY.items():
        out[:, PARAM_NAMES.index(name)] = value
    return out


def device_augmentation(where: str, preset: str, on_cuda: bool) -> bool:
    """Whether training augments on the device: ``where`` is ``device``, ``loader`` or ``auto`` (the
    device on CUDA when the preset is available there; batchgeneratorsv2 in the loader workers on the
    CPU, where the workers run beside the network and the batched path gains nothing measurable)."""
    if where not in ("auto", "device", "loader"):
        raise ConfigError(f"data.augment_on must be auto, device or loader, got {where!r}")
    if where == "device" and preset not in PRESETS:
        raise ConfigError(f"augmentation preset {preset!r} does not run on the device yet; "
                          f"device presets: {', '.join(PRESETS)} (or data.augment_on=loader)")
    return where == "device" or (where == "auto" and on_cuda and preset in PRESETS)


def _crop(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, ph, pw): batchgeneratorsv2's ``crop_tensor`` around (H//2, W//2), zero padded."""
    out = x.new_zeros((*x.shape[:2], *patch))
    src, dst = [], []
    for size, p in zip(x.shape[2:], patch):
        start = size // 2 - p // 2
        lo, hi = max(0, start), min(size, start + p)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - start, lo - start + max(0, hi - lo)))
    out[:, :, dst[0], dst[1]] = x[:, :, src[0], src[1]]
    return out


def _theta(p: torch.Tensor, in_hw: tuple[int, int], patch: tuple[int, int]) -> torch.Tensor:
    """(B, 2, 3) ``F.affine_grid`` matrices (x = column, y = row, normalized, align_corners=False)."""
    (h, w), (ph, pw) = in_hw, patch
    rot, scale = p[:, _I["rotation"]], p[:, _I["scale"]]
    fy = 1 - 2 * p[:, _I["flip_y"]]
    fx = 1 - 2 * p[:, _I["flip_x"]]
    c, s = torch.cos(rot) * scale, torch.sin(rot) * scale
    # input (row, col) offset = [[c, -s], [s, c]] @ (d_row, d_col); d_row = y_n * ph/2 * fy, d_col = x_n * pw/2 * fx
    theta = torch.stack([
        torch.stack([c * (pw / w) * fx, s * (ph / w) * fy, 2 * p[:, _I["shift_x"]] / w], -1),
        torch.stack([-s * (pw / h) * fx, c * (ph / h) * fy, 2 * p[:, _I["shift_y"]] / h], -1),
    ], 1)
    return theta


def _blur_kernel(sigma: float) -> np.ndarray:
    """batchgeneratorsv2 ``_build_kernel(sigma, truncate=6)`` (its odd-size rounding included)."""
    n = sigma * _BLUR_TRUNCATE + 0.5
    k = round(n)
    if k % 2 == 0:
        k = k + 1 if n - k >= 0 else k - 1
    x = np.linspace(-(k - 1) / 2, (k - 1) / 2, k, dtype=np.float32)
    pdf = np.exp(-0.5 * (x / np.float32(sigma)) ** 2)
    return (pdf / pdf.sum()).astype(np.float32)


def _blur(img: torch.Tensor, sigmas: list[tuple[float, float]]) -> torch.Tensor:
    """Separable Gaussian blur of (n, 1, H, W), one (sigma_row, sigma_col) per item: rows, then columns."""
    n = img.shape[0]
    x = img.reshape(1, n, *img.shape[2:])
    for axis in (0, 1):
        kernels = [_blur_kernel(s[axis]) for s in sigmas]
        size = max(len(k) for k in kernels)
        weight = np.zeros((n, size), dtype=np.float32)  # zero-padded to a common odd size: same result
        for i, k in enumerate(kernels):
            off = (size - len(k)) // 2
            weight[i, off:off + len(k)] = k
        wt = torch.from_numpy(weight).to(img.device)
        half = size // 2
        if axis == 0:
            x = F.conv2d(F.pad(x, [0, 0, half, half], mode="reflect"), wt[:, None, :, None], groups=n)
        else:
            x = F.conv2d(F.pad(x, [half, half, 0, 0], mode="reflect"), wt[:, None, None, :], groups=n)
    return x.reshape(img.shape)


def apply_batch(params: torch.Tensor, image: torch.Tensor, segmentation: torch.Tensor | None,
                patch_size: int | Sequence[int], deep_supervision_scales: Sequence | None = None,
                generator: torch.Generator | None = None):
    """Augment a collated batch on its device: ``(image (B, 1, ph, pw) float32, labels or None)``.

    ``params`` (B, P) from :func:`draw_params`; ``image`` (B, 1, H, W) (any float dtype, cast to float32);
    ``segmentation`` (B, 1, H, W) integer labels or None. Labels come back int64 (B, 1, ph, pw), or with
    ``deep_supervision_scales`` (e.g. ``[[1, 1], [0.5, 0.5]]``) a list of one tensor per scale. ``generator``
    (on any device) supplies the noise; without it each noisy item uses its ``noise_seed``. The inputs are
    not modified. Small decisions (which items are blurred, kernel sizes) read a host copy of ``params``.
    """
    ps = _check_patch(patch_size)
    scales = _check_scales(deep_supervision_scales)
    if image.ndim != 4 or image.shape[1] != 1:
        raise DataError(None, f"image batch must be (B, 1, H, W), got {tuple(image.shape)}")
    b = image.shape[0]
    if tuple(params.shape) != (b, N_PARAMS):
        raise DataError(None, f"params must be (B, {N_PARAMS}) = ({b}, {N_PARAMS}), got {tuple(params.shape)}")
    if segmentation is not None:
        if segmentation.shape != image.shape:
            raise DataError(None, f"segmentation {tuple(segmentation.shape)} does not match image "
                                  f"{tuple(image.shape)}")
        if segmentation.is_floating_point() or segmentation.is_complex():
            raise DataError(None, f"segmentation must hold integer labels, got dtype {segmentation.dtype}")
    device = image.device
    host = params.detach().to("cpu", torch.float64).numpy()
    p = params.detach().to(device, torch.float32)
    image = image.to(torch.float32)
    in_hw = tuple(image.shape[2:])

    # --- spatial: one resampling for translation, rotation, scale, flips and the crop
    spatial = host[:, [_I["rotation"], _I["shift_y"], _I["shift_x"], _I["flip_y"], _I["flip_x"]]]
    identity = (np.abs(spatial).max(1) == 0) & (host[:, _I["scale"]] == 1)
    seg = None
    if identity.all():
        img = _crop(image, ps)
        if segmentation is not None:
            seg = _crop(segmentation, ps).long()
    else:
        grid = F.affine_grid(_theta(p, in_hw, ps), [b, 1, *ps], align_corners=False)
        img = F.grid_sample(image, grid, mode="bicubic", padding_mode="zeros", align_corners=False)
        if segmentation is not None:
            seg = F.grid_sample(segmentation.to(torch.float32), grid, mode="nearest", padding_mode="zeros",
                                align_corners=False).round_().long()
        if identity.any():
            keep = torch.from_numpy(identity).to(device)
            img[keep] = _crop(image[keep], ps)
            if seg is not None:
                seg[keep] = _crop(segmentation[keep], ps).long()

    # --- Gaussian noise (std from params, values from the generator or the items' seeds)
    noisy = host[:, _I["noise"]] > 0
    if noisy.any():
        if generator is not None:
            noise = torch.randn((b, 1, *ps), generator=generator, device=generator.device).to(device)
        else:
            noise = torch.zeros((b, 1, *ps))
            for i in np.flatnonzero(noisy):
                g = torch.Generator().manual_seed(int(host[i, _I["noise_seed"]]))
                noise[i] = torch.randn((1, *ps), generator=g)
            noise = noise.to(device)
        img = img + noise * (p[:, _I["noise"]] * p[:, _I["noise_std"]]).view(b, 1, 1, 1)

    # --- Gaussian blur of the selected items
    blurred = np.flatnonzero(host[:, _I["blur"]] > 0)
    if len(blurred):
        sigmas = [(host[i, _I["blur_sigma_y"]], host[i, _I["blur_sigma_x"]]) for i in blurred]
        idx = torch.from_numpy(blurred).to(device)
        img = img.index_copy(0, idx, _blur(img.index_select(0, idx), sigmas))

    # --- brightness, shift, range-preserving gamma (per item min / max)
    view = (b, 1, 1, 1)
    img = img * p[:, _I["multiplier"]].view(view) + p[:, _I["additive"]].view(view)
    gamma = p[:, _I["gamma"]].view(view)
    mn = img.amin((1, 2, 3), keepdim=True)
    rng = img.amax((1, 2, 3), keepdim=True) - mn
    gammaed = ((img - mn) / rng.clamp(min=_GAMMA_EPS)).pow(gamma) * rng + mn
    img = torch.where(gamma == 1, img, gammaed)

    if seg is None or scales is None:
        return img, seg
    targets = []
    for sy, sx in scales:
        if sy == 1 and sx == 1:
            targets.append(seg)
        else:
            shape = [round(ps[0] * sy), round(ps[1] * sx)]
            targets.append(F.interpolate(seg.float(), shape, mode="nearest-exact").long())
    return img, targets
