"""``cardiossp experiment PLAN --out DIR``: run a plan's campaign, resumably, one share at a time.

Layout of a campaign folder::

    DIR/campaign.json        the plan (resolved) and the expanded runs
    DIR/cache/, split.yaml   prepared once (re-used when the sources did not change)
    DIR/pretrain/<method>-s<seed>/   pretraining runs (done = pretrained.pt)
    DIR/runs/<name>/         fine-tuning runs (done = done.json + eval/test[-tta][-lcc]/summary.json)
    DIR/results.csv, tables.md, plots/   written after the runs

A finished run is skipped; an interrupted one resumes from its last checkpoint; a run that
raises writes ``failed.json`` (error and traceback) and the campaign goes on with the others
(it is retried next time). ``shard=(i, n)`` runs the runs whose index modulo ``n`` is ``i``
(for a cluster job array); a fine-tuning run whose pretraining (or, for self-training, whose teacher
run) is not finished yet is reported ``needs <run>`` and left for a later call.
"""

from __future__ import annotations

import fnmatch
import json
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Protocol

from ..atomic import write_json
from ..errors import ConfigError
from .plan import Plan, RunSpec, expand, pretrain_config, train_config

Say = Callable[[str], None]


class Executor(Protocol):
    def prepare(self, plan: Plan, out: Path) -> None: ...
    def pretrain(self, spec: RunSpec, folder: Path) -> None: ...
    def train(self, spec: RunSpec, folder: Path, init: Path | None) -> None: ...
    def evaluate(self, spec: RunSpec, folder: Path) -> None: ...


def is_done(spec: RunSpec, folder: Path) -> bool:
    if spec.kind == "pretrain":
        return (folder / "pretrained.pt").is_file()
    return (folder / "done.json").is_file() and (folder / "eval" / spec.eval_folder / "summary.json").is_file()


def status(spec: RunSpec, out: Path) -> str:
    folder = out / spec.name
    if is_done(spec, folder):
        return "done"
    if (folder / "failed.json").is_file():
        return "failed"
    if spec.needs and not (out / spec.needs / "pretrained.pt").is_file():
        return f"needs {spec.needs}"
    if spec.teacher and not (out / spec.teacher / "done.json").is_file():
        return f"needs {spec.teacher}"
    return "started" if (folder / "checkpoints" / "last.ckpt").is_file() else "to run"


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text}: need 0 <= I < N")
    return i, n


def run_campaign(plan: Plan, out: str | Path, studies: list[str] | None = None, shard: tuple[int, int] = (0, 1),
                 dry_run: bool = False, executor: Executor | None = None, say: Say = print,
                 runs: list[str] | None = None) -> list[dict]:
    """Run (or with ``dry_run`` only list) this shard's runs, or those whose name (``runs/<name>``,
    ``pretrain/<name>``) matches one of the ``runs`` patterns; returns one status row per run."""
    out = Path(out)
    patterns = runs
    runs = expand(plan, studies)
    if patterns:
        runs = [r for r in runs if any(fnmatch.fnmatch(r.name.split("/", 1)[1], p) for p in patterns)]
        if not runs:
            raise ConfigError(f"no run of plan {plan.name!r} matches {', '.join(patterns)}")
    for spec in runs:  # fail on a bad preset or override before hours of work
        (pretrain_config if spec.kind == "pretrain" else train_config)(plan, spec.overrides())
    mine = [(i, s) for i, s in enumerate(runs) if i % shard[1] == shard[0]]
    if dry_run:
        return [{"run": s.name, "studies": "+".join(s.studies), "status": status(s, out)} for _, s in mine]
    executor = executor or _default_executor()
    # the whole plan, whatever this call runs: tables cover every evaluated run of the folder
    write_json(out / "campaign.json", {"plan": asdict_plan(plan), "runs": [asdict(s) for s in expand(plan)]},
               default=str)
    executor.prepare(plan, out)
    rows = []
    for k, (_, spec) in enumerate(mine):
        before = status(spec, out)
        if before == "done" or before.startswith("needs"):
            rows.append({"run": spec.name, "status": before})
            continue
        folder = out / spec.name
        say(f"[{k + 1}/{len(mine)}] {spec.name} ({before})")
        t0 = time.time()
        try:
            if spec.kind == "pretrain":
                executor.pretrain(spec, folder)
            else:
                if not (folder / "done.json").is_file():
                    executor.train(spec, folder, out / spec.needs if spec.needs else None)
                executor.evaluate(spec, folder)
        except Exception as e:  # noqa: BLE001 - one failing run must not stop the campaign
            write_json(folder / "failed.json", {"error": f"{type(e).__name__}: {e}",
                                                "traceback": traceback.format_exc()}, default=str)
            say(f"    failed: {type(e).__name__}: {e} (see {folder / 'failed.json'})")
            rows.append({"run": spec.name, "status": "failed", "error": str(e)})
            continue
        (folder / "failed.json").unlink(missing_ok=True)
        rows.append({"run": spec.name, "status": "ran", "seconds": round(time.time() - t0, 1)})
    return rows


def asdict_plan(plan: Plan) -> dict:
    return {k: getattr(plan, k) for k in plan.__dataclass_fields__}


def load_campaign(out: str | Path) -> tuple[dict, list[RunSpec]]:
    """The plan and runs recorded in ``out/campaign.json``."""
    path = Path(out) / "campaign.json"
    if not path.is_file():
        raise ConfigError(f"{out} is not a campaign folder (no campaign.json); run `cardiossp experiment` first")
    raw = json.loads(path.read_text())
    runs = [RunSpec(**{**r, "phases": tuple(r["phases"])}) for r in raw["runs"]]
    return raw["plan"], runs


def _default_executor() -> Executor:
    from .execute import LocalExecutor

    return LocalExecutor()
