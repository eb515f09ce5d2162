"""kill -9 at a seeded point inside the work, rerun, same result (issue 15): prepare, train, pretrain and an
experiment campaign, each as a real ``python -m cardiossp`` subprocess.

Every test runs the command uninterrupted into folder A (concurrently with B where that saves wall time),
runs it into folder B and sends SIGKILL at a point drawn from ``random.Random(seed)``, reruns the same
command into B (``--resume`` for train / pretrain; prepare and experiment continue by themselves) and
compares B with A:

- prepare: every file of the cache (arrays, meta records, manifest, tables) byte-identical;
- train, pretrain: every tensor of the final weights equal (``torch.equal``: bit-identical), the run's
  ``done.json`` the same but for its wall-clock fields, and ``logs/metrics.csv`` the same rows, each once;
- experiment: the rows of ``results.csv`` equal (exactly), and every run's final weights equal.

The kill point is counted in progress events, not seconds, so it lands inside the work however slow the
machine: the k-th finished subject (``meta.json``) of prepare, the t-th optimizer step shown by the
training progress lines (after the first ``last.ckpt``, before the last step), or the s-th step of the r-th
run of the campaign; then a seeded extra delay of at most a few tens of milliseconds. Each test asserts
the process was still running when killed and that its output was incomplete.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

# The engine pins DataLoader workers to one thread, not the main process: do it here, as CI and the
# in-process tests (conftest ``one_thread``) do; tiny nets on a 2-core machine are fastest on one thread.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
TIMEOUT = 300  # seconds any one subprocess may take before the test fails (a hang must not block CI)
STEP = re.compile(r"^step (\d+)/(\d+) ", re.M)  # the training progress lines off a terminal (engine.LineProgress)
WALL_CLOCK = ("seconds", "slices_per_second")  # done.json fields that measure time, not the result


class Proc:
    """``python -m cardiossp ARGS`` in a subprocess; a thread collects its merged stdout + stderr."""

    def __init__(self, args: list, cwd: Path):
        self.args = [str(a) for a in args]
        self.p = subprocess.Popen([sys.executable, "-m", "cardiossp", *self.args], cwd=cwd, env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.p.stdout.read1(1 << 16), b""):
            self._chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def tail(self, n: int = 4000) -> str:
        return f"`cardiossp {' '.join(self.args)}` output (tail):\n{self.text[-n:]}"

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            pytest.fail(f"timed out after {timeout} s; {self.tail()}")
        self._reader.join(10)
        return rc

    def finish(self) -> None:
        """Wait for the command and require success."""
        rc = self.wait()
        assert rc == 0, f"exit code {rc}; {self.tail()}"

    def kill_when(self, ready, delay: float, timeout: float = TIMEOUT) -> None:
        """SIGKILL once ``ready()`` is true (polled every 5 ms) plus ``delay`` seconds; the process must still be
        running then."""
        t0 = time.monotonic()
        while not ready():
            if self.p.poll() is not None:
                pytest.fail(f"the command ended (exit {self.p.returncode}) before the kill point; {self.tail()}")
            if time.monotonic() - t0 > timeout:
                self.p.kill()
                self.p.wait()
                pytest.fail(f"kill point not reached in {timeout} s; {self.tail()}")
            time.sleep(0.005)
        time.sleep(delay)
        assert self.p.poll() is None, f"the command ended before the kill ({delay:.3f} s past the point); {self.tail()}"
        self.p.send_signal(signal.SIGKILL)
        assert self.wait() == -signal.SIGKILL, self.tail()


@pytest.fixture
def procs(tmp_path):
    """Start commands with ``procs(args)``; any still running when the test ends is killed (by its Popen)."""
    started: list[Proc] = []

    def start(args: list) -> Proc:
        started.append(Proc(args, tmp_path))
        return started[-1]

    yield start
    for p in started:
        if p.p.poll() is None:
            p.p.kill()
            p.p.wait()


def steps_shown(text: str) -> int:
    """Optimizer steps done, from the last training progress line (``step t/total ...``, one a step here)."""
    shown = STEP.findall(text)
    return int(shown[-1][0]) if shown else 0


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_tensors(a: Path, b: Path) -> None:
    sa, sb = state_dict(a), state_dict(b)
    assert sa.keys() == sb.keys(), f"{a} and {b} hold different keys"
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)}/{len(sa)} tensors of {b} differ from the uninterrupted run's, e.g. {differ[:5]}"


def done_record(run: Path) -> dict:
    done = json.loads((run / "done.json").read_text())
    return {k: v for k, v in done.items() if k not in WALL_CLOCK}


def assert_same_metrics(a: Path, b: Path) -> None:
    """The rerun's ``logs/metrics.csv`` holds the uninterrupted run's rows, each once (column order aside)."""
    ma, mb = (pd.read_csv(run / "logs" / "metrics.csv") for run in (a, b))
    assert sorted(mb.columns) == sorted(ma.columns)
    mb = mb[ma.columns]
    twice = [(int(e), int(s)) for e, s in mb[mb.duplicated(keep="first")][["epoch", "step"]].to_numpy()]
    n_a, n_b = len(ma), len(mb)
    assert n_b == n_a, (f"{b}/logs/metrics.csv has {n_b} rows, the uninterrupted run's {n_a}; rows logged twice "
                        f"(epoch, step): {twice}")
    pd.testing.assert_frame_equal(mb, ma, check_exact=True)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------- prepare

N_SUBJECTS = 12  # 80 px, 6 slices, 8 frames: ~30-60 ms a subject, under a second of work after the imports


def raw_dataset(reader: str, out: Path) -> Path:
    """12 phantom subjects (2 unlabeled) for the ``phantom`` reader (generated on reading) or as the NIfTI
    folder the ``nifti`` reader reads (fingerprinted by its files)."""
    from cardiossp.data.readers.phantom import write_phantom_config, write_phantom_dataset

    kw = dict(n_subjects=N_SUBJECTS, n_unlabeled=2, size=80, n_slices=6, n_frames=8)
    return write_phantom_config(out, **kw) if reader == "phantom" else write_phantom_dataset(out, **kw)


@pytest.mark.parametrize("reader, seed", [("phantom", 0), ("nifti", 1)])
def test_prepare_killed_then_rerun_gives_the_same_cache(tmp_path, procs, reader, seed):
    raw = raw_dataset(reader, tmp_path / "raw")  # one raw folder: the fingerprints hold its paths and times

    def args(out: Path) -> list:
        return ["prepare", "-r", reader, "-d", raw, "-o", out, "--spacing", "1.5", "--size", "64"]

    a, b = tmp_path / "A", tmp_path / "B"
    full, killed = procs(args(a)), procs(args(b))
    rng = random.Random(seed)
    k, delay = rng.randint(1, N_SUBJECTS - 4), rng.uniform(0.0, 0.02)  # after the k-th subject, mid-way in one
    killed.kill_when(lambda: len(list((b / "subjects").glob("*/meta.json"))) >= k, delay)
    assert not (b / "cache.json").exists(), "prepare was killed after it finished"
    assert len(list((b / "subjects").glob("*/meta.json"))) < N_SUBJECTS
    full.finish()
    procs(args(b)).finish()  # prepare continues a cache by itself: subjects already done are reused
    fa, fb = files(a), files(b)
    assert sorted(fb) == sorted(fa), f"extra {sorted(set(fb) - set(fa))}, missing {sorted(set(fa) - set(fb))}"
    differ = [name for name in fa if fa[name] != fb[name]]
    assert not differ, f"files of the rerun cache differ from the uninterrupted one: {differ[:10]}"


# ------------------------------------------------------------------------------------------- train, pretrain

EPOCHS, ITERS = 3, 4  # 12 optimizer steps of the tiny 64 px U-Net; a checkpoint after steps 4 and 8


def kill_between_steps(proc: Proc, run: Path, rng: random.Random) -> int:
    """Kill after a seeded step t of EPOCHS * ITERS, with t past the first epoch (its ``last.ckpt`` written)
    and before the last step; returns t."""
    t = rng.randint(ITERS + 1, EPOCHS * ITERS - 1)
    proc.kill_when(lambda: steps_shown(proc.text) >= t, rng.uniform(0.0, 0.05))
    assert (run / "checkpoints" / "last.ckpt").is_file(), "no resume point: the kill came before the first epoch ended"
    assert not (run / "done.json").exists(), "the run finished before the kill"
    return t


@pytest.mark.parametrize("seed", [0])
def test_train_killed_then_resumed_gives_the_same_weights(tmp_path, procs, phantom_cache, seed):
    cache, split = phantom_cache

    def args(out: Path, *extra) -> list:
        return ["train", "--cache", cache, "--split", split, "--out", out, "--preset", "tiny", "--labeled-subjects",
                "2", "--set", f"schedule.epochs={EPOCHS}", "--set", f"schedule.iters_per_epoch={ITERS}", *extra]

    a, b = tmp_path / "A", tmp_path / "B"
    full, killed = procs(args(a)), procs(args(b))  # A and B side by side: two cores, two processes
    kill_between_steps(killed, b, random.Random(seed))
    full.finish()
    procs(args(b, "--resume")).finish()
    for name in ("last.ckpt", "best.ckpt"):
        assert_same_tensors(a / "checkpoints" / name, b / "checkpoints" / name)
    assert done_record(b) == done_record(a)
    assert_same_metrics(a, b)


@pytest.mark.parametrize("seed", [1])
def test_pretrain_killed_then_resumed_gives_the_same_weights(tmp_path, procs, phantom_cache, seed):
    cache, split = phantom_cache

    def args(out: Path, *extra) -> list:
        return ["pretrain", "--method", "mim", "--cache", cache, "--split", split, "--out", out, "--preset", "tiny",
                "--set", f"schedule.epochs={EPOCHS}", "--set", f"schedule.iters_per_epoch={ITERS}", *extra]

    a, b = tmp_path / "A", tmp_path / "B"
    full, killed = procs(args(a)), procs(args(b))
    kill_between_steps(killed, b, random.Random(seed))
    assert not (b / "pretrained.pt").exists()
    full.finish()
    procs(args(b, "--resume")).finish()
    assert_same_tensors(a / "pretrained.pt", b / "pretrained.pt")
    assert_same_tensors(a / "checkpoints" / "last.ckpt", b / "checkpoints" / "last.ckpt")
    assert done_record(b) == done_record(a)
    assert_same_metrics(a, b)


# ------------------------------------------------------------------------------------------------ experiment

PLAN = {  # 2 pretraining runs (MIM, SimCLR) and their 2 fine-tuning runs at 2 labeled subjects, 48 px
    "data": [{"reader": "phantom", "path": "builtin"}],
    "phantom": {"n_subjects": 8, "n_unlabeled": 1, "size": 48, "n_slices": 3, "n_frames": 3, "seed": 0},
    "cache": {"spacing": 1.5, "size": 48},
    "split": {"seed": 0, "val": 1, "test": 2},
    "pretrain": {"preset": "tiny", "seeds": [0],
                 "set": {"data.input_size": 48, "schedule.epochs": 2, "schedule.iters_per_epoch": 3}},
    "train": {"preset": "tiny", "set": {"data.patch_size": 48, "schedule.epochs": 2, "schedule.iters_per_epoch": 3}},
    "studies": {"label_budget": {"methods": ["mim", "simclr"], "budgets": [2], "seeds": [0]}},
}
RUN_STEPS = 2 * 3  # optimizer steps of every run of PLAN


@pytest.mark.parametrize("seed", [0])
def test_experiment_killed_then_rerun_gives_the_same_results(tmp_path, procs, seed):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN, sort_keys=False))

    def args(out: Path) -> list:
        return ["experiment", plan, "--out", out, "--progress", "--device", "cpu"]  # --progress: step events

    from cardiossp.experiments import expand, load_plan

    runs = [r.name for r in expand(load_plan(plan))]
    assert runs == ["pretrain/mim-s0", "pretrain/simclr-s0", "runs/mim-n2-s0", "runs/simclr-n2-s0"]
    a, b = tmp_path / "A", tmp_path / "B"
    full, killed = procs(args(a)), procs(args(b))
    rng = random.Random(seed)
    r, s = rng.randrange(len(runs)), rng.randint(1, RUN_STEPS - 1)  # the s-th step of the r-th run
    marker = f"[{r + 1}/{len(runs)}] {runs[r]}"

    def ready() -> bool:
        text = killed.text
        return marker in text and steps_shown(text[text.index(marker):]) >= s

    killed.kill_when(ready, rng.uniform(0.0, 0.05))
    assert not (b / "results.csv").exists(), "the campaign finished before the kill"
    full.finish()
    rerun = procs(args(b))
    rerun.finish()
    assert marker in rerun.text  # the killed run was run again (finished ones are skipped silently)
    ra, rb = pd.read_csv(a / "results.csv"), pd.read_csv(b / "results.csv")
    assert len(ra) > 0
    pd.testing.assert_frame_equal(rb, ra, check_exact=True)
    for run in runs:
        weights = "pretrained.pt" if run.startswith("pretrain/") else "checkpoints/last.ckpt"
        assert_same_tensors(a / run / weights, b / run / weights)
