"""Device-side augmentation through the engine (``data.augment_on=device``): the loader only reads
slices and draws seeded parameters; the module augments the batch after the transfer."""

import json

import pandas as pd
import pytest
import torch

from cardiossp.config import TrainConfig, load_config
from cardiossp.data.batch_augment import device_augmentation
from cardiossp.errors import ConfigError
from cardiossp.train.fit import train_segmentation
from cardiossp.train.segmentation import SegmentationModule


def tiny(**over) -> TrainConfig:
    return load_config(TrainConfig, "train", "tiny", {"data.augment_on": "device", **over})


def test_auto_keeps_the_loader_on_the_cpu_and_uses_the_device_on_cuda():
    assert device_augmentation("auto", "paper", on_cuda=False) is False
    assert device_augmentation("auto", "paper", on_cuda=True) is True
    assert device_augmentation("auto", "nnunet", on_cuda=True) is False  # not on the device yet
    assert device_augmentation("device", "paper", on_cuda=False) is True
    with pytest.raises(ConfigError, match="nnunet"):
        device_augmentation("device", "nnunet", on_cuda=False)
    with pytest.raises(ConfigError, match="augment_on"):
        device_augmentation("gpu", "paper", on_cuda=False)


def test_module_augments_the_transferred_batch():
    module = SegmentationModule(tiny(), total_steps=1)
    from cardiossp.data.batch_augment import N_PARAMS, identity_params

    params = torch.from_numpy(identity_params())[None].repeat(2, 1)
    assert params.shape == (2, N_PARAMS)
    image = torch.randn(2, 1, 80, 80)
    seg = torch.randint(0, 4, (2, 1, 80, 80))
    out = module.on_after_batch_transfer({"image": image, "segmentation": seg, "aug_params": params}, 0)
    assert out["image"].shape == (2, 1, 64, 64) and "aug_params" not in out
    torch.testing.assert_close(out["image"], image[:, :, 8:72, 8:72])  # identity = centre crop to the patch
    assert isinstance(out["segmentation"], list) and out["segmentation"][0].shape == (2, 1, 64, 64)
    assert out["segmentation"][1].shape == (2, 1, 32, 32)


def test_device_augmentation_learns_the_phantom(tmp_path, phantom_cache, one_thread):
    cache, split = phantom_cache
    run = train_segmentation(tiny(**{"schedule.epochs": 6, "schedule.iters_per_epoch": 10}), cache, split,
                             tmp_path / "run", progress=False)
    m = pd.read_csv(run / "logs" / "metrics.csv")
    assert m.dropna(subset=["val_dice_LV"])["val_dice_LV"].iloc[-1] > 0.4
    assert json.loads((run / "done.json").read_text())["steps"] == 60


def test_device_augmentation_with_semi_and_same_seed_same_weights(tmp_path, phantom_cache, one_thread):
    cache, split = phantom_cache
    cfg = tiny(**{"semi.method": "unimatch", "labeled_subjects": 2, "schedule.epochs": 1,
                  "schedule.iters_per_epoch": 3, "data.batch_size": 4})
    a = train_segmentation(cfg, cache, split, tmp_path / "a", progress=False)
    b = train_segmentation(cfg, cache, split, tmp_path / "b", progress=False)
    wa = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_channels_last_option(tmp_path, phantom_cache, one_thread):
    cache, split = phantom_cache
    cfg = load_config(TrainConfig, "train", "tiny", {"channels_last": True, "schedule.epochs": 1,
                                                     "schedule.iters_per_epoch": 2})
    module = SegmentationModule(cfg, total_steps=1)
    conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = module.on_after_batch_transfer({"image": torch.randn(2, 1, 64, 64)}, 0)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    run = train_segmentation(cfg, cache, split, tmp_path / "run", progress=False)
    assert json.loads((run / "done.json").read_text())["steps"] == 2
