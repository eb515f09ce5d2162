"""Device-side SSL views (``data.augment_on=device``): workers defer the augmentation; the engine
augments every view of the batch on the training device before the method's loss."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import default_collate

from cardiossp.config import PretrainConfig, load_config
from cardiossp.ssp import SSP_METHODS
from cardiossp.train.pretrain import PretrainModule, pretrain


def cfg(method: str, **over) -> PretrainConfig:
    return load_config(PretrainConfig, "pretrain", "tiny", {
        "method": method, "data.augment_on": "device", "schedule.epochs": 1, "schedule.iters_per_epoch": 2, **over})


@pytest.mark.parametrize("method", SSP_METHODS.names())
def test_views_are_deferred_and_augmented_on_the_device(method):
    module = PretrainModule(cfg(method))
    sample = {"image": torch.randn(1, 80, 80), "position": 0.5, "subject": "s", "view": "SA",
              "plane_normal": torch.tensor([0.0, 0.0, 1.0])}
    views = module.method.view_maker(sample)
    deferred = {k for k, v in views.items() if isinstance(v, dict)}
    assert deferred, "no view was deferred to the device"
    batch = default_collate([views, module.method.view_maker(sample)])
    batch = module.on_after_batch_transfer(batch, 0)
    size = module.cfg.data.input_size
    for k in deferred:
        assert isinstance(batch[k], torch.Tensor) and batch[k].shape[0] == 2 and batch[k].ndim == 4
        if k.startswith(("view", "image", "global")):
            assert batch[k].shape[-2:] == (size, size)
    out = module.method.forward_loss(batch, 0.0)
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("method", ["simclr", "mim", "dino"])
def test_pretraining_runs_with_device_views(method, tmp_path, phantom_cache, one_thread):
    cache, split = phantom_cache
    run = pretrain(cfg(method), cache, tmp_path / "run", split=split, progress=False)
    assert json.loads((run / "done.json").read_text())["steps"] == 2 and (run / "pretrained.pt").is_file()
