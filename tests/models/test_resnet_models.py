"""ResNet U-Net and DeepLabV3: shapes, parameter groups of every registered model, encoder weights
from a local file (torchvision ResNet state dicts made here from random inits: no download), and
building any model from a ``ModelConfig`` for training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate
from torchvision.models import resnet18, resnet50

from cardiossp.config import ModelConfig, PretrainConfig, TrainConfig, load_config
from cardiossp.data.augment import build_transforms
from cardiossp.errors import CheckpointError, ConfigError
from cardiossp.models import (
    GROUPS,
    MODELS,
    build_from_config,
    build_model,
    deep_supervision_scales,
    encoder_features,
    input_divisor,
    key_groups,
    load_encoder_weights_file,
    parameter_groups,
    set_deep_supervision,
)

SIZE = 64
TINY = {  # every registered model, small enough for one forward/backward at SIZE px
    "unet": {"n_stages": 4, "base_features": 8, "max_features": 32},
    "resnet_unet": {"depth": 18, "decoder_channels": (32, 16, 16, 8, 8)},
    "deeplabv3": {},  # ~40M parameters, still < 1 s at 64 px
}



@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision ResNet-18 state dict (with ``fc.``), as ``torch.save(resnet18(...).state_dict())`` writes."""
    torch.manual_seed(3)
    state = resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_every_registered_model_has_a_tiny_config():
    assert set(MODELS.names()) == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_groups_partition_parameters_and_every_parameter_trains(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, **TINY[name])
    groups = parameter_groups(model)
    flat = [n for g in GROUPS for n in groups[g]]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters()) and len(flat) == len(set(flat))
    assert all(groups[g] for g in GROUPS) and all(n.startswith("encoder.") for n in groups["encoder"])
    assert sum(len(v) for v in key_groups(model).values()) == len(model.state_dict())
    params = dict(model.named_parameters())
    assert all(params[n].shape[0] == 4 for n in groups["head"])  # the head = the output conv(s), 4 classes

    x = torch.randn(2, 1, SIZE, SIZE)
    out = model(x)
    outs = out if isinstance(out, list) else [out]
    scales = deep_supervision_scales(model)
    assert len(outs) == (len(scales) if scales else 1)
    assert [tuple(o.shape) for o in outs] == [(2, 4, int(SIZE * s[0]), int(SIZE * s[1])) for s in scales or [[1, 1]]]
    sum(o.square().mean() for o in outs).backward()
    assert not [n for n, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert encoder_features(model, x)[-1].shape[1] == model.encoder.output_channels[-1]


@pytest.mark.parametrize("depth, widths", [(18, [64, 64, 128, 256, 512]), (34, [64, 64, 128, 256, 512]),
                                           (50, [64, 256, 512, 1024, 2048])])  # fmt: skip
def test_resnet_unet_features_and_deep_supervision(depth, widths):
    torch.manual_seed(0)
    model = build_model("resnet_unet", depth=depth, decoder_channels=(16, 8, 8, 8, 8)).eval()
    x = torch.randn(1, 1, SIZE, SIZE)
    with torch.no_grad():
        feats = encoder_features(model, x)
        ds = model(x)
        set_deep_supervision(model, False)
        single = model(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(c, SIZE // 2 ** (i + 1), SIZE // 2 ** (i + 1))
                                                   for i, c in enumerate(widths)]  # fmt: skip
    assert [o.shape[-1] for o in ds] == [64, 32, 16, 8, 4] and torch.allclose(single, ds[0], atol=1e-6)
    assert model.encoder.conv1.in_channels == 1 and input_divisor(model) == (32, 32)
    with pytest.raises(ConfigError, match="divisible by 32"):
        model(torch.randn(1, 1, 48, 48))
    with pytest.raises(ConfigError, match="depth"):
        build_model("resnet_unet", depth=101)
    with pytest.raises(ConfigError, match="decoder_channels"):
        build_model("resnet_unet", depth=18, decoder_channels=(8, 8))


def test_deeplabv3_layout():
    model = build_model("deeplabv3", num_classes=3)
    assert type(model.head) is torch.nn.Conv2d and model.head.out_channels == 3 and model.head.kernel_size == (1, 1)
    assert type(model.decoder[0]).__name__ == "ASPP" and len(model.decoder) == 4  # ASPP, conv, BN, ReLU
    assert not any("aux" in k for k in model.state_dict())
    assert model.encoder.conv1.in_channels == 1 and model.encoder.layer4[-1].conv2.dilation == (4, 4)
    assert deep_supervision_scales(model) is None and input_divisor(model) == (8, 8)
    set_deep_supervision(model, False)  # nothing to switch off: fine
    with pytest.raises(ConfigError, match="no deep-supervision"):
        set_deep_supervision(model, True)


@pytest.mark.parametrize("with_fc", [True, False])
def test_encoder_weights_equal_the_file_and_conv1_sums_rgb(tmp_path, resnet18_file, with_fc):
    path, state = resnet18_file
    if not with_fc:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        path = tmp_path / "no_fc.pth"
        torch.save(state, path)
    model = build_model("resnet_unet", **TINY["resnet_unet"])
    decoder = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    assert load_encoder_weights_file(model, path) == len(state) - 2 * with_fc
    enc = model.encoder.state_dict()
    assert torch.allclose(enc["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert all(torch.equal(enc[k], v) for k, v in state.items() if k != "conv1.weight" and not k.startswith("fc."))
    assert all(torch.equal(v, decoder[k]) for k, v in model.decoder.state_dict().items())
    # the summed filter answers a grey image as the RGB filter answers (x, x, x)
    rgb = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    rgb.weight.data.copy_(state["conv1.weight"])
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encoder.conv1(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_bad_encoder_weights_name_the_file(tmp_path, resnet18_file):
    path, _ = resnet18_file
    model = build_model("resnet_unet", depth=50, decoder_channels=(8, 8, 8, 8, 8))
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"resnet18\.pth: does not fit the encoder.*shape mismatches"):
        load_encoder_weights_file(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.encoder.state_dict().items())  # untouched
    with pytest.raises(CheckpointError, match="resnet18.pth: does not fit.*missing"):
        load_encoder_weights_file(build_model("unet", **TINY["unet"]), path)
    with pytest.raises(CheckpointError, match="nothing.pth: encoder weights file not found"):
        load_encoder_weights_file(model, tmp_path / "nothing.pth")
    (tmp_path / "text.pth").write_text("not torch")
    with pytest.raises(CheckpointError, match="text.pth: cannot read"):
        load_encoder_weights_file(model, tmp_path / "text.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list.pth: expected a state dict"):
        load_encoder_weights_file(model, tmp_path / "list.pth")


def test_deeplabv3_encoder_takes_resnet50_weights(tmp_path):
    torch.manual_seed(4)
    state = resnet50(weights=None).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "r50.pth")  # DDP-style
    model = build_model("deeplabv3")
    load_encoder_weights_file(model, tmp_path / "r50.pth")
    enc = model.encoder.state_dict()
    assert torch.equal(enc["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"])
    assert torch.equal(enc["layer3.5.bn2.running_var"], state["layer3.5.bn2.running_var"])
    assert torch.allclose(enc["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))


def test_build_from_config(resnet18_file):
    path, state = resnet18_file
    # the unet geometry fields (here a preset's) do not apply to resnet_unet: ignored
    cfg = ModelConfig(name="resnet_unet", n_stages=5, options={"depth": 18}, encoder_weights=str(path))
    model = build_from_config(cfg, num_classes=2)
    assert torch.equal(model.encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert model.decoder.seg_layers[0].out_channels == 2 and model.decoder.deep_supervision
    fresh = build_from_config(cfg, num_classes=2, deep_supervision=False, load_encoder_weights=False)
    assert not torch.equal(fresh.encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert not fresh.decoder.deep_supervision
    unet = build_from_config(ModelConfig(**TINY["unet"], width=0.5), num_classes=4)
    assert unet.encoder.output_channels == build_model("unet", **TINY["unet"], width=0.5).encoder.output_channels
    with pytest.raises(ConfigError, match=r"takes no option\(s\) \['dept'\]"):
        build_from_config(ModelConfig(name="resnet_unet", options={"dept": 18}), 4)
    with pytest.raises(ConfigError, match=r"takes no option\(s\) \['n_stages'\]"):
        build_from_config(ModelConfig(name="resnet_unet", options={"n_stages": 4}), 4)
    with pytest.raises(ConfigError, match="set elsewhere"):
        build_from_config(ModelConfig(name="unet", options={"n_stages": 3}), 4)


@pytest.mark.parametrize("name, ds, n_outputs", [("resnet_unet", True, 5), ("resnet_unet", False, 1),
                                                 ("deeplabv3", True, 1)])  # fmt: skip
def test_training_loss_and_targets_follow_the_model(name, ds, n_outputs):
    from cardiossp.train.segmentation import SegmentationModule

    options = {"resnet_unet": {"depth": 18, "decoder_channels": [16, 8, 8, 8, 8]}, "deeplabv3": {}}[name]
    cfg = load_config(TrainConfig, "train", "tiny",
                      {"model.name": name, "model.options": options, "model.deep_supervision": ds})  # fmt: skip
    module = SegmentationModule(cfg)
    assert module.n_outputs == n_outputs
    scales = deep_supervision_scales(module.model) if ds else None  # as train.fit chooses them
    aug = build_transforms("none", SIZE, scales)
    rng = np.random.default_rng(0)
    batch = default_collate([aug({"image": rng.normal(size=(1, SIZE, SIZE)).astype(np.float32),
                                  "segmentation": rng.integers(0, 4, (1, SIZE, SIZE))}) for _ in range(2)])  # fmt: skip
    targets = batch["segmentation"]
    assert (len(targets) if isinstance(targets, list) else 1) == n_outputs
    with torch.no_grad():
        terms = module.loss.terms(module.model(batch["image"]), targets)
    assert torch.isfinite(terms["loss"]) and terms["loss"] > 0


def test_export_to_nnunet_refuses_other_models(tmp_path):
    from cardiossp.train.export import export_nnunet
    from cardiossp.train.pretrain import PretrainModule

    cfg = load_config(PretrainConfig, "pretrain", "tiny", {"method": "simclr", "model.name": "resnet_unet",
                                                           "model.options": {"depth": 18}})  # fmt: skip
    record = PretrainModule(cfg).pretrained_record()
    assert record["state_dict"] and all(k.startswith("encoder.") for k in record["state_dict"])
    torch.save(record, tmp_path / "pretrained.pt")
    with pytest.raises(ConfigError, match="'resnet_unet'; only 'unet'"):
        export_nnunet(tmp_path, tmp_path / "out.pth")


def test_cli_train_has_encoder_weights_option():
    from typer.testing import CliRunner

    from cardiossp.cli import app

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--encoder-weights" in result.output
