"""Where a run's test errors lie along the long axis (a benchmark, not a test).

For every test subject x labeled frame: segment it as ``cardiossp evaluate --tta --largest-component`` does
(``Segmenter.predict_cached``), split the slices that hold heart in the ground truth into basal, mid and apical
thirds (base -> apex from the cache's slice positions), and count per class the wrongly labeled voxels (false
positives + false negatives) in each third, next to the true voxels there. Prints one line per phase x third.

    python benchmarks/error_by_position.py RUN --cache CACHE --split SPLIT.yaml
"""

from __future__ import annotations

import argparse

import numpy as np

from cardiossp.data.labels import NUM_CLASSES
from cardiossp.data.slices import SliceCache
from cardiossp.data.splits import load_split
from cardiossp.inference import Segmenter

THIRDS = ("basal", "mid", "apical")
CLASSES = ("LV", "MYO", "RV")


def thirds(meta: dict, truth: np.ndarray) -> dict[int, int]:
    """Slice index -> 0 basal, 1 mid, 2 apical, over the slices with heart in ``truth`` (X, Y, Z)."""
    heart = [z for z in range(truth.shape[-1]) if (truth[..., z] > 0).any()]
    if not heart:
        return {}
    pos = np.asarray(meta["positions"], dtype=float)
    order = sorted(heart, key=lambda z: pos[z])  # base first
    return {z: min(2, 3 * i // len(order)) for i, z in enumerate(order)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--subset", default="test")
    a = ap.parse_args()
    cache, split = SliceCache(a.cache), load_split(a.split)
    seg = Segmenter.from_checkpoint(a.run, tta=True, largest_component=True)
    errors = np.zeros((2, 3, NUM_CLASSES - 1))
    truth_voxels = np.zeros_like(errors)
    for subject in split[a.subset]:
        meta, native = cache.meta(subject), cache.native_labels(subject)
        for t, pred in seg.predict_cached(cache, subject).items():
            phase = 0 if t == meta["ed_frame"] else 1
            truth = native[t]
            for z, third in thirds(meta, truth).items():
                for k in range(1, NUM_CLASSES):
                    p, g = pred[..., z] == k, truth[..., z] == k
                    errors[phase, third, k - 1] += (p != g).sum()
                    truth_voxels[phase, third, k - 1] += g.sum()
    print(f"{a.run}: wrong voxels (FP + FN) per class {'/'.join(CLASSES)}, true voxels, their ratio")
    for phase, name in enumerate(("ED", "ES")):
        for third in range(3):
            e, v = errors[phase, third], truth_voxels[phase, third]
            ratio = " / ".join(f"{x:.2f}" for x in e / np.maximum(v, 1))
            print(f"{name} {THIRDS[third]:>6}: wrong {' / '.join(f'{x:6.0f}' for x in e)}   "
                  f"true {' / '.join(f'{x:6.0f}' for x in v)}   ratio {ratio}")
    rv = errors[..., 2]
    print(f"RV: {rv.sum():.0f} wrong voxels, {rv[1, 0] / max(rv.sum(), 1):.0%} of them in the basal third at ES")


if __name__ == "__main__":
    main()
