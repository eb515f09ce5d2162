"""Exported weights load into nnU-Net v2 with nnU-Net's own loader.

The target network is built the way nnU-Net builds it from a 2D plan (``get_network_from_plans``
with the plan's ``architecture`` entry), then ``nnunetv2.run.load_pretrained_weights`` reads the
exported file (Isensee et al. 2021; the loader used for nnU-Net fine-tuning with ``-pretrained_weights``).
"""

from __future__ import annotations

import pytest
import torch

from cardiossp.checkpoints import load_checkpoint
from cardiossp.config import PretrainConfig, TrainConfig, load_config
from cardiossp.data.labels import NUM_CLASSES
from cardiossp.errors import CheckpointError
from cardiossp.models import build_unet, unet_features
from cardiossp.train.export import export_nnunet
from cardiossp.train.fit import train_segmentation
from cardiossp.train.pretrain import pretrain
from cardiossp.train.transfer import load_pretrained

nnunetv2 = pytest.importorskip("nnunetv2")
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights  # noqa: E402
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: E402


def nnunet_plan_architecture(m) -> dict:
    """The ``architecture`` entry of an nnU-Net v2 2D plan (nnUNetPlans.json) for ModelConfig ``m``."""
    n = m.n_stages
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": unet_features(n, m.base_features, m.max_features, m.width),
            "conv_op": "torch.nn.modules.conv.Conv2d",
            "kernel_sizes": [[3, 3]] * n,
            "strides": [[1, 1]] + [[2, 2]] * (n - 1),
            "n_conv_per_stage": [2] * n,
            "n_conv_per_stage_decoder": [2] * (n - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def nnunet_network(m) -> torch.nn.Module:
    """The network nnU-Net builds for this plan (1 input channel, our 4 classes, deep supervision)."""
    arch = nnunet_plan_architecture(m)
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                 input_channels=1, output_channels=NUM_CLASSES, deep_supervision=True)
    ours = build_unet(1, NUM_CLASSES, m.n_stages, base_features=m.base_features, max_features=m.max_features,
                      width=m.width, norm=m.norm, deep_supervision=True)
    theirs, mine = net.state_dict(), ours.state_dict()
    assert theirs.keys() == mine.keys()  # the same architecture as cardiossp builds
    assert all(theirs[k].shape == mine[k].shape for k in theirs)
    return net


def load_into_nnunet(m, file) -> tuple[dict, dict]:
    """(state before, state after) nnU-Net's loader read ``file`` into a fresh nnU-Net network."""
    net = nnunet_network(m)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    load_pretrained_weights(net, str(file))
    return before, net.state_dict()


def test_segmentation_run_exports_every_trained_tensor(tmp_path, phantom_cache, one_thread):
    cache, split = phantom_cache
    cfg = load_config(TrainConfig, "train", "tiny", {"schedule.epochs": 1, "schedule.iters_per_epoch": 2})
    run = train_segmentation(cfg, cache, split, tmp_path / "run", progress=False)
    out = tmp_path / "export" / "nnunet_weights.pth"
    n = export_nnunet(run, out)

    exported = torch.load(out, weights_only=True)  # safe to read
    weights = exported["network_weights"]
    assert n == len(weights) and not any(".seg_layers." in k for k in weights)
    # the trained tensors, read straight from the checkpoint the export must have used
    ckpt = run / "checkpoints" / ("best.ckpt" if (run / "checkpoints" / "best.ckpt").is_file() else "last.ckpt")
    trained = {k.removeprefix("model."): v for k, v in torch.load(ckpt, weights_only=True)["state_dict"].items()
               if k.startswith("model.")}
    assert load_checkpoint(run)[1].keys() == trained.keys()

    before, after = load_into_nnunet(cfg.model, out)
    assert after.keys() == trained.keys()
    for k in after:
        if ".seg_layers." in k:  # nnU-Net never loads the output layers
            assert torch.equal(after[k], before[k]), k
        else:
            assert torch.equal(after[k], trained[k]), k
            assert torch.equal(weights[k], trained[k]), k
    changed = [k for k in after if ".seg_layers." not in k and not torch.equal(after[k], before[k])]
    assert any(k.endswith("conv.weight") for k in changed)  # the load did replace nnU-Net's init


@pytest.mark.parametrize("method", ["simclr", "mim"])
def test_pretraining_run_exports_the_pretrained_tensors(method, tmp_path, phantom_cache, one_thread):
    cache, split = phantom_cache
    cfg = load_config(PretrainConfig, "pretrain", "tiny",
                      {"method": method, "schedule.epochs": 1, "schedule.iters_per_epoch": 2})
    run = pretrain(cfg, cache, tmp_path / "run", split=split, progress=False)
    out = tmp_path / "nnunet_weights.pth"
    export_nnunet(run, out)
    pretrained = load_pretrained(run)["state_dict"]

    before, after = load_into_nnunet(cfg.model, out)
    assert set(pretrained) <= set(after)
    for k, v in pretrained.items():
        assert torch.equal(after[k], v), k
    enc = [k for k in after if k.startswith(("encoder.", "decoder.encoder."))]
    assert set(enc) <= set(pretrained)  # the whole encoder, aliases included, is pretrained
    dec = [k for k in after if k.startswith("decoder.") and k not in enc and ".seg_layers." not in k]
    assert all(k in pretrained for k in dec) == (method == "mim")  # MIM pretrains the decoder too
    for k in (k for k in after if ".seg_layers." in k):
        assert torch.equal(after[k], before[k]), k


def test_export_of_a_folder_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        export_nnunet(tmp_path / "empty", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()
