"""Batched, device-side perturbations for the semi-supervised methods (no per-sample CPU work).

All randomness comes from the step's ``torch.Generator`` (see ``base.step_generator``), so a
resumed run draws the same boxes and intensities as an uninterrupted one.

* ``strong_intensity``: the strong view of UniMatch's medical code (ColorJitter(0.5, 0.5) with
  p 0.8, then Gaussian blur with p 0.5, sigma in [0.1, 2]), transcribed for z-scored grey MR:
  brightness ``x * b`` and contrast ``(x - mean) * c + mean`` with ``b, c ~ U(0.5, 1.5)``.
  Geometry is untouched, so a pseudo-label of the weak view fits the strong view pixel for pixel.
* ``cutmix_boxes``: UniMatch's ``obtain_cutmix_box`` (p 0.5, area 2-40 % of the image, aspect
  ratio in [0.3, 1/0.3]), one box per sample, as a (B, H, W) 0/1 mask.
* ``copy_paste_mask``: BCP's ``generate_mask``: ones with one zero box of 2/3 of each side at a
  random position, the same for the whole batch (Bai et al. 2023).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data.batch_augment import _blur


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Per-sample isotropic Gaussian blur of (B, 1, H, W) with standard deviations ``sigma`` (B,): the
    device augmentation's separable blur (batchgeneratorsv2's kernel, reflect padding)."""
    return _blur(x.float(), [(s, s) for s in sigma.tolist()]).to(x.dtype)


def strong_intensity(x: Tensor, g: torch.Generator, p_jitter: float = 0.8, strength: float = 0.5,
                     p_blur: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0)) -> Tensor:
    """Strong photometric view of a (B, 1, H, W) batch (a new tensor)."""
    b, dev = x.shape[0], x.device
    shape = (b, 1, 1, 1)
    jitter = (torch.rand(b, generator=g, device=dev) < p_jitter).view(shape)
    bright = _uniform(b, 1 - strength, 1 + strength, g, dev).view(shape)
    contrast = _uniform(b, 1 - strength, 1 + strength, g, dev).view(shape)
    y = x.float() * bright
    mean = y.mean(dim=(2, 3), keepdim=True)
    y = (y - mean) * contrast + mean
    y = torch.where(jitter, y, x.float())
    blur = torch.rand(b, generator=g, device=dev) < p_blur
    sig = _uniform(b, sigma[0], sigma[1], g, dev)
    if bool(blur.any()):
        y = torch.where(blur.view(shape), gaussian_blur(y, sig), y)
    return y.to(x.dtype)


def cutmix_boxes(b: int, h: int, w: int, g: torch.Generator, device, p: float = 0.5, size_min: float = 0.02,
                 size_max: float = 0.4, ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> Tensor:
    """(B, H, W) float masks, 1 inside each sample's box (all zero for the samples not mixed)."""
    out = torch.zeros(b, h, w, device=device)
    apply = torch.rand(b, generator=g, device=device) < p
    area = _uniform(b, size_min, size_max, g, device) * h * w
    r = torch.exp(_uniform(b, math.log(ratio[0]), math.log(ratio[1]), g, device))
    bw = torch.sqrt(area / r).floor().clamp(1, w).long()
    bh = torch.sqrt(area * r).floor().clamp(1, h).long()
    u, v = torch.rand(b, generator=g, device=device), torch.rand(b, generator=g, device=device)
    x0 = (u * (w - bw + 1).float()).floor().long()  # uniform among the boxes that fit
    y0 = (v * (h - bh + 1).float()).floor().long()
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    inside = (ys >= y0[:, None, None]) & (ys < (y0 + bh)[:, None, None]) \
        & (xs >= x0[:, None, None]) & (xs < (x0 + bw)[:, None, None])
    out[inside & apply[:, None, None]] = 1.0
    return out


def copy_paste_mask(h: int, w: int, g: torch.Generator, device, fraction: float = 2 / 3) -> Tensor:
    """(H, W) float mask: 1 everywhere but a zero box of ``fraction`` x each side (BCP)."""
    ph, pw = int(h * fraction), int(w * fraction)
    y0 = int(torch.randint(0, h - ph + 1, (1,), generator=g, device=device))
    x0 = int(torch.randint(0, w - pw + 1, (1,), generator=g, device=device))
    mask = torch.ones(h, w, device=device)
    mask[y0:y0 + ph, x0:x0 + pw] = 0
    return mask


def mix(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """``a`` where ``mask`` is 1, ``b`` elsewhere; ``mask`` (B, H, W) or (H, W) broadcast over channels."""
    m = mask.to(torch.bool)
    if a.ndim == 4:
        m = m.unsqueeze(-3) if m.ndim == 3 else m
    return torch.where(m, a, b)
