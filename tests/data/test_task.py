"""``data.task``: the binary LV task (Saeed et al. 2022) trains a 2-class network and is evaluated on the LV alone.

Phantom subjects carry LV, MYO and RV, so every remapping below has something to drop.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cardiossp.config import TrainConfig, load_config
from cardiossp.data.cache import prepare
from cardiossp.data.labels import LV, MYO, RV, task_class_names, task_num_classes, task_to_internal, to_task
from cardiossp.data.readers.phantom import write_phantom_config
from cardiossp.data.slices import SliceCache
from cardiossp.data.splits import make_split, save_split
from cardiossp.errors import ConfigError
from cardiossp.evaluate.run import evaluate_run
from cardiossp.inference import Segmenter
from cardiossp.train.segmentation import SegmentationModule, build_segmentation_model

TINY = {"model.n_stages": 3, "model.base_features": 4, "model.max_features": 16, "data.task": "lv"}



def test_task_label_maps():
    labels = np.array([[0, LV], [MYO, RV]])
    np.testing.assert_array_equal(to_task(labels, "lv"), [[0, 1], [0, 0]])
    np.testing.assert_array_equal(to_task(labels, "cardiac"), labels)
    np.testing.assert_array_equal(task_to_internal(np.array([0, 1]), "lv"), [0, LV])
    assert (task_num_classes("cardiac"), task_num_classes("lv")) == (4, 2)
    assert task_class_names("lv") == {1: "LV"} and task_class_names("cardiac") == {1: "LV", 2: "MYO", 3: "RV"}
    with pytest.raises(ConfigError, match="unknown task 'rv'.*data.task"):
        task_num_classes("rv")


def test_lv_module_has_two_outputs_and_remaps_every_target():
    cfg = load_config(TrainConfig, "train", "tiny", TINY)
    module = SegmentationModule(cfg)
    x = torch.zeros(2, 1, 32, 32)
    out = module(x)
    assert all(o.shape[1] == 2 for o in (out if isinstance(out, (list, tuple)) else [out]))
    seg = torch.tensor([0, LV, MYO, RV]).view(1, 1, 2, 2)
    batch = module.on_after_batch_transfer({"image": x, "segmentation": [seg, seg[..., :1, :1]]}, 0)
    assert batch["segmentation"][0].flatten().tolist() == [0, 1, 0, 0] and batch["segmentation"][1].item() == 0
    cardiac = SegmentationModule(load_config(TrainConfig, "train", "tiny", {**TINY, "data.task": "cardiac"}))
    assert cardiac.on_after_batch_transfer({"segmentation": seg}, 0)["segmentation"].flatten().tolist() == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match=r"data.task must be one of cardiac, lv \(got 'la'\)"):
        load_config(TrainConfig, "train", "tiny", {**TINY, "data.task": "la"})


def test_echo_lv_preset_builds_a_two_class_net_for_112_px_frames():
    cfg = load_config(TrainConfig, "train", "echo-lv")
    assert (cfg.data.task, cfg.data.patch_size) == ("lv", 112)
    with torch.no_grad():
        out = build_segmentation_model(cfg).eval()(torch.zeros(1, 1, 112, 112))
    assert (out[0] if isinstance(out, (list, tuple)) else out).shape == (1, 2, 112, 112)


@pytest.fixture(scope="module")
def lv_run(tmp_path_factory):
    """Phantom cache (LV, MYO, RV) and a 1-step Lightning run of the lv task."""
    from cardiossp.train.fit import train_segmentation

    root = tmp_path_factory.mktemp("task")
    ph = write_phantom_config(
        root / "phantom", n_subjects=5, n_unlabeled=0, size=64, n_slices=3, n_frames=3, spacing=(1.5, 1.5, 8.0)
    )
    cache = prepare([("phantom", ph)], root / "cache", spacing=1.5, size=64)
    save_split(make_split(SliceCache(cache).subjects, val=1, test=2), root / "split.yaml")
    cfg = load_config(
        TrainConfig,
        "train",
        "tiny",
        {**TINY, "schedule.epochs": 1, "schedule.iters_per_epoch": 1, "data.batch_size": 2, "data.augment": "none"},
    )
    run = train_segmentation(cfg, cache, root / "split.yaml", root / "run", progress=False)
    return {"run": run, "cache": cache}


def test_lv_task_trains_validates_and_evaluates_lv_only(lv_run, tmp_path):
    metrics = json.loads((lv_run["run"] / "done.json").read_text())["metrics"]
    assert "val_dice_LV" in metrics and not any(k.startswith(("val_dice_MYO", "val_dice_RV")) for k in metrics)
    seg = Segmenter.from_checkpoint(lv_run["run"])
    assert seg.cfg.data.task == "lv"
    summary = evaluate_run(lv_run["run"], out=tmp_path)
    assert [k for k in summary["overall"] if k.startswith("dice")] == ["dice_LV", "dice_mean"]
    assert summary["overall"]["dice_mean"] == summary["overall"]["dice_LV"]  # the mean over the one class
    per = pd.read_csv(tmp_path / "per_subject.csv")
    assert "dice_LV" in per and not any(c.endswith(("_MYO", "_RV")) for c in per.columns)


def test_lv_task_scores_a_perfect_binary_prediction_as_perfect(lv_run, monkeypatch, tmp_path):
    sc = SliceCache(lv_run["cache"])

    def predict_cached(self, cache, subject, frames=None, tta=None, largest_component=None):
        gts = cache.native_labels(subject)  # internal LV / MYO / RV; a 2-class network predicts 0 / 1 only
        return {t: to_task(gts[t], "lv").astype(np.uint8) for t in frames}

    monkeypatch.setattr(Segmenter, "predict_cached", predict_cached)
    summary = evaluate_run(lv_run["run"], out=tmp_path)
    assert summary["overall"]["dice_LV"]["mean"] == 1.0 and summary["overall"]["dice_LV"]["n"] == 4
    clin = pd.read_csv(tmp_path / "clinical.csv")
    assert (clin["LV_EDV_error"] == 0).all() and (clin["LV_EDV_gt"] > 0).all()
    s = clin["subject"].iloc[0]
    gt_ed = sc.native_labels(s)[sc.meta(s)["ed_frame"]]
    voxel_ml = np.prod(sc.geometry(s).spacing) / 1000
    assert clin["LV_EDV_gt"].iloc[0] == pytest.approx((gt_ed == LV).sum() * voxel_ml)
