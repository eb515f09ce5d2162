"""``cardiossp report``: one self-contained HTML page (figures embedded as PNG data) for a run or a campaign.

A **run** page holds the run's facts (method, init, semi-supervised method, label budget,
training time, version), for each evaluation folder (``RUN/eval/<subset>``) the test table
(per-class Dice and HD95 by phase, mean ± std) and the clinical-index errors, the worst cases,
overlays of the worst and the median case at base, middle and apex for ED and ES (ground
truth solid, prediction dashed), their LV / RV volume curves over the cine when the cache
holds every frame, and the validation curve. A **campaign** page holds Table 1 and the study
tables (``cardiossp table``) and every figure of ``plots/`` (``cardiossp plot``).
Everything is escaped; nothing is fetched when the page is opened.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_text
from .errors import ConfigError
from .machine import machine_summary

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.facts td{text-align:left}.note{color:#666;font-size:.85em}"""
CLASS_COLORS = {1: "tab:red", 2: "tab:green", 3: "tab:blue"}


def _esc(x) -> str:
    return html.escape(str(x))


def _table(df: pd.DataFrame, cls: str = "") -> str:
    return df.to_html(index=False, escape=True, na_rep="–", classes=cls or None, border=0,
                      float_format=lambda v: f"{v:.3f}")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fig_png(fig) -> bytes:
    from .experiments.plots import plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def page(title: str, sections: list[str]) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{_esc(title)}</h1>{''.join(sections)}</body></html>")


# ---- run pages
def _facts(run: Path) -> str:
    doc = _read_yaml(run / "config.yaml")
    cfg = doc.get("config", {})
    done = json.loads((run / "done.json").read_text()) if (run / "done.json").is_file() else {}
    rows = [("run", run), ("cache", doc.get("cache", "–")), ("split", doc.get("split", "–")),
            ("model", f"{cfg.get('model', {}).get('name', '–')} ({cfg.get('model', {}).get('norm', '–')} norm)"),
            ("init", cfg.get("finetune", {}).get("init") or "scratch"),
            ("semi-supervised", cfg.get("semi", {}).get("method") or "none"),
            ("labeled subjects", cfg.get("labeled_subjects") or "all"),
            ("training time", f"{done['seconds'] / 60:.1f} min" if "seconds" in done else "–"),
            ("trained on", f"{machine_summary(done['machine'])}; precision {done.get('precision', '–')}"
             if "machine" in done else "–"),
            ("cardiossp", f"{doc.get('cardiossp_version', '–')} ({str(doc.get('git_sha', '–'))[:10]})")]
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<h2>Run</h2><table class="facts">{body}</table>'


def _read_yaml(path: Path) -> dict:
    import yaml

    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _mean_dice(per: pd.DataFrame) -> pd.Series:
    cols = [c for c in ("dice_LV", "dice_MYO", "dice_RV") if c in per]
    return per[cols].mean(axis=1)


def _eval_section(folder: Path) -> tuple[str, pd.DataFrame]:
    from .evaluate.report import load_summary

    summary = load_summary(folder)
    per = pd.read_csv(folder / "per_subject.csv")
    metrics = [c for c in per.columns
               if c.split("_")[0] in ("dice", "hd95") and c.split("_")[-1] in ("LV", "MYO", "RV")]
    groups = [("all", per)] + [(p, g) for p, g in per.groupby("phase", sort=True)]
    seg = pd.DataFrame([{"cases": name, "n": len(g), **{c.replace("_", " "): f"{g[c].mean():.3f} ± {g[c].std():.3f}"
                                                      for c in metrics}} for name, g in groups])
    clin = pd.DataFrame([{"index": k, "n": v["n"], "mean (GT)": v["gt_mean"], "MAE": v["mae"],
                          "median abs error": v.get("median_abs_error"), "bias": v["bias"]}
                         for k, v in summary.get("clinical", {}).items()])
    per = per.assign(mean_dice=_mean_dice(per))
    worst = per.sort_values("mean_dice").head(5)[["subject", "phase", "mean_dice", *metrics]]
    out = [f"<h2>Evaluation: {_esc(folder.name)} ({summary.get('n_subjects', '?')} subjects)</h2>",
           "<h3>Segmentation (3D Dice; HD95 in mm)</h3>", _table(seg)]
    if not clin.empty:
        out += ["<h3>Clinical indices (mL, %, g): error of the prediction</h3>", _table(clin)]
    out += ["<h3>Worst cases</h3>", _table(worst)]
    return "".join(out), per


