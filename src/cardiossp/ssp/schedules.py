"""Schedules as pure functions of the training fraction ``progress`` in [0, 1].

``progress = progress(step, total_steps) = min(1, step / total_steps)`` is computed once by
the engine (the one definition: the pretraining module's schedules and its learning rate
use it); every schedule here is a stateless function of it, so resuming a run or
testing a schedule needs no optimizer or scheduler object (after DINO's
``cosine_scheduler``, Caron et al. 2021, https://arxiv.org/abs/2104.14294).

``cosine(p, a, b)`` equals ``lightly.utils.scheduler.cosine_schedule(step, max_steps, a,
b)`` at ``p = step / (max_steps - 1)`` (tested).
"""

from __future__ import annotations

import math


def progress(step: int, total: int) -> float:
    """Fraction of training done after ``step`` of ``total`` steps: ``min(1, step / max(1, total))``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return min(1.0, step / max(1, total))


def _check_progress(progress: float) -> float:
    progress = float(progress)
    if not (0.0 <= progress <= 1.0) or math.isnan(progress):
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    return progress


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def cosine(progress: float, start: float, end: float) -> float:
    """Half-cosine from ``start`` (progress 0) to ``end`` (progress 1)."""
    p = _check_progress(progress)
    return end + (start - end) * (1.0 + math.cos(math.pi * p)) / 2.0


def linear(progress: float, start: float, end: float) -> float:
    """Straight line from ``start`` (progress 0) to ``end`` (progress 1)."""
    p = _check_progress(progress)
    return start + (end - start) * p


def warmup_cosine(
    progress: float,
    base: float,
    final: float = 0.0,
    warmup_fraction: float = 0.0,
    warmup_start: float = 0.0,
) -> float:
    """Linear warm-up ``warmup_start -> base`` over ``warmup_fraction`` of training,
    then cosine decay ``base -> final`` over the rest (DINO's learning-rate schedule:
    10 warm-up epochs of 100 -> ``warmup_fraction=0.1``)."""
    p = _check_progress(progress)
    w = _check_fraction("warmup_fraction", warmup_fraction)
    if w > 0.0 and p < w:
        return warmup_start + (base - warmup_start) * p / w
    if w >= 1.0:
        return base
    return cosine((p - w) / (1.0 - w), base, final)


def teacher_temperature(
    progress: float,
    start: float = 0.02,
    end: float = 0.04,
    warmup_fraction: float = 0.3,
) -> float:
    """DINO teacher temperature: linear ``start -> end`` over ``warmup_fraction`` of
    training, then constant ``end`` (paper: 0.02 -> 0.04 over 30 of 100 epochs)."""
    p = _check_progress(progress)
    w = _check_fraction("warmup_fraction", warmup_fraction)
    if w == 0.0 or p >= w:
        return end
    return start + (end - start) * p / w


def ema_momentum(progress: float, start: float = 0.996, end: float = 1.0) -> float:
    """DINO/BYOL teacher momentum: cosine ``start -> end`` (0.996 -> 1)."""
    return cosine(progress, start, end)
