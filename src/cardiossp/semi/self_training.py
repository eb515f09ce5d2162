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

ST++ also re-trains in two rounds on the most reliable images first; ``cardiossp pseudo-label`` records
each frame's mean confidence, but that selection is not implemented.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import SEMI_METHODS, SemiMethod, Step, Supervised, joint_forward, rows


@SEMI_METHODS.register("self-training")
class SelfTraining(SemiMethod):
    name = "self-training"
    defaults = {"weight": 1.0}
    uses_pseudo_labels = True

    def training_terms(self, model: nn.Module, supervised: Supervised, labeled: dict, unlabeled: dict,
                       step: Step) -> dict[str, Tensor]:
        outputs, nl, sup = joint_forward(model, supervised, labeled, unlabeled)
        pseudo = supervised(rows(outputs, slice(nl, None)), unlabeled["segmentation"])
        w = float(self.cfg["weight"])
        return {"loss": (sup["loss"] + w * pseudo["loss"]) / (1 + w), "sup": sup["loss"].detach(),
                "unsup": pseudo["loss"].detach()}
