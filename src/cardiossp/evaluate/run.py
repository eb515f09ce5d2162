"""``evaluate_run``: test a trained segmentation run on a split subset, in native geometry.

For every labeled subject of the subset: predict its labeled frames (ED/ES) from the cached
slices (``Segmenter.predict_cached``), compare with the cached native-grid labels using
``evaluate_case`` (3D Dice, HD95, ASSD, mean contour distance per class, de Mooij et al.
2024 §2.5; Bai et al. 2019) at the native spacing, and compare clinical indices (LV/RV EDV,
ESV, SV, EF, LV mass) of prediction and ground truth. Writes, atomically::

    OUT/per_subject.csv   one row per subject x labeled frame (phase ED / ES), every metric
    OUT/clinical.csv      one row per subject with ED and ES labels: {index}_gt, _pred, _error, _abs_error
    OUT/summary.json      mean / std / n overall, per phase, per vendor; clinical MAE and bias

(``OUT`` defaults to ``RUN/eval/<subset>``). Means skip NaN (a class absent from both maps,
or a distance to an empty map); ``n`` says how many values entered.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..atomic import write_csv, write_json
from ..checkpoints import read_run_config
from ..data.labels import CONNECTED_HEART, DATASET_LABEL_MAPS, task_classes, task_to_internal, to_task
from ..data.slices import SliceCache
from ..data.splits import load_split
from ..errors import ConfigError
from ..inference import Segmenter
from .clinical import clinical_indices, index_errors
from .metrics import evaluate_case

INFO_COLUMNS = ["subject", "subject_id", "dataset", "vendor", "centre", "pathology"]
CLINICAL_KEYS = ["LV_EDV", "LV_ESV", "LV_SV", "LV_EF", "RV_EDV", "RV_ESV", "RV_SV", "RV_EF", "LV_mass_g"]


def subset_subjects(split: dict, subset: str) -> list[str]:
    """Subject keys of ``subset``: train / val / test / unlabeled, a named subset, or a label budget."""
    if subset in ("train", "val", "test", "unlabeled"):
        return list(split.get(subset) or [])
    if subset in split.get("subsets", {}):
        return list(split["subsets"][subset])
    if str(subset).isdigit() and int(subset) in split.get("budgets", {}):
        return list(split["budgets"][int(subset)])
    known = ["train", "val", "test", *split.get("subsets", {}), *map(str, split.get("budgets", {}))]
    raise ConfigError(f"unknown subset {subset!r}; the split has {', '.join(known)}")


def dataset_classes(dataset: str) -> tuple[int, ...]:
    """Classes a dataset labels (Sunnybrook has no RV); unknown datasets: LV, MYO, RV."""
    m = DATASET_LABEL_MAPS.get(str(dataset))
    return tuple(sorted(set(m.values()) - {0})) if m else (1, 2, 3)


def segmenter_task(seg: Segmenter) -> str:
    """The label task (``data.task``) the segmenter's network was trained for; ``cardiac`` if unknown."""
    return getattr(getattr(getattr(seg, "cfg", None), "data", None), "task", "cardiac")


def _phase(meta: dict, t: int) -> str:
    return "ED" if t == meta["ed_frame"] else "ES" if t == meta["es_frame"] else f"t{t}"


def mask_uncontoured(preds: dict[int, np.ndarray], meta: dict) -> dict[int, np.ndarray]:
    """Blank the prediction on the slices a partially contoured frame leaves unlabeled (Sunnybrook
    contours a few slices per phase): there the ground truth is "not traced", not "background", so
    a prediction there must not count as a false positive nor enter the volumes."""
    out = dict(preds)
    for t, zs in (meta.get("labeled_slices") or {}).items():
        t = int(t)
        if t in out:
            keep = np.zeros(out[t].shape[-1], bool)
            keep[list(zs)] = True
            out[t] = np.where(keep, out[t], 0).astype(out[t].dtype)
    return out


def evaluate_subject(seg: Segmenter, cache: SliceCache, subject: str, tta: bool | None = None,
                     largest_component: bool | None = None) -> tuple[list[dict], dict | None]:
    """-> (rows, one per labeled frame; clinical row or None when ED or ES is unlabeled)."""
    meta = cache.meta(subject)
    info = {"subject": subject, **{k: meta.get(k) for k in INFO_COLUMNS[1:]}}
    spacing = cache.geometry(subject).spacing
    gts = cache.native_labels(subject)
    preds = seg.predict_cached(cache, subject, sorted(gts), tta=tta, largest_component=largest_component)
    preds = mask_uncontoured(preds, meta)
    task = segmenter_task(seg)
    classes = tuple(c for c in dataset_classes(meta["dataset"]) if c in task_classes(task))
    if task != "cardiac":  # both maps in internal labels, classes outside the task are background
        gts = {t: task_to_internal(to_task(g, task), task) for t, g in gts.items()}
        preds = {t: task_to_internal(p, task) for t, p in preds.items()}
    rows = [{**info, "phase": _phase(meta, t), "frame": t, **evaluate_case(preds[t], gts[t], spacing, classes)}
            for t in sorted(gts)]
    ed, es = meta["ed_frame"], meta["es_frame"]
    if ed not in gts or es not in gts:
        return rows, None
    gt_idx = clinical_indices(gts[ed], gts[es], spacing)
    pred_idx = clinical_indices(preds[ed], preds[es], spacing)
    err = index_errors(pred_idx, gt_idx)
    clin = dict(info)
    for k in gt_idx:
        clin.update({f"{k}_gt": gt_idx[k], f"{k}_pred": pred_idx[k], f"{k}_error": err[f"{k}_error"],
                     f"{k}_abs_error": err[f"{k}_abs_error"]})
    return rows, clin


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def _finite(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)


