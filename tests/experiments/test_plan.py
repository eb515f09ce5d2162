"""Plans expand to the right runs: counts per study, shared runs counted once, pretraining once per method."""

from collections import Counter

import pytest

from cardiossp.errors import ConfigError
from cardiossp.experiments import expand, load_plan
from cardiossp.experiments.plan import train_config


def _counts(runs):
    per_study = Counter(s for r in runs if r.kind == "train" for s in r.studies)
    return per_study, Counter(r.kind for r in runs)


def test_smoke_plan_runs():
    runs = expand(load_plan("smoke"))
    per_study, kinds = _counts(runs)
    assert per_study == {"label_budget": 4, "phase": 2, "domain": 2, "augmentation": 2}
    # the augmentation study's "paper" arm is the label-budget run scratch-n6-s0: trained once
    assert kinds == {"pretrain": 1, "train": 9}
    shared = next(r for r in runs if r.name == "runs/scratch-n6-s0")
    assert shared.studies == ["label_budget", "augmentation"]
    assert [r.kind for r in runs[:1]] == ["pretrain"]
    mim = next(r for r in runs if r.name == "runs/mim-n2-s0")
    assert mim.needs == "pretrain/mim-s0" and mim.budget == 2
    ed = next(r for r in runs if r.name == "runs/scratch-n6-s0-ED")
    assert ed.overrides()["data.phases"] == ["ED"]
    ab = next(r for r in runs if r.name.endswith("-AB"))
    assert ab.overrides()["subset"] == "AB" and ab.budget is None


def test_acdc_cpu_plan_counts():
    plan = load_plan("acdc-cpu")
    runs = expand(plan)
    per_study, kinds = _counts(runs)
    assert per_study["label_budget"] == 5 * 4 * 3  # methods x budgets x seeds
    assert per_study["phase"] == 2 * 2 * 2
    assert per_study["domain"] == 2 * 2 * 2
    assert per_study["augmentation"] == 2 * 2 * 2
    # augmentation "paper" arms at budget 10, seeds 0-1, are label-budget runs: only the "none" arms are new
    assert kinds["train"] == 60 + 8 + 8 + 4
    assert kinds["pretrain"] == 4  # simclr, pcl, dino, mim; pretrained once (seed 0)
    assert {r.needs for r in runs if r.kind == "train" and r.method == "mim"} == {"pretrain/mim-s0"}
    assert plan.budgets() == [5, 10, 25]
    only = expand(plan, ["label_budget"])
    assert len(only) == 60 + 4


