"""Self-training on a teacher's pseudo-labels (Yang, Zhuo, Qi, Shi & Gao, ST++, CVPR 2022,
https://arxiv.org/abs/2106.05095; Xie, Luong, Hovy & Le, Noisy Student, CVPR 2020).

A teacher trained on the few labeled subjects (any of our runs) labels every cached frame of the
unlabeled subjects once, as at test time (mirror TTA, largest 3D component per class;
``cardiossp pseudo-label``, ``pseudo_label.py``). The student then trains on both: each step the
engine draws the labeled batch and a batch of pseudo-labeled slices, and both go through the same
augmentation as labeled training (ST++'s strong augmentation of the re-training stage; the student
is the one that is noised, the teacher labeled clean images).

* ``loss = (sup + weight * pseudo) / (1 + weight)``, both the engine's Dice + CE over the deep-supervision
  outputs; one forward pass over the labeled and pseudo-labeled slices together.
* Unlike the online methods there is no teacher in the step: a step costs what a supervised step of
  the two batches costs, and the pseudo-labels are as good as the teacher at test time (3D clean-up and
  TTA, which per-step pseudo-labels cannot afford).

* ``reliable`` (ST++'s selection of reliable images, one round): the student trains on that fraction of
  the pool's frames whose pseudo-labels the teacher was surest of (each frame's mean max-probability,
  recorded by ``cardiossp pseudo-label``); 1.0 (the default) keeps every frame. ST++ ranks images by the
  stability of the teacher's predictions across its checkpoints and, in a second round, relabels the rest
  with the first student; neither is done here.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError
from .base import SEMI_METHODS, SemiMethod, Step, Supervised, joint_forward, rows


@SEMI_METHODS.register("self-training")
class SelfTraining(SemiMethod):
    name = "self-training"
    defaults = {"weight": 1.0, "reliable": 1.0}
    uses_pseudo_labels = True

    def __init__(self, student: nn.Module, options: dict | None = None):
        super().__init__(student, options)
        self._reliable(self.cfg)  # a bad value fails when the model is built, before any run folder exists

    @staticmethod
    def _reliable(cfg: dict) -> float:
        fraction = float(cfg["reliable"])
        if not 0 < fraction <= 1:
            raise ConfigError(f"self-training option reliable={fraction}: give a fraction of the pool's frames "
                              "in (0, 1]")
        return fraction

    @classmethod
    def pool_frames(cls, store, subjects, options: dict) -> set[tuple[str, int]] | None:
        """The (subject, frame) pairs of the pool the student trains on; None: every frame."""
        fraction = cls._reliable({**cls.defaults, **options})
        return None if fraction == 1 else store.most_confident_frames(subjects, fraction)

    def training_terms(self, model: nn.Module, supervised: Supervised, labeled: dict, unlabeled: dict,
                       step: Step) -> dict[str, Tensor]:
        outputs, nl, sup = joint_forward(model, supervised, labeled, unlabeled)
        pseudo = supervised(rows(outputs, slice(nl, None)), unlabeled["segmentation"])
        w = float(self.cfg["weight"])
        return {"loss": (sup["loss"] + w * pseudo["loss"]) / (1 + w), "sup": sup["loss"].detach(),
                "unsup": pseudo["loss"].detach()}
