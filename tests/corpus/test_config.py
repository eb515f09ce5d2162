"""Bad-input corpus, config side (issue 15): out-of-range, mistyped and unknown config values and command
options. Each case runs a real command (``cardiossp train | pretrain | prepare | split | bench | experiment``)
and checks what a user sees: exit 2, one ``error:`` line naming the key (or option, or file), what is allowed
and what was given, no traceback; and that the check came before any work: no run folder, no cache.

The probe that opened the issue found ``--set schedule.epochs=-1`` training for ever, ``epochs=0`` writing
done.json with no model, ``epochs=abc`` / ``data.batch_size=0`` crashing with tracebacks, and
``prepare --size 0`` / ``--spacing -1`` building a garbage cache with exit 0.
"""

from __future__ import annotations

import pytest
import yaml

from .harness import assert_clean_failure, invoke, left_behind


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """(raw phantom folder, cache, split): 6 labeled + 1 unlabeled phantom subjects at 32 px, a 1/1 val/test
    split with budget 2. Good enough that any accepted command would start training on it."""
    from cardiossp.data.cache import prepare
    from cardiossp.data.readers.phantom import write_phantom_config
    from cardiossp.data.slices import SliceCache
    from cardiossp.data.splits import make_split, save_split

    root = tmp_path_factory.mktemp("cfg-phantom")
    raw = write_phantom_config(root / "raw", n_subjects=7, n_unlabeled=1, size=32, n_slices=2, n_frames=3)
    cache = prepare([("phantom", raw)], root / "cache", spacing=1.5, size=32)
    split = save_split(make_split(SliceCache(cache).subjects, seed=0, val=1, test=1, budgets=[2]),
                       root / "split.yaml")
    return raw, cache, split


def train(phantom, out, *extra):
    _, cache, split = phantom
    return invoke("train", "--cache", cache, "--split", split, "--out", out, "--preset", "tiny",
                  "--set", "accelerator=cpu", *extra)


def assert_no_work(folder):
    assert left_behind(folder) == [], left_behind(folder)
    assert not folder.exists(), f"{folder} was created: the check came after some work"


# ---------------------------------------------------------------- train / pretrain --set values


@pytest.mark.parametrize(("setting", "needles"), [
    ("schedule.epochs=-1", ["schedule.epochs", "an integer >= 1", "(got -1)"]),  # trained for ever
    ("schedule.epochs=0", ["schedule.epochs", ">= 1", "(got 0)"]),  # wrote done.json and no model
    ("schedule.epochs=abc", ["schedule.epochs", "an integer", "(got 'abc')"]),  # traceback
    ("data.batch_size=0", ["data.batch_size", ">= 1", "(got 0)"]),  # traceback
    ("optim.lr=-1", ["optim.lr", "a number > 0", "(got -1"]),
    ("data.num_workers=true", ["data.num_workers", "an integer >= 0", "(got True)"]),  # a bool for an int
    ("schedule.iters_per_epoch=2.5", ["schedule.iters_per_epoch", "an integer", "(got 2.5)"]),
    ("optim.momentum=1", ["optim.momentum", "in [0, 1)", "(got 1"]),
    ("data.augment=heavy", ["data.augment", "one of paper, nnunet, none", "(got 'heavy')"]),
    ("data.patch_size=60", ["data.patch_size", "a multiple of 8", "(got 60)"]),  # 4-stage unet: crashed at step 1
    ("model.name=vit", ["model.name", "unet", "(got 'vit')"]),
    ("schedule.epoch=3", ["unknown key schedule.epoch", "did you mean 'epochs'"]),
    ("optim.lr=[0.1", ["--set 'optim.lr=[0.1'", "not valid YAML"]),
])
def test_train_refuses_a_bad_set_value_before_any_work(phantom, tmp_path, setting, needles):
    out = tmp_path / "run"
    assert_clean_failure(train(phantom, out, "--set", setting), *needles)
    assert_no_work(out)


def test_every_bad_value_is_named_in_the_one_line(phantom, tmp_path):
    out = tmp_path / "run"
    line = assert_clean_failure(train(phantom, out, "--set", "schedule.epochs=0", "--set", "data.batch_size=0"),
                                "train config:", "schedule.epochs", "data.batch_size")
    assert line.count("must be") == 2
    assert_no_work(out)


