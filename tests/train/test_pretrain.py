"""The pretraining engine end to end on the phantom, for every registered SSP method.

For each method in ``cardiossp.ssp.SSP_METHODS`` (new methods are picked up automatically):
``pretrain`` writes its run folder, the loss it logs is finite, ``pretrained.pt`` loads with
``weights_only=True`` and holds *trained* weights, and transferring them into a fresh
segmentation model changes exactly the parameter groups the method pretrains (encoder for
all; decoder only for MIM, de Mooij et al. 2024 §2.3; the output convs never).
"""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cardiossp.config import PretrainConfig, TrainConfig, load_config
from cardiossp.models import parameter_groups
from cardiossp.ssp import SSP_METHODS
from cardiossp.train.pretrain import PretrainModule, pretrain
from cardiossp.train.segmentation import build_segmentation_model
from cardiossp.train.transfer import load_pretrained, transfer_weights

# groups of the segmentation model that each kind of method must change on transfer
EXPECTED_GROUPS = {"encoder": {"encoder"}, "encoder+decoder": {"encoder", "decoder"}}


def pretrain_cfg(method: str, **over) -> PretrainConfig:
    return load_config(PretrainConfig, "pretrain", "tiny",
                       {"method": method, "schedule.epochs": 1, "schedule.iters_per_epoch": 3, **over})


@pytest.mark.parametrize("method", SSP_METHODS.names())
def test_pretrain_writes_a_run_that_transfers_the_right_groups(method, tmp_path, phantom_cache, one_thread):
    cache, split = phantom_cache
    cfg = pretrain_cfg(method)
    run = pretrain(cfg, cache, tmp_path / "run", split=split, progress=False)

    # --- the run folder
    for name in ("pretrained.pt", "checkpoints/last.ckpt", "done.json", "config.yaml"):
        assert (run / name).is_file(), name
    done = json.loads((run / "done.json").read_text())
    assert done["steps"] == 3 and done["epochs"] == 1
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["config"]["method"] == method and saved["pretrain_slices"] > 0
    m = pd.read_csv(run / "logs" / "metrics.csv")
    losses = m.dropna(subset=["train_loss_epoch"])["train_loss_epoch"].to_numpy()
    assert len(losses) == 1 and np.isfinite(losses).all(), losses
    with pytest.raises(Exception, match="holds a finished run"):  # never overwrite a finished run
        pretrain(cfg, cache, run, split=split, progress=False)

    # --- pretrained.pt: safe to load, self-describing, trained
    raw = torch.load(run / "pretrained.pt", map_location="cpu", weights_only=True)
    record = load_pretrained(run)
    assert record["path"] == str(run / "pretrained.pt")
    assert raw["state_dict"].keys() == record["state_dict"].keys()
    assert record["method"] == method and record["model"]["base_features"] == cfg.model.base_features
    assert record["transfers"] == SSP_METHODS.get(method).transfers
    state = record["state_dict"]
    # the weights the run started from: pretrain() seeds, then builds its modules from that seed
    L.seed_everything(cfg.seed, verbose=False)
    init = PretrainModule(cfg).method.transferable_state()
    assert init.keys() == state.keys()
    unchanged = [k for k in state if torch.equal(state[k], init[k])]
    assert not unchanged, f"{len(unchanged)}/{len(state)} pretrained tensors still at init: {unchanged[:5]}"

    # --- transfer into a fresh segmentation model of the same architecture
    train_cfg = load_config(TrainConfig, "train", "tiny", {"finetune.init": str(run)})
    torch.manual_seed(1234)
    seg = build_segmentation_model(train_cfg)
    fresh = {k: v.detach().clone() for k, v in seg.named_parameters()}
    report = transfer_weights(seg, state, str(run))
    assert report["mismatched"] == [] and report["unexpected"] == []
    assert report["transferred"] == len(state)

    groups = parameter_groups(seg)
    params = dict(seg.named_parameters())
    changed_groups = set()
    for group, names in groups.items():
        changed = [n for n in names if not torch.equal(params[n], fresh[n])]
        if changed:
            changed_groups.add(group)
            assert len(changed) == len(names), f"{group}: only {len(changed)}/{len(names)} tensors changed"
            for n in changed:  # every changed tensor is the pretrained one
                assert torch.equal(params[n], state[n]), n
    assert changed_groups == EXPECTED_GROUPS[record["transfers"]]
    assert "head" not in changed_groups
    if method == "mim":
        assert "decoder" in changed_groups
    # the encoder's alias keys in the state dict (decoder.encoder.*) carry the same pretrained values
    sd = seg.state_dict()
    for k in (k for k in sd if k.startswith("decoder.encoder.")):
        assert torch.equal(sd[k], state[k]), k


