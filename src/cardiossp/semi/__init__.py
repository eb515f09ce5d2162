"""Semi-supervised fine-tuning: the unlabeled slices are used *during* fine-tuning (``base``
has the contract and the registry ``SEMI_METHODS``)."""

from . import bcp, mean_teacher, self_training, unimatch  # noqa: F401  (register the methods)
from .base import SEMI_METHODS, EMATeacher, SemiMethod, Step, build_semi, sigmoid_rampup, step_generator

__all__ = ["SEMI_METHODS", "EMATeacher", "SemiMethod", "Step", "build_semi", "sigmoid_rampup", "step_generator"]
