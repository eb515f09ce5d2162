"""How good a teacher's pseudo-labels are: 3D Dice against the true labels, on the cache's grid.

    python benchmarks/pseudo_label_quality.py bench/few/pseudo/bcp-n5-s0 --cache bench/few/cache \
        --split bench/few/split.yaml --labeled-subjects 5

A benchmark, not part of training: it opens the true labels of the unlabeled pool, which training never
does. For each pool subject with pseudo-labels and each of its labeled frames: Dice of LV, MYO and RV
(the cache grid, so not the test metric of the native grid); prints the means and the worst subjects.
``--reliable F``: also the mean Dice of the frames self-training keeps with ``semi.options.reliable=F`` (the
teacher's most confident fraction F of the pool's frames) and of those it drops.
"""

from __future__ import annotations

import argparse

import numpy as np

from cardiossp.data.budgets import training_subjects
from cardiossp.data.pseudo import PseudoLabels
from cardiossp.data.slices import SliceCache
from cardiossp.data.splits import load_split
from cardiossp.train.fit import unlabeled_pool

CLASSES = {1: "LV", 2: "MYO", 3: "RV"}


def dice(a: np.ndarray, b: np.ndarray, c: int) -> float:
    x, y = a == c, b == c
    total = x.sum() + y.sum()
    return float(2 * (x & y).sum() / total) if total else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pseudo")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--labeled-subjects", type=int, required=True)
    ap.add_argument("--reliable", type=float, help="also split the Dice by this fraction of most confident frames")
    a = ap.parse_args()
    sc, sp = SliceCache(a.cache), load_split(a.split)
    store = PseudoLabels(a.pseudo, sc)
    pool = [s for s in unlabeled_pool(sp, training_subjects(sp, a.labeled_subjects)) if s in store.record["subjects"]]
    rows = []
    for s in pool:
        meta, truth = sc.meta(s), sc.label_array(s)
        for i, t in enumerate(meta["label_frames"]):
            pred = store.array(s)[t]
            rows.append((s, t, [dice(pred, truth[i], c) for c in CLASSES]))
    per = np.array([r[2] for r in rows])
    print(f"{len(pool)} pool subjects, {len(rows)} labeled frames; teacher {store.record['teacher']}")
    print("mean Dice " + ", ".join(f"{n} {v:.3f}" for n, v in zip(CLASSES.values(), per.mean(0)))
          + f", mean {per.mean():.3f}")
    worst = sorted(rows, key=lambda r: np.mean(r[2]))[:5]
    print("worst: " + "; ".join(f"{s} frame {t} {np.mean(d):.2f}" for s, t, d in worst))
    if a.reliable is not None:
        kept = store.most_confident_frames(pool, a.reliable)
        for name, chosen in (("kept", True), ("dropped", False)):
            d = [np.mean(r[2]) for r in rows if ((r[0], r[1]) in kept) == chosen]
            print(f"reliable={a.reliable}: {name} {len(d)} labeled frames, mean Dice "
                  + (f"{np.mean(d):.3f}, worst {np.min(d):.2f}" if d else "-"))


if __name__ == "__main__":
    main()
