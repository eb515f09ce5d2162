"""Pretraining throughput of every registered method, one after the other in one process.

    python benchmarks/pretrain_throughput.py --cache bench/acdc5/cache            # the docs/BENCHMARKS.md table
    python benchmarks/pretrain_throughput.py --cache CACHE --preset tiny --steps 3  # a smoke run

Each method pretrains ``--steps`` steps of the preset (``cpu``: batch 32, 128² views) on every frame
of the cache, into a temporary folder, with the real data pipeline (augmentation, view making,
loader workers). Prints a Markdown table of input slices per second as ``done.json`` records
them: wall time of ``trainer.fit`` including its start-up, so use enough steps (≥ 30) that start-up
is small. Run it on a quiet machine; the figures of one run are comparable with each other.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from cardiossp.config import PretrainConfig, load_config
from cardiossp.ssp import SSP_METHODS
from cardiossp.train.pretrain import pretrain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--methods", default=",".join(SSP_METHODS.names()))
    ap.add_argument("--set", dest="overrides", action="append", default=["model.norm=batch"],
                    help="KEY=VALUE config override (repeatable); default model.norm=batch as in acdc-cpu-5")
    args = ap.parse_args()
    rows = []
    for method in args.methods.split(","):
        cfg = load_config(PretrainConfig, "pretrain", args.preset, [
            f"method={method}", *args.overrides, "schedule.epochs=1", "schedule.epoch_mode=iterations",
            f"schedule.iters_per_epoch={args.steps}"])
        with tempfile.TemporaryDirectory() as tmp:
            out = pretrain(cfg, args.cache, Path(tmp) / method, progress=False)
            done = json.loads((out / "done.json").read_text())
        rows.append((method, cfg.data.batch_size, done["steps"], done["seconds"], done["slices_per_second"]))
        print(f"{method}: {done['slices_per_second']:.1f} slices/s", flush=True)
    print(f"\n{args.preset} preset, {args.steps} steps, torch threads {torch.get_num_threads()}\n")
    print("| method | batch | steps | seconds | slices/s |\n|---|---|---|---|---|")
    for method, batch, steps, seconds, rate in rows:
        print(f"| {method} | {batch} | {steps} | {seconds:.0f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
