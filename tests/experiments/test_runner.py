"""The campaign runner: resume after a kill, sharding covers every run once, failures are recorded."""

import json
from pathlib import Path

import pandas as pd
import pytest

from cardiossp.errors import ConfigError
from cardiossp.experiments import expand, load_plan, run_campaign
from cardiossp.experiments.results import collect_results
from cardiossp.experiments.runner import load_campaign, parse_shard, status


class Killed(BaseException):
    """Stands for SIGKILL / Ctrl-C: not an Exception, so the runner does not record it as a failure."""


class FakeExecutor:
    """Writes the files a real run leaves behind; can be told to die or fail at given runs."""

    def __init__(self, kill_at: str | None = None, fail: set[str] = frozenset()):
        self.calls: list[str] = []
        self.kill_at, self.fail = kill_at, set(fail)

    def prepare(self, plan, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)

    def _enter(self, name: str) -> None:
        if name == self.kill_at:
            raise Killed(name)
        if name in self.fail:
            raise RuntimeError(f"boom in {name}")
        self.calls.append(name)

    def pretrain(self, spec, folder: Path) -> None:
        self._enter(spec.name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "pretrained.pt").write_bytes(b"x")

    def train(self, spec, folder: Path, init) -> None:
        self._enter(spec.name)
        assert (spec.needs is None) == (init is None)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "done.json").write_text(json.dumps({"train_subjects": 8}))

    def evaluate(self, spec, folder: Path) -> None:
        ev = folder / "eval" / "test"
        ev.mkdir(parents=True, exist_ok=True)
        rows = [{"subject": f"s{i}", "dataset": "phantom", "vendor": v, "centre": "1", "pathology": "NOR", "phase": ph,
                 "dice_LV": 0.9, "dice_MYO": 0.7, "dice_RV": 0.8, "dice_mean": 0.8, "hd95_LV": 3.0}
                for i, v in enumerate("AC") for ph in ("ED", "ES")]
        pd.DataFrame(rows).to_csv(ev / "per_subject.csv", index=False)
        (ev / "summary.json").write_text("{}")


def test_killed_campaign_resumes_without_redoing(tmp_path):
    plan = load_plan("smoke")
    names = [r.name for r in expand(plan)]
    first = FakeExecutor(kill_at=names[4])
    with pytest.raises(Killed):
        run_campaign(plan, tmp_path, executor=first, say=lambda s: None)
    assert first.calls == names[:4]
    second = FakeExecutor()
    rows = run_campaign(plan, tmp_path, executor=second, say=lambda s: None)
    assert second.calls == names[4:]  # nothing finished is redone
    assert [r["status"] for r in rows] == ["done"] * 4 + ["ran"] * (len(names) - 4)
    third = FakeExecutor()
    run_campaign(plan, tmp_path, executor=third, say=lambda s: None)
    assert third.calls == []


@pytest.mark.parametrize("n", [1, 3, 4])
def test_shards_cover_every_run_exactly_once(tmp_path, n):
    plan = load_plan("acdc-cpu")
    names = [r.name for r in expand(plan)]
    listed = [r["run"] for i in range(n) for r in run_campaign(plan, tmp_path, shard=(i, n), dry_run=True)]
    assert sorted(listed) == sorted(names) and len(set(listed)) == len(names)
    # executing the shards one after another (as a job array would, twice) runs each run once
    ex = FakeExecutor()
    for _ in range(2):
        for i in range(n):
            run_campaign(plan, tmp_path, shard=(i, n), executor=ex, say=lambda s: None)
    assert sorted(ex.calls) == sorted(names)


def test_failed_run_is_recorded_and_others_go_on(tmp_path):
    plan = load_plan("smoke")
    ex = FakeExecutor(fail={"pretrain/mim-s0", "runs/scratch-n2-s0"})
    rows = {r["run"]: r for r in run_campaign(plan, tmp_path, executor=ex, say=lambda s: None)}
    assert rows["runs/scratch-n2-s0"]["status"] == "failed"
    failed = json.loads((tmp_path / "runs/scratch-n2-s0/failed.json").read_text())
    assert "boom in runs/scratch-n2-s0" in failed["error"] and "Traceback" in failed["traceback"]
    assert rows["runs/mim-n2-s0"]["status"] == "needs pretrain/mim-s0"  # its pretraining failed
    assert rows["runs/scratch-n6-s0"]["status"] == "ran"
    # next call retries the failures and clears their record
    again = {r["run"]: r["status"] for r in run_campaign(plan, tmp_path, executor=FakeExecutor(), say=lambda s: None)}
    assert again["runs/scratch-n2-s0"] == "ran" and again["runs/mim-n2-s0"] == "ran"
    assert not (tmp_path / "runs/scratch-n2-s0/failed.json").exists()
    assert all(status(s, tmp_path) == "done" for s in expand(plan))


def test_results_table_is_tidy(tmp_path):
    plan = load_plan("smoke")
    run_campaign(plan, tmp_path, executor=FakeExecutor(), say=lambda s: None)
    res = collect_results(tmp_path)
    n_train = sum(r.kind == "train" for r in expand(plan))
    # per run: 2 subjects x 2 phases x (dice for LV, MYO, RV, mean + hd95 LV)
    assert len(res) == n_train * 4 * 5
    row = res[(res["run"] == "scratch-nall-s0-AB") & (res["metric"] == "dice") & (res["class"] == "MYO")]
    assert set(row["value"]) == {0.7} and set(row["budget"]) == {8} and set(row["budget_label"]) == {"all"}
    assert set(row["subset"]) == {"AB"} and set(row["studies"]) == {"domain"}
    assert (tmp_path / "results.csv").is_file()


def test_bad_shard():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_campaign_record_covers_the_whole_plan_when_run_study_by_study(tmp_path):
    plan = load_plan("smoke")
    run_campaign(plan, tmp_path, studies=["phase"], executor=FakeExecutor(), say=lambda *_: None)
    _, recorded = load_campaign(tmp_path)
    assert [r.name for r in recorded] == [r.name for r in expand(plan)]
    results = collect_results(tmp_path)  # only the phase study's runs are evaluated so far
    assert set(results["run"]) == {r.name.removeprefix("runs/") for r in expand(plan, ["phase"]) if r.kind == "train"}


def test_runs_filter_picks_runs_by_name(tmp_path):
    plan = load_plan("smoke")
    rows = run_campaign(plan, tmp_path, dry_run=True, runs=["scratch-n6-*", "mim-s0"])
    assert sorted(r["run"] for r in rows) == ["pretrain/mim-s0", "runs/scratch-n6-s0", "runs/scratch-n6-s0-ED",
                                              "runs/scratch-n6-s0-ES", "runs/scratch-n6-s0-augnone"]
    with pytest.raises(ConfigError, match="no run of plan"):
        run_campaign(plan, tmp_path, dry_run=True, runs=["nothing*"])
