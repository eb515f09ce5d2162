"""The supervised training engine on the phantom: learning, resume, non-finite loss, DDP."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from cardiossp.config import TrainConfig, load_config
from cardiossp.machine import machine_facts, machine_summary
from cardiossp.train.fit import train_segmentation
from cardiossp.train.precision import resolve_precision
from cardiossp.train.segmentation import poly_lr
from tests.stop_after import StopAfter


def tiny(**over) -> TrainConfig:
    return load_config(TrainConfig, "train", "tiny", over)


def test_poly_lr_schedule():
    assert poly_lr(0, 100) == 1.0 and poly_lr(100, 100) == 0.0
    assert abs(poly_lr(50, 100) - 0.5**0.9) < 1e-12


def test_training_learns_the_phantom(tmp_path, phantom_cache, one_thread):
    cache, split = phantom_cache
    run = train_segmentation(tiny(**{"schedule.epochs": 6, "schedule.iters_per_epoch": 10}), cache, split,
                             tmp_path / "run", progress=False)
    m = pd.read_csv(run / "logs" / "metrics.csv")
    val = m.dropna(subset=["val_dice_LV"])
    loss = m.dropna(subset=["train_loss_epoch"])["train_loss_epoch"].to_numpy()
    assert loss[-1] < 0.7 * loss[0]
    # chance level of a blind guess of the LV is far below 0.1 on these slices
    assert val["val_dice_LV"].iloc[-1] > 0.4
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    cfg = (run / "config.yaml").read_text()
    assert "git_sha" in cfg and "train_subjects" in cfg
    done = json.loads((run / "done.json").read_text())
    assert done["steps"] == 60
    # the wall time travels with its hardware and precision
    assert done["machine"] == machine_facts() and done["precision"] == resolve_precision("auto", "cpu")
    assert f"machine: {machine_summary()}" in (run / "train.log").read_text()


def test_resume_gives_the_uninterrupted_weights(tmp_path, phantom_cache, one_thread):
    cache, split = phantom_cache
    cfg = tiny(**{"schedule.epochs": 2, "schedule.iters_per_epoch": 4, "data.augment": "paper"})
    full = train_segmentation(cfg, cache, split, tmp_path / "full", progress=False)
    part = train_segmentation(cfg, cache, split, tmp_path / "part", progress=False, callbacks=[StopAfter(1)])
    assert not (part / "done.json").exists()  # stopped early: not finished
    # the resume point holds the end of epoch 1 (not only written when training ends)
    assert torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    with pytest.raises(Exception, match="--resume"):
        train_segmentation(cfg, cache, split, part, progress=False)
    train_segmentation(cfg, cache, split, part, progress=False, resume=True)
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    # the metrics of the epoch before the interruption are kept
    m = pd.read_csv(part / "logs" / "metrics.csv")
    assert sorted(m.dropna(subset=["train_loss_epoch"])["epoch"].tolist()) == [0, 1]


def test_non_finite_loss_stops_with_step_and_subjects(tmp_path, phantom_cache, monkeypatch, one_thread):
    from cardiossp.train import segmentation

    cache, split = phantom_cache

    def nan_terms(self, out, target):
        return {"loss": torch.tensor(float("nan"), requires_grad=True)}

    monkeypatch.setattr(segmentation.DeepSupervisionLoss, "terms", nan_terms)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss .* step 0; subjects .*phantom"):
        train_segmentation(tiny(), cache, split, tmp_path / "nan", progress=False)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, phantom_cache):
    """Lightning DDP with 2 gloo processes through the CLI; each rank takes half the items."""
    cache, split = phantom_cache
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cardiossp", "train", "--cache", str(cache), "--split", str(split), "--out",
           str(tmp_path / "ddp"), "--preset", "tiny", "--devices", "2", "--set", "accelerator=cpu",
           "--set", "schedule.epochs=1", "--set", "schedule.iters_per_epoch=4"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    done = json.loads((tmp_path / "ddp" / "done.json").read_text())
    assert done["steps"] == 4  # global batch 8 = 4 per rank: the 4 iterations of the 1-process run


def test_done_json_counts_the_time_of_every_session(tmp_path, phantom_cache, one_thread):
    cache, split = phantom_cache
    cfg = tiny(**{"schedule.epochs": 2, "schedule.iters_per_epoch": 2})
    part = train_segmentation(cfg, cache, split, tmp_path / "part", progress=False, callbacks=[StopAfter(1)])
    first = json.loads((part / "logs" / "elapsed.json").read_text())
    assert first["epoch"] == 1 and first["seconds"] > 0
    train_segmentation(cfg, cache, split, part, progress=False, resume=True)
    done = json.loads((part / "done.json").read_text())
    assert done["seconds"] > first["seconds"]  # the first session's time is included
