"""Fixtures of the semi-supervised tests: a tiny teacher trained on the phantom, and its pseudo-labels."""

from __future__ import annotations

import pytest

from cardiossp.config import TrainConfig, load_config
from cardiossp.pseudo_label import pseudo_label
from cardiossp.train.fit import train_segmentation


@pytest.fixture(scope="session")
def teacher(tmp_path_factory, phantom_cache):
    """A 3-step tiny U-Net on the phantom's 2-subject budget (a run folder)."""
    cache, split = phantom_cache
    cfg = load_config(TrainConfig, "train", "tiny", {"labeled_subjects": 2, "schedule.epochs": 1,
                                                      "schedule.iters_per_epoch": 3, "data.batch_size": 4})
    return train_segmentation(cfg, cache, split, tmp_path_factory.mktemp("teacher") / "run", progress=False)


@pytest.fixture(scope="session")
def pseudo_store(tmp_path_factory, phantom_cache, teacher):
    """The teacher's pseudo-labels of the phantom split's training and unlabeled subjects."""
    cache, split = phantom_cache
    return pseudo_label(teacher, cache, split, tmp_path_factory.mktemp("pseudo") / "pl", tta=False, device="cpu")