def _stats(values: pd.Series) -> dict:
    v = _finite(values)
    return {"mean": _num(v.mean()) if len(v) else None, "std": _num(v.std(ddof=1)) if len(v) > 1 else None,
            "n": int(len(v))}


def _median(values: pd.Series) -> float | None:
    """Median of the finite values (None if none): robust where one degenerate case (a predicted EDV near 0
    gives an EF of hundreds of per cent) drives the mean."""
    v = _finite(values)
    return _num(np.median(v)) if len(v) else None


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.split("_")[0] in ("dice", "hd95", "assd", "mcd")]


def summarise(per_subject: pd.DataFrame, clinical: pd.DataFrame) -> dict:
    """Mean/std/n of every metric overall, per phase and per vendor; clinical index errors."""
    cols = metric_columns(per_subject)

    def block(df):
        return {c: _stats(df[c]) for c in cols}

    vendor = per_subject["vendor"].fillna("unknown").astype(str)
    out = {
        "overall": block(per_subject),
        "per_phase": {p: block(g) for p, g in per_subject.groupby("phase", sort=True)},
        "per_vendor": {v: block(g) for v, g in per_subject.groupby(vendor, sort=True)},
        "clinical": {},
    }
    for k in CLINICAL_KEYS:
        if f"{k}_error" not in clinical:
            continue
        err = pd.to_numeric(clinical[f"{k}_error"], errors="coerce")
        out["clinical"][k] = {"mae": _stats(err.abs())["mean"], "median_abs_error": _median(err.abs()),
                              "bias": _stats(err)["mean"],
                              "std_error": _stats(err)["std"], "gt_mean": _stats(clinical[f"{k}_gt"])["mean"],
                              "pred_mean": _stats(clinical[f"{k}_pred"])["mean"], "n": _stats(err)["n"]}
    return out


def eval_folder_name(subset: str, tta: bool = False, largest_component: bool = False,
                     ema_teacher: bool = False) -> str:
    """``test``, ``test-tta``, ``test-lcc``, ``test-tta-lcc`` (``-ema`` for the EMA teacher): each setting keeps
    its own tables."""
    return (str(subset) + ("-ema" if ema_teacher else "") + ("-tta" if tta else "")
            + ("-lcc" if largest_component else ""))


def evaluate_run(
    run: str | Path,
    split: str | Path | None = None,
    subset: str = "test",
    out: str | Path | None = None,
    tta: bool = False,
    *,
    cache: str | Path | None = None,
    largest_component: bool = False,
    device: str = "cpu",
    ema_teacher: bool = False,
    segmenter: Segmenter | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Evaluate run folder ``run`` on ``subset`` of its split (or of ``split``); returns the summary.

    ``cache`` defaults to the run's training cache (``RUN/config.yaml``); ``segmenter`` replaces
    the run's checkpoint (e.g. an ensemble); ``ema_teacher`` evaluates a mean-teacher / bcp run's EMA
    teacher instead of its student. ``progress(subject, i, n)`` after each subject. Tables go
    to ``out``, by default ``RUN/eval/<subset>[-tta][-lcc]``.
    """
    t0 = time.time()
    run = Path(run)
    doc = read_run_config(run)
    cache_path = Path(cache or doc.get("cache") or "")
    split_path = Path(split or doc.get("split") or "")
    if not str(cache_path) or not str(split_path):
        raise ConfigError(f"{run / 'config.yaml'} names no cache or split; pass them explicitly")
    sc = SliceCache(cache_path)
    ids = subset_subjects(load_split(split_path), subset)
    known = set(sc.subject_ids())
    missing = [s for s in ids if s not in known]
    if missing:
        raise ConfigError(f"subset {subset!r} of {split_path} names subjects not in cache {cache_path}: {missing[:5]}")
    labeled = [s for s in ids if sc.meta(s)["label_frames"]]
    if not labeled:
        raise ConfigError(f"subset {subset!r} of {split_path} holds no labeled subjects")
    if segmenter is None:
        segmenter = Segmenter.from_checkpoint(run, device=device, tta=tta, largest_component=largest_component,
                                              ema_teacher=ema_teacher)
    rows, clin = [], []
    for i, s in enumerate(labeled):
        r, c = evaluate_subject(segmenter, sc, s, tta=tta, largest_component=largest_component)
        rows += r
        clin += [c] if c else []
        if progress:
            progress(s, i + 1, len(labeled))
    per_subject = pd.DataFrame(rows)
    clinical = pd.DataFrame(clin, columns=INFO_COLUMNS + [f"{k}_{s}" for k in CLINICAL_KEYS
                                                          for s in ("gt", "pred", "error", "abs_error")])
    out_dir = Path(out) if out is not None else run / "eval" / eval_folder_name(subset, tta, largest_component,
                                                                               ema_teacher)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "run": str(run), "checkpoint": str(getattr(segmenter, "checkpoint", None) or ""),
        "cache": str(cache_path), "split": str(split_path), "subset": str(subset), "tta": bool(tta),
        "ema_teacher": bool(ema_teacher),
        "largest_component": bool(largest_component), "clean_up": CONNECTED_HEART if largest_component else None,
        "n_subjects": len(labeled), "n_cases": len(per_subject),
        "skipped_unlabeled": [s for s in ids if s not in labeled],
        **summarise(per_subject, clinical), "seconds": round(time.time() - t0, 2),
    }
    write_csv(out_dir / "per_subject.csv", per_subject)
    write_csv(out_dir / "clinical.csv", clinical)
    write_json(out_dir / "summary.json", summary, allow_nan=False)
    return summary