def test_pretraining_seeds_follow_finetuning_seeds(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text("data: [{reader: phantom, path: builtin}]\npretrain: {preset: tiny, seeds: [0, 1]}\n"
                    "train: {preset: tiny}\nstudies:\n"
                    "  label_budget: {methods: [mim], budgets: [2], seeds: [0, 1, 2]}\n")
    runs = expand(load_plan(plan))
    needs = {r.seed: r.needs for r in runs if r.kind == "train"}
    assert needs == {0: "pretrain/mim-s0", 1: "pretrain/mim-s1", 2: "pretrain/mim-s0"}
    assert sorted(r.name for r in runs if r.kind == "pretrain") == ["pretrain/mim-s0", "pretrain/mim-s1"]


def test_paper_plan_takes_data_paths():
    plan = load_plan("paper", {"mnms": "/data/MnM", "mnms2": "/data/MnM2"})
    assert [(s["reader"], s["path"]) for s in plan.data] == [("mnms", "/data/MnM"), ("mnms2", "/data/MnM2")]
    runs = expand(plan)
    assert sum("label_budget" in r.studies for r in runs) == 5 * 5 * 3


def test_bad_plans(tmp_path):
    with pytest.raises(ConfigError, match="unknown plan"):
        load_plan("nope")
    with pytest.raises(ConfigError, match="no data source read by 'acdc'"):
        load_plan("smoke", {"acdc": "/x"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [{reader: phantom, path: builtin}]\nstudies: {label_budgett: {}}\n")
    with pytest.raises(ConfigError, match="unknown study"):
        load_plan(bad)
    with pytest.raises(ConfigError, match="no study"):
        expand(load_plan("smoke"), ["vendor"])


def test_convergence_study_and_named_inits(tmp_path):
    plan = tmp_path / "conv.yaml"
    plan.write_text("data: [{reader: phantom, path: builtin}]\npretrain: {preset: tiny}\ntrain: {preset: tiny}\n"
                    "inits: {imagenet: {model.name: resnet_unet, model.encoder_weights: r18.pth}}\n"
                    "studies:\n  convergence: {methods: [scratch, imagenet, mim], budget: 4, seeds: [0, 1]}\n")
    runs = expand(load_plan(plan))
    assert [r.name for r in runs if r.kind == "pretrain"] == ["pretrain/mim-s0"]  # no pretraining for inits
    imagenet = [r for r in runs if r.method == "imagenet"]
    assert len(imagenet) == 2 and all(r.needs is None for r in imagenet)
    over = imagenet[0].overrides()
    assert over["model.encoder_weights"] == "r18.pth" and over["labeled_subjects"] == 4
    assert sum(r.kind == "train" for r in runs) == 6


def test_shipped_convergence_plan():
    runs = expand(load_plan("convergence"))
    assert sorted(r.name for r in runs if r.kind == "pretrain") == ["pretrain/mim-s0", "pretrain/position-s0"]
    train = [r for r in runs if r.kind == "train"]
    assert len(train) == 4 * 2 and {r.budget for r in train} == {10}


def test_method_with_strategy_shares_pretraining(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text("data: [{reader: phantom, path: builtin}]\npretrain: {preset: tiny}\ntrain: {preset: tiny}\n"
                    "studies:\n  label_budget: {methods: [position, 'position:multitask'], budgets: [2]}\n")
    runs = {r.name: r for r in expand(load_plan(plan))}
    assert sorted(runs) == ["pretrain/position-s0", "runs/position-multitask-n2-s0", "runs/position-n2-s0"]
    multi, plain = runs["runs/position-multitask-n2-s0"], runs["runs/position-n2-s0"]
    assert multi.needs == plain.needs == "pretrain/position-s0"
    assert multi.overrides()["finetune.strategy"] == "multitask" and "finetune.strategy" not in plain.overrides()
    assert multi.method == "position:multitask"  # the column label in tables and plots


def test_strategy_without_pretraining_is_refused(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text("data: [{reader: phantom, path: builtin}]\ntrain: {preset: tiny}\n"
                    "studies:\n  label_budget: {methods: ['scratch:frozen-encoder'], budgets: [2]}\n")
    with pytest.raises(ConfigError, match="no pretraining run"):
        expand(load_plan(plan))


def test_semi_axis_and_study_lists():
    """``acdc-few``: ``unimatch`` is scratch + UniMatch, ``mim+unimatch`` UniMatch from the MIM run; a
    study given as a list of specs adds every part's runs (budgets 3 and 10 for two arms only)."""
    from cardiossp.experiments.plan import split_semi

    runs = expand(load_plan("acdc-few"))
    by_name = {r.name: r for r in runs}
    uni = by_name["runs/unimatch-n5-s0"]
    assert uni.needs is None and uni.overrides()["semi.method"] == "unimatch"
    assert sorted(uni.studies) == ["convergence", "label_budget"]
    both = by_name["runs/mim+unimatch-n5-s2"]
    assert both.needs == "pretrain/mim-s0" and both.overrides()["semi.method"] == "unimatch"
    assert "semi.method" not in by_name["runs/mim-n5-s1"].overrides()
    assert {r.budget for r in runs if r.kind == "train"} == {3, 5, 10}
    student = by_name["runs/bcp+self-training-n5-s2"]  # self-training: its teacher is a run of the plan too
    assert student.teacher == "runs/bcp-n5-s2" and student.teacher in by_name
    recipe = by_name["runs/long+bcp-n10-s2"]  # the recipe at 10: BCP with the plan's named `long` schedule
    assert recipe.needs is None and recipe.overrides()["semi.method"] == "bcp"
    plan = load_plan("acdc-few")
    long_cfg, bcp_cfg = (train_config(plan, by_name[n].overrides()).schedule for n in
                         ("runs/long+bcp-n5-s2", "runs/bcp-n5-s2"))
    assert (long_cfg.epochs, bcp_cfg.epochs) == (120, 60) and long_cfg.iters_per_epoch == bcp_cfg.iters_per_epoch == 50
    control = by_name["runs/long-n5-s0"]  # the recipe's schedule on the labeled slices only
    assert "semi.method" not in control.overrides() and control.overrides()["schedule.epochs"] == 120
    assert "runs/unimatch-n3-s0" not in by_name and "runs/scratch-n3-s0" in by_name
    assert all(r.eval_folder == "test-tta-lcc" for r in runs if r.kind == "train")
    assert load_plan("acdc-few").budgets() == [3, 5, 10]
    assert split_semi("mim:frozen-encoder+bcp") == ("mim:frozen-encoder", "bcp")
    assert split_semi("mean-teacher") == ("scratch", "mean-teacher") and split_semi("mim") == ("mim", None)
    with pytest.raises(ConfigError, match="not a semi-supervised method"):
        split_semi("mim+fixmatch")


def test_pretraining_run_with_named_settings(tmp_path):
    """``mim+long+bcp``: BCP with the named ``long`` settings, started from the MIM run: the same overrides
    as ``long+bcp`` but for the start; the fine-tuning lr of ``long`` is the one a run from MIM uses."""
    from cardiossp.train.fit import start_lr

    plan = load_plan("acdc-few")
    runs = {r.name: r for r in expand(plan)}
    both, recipe = runs["runs/mim+long+bcp-n5-s1"], runs["runs/long+bcp-n5-s1"]
    assert both.needs == "pretrain/mim-s0" and recipe.needs is None
    assert both.overrides() == recipe.overrides() and both.overrides()["semi.method"] == "bcp"
    cfg = train_config(plan, both.overrides())
    cfg.finetune.init = "bench/few/pretrain/mim-s0"
    assert cfg.schedule.epochs == 120 and start_lr(cfg) == 0.01 == train_config(plan, {}).optim.lr
    assert both.eval_folder == "test-tta-lcc" and "convergence" in runs["runs/mim+long+bcp-n5-s0"].studies

    bad = tmp_path / "p.yaml"
    head = ("data: [{reader: phantom, path: builtin}]\ntrain: {preset: tiny}\n"
            "inits: {long: {schedule.epochs: 9}, wide: {model.width: 2.0}}\nstudies:\n  label_budget: ")
    for method, message in [("long+wide+bcp", "at most one pretraining run"), ("mim+position+bcp", "at most one"),
                            ("long:frozen-encoder+bcp", "no pretraining run to fine-tune")]:
        bad.write_text(head + f"{{methods: ['{method}'], budgets: [2]}}\n")
        with pytest.raises(ConfigError, match=message):
            expand(load_plan(bad))
    bad.write_text(head + "{methods: ['mim:frozen-encoder+long+mean-teacher'], budgets: [2]}\n")
    (run,) = [r for r in expand(load_plan(bad)) if r.kind == "train"]
    assert (run.needs, run.strategy, run.overrides()["schedule.epochs"]) == ("pretrain/mim-s0", "frozen-encoder", 9)


def test_the_recipes_ablations_differ_from_it_in_one_setting_each():
    """``long-bn+bcp``, ``long-lr2x+bcp``, ``long-lrhalf+bcp``, ``long-cpwarm+bcp``: the recipe (``long+bcp``) with
    BatchNorm, the lr doubled / halved (the start lr of a run from scratch and from pretraining alike), or the BCP
    authors' copy-paste warm start, at 5 only: seed 0, and seeds 1-2 for the doubled lr."""
    from cardiossp.train.fit import start_lr

    plan = load_plan("acdc-few")
    runs = {r.name: r for r in expand(plan)}
    recipe = train_config(plan, runs["runs/long+bcp-n5-s0"].overrides())
    bn, double, half, cpwarm = (train_config(plan, runs[f"runs/{m}+bcp-n5-s0"].overrides())
                                for m in ("long-bn", "long-lr2x", "long-lrhalf", "long-cpwarm"))
    assert (recipe.model.norm, bn.model.norm) == ("instance", "batch")
    bn.model.norm = recipe.model.norm
    assert bn == recipe
    assert (recipe.semi.options, cpwarm.semi.options) == ({}, {"warmup_copy_paste": True})
    cpwarm.semi.options = {}
    assert cpwarm == recipe
    for cfg, lr in ((double, 0.02), (half, 0.005)):
        assert cfg.optim.lr == lr and cfg.semi.method == "bcp" and cfg.schedule.epochs == 120
        cfg.finetune.init = "pretrain/mim-s0"
        assert start_lr(cfg) == lr
    assert not any(n.startswith("runs/long-bn+bcp") and not n.endswith("-n5-s0") for n in runs)
    assert sorted(n for n in runs if n.startswith("runs/long-lr2x+bcp")) == [
        f"runs/long-lr2x+bcp-n5-s{s}" for s in range(3)]


def test_the_recipe_preset_is_the_plans_recipe_arm():
    """``--preset few-bcp`` trains what the plan's ``long+bcp`` arm trains (the two files are kept in step), and
    from a pretraining run what ``mim+long+bcp`` trains; ``few`` itself stays the 3000-iteration preset."""
    from cardiossp.config import TrainConfig, load_config
    from cardiossp.train.fit import start_lr

    plan = load_plan("acdc-few")
    recipe = {r.name: r for r in expand(plan)}["runs/long+bcp-n5-s1"].overrides()
    arm = train_config(plan, recipe)
    per_run = {k: v for k, v in recipe.items() if k in ("seed", "labeled_subjects", "subset", "data.phases")}
    preset = load_config(TrainConfig, "train", "few-bcp", per_run)
    assert preset == arm and preset.semi.method == "bcp" and preset.schedule.epochs == 120
    assert load_config(TrainConfig, "train", "few").schedule.epochs == 60 != preset.schedule.epochs
    preset.finetune.init = arm.finetune.init = "pretrain/mim-s0"
    assert start_lr(preset) == start_lr(arm) == 0.01


def test_self_training_arm_trains_its_teacher_first(tmp_path):
    """``bcp+self-training``: the teacher ``runs/bcp-n5-s0`` is its own run, listed before the student,
    which learns from ``pseudo/bcp-n5-s0`` and starts where the teacher started (MIM for mim+bcp)."""
    plan = tmp_path / "p.yaml"
    plan.write_text("data: [{reader: phantom, path: builtin}]\ntrain: {preset: tiny}\nstudies:\n  label_budget: "
                    "{methods: [bcp+self-training, mim+bcp+self-training, scratch+self-training], budgets: [5]}\n")
    runs = expand(load_plan(plan))
    names = [r.name for r in runs]
    by_name = {r.name: r for r in runs}
    for teacher, student in [("runs/bcp-n5-s0", "runs/bcp+self-training-n5-s0"),
                             ("runs/mim+bcp-n5-s0", "runs/mim+bcp+self-training-n5-s0"),
                             ("runs/scratch-n5-s0", "runs/scratch+self-training-n5-s0")]:
        s = by_name[student]
        assert names.index(teacher) < names.index(student) and s.teacher == teacher
        assert s.overrides()["semi.method"] == "self-training"
        assert s.overrides()["semi.pseudo_labels"] == "pseudo/" + teacher.removeprefix("runs/")
        assert s.needs == by_name[teacher].needs
    assert by_name["runs/mim+bcp+self-training-n5-s0"].needs == "pretrain/mim-s0"
    assert "semi.method" not in by_name["runs/scratch-n5-s0"].overrides()
    plan.write_text("data: [{reader: phantom, path: builtin}]\ntrain: {preset: tiny}\nstudies:\n  label_budget: "
                    "{methods: [mim+bcp+self-training+self-training], budgets: [5]}\n")
    runs = {r.name: r for r in expand(load_plan(plan))}  # a second round: the first student is the teacher
    second = runs["runs/mim+bcp+self-training+self-training-n5-s0"]
    assert second.teacher == "runs/mim+bcp+self-training-n5-s0" and second.needs == "pretrain/mim-s0"
    assert runs[second.teacher].teacher == "runs/mim+bcp-n5-s0"
    for bad, needle in [("self-training", "names no teacher"), ("+self-training", "teacher arm"),
                        ("scratch:frozen-encoder+self-training", "no pretraining run")]:
        plan.write_text(f"data: [{{reader: phantom, path: builtin}}]\ntrain: {{preset: tiny}}\nstudies:\n"
                        f"  label_budget: {{methods: ['{bad}'], budgets: [5]}}\n")
        with pytest.raises(ConfigError, match=needle):
            expand(load_plan(plan))


def test_plan_evaluate_section_picks_the_test_evaluation(tmp_path):
    plan = tmp_path / "p.yaml"
    text = "data: [{reader: phantom, path: builtin}]\ntrain: {preset: tiny}\nstudies: {label_budget: {budgets: [2]}}\n"
    plan.write_text(text)
    assert [r.eval_folder for r in expand(load_plan(plan))] == ["test"]
    plan.write_text(text + "evaluate: {tta: true, largest_component: true}\n")
    assert [r.eval_folder for r in expand(load_plan(plan))] == ["test-tta-lcc"]
    plan.write_text(text + "evaluate: {tta: maybe}\n")
    with pytest.raises(ConfigError, match="evaluate.tta"):
        load_plan(plan)