@pytest.mark.parametrize(("option", "needles"), [
    (["--devices", "0"], ["devices", "auto, -1", "(got 0)"]),
    (["--num-nodes", "0"], ["num_nodes", ">= 1", "(got 0)"]),
    (["--seed", "-3"], ["seed", "in [0, 2147483647]", "(got -3)"]),
    (["--labeled-subjects", "0"], ["labeled_subjects", ">= 1 or null", "(got 0)"]),
    (["--strategy", "freeze"], ["finetune.strategy", "frozen-encoder", "(got 'freeze')"]),
    (["--semi", "fixmatch"], ["semi.method", "unimatch", "(got 'fixmatch')"]),
    (["--phases", "ED,EX"], ["data.phases", "ED, ES", "'EX'"]),
    (["--strategy", "warmup-frozen"], ["finetune.warmup_frozen_epochs", "in [1, schedule.epochs"]),
    (["--logger", "neptune"], ["--logger", "tensorboard, wandb, mlflow", "(got 'neptune')"]),
])
def test_train_options_are_checked_before_any_work(phantom, tmp_path, option, needles):
    out = tmp_path / "run"
    assert_clean_failure(train(phantom, out, *option), *needles)
    assert_no_work(out)


def test_a_malformed_preset_file_is_named(phantom, tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("schedule: {epochs: 3\ndata: {batch_size: 2}\n")
    out = tmp_path / "run"
    assert_clean_failure(train(phantom, out, "--preset", preset), str(preset), "not valid YAML", "line")
    assert_no_work(out)


def test_a_preset_that_is_not_a_mapping_is_named(phantom, tmp_path):
    preset = tmp_path / "list.yaml"
    preset.write_text("- schedule.epochs=3\n")
    out = tmp_path / "run"
    assert_clean_failure(train(phantom, out, "--preset", preset), str(preset), "must be a mapping")
    assert_no_work(out)


def test_a_bad_value_in_a_preset_file_is_named_by_key(phantom, tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text(yaml.safe_dump({"data": {"batch_size": -4}, "schedule": {"epochs": 1}}))
    out = tmp_path / "run"
    assert_clean_failure(train(phantom, out, "--preset", preset), "train config: data.batch_size", "(got -4)")
    assert_no_work(out)


def test_a_missing_preset_file_is_named(phantom, tmp_path):
    missing = tmp_path / "nowhere" / "p.yaml"
    out = tmp_path / "run"
    assert_clean_failure(train(phantom, out, "--preset", missing), str(missing), "not found")
    assert_no_work(out)


@pytest.mark.parametrize(("extra", "needles"), [
    (["--method", "moco"], ["pretrain config: method", "simclr", "(got 'moco')"]),
    (["--method", "dino", "--set", "optim.warmup_epochs=9"], ["optim.warmup_epochs", "<= schedule.epochs (2)"]),
    (["--method", "mim", "--set", "data.input_size=8"], ["data.input_size", ">= 16", "(got 8)"]),
    (["--method", "mim", "--set", "precision=fp4"], ["precision", "bf16-mixed", "(got 'fp4')"]),
])
def test_pretrain_refuses_bad_values_before_any_work(phantom, tmp_path, extra, needles):
    _, cache, _ = phantom
    out = tmp_path / "pre"
    assert_clean_failure(invoke("pretrain", "--cache", cache, "--out", out, "--preset", "tiny", *extra), *needles)
    assert_no_work(out)


# ---------------------------------------------------------------- prepare / split / bench options


@pytest.mark.parametrize(("option", "needles"), [
    (["--size", "0"], ["--size", "an integer >= 16", "(got 0)"]),
    (["--size", "8"], ["--size", ">= 16", "(got 8)"]),
    (["--spacing", "-1"], ["--spacing", "a number > 0", "(got -1.0)"]),
    (["--spacing", "0"], ["--spacing", "> 0", "(got 0.0)"]),
    (["--spacing", "nan"], ["--spacing", "> 0", "(got nan)"]),
])
def test_prepare_refuses_a_bad_grid_and_writes_no_cache(phantom, tmp_path, option, needles):
    raw, _, _ = phantom
    out = tmp_path / "cache"
    assert_clean_failure(invoke("prepare", "-r", "phantom", "-d", raw, "--out", out, *option), *needles)
    assert_no_work(out)


def test_prepare_checks_readers_and_folders_before_making_the_cache(phantom, tmp_path):
    raw, _, _ = phantom
    out = tmp_path / "cache"
    assert_clean_failure(invoke("prepare", "-r", "phantum", "-d", raw, "--out", out), "unknown reader 'phantum'",
                         "phantom")
    assert_no_work(out)
    missing = tmp_path / "no-such-data"
    assert_clean_failure(invoke("prepare", "-r", "phantom", "-d", missing, "--out", out), str(missing),
                         "no such file or folder")
    assert_no_work(out)


@pytest.mark.parametrize(("option", "needles"), [
    (["--val", "-1"], ["--val", "(got -1.0)"]),
    (["--test", "2.5"], ["--test", "a whole number of subjects", "(got 2.5)"]),
    (["--budgets", "0"], ["--budgets '0'", "label budget"]),
    (["--budgets", "-3,5"], ["--budgets '-3,5'"]),
    (["--seed", "-1"], ["--seed", "in [0, 2147483647]", "(got -1)"]),
    (["--vendor-groups", "AB"], ["--vendor-groups", "NAME=V1+V2", "'AB'"]),
])
def test_split_refuses_bad_options_and_writes_no_file(phantom, tmp_path, option, needles):
    _, cache, _ = phantom
    out = tmp_path / "split.yaml"
    assert_clean_failure(invoke("split", "--cache", cache, "--out", out, *option), *needles)
    assert not out.exists()


@pytest.mark.parametrize(("option", "needles"), [
    (["--size", "0"], ["--size", ">= 16", "(got 0)"]),
    (["--set", "schedule.epochs=0"], ["train config: schedule.epochs", "(got 0)"]),
])
def test_bench_checks_before_building_its_cache(phantom, tmp_path, option, needles):
    raw, _, _ = phantom
    out = tmp_path / "bench"
    assert_clean_failure(invoke("bench", "--data", raw, "--reader", "phantom", "--preset", "tiny", "--out", out,
                                *option), *needles)
    assert_no_work(out)


# ---------------------------------------------------------------- experiment plans and options


def _plan(tmp_path, **sections) -> str:
    doc = {"data": [{"reader": "phantom", "path": "builtin"}],
           "phantom": {"n_subjects": 8, "n_unlabeled": 0, "size": 32, "n_slices": 2, "n_frames": 3},
           "cache": {"spacing": 1.5, "size": 32}, "split": {"seed": 0, "val": 1, "test": 1},
           "train": {"preset": "tiny", "set": {"schedule.epochs": 1, "schedule.iters_per_epoch": 1}},
           "studies": {"label_budget": {"methods": ["scratch"], "budgets": [2], "seeds": [0]}}}
    doc.update(sections)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.mark.parametrize(("sections", "needles"), [
    ({"studies": {"label_budget": {"budgets": [-5, 2]}}}, ["studies.label_budget.budgets", "'all'", "-5"]),
    ({"studies": {"phase": {"seeds": ["a"]}}}, ["studies.phase.seeds", "integers", "'a'"]),
    ({"studies": {"convergence": {"budgets": [2]}}}, ["studies.convergence takes no key(s) budgets"]),
    ({"cache": {"spacing": -1, "size": 32}}, ["cache.spacing", "> 0", "(got -1)"]),
    ({"split": {"vall": 1}}, ["unknown key split.vall", "did you mean 'val'"]),
    ({"train": {"preset": "tiny", "set": {"schedule.epochs": 0}}}, ["train config: schedule.epochs", "(got 0)"]),
    ({"pretrain": {"preset": "tiny", "seeds": 0}}, ["pretrain.seeds", "a non-empty list", "(got 0)"]),
])
def test_a_bad_plan_names_its_file_and_key(tmp_path, sections, needles):
    plan = _plan(tmp_path, **sections)
    out = tmp_path / "campaign"
    assert_clean_failure(invoke("experiment", plan, "--out", out, "--dry-run"), f"plan {plan}", *needles)
    assert_no_work(out)


@pytest.mark.parametrize(("option", "needles"), [
    (["--shard", "3/2"], ["--shard 3/2", "0 <= I < N"]),
    (["--shard", "x"], ["--shard", "I/N"]),
    (["--num-nodes", "0"], ["--num-nodes", ">= 1", "(got 0)"]),
    (["--device", "tpu9"], ["--device", "auto, cpu or cuda"]),
])
def test_experiment_options_are_checked_before_any_work(tmp_path, option, needles):
    out = tmp_path / "campaign"
    assert_clean_failure(invoke("experiment", _plan(tmp_path), "--out", out, *option), *needles)
    assert_no_work(out)