def _overlay(seg, cache, subject: str) -> bytes:
    """Base / middle / apex slices at ED and ES: ground truth solid, prediction dashed."""
    from .experiments.plots import plt

    meta = cache.meta(subject)
    image, labels = cache.arrays(subject)
    frames = [t for t in (meta["ed_frame"], meta["es_frame"]) if t in meta["label_frames"]]
    zs = np.linspace(0, meta["n_slices"] - 1, 5)[1:-1].round().astype(int)
    fig, axes = plt.subplots(len(frames), len(zs), figsize=(2.4 * len(zs), 2.4 * len(frames)), squeeze=False)
    for row, t in enumerate(frames):
        slices = np.asarray(image[t], dtype=np.float32)[zs]
        pred = seg.forward_slices(slices).argmax(1).numpy()
        gt = np.asarray(labels[list(meta["label_frames"]).index(t)])[zs]
        for col, z in enumerate(zs):
            ax = axes[row][col]
            ax.imshow(slices[col], cmap="gray")
            for c, color in CLASS_COLORS.items():
                for lab, ls in ((gt[col], "-"), (pred[col], "--")):
                    if (lab == c).any():
                        ax.contour(lab == c, levels=[0.5], colors=color, linewidths=1.0, linestyles=ls)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{'ED' if t == meta['ed_frame'] else 'ES'} · {('base', 'mid', 'apex')[col]} (z={z})",
                         fontsize=8)
    fig.suptitle(f"{subject}: ground truth solid, prediction dashed (LV red, MYO green, RV blue)", fontsize=8)
    return _fig_png(fig)


def _curve(seg, cache, subject: str) -> bytes | None:
    from .evaluate.cycle import analyse_cycle, cycle_figure

    meta = cache.meta(subject)
    if meta["n_frames"] < 3:
        return None
    preds = seg.predict_cached(cache, subject, frames=range(meta["n_frames"]), largest_component=True)
    labels = np.stack([preds[t] for t in range(meta["n_frames"])], axis=-1)
    result = analyse_cycle(labels, cache.geometry(subject).spacing, subject=subject)
    return _fig_png(cycle_figure(result))


def run_page(run: Path) -> str:
    from .data.slices import SliceCache
    from .experiments.plots import training_curves, validation_curves
    from .inference import Segmenter

    sections = [_facts(run)]
    evals = sorted(p.parent for p in (run / "eval").glob("*/summary.json"))
    if not evals:
        sections.append('<p class="note">No evaluation yet: run <code>cardiossp evaluate</code> first.</p>')
    cases = None
    for folder in evals:
        text, per = _eval_section(folder)
        sections.append(text)
        cases = per if cases is None or folder.name == "test" else cases
    cache_path = _read_yaml(run / "config.yaml").get("cache")
    if cases is not None and cache_path and (Path(cache_path) / "cache.json").is_file():
        seg, cache = Segmenter.from_checkpoint(run), SliceCache(cache_path)
        by_subject = cases.groupby("subject")["mean_dice"].mean().sort_values()
        picks = {"worst": by_subject.index[0], "median": by_subject.index[len(by_subject) // 2]}
        sections.append("<h2>Overlays and volume curves</h2>")
        for what, subject in picks.items():
            sections.append(f"<h3>{what} case: {_esc(subject)} (mean Dice {by_subject[subject]:.3f})</h3>")
            sections.append(_img(_overlay(seg, cache, subject), f"overlay {subject}"))
            curve = _curve(seg, cache, subject)
            if curve:
                sections.append(_img(curve, f"volume curve {subject}"))
    elif cases is not None:
        sections.append(f'<p class="note">Training cache {_esc(cache_path)} not found: overlays skipped.</p>')
    curves = validation_curves({run.name: ("run", run)})
    if not curves.empty:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            png = [p for p in training_curves(curves, tmp) if p.suffix == ".png"]
            sections += ["<h2>Validation during training</h2>", _img(png[0].read_bytes(), "validation curve")]
    return page(f"cardiossp run {run.name}", sections)


# ---- campaign pages
def campaign_page(campaign: Path) -> str:
    from .experiments.report import write_report

    written = write_report(campaign)
    sections = []
    for name, df in (written.get("table_frames") or {}).items():
        sections += [f"<h2>{_esc(name.replace('_', ' '))}</h2>", _table(df.reset_index() if df.index.name else df)]
    for png in sorted((campaign / "plots").glob("*.png")):
        sections += [f"<h2>{_esc(png.stem.replace('_', ' '))}</h2>", _img(png.read_bytes(), png.stem)]
    if not sections:
        sections.append('<p class="note">No finished runs yet.</p>')
    return page(f"cardiossp campaign {campaign.name}", sections)


def write_html_report(target: str | Path, out: str | Path | None = None) -> Path:
    """``target``: a campaign folder (``campaign.json``) or a run folder (``config.yaml``); writes ``report.html``."""
    target = Path(target)
    if (target / "campaign.json").is_file():
        text = campaign_page(target)
    elif (target / "config.yaml").is_file() and (target / "checkpoints").is_dir():
        text = run_page(target)
    else:
        raise ConfigError(f"{target}: neither a campaign folder (campaign.json) nor a training run folder")
    return write_text(Path(out) if out else target / "report.html", text)
