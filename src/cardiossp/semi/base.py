"""The contract every semi-supervised fine-tuning method follows, and its registry.

Semi-supervised segmentation uses the unlabeled slices *during* fine-tuning. The engine
(``train.segmentation.SegmentationModule``) owns the loop, optimiser, precision, checkpoints
and the supervised loss; each step it draws one labeled batch and one unlabeled batch and
hands both to the method::

    terms = method.training_terms(model, supervised, labeled, unlabeled, step)
    terms["loss"].backward(); optimizer.step()
    method.on_train_batch_end(model, step)          # EMA teacher update

``labeled``: ``{"image": (Bl, 1, H, W), "segmentation": [targets per deep-supervision scale]}``.
``unlabeled``: ``{"image": (Bu, 1, H, W)}`` - the *weak* view: the spatial part of the
training augmentation only (``data.augment.spatial_transforms``), made in the loader
workers; labels are never read for it. Strong views (intensity perturbation, CutMix,
copy-paste) are made batched on the training device from the weak view
(``semi.perturb``), with a generator seeded by ``(seed, global step)``, so a resumed run
perturbs exactly as an uninterrupted one.

``supervised(outputs, targets) -> {"loss": ..., ...}`` is the engine's Dice + CE over the
deep-supervision outputs. ``step`` carries ``progress`` in [0, 1] (every ramp-up is a pure
function of it, ``ssp.schedules``), the global step and the step's generator.

Methods: ``mean-teacher`` (Tarvainen & Valpola 2017), ``unimatch`` (Yang et al. 2023),
``bcp`` (Bai et al. 2023), ``self-training`` (Yang et al. 2022, ST++: a fixed teacher's pseudo-labels,
made once by ``cardiossp pseudo-label``; its unlabeled batch carries them as ``"segmentation"``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import Registry

SEMI_METHODS: Registry[type["SemiMethod"]] = Registry("semi-supervised method")

Supervised = Callable[[object, object], dict]


@dataclass(frozen=True)
class Step:
    """What a method knows about the current training step."""

    progress: float  # fraction of training done, in [0, 1]
    global_step: int
    generator: torch.Generator  # on the batch's device, seeded by (seed, global_step)


def step_generator(seed: int, global_step: int, device: torch.device) -> torch.Generator:
    """A generator for the step's device-side randomness: a pure function of (seed, step)."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(global_step)) % (2**63 - 1))
    return g


def sigmoid_rampup(progress: float, rampup_fraction: float) -> float:
    """Laine & Aila (2017) ramp-up ``exp(-5 (1 - t)^2)``, ``t = progress / rampup_fraction``
    clipped to [0, 1] (SSL4MIS ``ramps.sigmoid_rampup``); 1 when ``rampup_fraction`` is 0."""
    if rampup_fraction <= 0:
        return 1.0
    t = min(max(progress / rampup_fraction, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def full_resolution(outputs) -> Tensor:
    """The full-resolution logits of a model's output (deep supervision: the first of the list)."""
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def rows(outputs, index: slice):
    """The rows ``index`` of a model's output (every deep-supervision scale)."""
    if isinstance(outputs, (list, tuple)):
        return [o[index] for o in outputs]
    return outputs[index]


def joint_forward(model: nn.Module, supervised: Supervised, labeled: dict, unlabeled: dict):
    """One forward pass over the labeled and unlabeled images together -> (every output, the number of
    labeled rows, the supervised terms of the labeled rows)."""
    nl = labeled["image"].shape[0]
    outputs = model(torch.cat([labeled["image"], unlabeled["image"]]))
    return outputs, nl, supervised(rows(outputs, slice(0, nl)), labeled["segmentation"])


class EMATeacher(nn.Module):
    """An exponential-moving-average copy of the student (Tarvainen & Valpola 2017).

    The teacher never receives gradients: its parameters have ``requires_grad=False`` and it is
    only changed by :meth:`update` (``t = a t + (1 - a) s`` for parameters; buffers copied),
    with ``a = min(1 - 1 / (step + 1), momentum)`` as in SSL4MIS's ``update_ema_variables``.
    It runs in eval mode (BatchNorm with running statistics, no dropout).
    """

    stays_in_eval = True  # the engine tells Lightning not to warn about its eval-mode submodules

    def __init__(self, student: nn.Module):
        super().__init__()
        self.net = copy.deepcopy(student)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True):  # the teacher stays in eval mode whatever its owner does
        super().train(mode)
        self.net.eval()
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return full_resolution(self.net(x))

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float, global_step: int | None = None) -> None:
        a = float(momentum) if global_step is None else min(1.0 - 1.0 / (global_step + 1), float(momentum))
        for t, s in zip(self.net.parameters(), student.parameters()):
            t.mul_(a).add_(s.detach().to(t.dtype), alpha=1.0 - a)
        for t, s in zip(self.net.buffers(), student.buffers()):
            t.copy_(s)

    @torch.no_grad()
    def copy_from(self, student: nn.Module) -> None:
        self.update(student, momentum=0.0)


class SemiMethod(nn.Module):
    """Base class: subclasses set ``name`` and ``defaults`` and implement ``training_terms``.

    ``find_unused_parameters``: whether some student parameters may get no gradient in a step
    (DDP must then look for them). ``uses_pseudo_labels``: the unlabeled batch comes from a store of a
    teacher's pseudo-labels (``semi.pseudo_labels``, ``data.pseudo``) and carries ``"segmentation"``
    like a labeled batch (same augmentation, deep-supervision targets), instead of the weak view alone.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}
    find_unused_parameters: ClassVar[bool] = False
    uses_pseudo_labels: ClassVar[bool] = False

    def __init__(self, student: nn.Module, options: dict | None = None):
        super().__init__()
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ConfigError(f"semi-supervised method {self.name!r}: unknown option(s) {unknown}; "
                              f"known: {sorted(self.defaults)}")
        self.cfg = {**self.defaults, **options}

    def training_terms(self, model: nn.Module, supervised: Supervised, labeled: dict, unlabeled: dict,
                       step: Step) -> dict[str, Tensor]:
        """``{"loss": total scalar, "sup": ..., "unsup": ..., <other logs>}``."""
        raise NotImplementedError

    def on_train_batch_end(self, model: nn.Module, global_step: int) -> None:
        """After the optimiser step (EMA teachers update here)."""


def build_semi(name: str, student: nn.Module, options: dict | None = None) -> SemiMethod:
    return SEMI_METHODS.get(name)(student, options)
