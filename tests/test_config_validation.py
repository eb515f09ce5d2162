"""The config checker (``cardiossp.config_checks``) and the rules the config dataclasses declare: each rule
kind (type, bounds, choices, lazy registry choices, optional, list items, custom, coercion, cross-field),
the unknown-key and YAML errors of ``load_config``, and that every shipped preset and plan passes."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from cardiossp.config import (
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    PretrainDataConfig,
    PretrainOptimConfig,
    ScheduleConfig,
    SemiConfig,
    TrainConfig,
    from_dict,
    load_config,
    parse_override,
    save_run_config,
)
from cardiossp.config_checks import (
    Names,
    Rule,
    allowed,
    check_option,
    problems,
    read_yaml_mapping,
    rule_of,
    type_hints,
    value_ok,
)
from cardiossp.errors import ConfigError

ALL = (ModelConfig, DataConfig, OptimConfig, ScheduleConfig, FinetuneConfig, SemiConfig, TrainConfig,
       PretrainDataConfig, PretrainOptimConfig, PretrainConfig)


def train(**values) -> TrainConfig:
    """``load_config`` of the tiny preset with dotted-key overrides (the path every command takes)."""
    return load_config(TrainConfig, "train", "tiny", values)


def refused(match: str, **values) -> str:
    with pytest.raises(ConfigError, match=match) as e:
        train(**values)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("cls", ALL)
def test_every_default_passes_its_own_rule(cls):
    """With every lookup (``problems`` skips the registry lookup of a default value, trusting this test)."""
    hints = type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(cls(), f.name)
        if not dataclasses.is_dataclass(value):
            assert value_ok(value, hints[f.name], rule_of(f)), f"{cls.__name__}.{f.name} = {value!r}"
    assert problems(cls()) == []
    assert from_dict(cls, {}, "x") == cls()


def test_a_default_value_is_not_looked_up_but_any_other_is(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "cardiossp.train.transfer", raising=False)
    from_dict(FinetuneConfig, {"strategy": "all"}, "x")
    assert "cardiossp.train.transfer" not in sys.modules
    with pytest.raises(ConfigError, match="strategy must be one of all, frozen-encoder"):
        from_dict(FinetuneConfig, {"strategy": "al"}, "x")
    assert "cardiossp.train.transfer" in sys.modules


def test_every_shipped_preset_passes():
    from cardiossp.config import PRESET_DIR
    from cardiossp.ssp import SSP_METHODS

    for p in (PRESET_DIR / "train").glob("*.yaml"):
        load_config(TrainConfig, "train", p.stem)
    for p in (PRESET_DIR / "pretrain").glob("*.yaml"):
        for method in SSP_METHODS.names():
            load_config(PretrainConfig, "pretrain", p.stem, {"method": method})


def test_every_shipped_plan_passes():
    from cardiossp.config import PRESET_DIR
    from cardiossp.experiments import expand, load_plan

    for p in (PRESET_DIR / "plans").glob("*.yaml"):
        assert expand(load_plan(p.stem))


# ------------------------------------------------------------------ one rule kind at a time


def test_int_fields_take_ints_only():
    assert train(**{"schedule.epochs": 3}).schedule.epochs == 3
    for bad in (True, "3", 3.0, None, [3]):
        refused(r"schedule.epochs must be an integer >= 1 \(got ", **{"schedule.epochs": bad})


def test_float_fields_take_ints_and_finite_floats():
    cfg = train(**{"optim.lr": 1})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    for bad in (float("nan"), float("inf"), "0.1", False):
        refused(r"optim.lr must be a number > 0", **{"optim.lr": bad})


@pytest.mark.parametrize(("key", "ok", "bad", "says"), [
    ("schedule.epochs", 1, 0, ">= 1"),  # ge
    ("data.num_workers", 0, -1, ">= 0"),
    ("optim.lr", 1e-9, 0, "> 0"),  # gt
    ("model.width", 0.25, 0, "> 0"),
    ("optim.momentum", 0.999, 1, r"in \[0, 1\)"),  # ge and lt
    ("seed", 2**31 - 1, 2**31, r"in \[0, 2147483647\]"),  # ge and le
    ("data.patch_size", 16, 8, ">= 16"),
    ("model.n_stages", 2, 1, ">= 2"),
    ("optim.weight_decay", 0, -1e-5, ">= 0"),
    ("optim.grad_clip", 0, -1, ">= 0"),
    ("finetune.pretext_weight", 0, -0.5, ">= 0"),
])
def test_bounds(key, ok, bad, says):
    train(**{key: ok})
    refused(rf"train config: {key} must be .*{says} \(got ", **{key: bad})


def test_choices_fixed_and_from_other_modules():
    train(**{"data.augment_on": "loader", "schedule.epoch_mode": "pass", "model.norm": "batch", "data.task": "lv",
             "finetune.strategy": "frozen-encoder", "model.name": "resnet_unet"})
    refused(r"data.augment_on must be one of auto, device, loader \(got 'gpu'\)", **{"data.augment_on": "gpu"})
    refused(r"schedule.epoch_mode must be one of iterations, pass", **{"schedule.epoch_mode": "epochs"})
    refused(r"model.norm must be one of instance, batch \(got 'group'\)", **{"model.norm": "group"})
    refused(r"finetune.strategy must be one of all, frozen-encoder, warmup-frozen, multitask",
            **{"finetune.strategy": "linear-probe"})
    refused(r"model.name must be one of deeplabv3, resnet_unet, unet \(got 'vit'\)", **{"model.name": "vit"})
    with pytest.raises(ConfigError, match=r"pretrain config: method must be one of byol, dino, mim, pcl, position"):
        load_config(PretrainConfig, "pretrain", "tiny", {"method": "moco"})


def test_lazy_choices_are_looked_up_when_checked():
    names = Names("cardiossp.data.labels", "TASKS")  # a dict: its keys
    assert names.resolve() == ("cardiac", "lv")
    assert value_ok("lv", str, Rule(choices=names)) and not value_ok("rv", str, Rule(choices=names))
    assert "mim" in Names("cardiossp.ssp", "SSP_METHODS").resolve()  # a registry: its names()


def test_optional_fields_take_none():
    assert train(labeled_subjects=None, **{"semi.method": None}).labeled_subjects is None
    refused(r"labeled_subjects must be an integer >= 1 or null \(got 0\)", labeled_subjects=0)
    refused(r"semi.unlabeled_batch_size must be an integer >= 1 or null", **{"semi.unlabeled_batch_size": 0})
    refused(r"semi.method must be one of bcp, mean-teacher, self-training, unimatch or null",
            **{"semi.method": "fixmatch"})


def test_int_or_str_devices():
    for ok in ("auto", 1, 2, -1, "-1", "0,1"):
        assert train(devices=ok).devices == ok
    for bad in (0, -2, "gpu0", "", True, 1.5):
        refused(r"devices must be auto, -1, a device count >= 1 or device ids such as '0,1'", devices=bad)


def test_list_fields_check_every_item():
    assert train(**{"data.phases": ["ES"]}).data.phases == ["ES"]
    for bad in ([], ["ED", "EX"], "ED", [1]):
        refused(r"data.phases must be a non-empty list of ED, ES \(got ", **{"data.phases": bad})


def test_dict_and_bool_fields():
    refused(r"model.options must be a mapping \(got 'depth=18'\)", **{"model.options": "depth=18"})
    refused(r"model.deep_supervision must be true or false \(got 'yes please'\)",
            **{"model.deep_supervision": "yes please"})
    assert train(**{"finetune.allow_partial": True}).finetune.allow_partial is True
    refused(r"finetune.allow_partial must be true or false \(got 1\)", **{"finetune.allow_partial": 1})


def test_precision_accepts_lightning_numbers_as_text():
    assert train(precision=32).precision == "32"  # --set precision=32 reads as the int 32
    assert train(precision="bf16-mixed").precision == "bf16-mixed"
    refused(r"precision must be one of auto, 32-true, .* \(got 'fp8'\)", precision="fp8")
    refused(r"accelerator must be one of auto, cpu, gpu, cuda, mps, tpu \(got 'npu'\)", accelerator="npu")


def test_cross_field_rules():
    refused(r"data.patch_size must be a multiple of 8 for the 4-stage unet", **{"data.patch_size": 100})
    train(**{"data.patch_size": 100, "model.name": "resnet_unet"})  # its divisor is known once built
    refused(r"model.max_features must be an integer >= model.base_features \(8\) \(got 4\)",
            **{"model.max_features": 4})
    refused(r"optim.nesterov must be false when momentum is 0", **{"optim.momentum": 0})
    train(**{"optim.momentum": 0, "optim.nesterov": False})
    refused(r"finetune.warmup_frozen_epochs must be in \[1, schedule.epochs = 3\]",
            **{"finetune.strategy": "warmup-frozen", "finetune.warmup_frozen_epochs": 4})
    train(**{"finetune.strategy": "warmup-frozen", "finetune.warmup_frozen_epochs": 3})
    with pytest.raises(ConfigError, match=r"optim.warmup_epochs must be <= schedule.epochs \(2\) \(got 3\)"):
        load_config(PretrainConfig, "pretrain", "tiny", {"method": "dino", "optim.warmup_epochs": 3})
    with pytest.raises(ConfigError, match=r"data.input_size must be a multiple of 8"):
        load_config(PretrainConfig, "pretrain", "tiny", {"method": "mim", "data.input_size": 36})


def test_problems_are_all_reported_in_one_line():
    msg = refused("train config: ", **{"schedule.epochs": 0, "data.batch_size": "x", "optim.lr": -1})
    assert msg.count("must be") == 3 and msg.count("; ") == 2


def test_check_option_words():
    assert check_option("--size", 16, int, ge=16) == 16
    with pytest.raises(ConfigError, match=r"^--size must be an integer >= 16 \(got 0\)$"):
        check_option("--size", 0, int, ge=16)
    with pytest.raises(ConfigError, match=r"^--spacing must be a number > 0 \(got -1.0\)$"):
        check_option("--spacing", -1.0, float, gt=0)
    assert allowed(list[int], Rule(ge=0, nonempty=True)) == "a non-empty list of integers >= 0"
    assert allowed(int | None, Rule(ge=1, le=5)) == "an integer in [1, 5] or null"


# ------------------------------------------------------------------ keys, files and overrides


def test_unknown_keys_and_non_mapping_sections():
    with pytest.raises(ConfigError, match=r"unknown key schedule.epoch \(did you mean 'epochs'\?\); keys of "
                                          r"schedule: epochs, epoch_mode, iters_per_epoch, val_every"):
        train(**{"schedule.epoch": 3})
    with pytest.raises(ConfigError, match=r"unknown keys lr, wd; keys: model, data"):
        train(lr=1, wd=2)
    with pytest.raises(ConfigError, match=r"train config: schedule must be a mapping \(got 5\)"):
        train(schedule=5)
    with pytest.raises(ConfigError, match=r"cannot set seed.x: seed is a value \(0\), not a section"):
        load_config(TrainConfig, "train", None, {"seed": 0, "seed.x": 1})


def test_overrides_are_read_as_yaml():
    assert parse_override("optim.lr=0.02") == ("optim.lr", 0.02)
    assert parse_override("data.phases=[ED]") == ("data.phases", ["ED"])
    assert parse_override("semi.method=null") == ("semi.method", None)
    with pytest.raises(ConfigError, match="is not key=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match=r"'optim.lr=\{': the value is not valid YAML \(line 1"):
        parse_override("optim.lr={")
    with pytest.raises(ConfigError, match=r"schedule.epochs must be an integer >= 1 \(got 'abc'\)"):
        load_config(TrainConfig, "train", "tiny", ["schedule.epochs=abc"])


def test_yaml_files(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"^{f}: preset is not valid YAML \(line 2, column 1: "):
        read_yaml_mapping(f, "preset")
    f.write_text("- 1\n")
    with pytest.raises(ConfigError, match=rf"^{f}: preset must be a mapping"):
        read_yaml_mapping(f, "preset")
    f.write_text("")
    assert read_yaml_mapping(f, "preset") == {}
    f.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="not a text"):
        read_yaml_mapping(f, "preset")
    f.write_text("per_method: [mim]\n")
    with pytest.raises(ConfigError, match="per_method must map method names"):
        load_config(PretrainConfig, "pretrain", f, {"method": "mim"})


def test_a_saved_run_config_is_a_preset_and_is_checked(tmp_path):
    cfg = train(**{"schedule.epochs": 2, "optim.lr": 0.05})
    path = save_run_config(cfg, tmp_path / "run", train_subjects=["a"])
    assert load_config(TrainConfig, "train", path) == cfg
    doc = yaml.safe_load(path.read_text())
    doc["config"]["schedule"]["epochs"] = -1
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"train config: schedule.epochs must be an integer >= 1 \(got -1\)"):
        load_config(TrainConfig, "train", path)


def test_from_dict_checks_a_checkpoints_config_and_names_it():
    saved = dataclasses.asdict(TrainConfig())
    saved["data"]["batch_size"] = 0
    with pytest.raises(ConfigError, match=r"^run/last.ckpt:cfg: data.batch_size must be an integer >= 1"):
        from_dict(TrainConfig, saved, "run/last.ckpt:cfg")


def test_a_section_keeps_its_own_defaults():
    """PretrainConfig's schedule defaults to passes; overriding one key keeps the rest of that default."""
    cfg = load_config(PretrainConfig, "pretrain", None, {"schedule.epochs": 3})
    assert (cfg.schedule.epochs, cfg.schedule.epoch_mode) == (3, "pass")


def test_python_built_configs_are_checked_before_any_work(tmp_path, phantom_cache):
    from cardiossp.train.fit import train_segmentation

    cache, split = phantom_cache
    cfg = load_config(TrainConfig, "train", "tiny")
    cfg.schedule.epochs = 0  # set in Python, after load_config's checks
    with pytest.raises(ConfigError, match=r"train config: schedule.epochs must be an integer >= 1 \(got 0\)"):
        train_segmentation(cfg, cache, split, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").rglob("*.ckpt"))