@pytest.mark.parametrize("method", ["simclr", "position"])
def test_pretraining_never_reads_val_or_test_subjects(method, tmp_path, phantom_cache, one_thread, monkeypatch):
    """Pretraining uses the split's training + unlabeled subjects only (labels never needed); the
    position pretext (which predicts the view) also the long-axis subjects (``other_views``)."""
    from cardiossp.data.splits import load_split, save_split
    from cardiossp.train import pretrain as pretrain_mod

    cache, split = phantom_cache
    sp = load_split(split)
    long_axis = sp["train"].pop()  # stands in for a long-axis subject
    sp["other_views"] = [long_axis]
    split = save_split(sp, tmp_path / "split.yaml")
    seen: list[list[str]] = []
    real = pretrain_mod.UnlabeledSlices

    def spy(sc, subjects, transform=None):
        seen.append(list(subjects))
        return real(sc, subjects, transform)

    monkeypatch.setattr(pretrain_mod, "UnlabeledSlices", spy)
    run = pretrain(pretrain_cfg(method, **{"schedule.iters_per_epoch": 1}), cache, tmp_path / "run", split=split,
                   progress=False)
    expected = set(sp["train"]) | set(sp["unlabeled"]) | ({long_axis} if method == "position" else set())
    assert seen and set(seen[0]) == expected
    assert not set(seen[0]) & (set(sp["val"]) | set(sp["test"]))
    assert yaml.safe_load((run / "config.yaml").read_text())["pretrain_subjects"] == len(seen[0])


def test_dino_teacher_warmup_fits_short_runs():
    """DINO's 30-epoch teacher-temperature warm-up is clamped to a shorter run (the tiny and cpu
    presets pretrain for fewer than 30 epochs); an explicit option is kept."""
    short = PretrainModule(load_config(PretrainConfig, "pretrain", "tiny", {"method": "dino"}))
    assert short.method.cfg["epochs"] == 2 and short.method.cfg["warmup_teacher_temp_epochs"] == 2
    assert short.method.teacher_temp_at(1.0) == pytest.approx(short.method.cfg["teacher_temp"])
    explicit = PretrainModule(load_config(PretrainConfig, "pretrain", "tiny", {
        "method": "dino", "schedule.epochs": 4, "method_options.warmup_teacher_temp_epochs": 1}))
    assert explicit.method.cfg["warmup_teacher_temp_epochs"] == 1
    long = PretrainModule(load_config(PretrainConfig, "pretrain", "tiny", {"method": "dino", "schedule.epochs": 100}))
    assert long.method.cfg["warmup_teacher_temp_epochs"] == 30  # the paper's value when the run is long enough


def test_lr_schedule_is_the_shared_warmup_cosine_of_the_shared_progress():
    """One definition of progress (``schedules.progress``) and of warm-up + cosine (``schedules.warmup_cosine``)."""
    from cardiossp.ssp import schedules
    from cardiossp.train.pretrain import lr_factor

    assert schedules.progress(0, 10) == 0.0 and schedules.progress(5, 10) == 0.5 and schedules.progress(12, 10) == 1.0
    assert schedules.progress(3, 0) == 1.0
    assert lr_factor(0, 10, 0) == pytest.approx(1.0) and lr_factor(10, 10, 0) == pytest.approx(0.0)
    assert lr_factor(5, 10, 0) == pytest.approx(0.5)
    assert [lr_factor(s, 10, 2) for s in (0, 1, 2)] == pytest.approx([0.0, 0.5, 1.0])  # linear warm-up
    for s in range(12):
        assert lr_factor(s, 10, 2) == pytest.approx(
            schedules.warmup_cosine(schedules.progress(s, 10), 1.0, 0.0, warmup_fraction=0.2))
    module = PretrainModule(pretrain_cfg("simclr"), total_steps=8)
    assert module.progress() == schedules.progress(module.global_step, 8)
