"""How each 3D clean-up changes a model's labels: Dice against the true labels, on the cache's grid.

    python benchmarks/clean_up_rules.py bench/few/runs/bcp-n5-s2 --cache bench/few/cache \
        --split bench/few/split.yaml --labeled-subjects 5

A benchmark, not part of training: it opens the true labels of the unlabeled pool (the training subjects
outside the label budget), the validation and the test subjects. Each labeled frame goes through the model
once (mirror TTA, as ``pseudo-label`` and ``evaluate --tta`` do); the rules are then applied to the same
arg-max: none, the largest component per class (``keep_largest_component``) and one connected heart
(``keep_connected_heart``, what ``--largest-component`` does). Prints, per group, the mean Dice over LV, MYO
and RV and over the frames, and the worst frame.
"""

from __future__ import annotations

import argparse

import numpy as np
from pseudo_label_quality import CLASSES, dice

from cardiossp.data.budgets import training_subjects
from cardiossp.data.labels import keep_connected_heart, keep_largest_component
from cardiossp.data.slices import SliceCache
from cardiossp.data.splits import load_split
from cardiossp.inference import Segmenter

RULES = {"none": lambda p: p, "per-class": keep_largest_component, "connected-heart": keep_connected_heart}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--labeled-subjects", type=int, required=True)
    a = ap.parse_args()
    sc, sp = SliceCache(a.cache), load_split(a.split)
    labeled = set(training_subjects(sp, a.labeled_subjects))
    groups = {"pool": [s for s in sp["train"] if s not in labeled], "val": sp["val"], "test": sp["test"]}
    seg = Segmenter.from_checkpoint(a.model, device="cpu", tta=True)
    for group, subjects in groups.items():
        scores = {r: [] for r in RULES}
        for s in subjects:
            truth = sc.label_array(s)
            for i, t in enumerate(sc.meta(s)["label_frames"]):
                pred = seg.forward_slices(np.asarray(sc.image_array(s)[t], dtype=np.float32)).argmax(1).numpy()
                for rule, clean in RULES.items():
                    scores[rule].append(np.mean([dice(clean(pred), truth[i], c) for c in CLASSES]))
        print(f"{group} ({len(scores['none'])} frames): " + "; ".join(
            f"{r} {np.mean(v):.3f} (worst {np.min(v):.2f})" for r, v in scores.items()))


if __name__ == "__main__":
    main()
