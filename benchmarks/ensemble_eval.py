"""Test metrics of an ensemble: the mean softmax of several segmentation runs, through ``evaluate_run``.

    python benchmarks/ensemble_eval.py bench/ens/students "bench/few/runs/bcp+self-training-n5-s0" \
        bench/st/mix412-e80-n5-s0 [--subset test] [--no-tta] [--no-clean-up]

A benchmark, not a product feature: it asks whether averaging runs pays for their training time. The runs
must share the training grid (the first run's checkpoint record sets it, and its config names the cache and
split). Each slice goes through every network (with mirror TTA unless ``--no-tta``); their softmaxes are
averaged before the arg-max and the clean-up, and the tables go to OUT as ``cardiossp evaluate`` writes them.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from cardiossp.evaluate.run import evaluate_run
from cardiossp.inference import Segmenter


class MeanSoftmax(nn.Module):
    """Returns the log of the mean softmax of ``models``, so that the Segmenter's softmax gives that mean back."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.models]
        outs = [o[0] if isinstance(o, (list, tuple)) else o for o in outs]
        mean = torch.stack([torch.softmax(o.float(), dim=1) for o in outs]).mean(0)
        return torch.log(mean.clamp_min(1e-8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder for per_subject.csv, clinical.csv and summary.json")
    ap.add_argument("runs", nargs="+", help="segmentation run folders (two or more)")
    ap.add_argument("--subset", default="test")
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--no-clean-up", action="store_true")
    a = ap.parse_args()
    if len(a.runs) < 2:
        ap.error("an ensemble needs two or more runs")
    tta, clean = not a.no_tta, not a.no_clean_up
    segs = [Segmenter.from_checkpoint(r, tta=tta, largest_component=clean) for r in a.runs]
    grids = {(s.spacing, s.size) for s in segs}
    if len(grids) > 1:
        ap.error(f"the runs were trained on different grids: {sorted(grids)}")
    ensemble = segs[0]
    ensemble.model = MeanSoftmax([s.model for s in segs]).eval()
    summary = evaluate_run(a.runs[0], subset=a.subset, out=a.out, tta=tta, largest_component=clean,
                           segmenter=ensemble)
    o = summary["overall"]
    print(f"{len(a.runs)} runs, {summary['n_cases']} cases: mean Dice {o['dice_mean']['mean']:.3f} (LV "
          f"{o['dice_LV']['mean']:.3f}, MYO {o['dice_MYO']['mean']:.3f}, RV {o['dice_RV']['mean']:.3f}); HD95 "
          f"{o['hd95_LV']['mean']:.1f} / {o['hd95_MYO']['mean']:.1f} / {o['hd95_RV']['mean']:.1f} mm")


if __name__ == "__main__":
    main()
