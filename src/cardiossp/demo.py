"""``cardiossp demo``: the whole pipeline end to end on the built-in phantom (or your data).

prepare -> split -> pretrain MIM -> train from scratch and fine-tune from MIM at two label
budgets -> evaluate on the test subjects -> a results table (``results.csv`` + printed).
Sized to finish in minutes on 2 CPU cores; it shows the pipeline works, not what a
method is worth (use ``cardiossp experiment`` presets for that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from .config import PretrainConfig, TrainConfig, load_config
from .data.cache import prepare
from .data.readers.phantom import write_phantom_config
from .data.slices import SliceCache
from .data.splits import make_split, save_split
from .evaluate.run import evaluate_run
from .train.fit import train_segmentation
from .train.pretrain import pretrain

DEMO_TRAIN = {"schedule.epochs": 8, "schedule.iters_per_epoch": 15, "schedule.val_every": 4}
DEMO_PRETRAIN = {"method": "mim", "schedule.epochs": 4, "schedule.iters_per_epoch": 15}


def run_demo(out: str | Path, data: str | Path | None = None, reader: str = "phantom",
             budgets: tuple[int, ...] = (2, 6), say: Callable[[str], None] = print) -> pd.DataFrame:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = out / "phantom"
        write_phantom_config(data, n_subjects=14, n_unlabeled=2, size=64, n_slices=6, n_frames=6, seed=0)
        spacing, size = 1.5, 64
    else:
        spacing, size = 1.6, 160  # the cpu presets' grid (see presets/train/cpu.yaml)
    say(f"[1/5] prepare {reader}:{data} -> {out / 'cache'}")
    cache = prepare([(reader, data)], out / "cache", spacing=spacing, size=size)
    split = out / "split.yaml"
    if not split.exists():
        save_split(make_split(SliceCache(cache).subjects, seed=0, val=2, test=4, budgets=list(budgets)), split)
    preset = "tiny" if reader == "phantom" else "cpu"
    pre = out / "pretrain-mim"
    if not (pre / "pretrained.pt").exists():
        say("[2/5] pretrain MIM on every frame of the training + unlabeled subjects")
        cfg = load_config(PretrainConfig, "pretrain", preset, DEMO_PRETRAIN if reader == "phantom" else {"method": "mim"})
        pretrain(cfg, cache, pre, split=split, resume=(pre / "checkpoints" / "last.ckpt").exists(), progress=False)
    rows = []
    for budget in budgets:
        for init in (None, pre):
            name = f"{'mim' if init else 'scratch'}-n{budget}"
            run = out / "runs" / name
            if not (run / "done.json").exists():
                say(f"[3/5] train {name}")
                over = {**(DEMO_TRAIN if reader == "phantom" else {}), "labeled_subjects": budget}
                if init:
                    over["finetune.init"] = str(init)
                cfg = load_config(TrainConfig, "train", preset, over)
                train_segmentation(cfg, cache, split, run, resume=(run / "checkpoints" / "last.ckpt").exists(),
                                   progress=False)
            say(f"[4/5] evaluate {name} on the test subjects")
            s = evaluate_run(run, split=split, subset="test")
            o = s["overall"]
            rows.append({"method": "MIM" if init else "scratch", "labeled_subjects": budget,
                         **{k: o[k]["mean"] for k in ("dice_LV", "dice_MYO", "dice_RV", "dice_mean") if k in o}})
    table = pd.DataFrame(rows)
    table.to_csv(out / "results.csv", index=False)
    say(f"[5/5] results in {out / 'results.csv'}")
    return table
