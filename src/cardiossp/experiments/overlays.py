"""Overlay pictures: predicted contours (dashed) and ground truth (solid) on cached slices.

One figure per test subject: a row per run (e.g. scratch and MIM at the same budget), a column
per short-axis slice (base, middle, apex-ward) of the ED frame, on the cache's grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.labels import CLASS_NAMES
from ..data.slices import SliceCache
from ..inference import Segmenter
from .plots import _save, plt

CLASS_COLORS = {1: "tab:red", 2: "tab:green", 3: "tab:blue"}


def overlay_figure(cache: SliceCache, subject: str, runs: dict[str, Path], out: str | Path,
                   n_slices: int = 3) -> list[Path]:
    """Draw ``subject``'s ED slices with each run's prediction; returns the PNG and SVG paths."""
    meta = cache.meta(subject)
    image, labels = cache.arrays(subject)
    t = int(meta["ed_frame"])
    label_index = list(meta["label_frames"]).index(t)
    zs = np.linspace(0, meta["n_slices"] - 1, n_slices + 2)[1:-1].round().astype(int)
    slices = np.asarray(image[t], dtype=np.float32)
    preds = {name: Segmenter.from_checkpoint(run).forward_slices(slices[zs]).argmax(1).numpy()
             for name, run in runs.items()}
    fig, axes = plt.subplots(len(runs), len(zs), figsize=(2.6 * len(zs), 2.6 * len(runs)), squeeze=False)
    for row, (name, pred) in enumerate(preds.items()):
        for col, z in enumerate(zs):
            ax = axes[row][col]
            ax.imshow(slices[z], cmap="gray")
            gt = np.asarray(labels[label_index, z])
            for c, color in CLASS_COLORS.items():
                if (gt == c).any():
                    ax.contour(gt == c, levels=[0.5], colors=color, linewidths=1.0)
                if (pred[col] == c).any():
                    ax.contour(pred[col] == c, levels=[0.5], colors=color, linewidths=1.0, linestyles="--")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
            if row == 0:
                ax.set_title(f"slice {z}", fontsize=8)
    legend = ", ".join(f"{CLASS_NAMES[c]} {color.removeprefix('tab:')}" for c, color in CLASS_COLORS.items())
    fig.suptitle(f"{subject} ED — ground truth solid, prediction dashed ({legend})", fontsize=8)
    return _save(fig, Path(out), f"overlay_{subject}")
