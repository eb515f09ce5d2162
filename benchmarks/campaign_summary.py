"""Per-run test figures of a campaign folder, as a markdown table (the few-label benchmark).

    python benchmarks/campaign_summary.py bench/few            # every evaluated run
    python benchmarks/campaign_summary.py bench/few --runs 'unimatch-*' 'scratch-*'
    python benchmarks/campaign_summary.py bench/few --eval test-tta-lcc   # mirror TTA + largest component

Columns: mean and per-class test 3D Dice (native grid), HD95 per class (mm), LVEF absolute error
(percentage points; mean / median over subjects: one near-empty ED LV drives the mean), training wall
time (``done.json`` seconds; minutes), the final validation pseudo-Dice, and where the time was taken: the
CPU (family / model) and precision ``done.json`` records (``–`` for runs older than that record). Reads
``RUN/eval/<--eval>/summary.json`` and ``RUN/done.json``. A self-training run's minutes include its
teacher's (``done.json`` ``pseudo_labels.teacher``), the pseudo-labelling excepted.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path

PRECISION = {"32-true": "fp32", "32": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}


def train_seconds(done: dict) -> float:
    """A run's training seconds, plus its teacher's for self-training (the teacher's run folder holds it)."""
    seconds = float(done["seconds"])
    teacher = (done.get("pseudo_labels") or {}).get("teacher")
    if teacher:
        t = Path(teacher).parent.parent / "done.json"
        seconds += train_seconds(json.loads(t.read_text())) if t.is_file() else float("nan")
    return seconds


def row(run: Path, evaluation: str = "test") -> str | None:
    summary, done = run / "eval" / evaluation / "summary.json", run / "done.json"
    if not summary.is_file() or not done.is_file():
        return None
    o, d = json.loads(summary.read_text()), json.loads(done.read_text())
    ov, clin = o["overall"], o.get("clinical", {})
    dice = [ov[f"dice_{c}"]["mean"] for c in ("LV", "MYO", "RV")]
    hd = [ov[f"hd95_{c}"]["mean"] for c in ("LV", "MYO", "RV")]
    ef = [clin.get("LV_EF", {}).get(k) for k in ("mae", "median_abs_error")]
    val = d.get("metrics", {}).get("val_dice", float("nan"))
    cpu, precision = (d.get("machine") or {}).get("cpu"), d.get("precision")
    where = ", ".join(v for v in (cpu, PRECISION.get(precision, precision)) if v) or "–"
    return (f"| {run.name} | {ov['dice_mean']['mean']:.3f} | " + " / ".join(f"{v:.3f}" for v in dice) + " | "
            + " / ".join(f"{v:.1f}" for v in hd) + " | " + " / ".join("–" if v is None else f"{v:.1f}" for v in ef)
            + f" | {train_seconds(d) / 60:.1f} | {val:.3f} | {where} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("campaign", type=Path)
    ap.add_argument("--runs", nargs="*", default=["*"], help="run-name patterns")
    ap.add_argument("--eval", default="test", help="evaluation folder: test, test-tta-lcc, ...")
    ap.add_argument("--also", nargs="*", type=Path, default=[], help="run folders outside the campaign")
    args = ap.parse_args()
    print("| run | mean Dice | LV / MYO / RV Dice | HD95 LV / MYO / RV (mm) | LVEF error mean / median "
          "| train min | val | machine |")
    print("|---|---|---|---|---|---|---|---|")
    runs = [r for r in sorted((args.campaign / "runs").iterdir()) if any(fnmatch.fnmatch(r.name, p) for p in args.runs)]
    for run in runs + list(args.also):
        if line := row(run, args.eval):
            print(line)


if __name__ == "__main__":
    main()
