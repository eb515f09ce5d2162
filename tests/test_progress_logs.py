"""Logs a cluster user can read: off a terminal, training prints plain progress lines (no carriage-return
frames), subject-by-subject commands one line per subject, and every run folder keeps ``train.log``
(appended to on resume). On a terminal the Rich bar stays.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest
from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar
from typer.testing import CliRunner

from cardiossp.checksum import sha256_file
from cardiossp.cli import app
from cardiossp.cli.common import subject_progress
from cardiossp.config import PretrainConfig, TrainConfig, load_config
from cardiossp.progress import ProgressLines, duration, lines_every
from cardiossp.train import engine
from cardiossp.train.fit import train_segmentation
from cardiossp.train.pretrain import pretrain
from tests.stop_after import StopAfter

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
LINE = re.compile(r"^step (\d+)/(\d+) \(\d+%\) epoch (\d+)/(\d+) loss [-+.\deE]+(?:nan|inf)? \| "
                  r"\S+ elapsed, ETA \S+$")
EPOCHS, ITERS = 3, 4


class Boom(Callback):
    def on_train_start(self, trainer, pl_module):
        raise RuntimeError("boom at the start")


def tiny(**over) -> TrainConfig:
    return load_config(TrainConfig, "train", "tiny", {"schedule.epochs": EPOCHS, "schedule.iters_per_epoch": ITERS,
                                                      **over})


# ------------------------------------------------------------------------------------------- the line maker
class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_lines_print_20_to_50_lines_and_the_last():
    for total in (7, 40, 123, 1000, 98765):
        out, clock = [], Clock()
        lines = ProgressLines(total, "step", out.append, clock=clock)
        for i in range(1, total + 1):
            clock.t += 0.01
            lines.update(i)
        assert min(total, 20) <= len(out) <= 50, (total, len(out))
        assert out[-1].startswith(f"step {total}/{total} (100%)") and "ETA 0s" in out[-1]
        assert not any("\r" in line or "\n" in line for line in out)
    assert lines_every(1000) == 25


def test_progress_lines_also_every_60_seconds_with_an_eta():
    out, clock = [], Clock()
    lines = ProgressLines(1000, "step", out.append, clock=clock, start=100)  # resumed at 100: rate of this session
    for i in range(101, 131):
        clock.t += 10.0  # 10 s a step: 6 steps a minute, under the every-25-steps rule
        lines.update(i)
    assert [int(re.match(r"step (\d+)/", line).group(1)) for line in out] == [106, 112, 118, 124, 130]
    assert out[-1] == "step 130/1000 (13%) | 5m00s elapsed, ETA 2h25m"  # 870 steps left at 10 s
    assert duration(float("nan")) == "?" and duration(59.6) == "1m00s" and duration(3725) == "1h02m"


def test_subject_progress_off_a_terminal_prints_one_line_per_subject(capsys):
    with subject_progress("predict") as update:
        for i in range(1, 4):
            update(f"case{i}.nii.gz", i, 3)
    err = capsys.readouterr().err
    assert "\r" not in err
    got = err.splitlines()
    assert [line.split(" |")[0] for line in got] == ["predict 1/3 (33%) case1.nii.gz", "predict 2/3 (67%) case2.nii.gz",
                                                      "predict 3/3 (100%) case3.nii.gz"]
    assert all(re.search(r"\| \S+ elapsed, ETA \S+$", line) for line in got)


def test_the_rich_bar_stays_on_a_terminal_and_lines_replace_bars_elsewhere(tmp_path, monkeypatch):
    def kinds(tty: bool, progress: bool = True):
        monkeypatch.setattr(engine, "_rich_ok", lambda: tty)
        trainer = engine.build_trainer(tmp_path, 1, accelerator="cpu", devices=1, progress=progress)
        lines = [c for c in trainer.callbacks if isinstance(c, engine.LineProgress)]
        bars = [c for c in trainer.callbacks if isinstance(c, (RichProgressBar, TQDMProgressBar))]
        return bars, lines

    bars, lines = kinds(True)
    assert [type(b) for b in bars] == [RichProgressBar] and len(lines) == 1 and not lines[0].echo
    bars, lines = kinds(False)
    assert bars == [] and len(lines) == 1 and lines[0].echo
    bars, lines = kinds(False, progress=False)
    assert bars == [] and not lines[0].echo  # still written to train.log


# ------------------------------------------------------------------------------------------ real runs
def test_train_off_a_terminal_prints_lines_and_writes_train_log(tmp_path, phantom_cache):
    cache, split = phantom_cache
    run = tmp_path / "run"
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        res = subprocess.run([sys.executable, "-m", "cardiossp", "train", "--cache", cache, "--split", split, "--out",
                              run, "--preset", "tiny", "--labeled-subjects", "2", "--set", f"schedule.epochs={EPOCHS}",
                              "--set", f"schedule.iters_per_epoch={ITERS}"],
                             stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=ENV, cwd=tmp_path, timeout=300)
    stdout, stderr = ((tmp_path / name).read_text() for name in ("stdout", "stderr"))
    assert res.returncode == 0, stderr[-3000:]
    assert "\r" not in stderr and "\r" not in stdout  # no progress-bar frames
    steps = [LINE.match(line) for line in stderr.splitlines()]
    steps = [m for m in steps if m]
    total = EPOCHS * ITERS
    assert [int(m.group(1)) for m in steps] == list(range(1, total + 1))  # 12 steps: a line each
    assert all(int(m.group(2)) == total and int(m.group(4)) == EPOCHS for m in steps)
    assert "training 12 steps (3 epochs x 4 steps)" in stderr and "precision" in stderr

    log = (run / "train.log").read_text()
    assert "\r" not in log
    for needle in ("session start (fresh run)", "cardiossp 0.", "git ", "config: ", "schedule.epochs=3",
                   "data: cache ", "training 12 steps", " on cpu, precision ", "step 12/12 (100%)",
                   "epoch 3/3 ", "finished: ", "final metrics: ", "val_dice "):
        assert needle in log, f"{needle!r} not in train.log:\n{log}"
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO step 1/12 ", log, re.M)
    assert (run / "done.json").is_file()


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, phantom_cache):
    """A run stopped after epoch 1 (its train.log then), resumed to the end (its train.log now)."""
    cache, split = phantom_cache
    run = tmp_path_factory.mktemp("resume") / "run"
    train_segmentation(tiny(), cache, split, run, progress=False, callbacks=[StopAfter(1)])
    first = (run / "train.log").read_text()
    train_segmentation(tiny(), cache, split, run, progress=False, resume=True)
    return run, first, (run / "train.log").read_text()


def test_resume_appends_to_train_log(resumed):
    run, first, both = resumed
    assert both.startswith(first) and len(both) > len(first)
    assert "session ended at epoch 1/3, step 4" in first and "finished: " not in first
    assert "step 4/12 (33%)" in first and "step 5/12" not in first
    second = both[len(first):]
    assert second.count("==== session start") == 1 and "resumed from" in second
    assert "resumed at step 4" in second
    assert "step 5/12" in second and "step 4/12" not in second
    assert both.count("finished: ") == 1 and both.count("==== session start") == 2
    assert not [h for h in logging.getLogger("cardiossp").handlers if isinstance(h, logging.FileHandler)]


def test_evaluate_off_a_terminal_prints_a_line_per_subject(resumed):
    run, _, _ = resumed
    res = CliRunner().invoke(app, ["evaluate", "--run", str(run), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("evaluate ")]
    assert [line.split(" (")[0] for line in lines] == ["evaluate 1/2", "evaluate 2/2"]
    assert all("ETA" in line for line in lines) and "\r" not in res.stderr


def test_a_failing_run_logs_why_and_detaches_its_log(tmp_path, phantom_cache):
    cache, split = phantom_cache
    with pytest.raises(RuntimeError, match="boom"):
        train_segmentation(tiny(), cache, split, tmp_path / "run", progress=False, callbacks=[Boom()])
    log = (tmp_path / "run" / "train.log").read_text()
    assert "ERROR session stopped by RuntimeError: boom at the start" in log
    assert not [h for h in logging.getLogger("cardiossp").handlers if isinstance(h, logging.FileHandler)]
    logging.getLogger("cardiossp.train").info("after the run")  # goes nowhere near the run's log
    assert "after the run" not in (tmp_path / "run" / "train.log").read_text()


def test_pretraining_writes_train_log_with_the_weights_checksum(tmp_path, phantom_cache):
    cache, split = phantom_cache
    cfg = load_config(PretrainConfig, "pretrain", "tiny", {"method": "mim", "schedule.epochs": 1,
                                                            "schedule.iters_per_epoch": 2})
    run = pretrain(cfg, cache, tmp_path / "pre", split=split, progress=False)
    log = (run / "train.log").read_text()
    assert "method=mim" in log and "step 2/2 (100%)" in log and "finished: " in log
    assert f"pretrained.pt (sha256 {sha256_file(run / 'pretrained.pt')})" in log
