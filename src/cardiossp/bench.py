"""Real-data benchmarks (not tests): train and evaluate on a dataset folder, report a table.

``cardiossp bench --data ../shared/data/acdc``: the ``cpu`` training preset on
ACDC (cache 1.6 mm x 160 px) with a fixed split (20 test subjects, 5 validation, the rest
training), then 3D Dice
per class, HD95, LVEF error on the test set in native geometry, wall time and peak
memory. Writes ``bench.md`` and ``bench.json`` in the output folder.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch

from .atomic import write_json, write_text
from .config import TrainConfig, load_config
from .data.cache import prepare
from .data.slices import SliceCache
from .data.splits import make_split, save_split
from .evaluate.run import evaluate_run
from .machine import machine_summary
from .train.fit import train_segmentation

# The cpu presets' grid: 1.6 mm (close to ACDC's native 1.4-1.6 mm) x 160 px = the 256 mm field of
# view; training patches of 128 px cover 80 % of it, so inference sees little the network never saw.
CPU_SPACING, CPU_SIZE = 1.6, 160


def peak_memory_gb() -> float:
    """Peak resident memory of this process and of its finished children (GiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 2**20


def machine() -> str:
    return f"{machine_summary()}, torch {torch.__version__}"


def bench_supervised(data: str | Path, out: str | Path, reader: str = "acdc", preset: str = "cpu",
                     seed: int = 0, n_test: int = 20, n_val: int = 5, overrides: dict | None = None,
                     spacing: float = CPU_SPACING, size: int = CPU_SIZE) -> dict:
    out = Path(out)
    t0 = time.time()
    cache = prepare([(reader, data)], out / f"cache-{spacing}mm-{size}", spacing=spacing, size=size)
    t_prep = time.time() - t0
    split = out / "split.yaml"
    if not split.exists():
        save_split(make_split(SliceCache(cache).subjects, seed=seed, val=n_val, test=n_test), split)
    cfg = load_config(TrainConfig, "train", preset, {"seed": seed, **(overrides or {})})
    run = out / f"run-{preset}-seed{seed}"
    t1 = time.time()
    if not (run / "done.json").exists():
        train_segmentation(cfg, cache, split, run, resume=(run / "checkpoints" / "last.ckpt").exists(),
                           progress=False)
    t_train = time.time() - t1
    t2 = time.time()
    summary = evaluate_run(run, split=split, subset="test")
    t_eval = time.time() - t2
    lcc = evaluate_run(run, split=split, subset="test", largest_component=True)
    o, c = summary["overall"], summary.get("clinical", {})
    result = {
        "preset": preset, "reader": reader, "data": str(data), "seed": seed, "test_subjects": summary["n_subjects"],
        "dice": {k: o[f"dice_{k}"]["mean"] for k in ("LV", "MYO", "RV")},
        "dice_mean": o["dice_mean"]["mean"],
        "dice_largest_component": {k: lcc["overall"][f"dice_{k}"]["mean"] for k in ("LV", "MYO", "RV", "mean")},
        "hd95_mm": {k: o[f"hd95_{k}"]["mean"] for k in ("LV", "MYO", "RV")},
        "lvef_mae": _mae(c, "LV_EF"),
        "seconds": {"prepare": t_prep, "train": t_train, "evaluate": t_eval,
                    "train_recorded": json.loads((run / "done.json").read_text())["seconds"]},
        "peak_memory_gb": peak_memory_gb(), "machine": machine(),
    }
    write_json(out / "bench.json", result)
    write_text(out / "bench.md", _markdown(result))
    return result


def _mae(clinical: dict, key: str):
    v = clinical.get(key)
    return v.get("mae") if isinstance(v, dict) else None


def _markdown(r: dict) -> str:
    d, h = r["dice"], r["hd95_mm"]
    s = r["seconds"]
    return (
        "| preset | test subjects | Dice LV | Dice MYO | Dice RV | mean | HD95 LV/MYO/RV (mm) | LVEF MAE (%) "
        "| train (min) | peak memory (GiB) |\n|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {r['preset']} | {r['test_subjects']} | {d['LV']:.3f} | {d['MYO']:.3f} | {d['RV']:.3f} | "
        f"{r['dice_mean']:.3f} | {h['LV']:.1f} / {h['MYO']:.1f} / {h['RV']:.1f} | "
        f"{(r['lvef_mae'] if r['lvef_mae'] is not None else float('nan')):.1f} | {s['train_recorded'] / 60:.1f} | "
        f"{r['peak_memory_gb']:.1f} |\n\nWith largest-connected-component clean-up: Dice "
        + " / ".join(f"{k} {v:.3f}" for k, v in r["dice_largest_component"].items())
        + f".\n\nMachine: {r['machine']}.\n"
    )
