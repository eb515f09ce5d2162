"""``evaluate_run``: metric path against hand-computed values, oracle predictions, output files, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cardiossp.config import TrainConfig, load_config, save_run_config
from cardiossp.data.cache import prepare
from cardiossp.data.labels import LV, MYO, RV
from cardiossp.data.preprocess import labels_to_native
from cardiossp.data.readers.phantom import write_phantom_config
from cardiossp.data.slices import SliceCache
from cardiossp.data.splits import make_split, save_split
from cardiossp.errors import CheckpointError, ConfigError
from cardiossp.evaluate.metrics import dice_3d
from cardiossp.evaluate.report import clinical_table, load_summary, segmentation_table
from cardiossp.evaluate.run import evaluate_run, summarise
from cardiossp.inference import Segmenter
from cardiossp.train.segmentation import SegmentationModule

TINY = {"model.n_stages": 3, "model.base_features": 4, "model.max_features": 16}



@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """4 labeled + 1 unlabeled phantoms at 1.2 mm, cached at 1.5 mm / 64 px; an untrained tiny net."""
    root = tmp_path_factory.mktemp("evaluate")
    ph = write_phantom_config(root / "phantom", n_subjects=5, n_unlabeled=1, size=64, n_slices=4, n_frames=4,
                              spacing=(1.2, 1.2, 8.0))
    cache = prepare([("phantom", ph)], root / "cache", spacing=1.5, size=64)
    save_split(make_split(SliceCache(cache).subjects, val=1, test=2), root / "split.yaml")
    cfg = load_config(TrainConfig, "train", "tiny", TINY)
    module = SegmentationModule(cfg)
    (root / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()},
               root / "run" / "checkpoints" / "last.ckpt")
    save_run_config(cfg, root / "run", cache=str(cache), split=str(root / "split.yaml"))
    return {"root": root, "run": root / "run", "cache": cache, "split": root / "split.yaml"}


def test_evaluate_run_writes_consistent_tables(run):
    summary = evaluate_run(run["run"])
    out = run["run"] / "eval" / "test"
    per = pd.read_csv(out / "per_subject.csv", dtype={"vendor": str})
    clin = pd.read_csv(out / "clinical.csv")
    on_disk = json.loads((out / "summary.json").read_text())  # strict JSON: NaN written as null
    assert on_disk["overall"] == summary["overall"]
    assert summary["n_subjects"] == 2 and len(per) == 4 and len(clin) == 2
    assert sorted(per["phase"]) == ["ED", "ED", "ES", "ES"]
    for col in ("subject", "dataset", "vendor", "centre", "pathology", "dice_LV", "hd95_RV", "assd_MYO", "mcd_LV"):
        assert col in per
    assert set(per["dataset"]) == {"phantom"}
    for metric in ("dice_LV", "hd95_MYO"):
        vals = per[metric].dropna()
        assert summary["overall"][metric]["mean"] == pytest.approx(vals.mean())
        assert summary["overall"][metric]["n"] == len(vals)
        ed = per[per.phase == "ED"][metric].dropna()
        assert summary["per_phase"]["ED"][metric]["mean"] == pytest.approx(ed.mean())
    for v, g in per.groupby("vendor"):
        assert summary["per_vendor"][v]["dice_RV"]["mean"] == pytest.approx(g["dice_RV"].dropna().mean())
    assert summary["clinical"]["LV_EF"]["mae"] == pytest.approx(clin["LV_EF_abs_error"].mean())
    assert summary["clinical"]["LV_EF"]["median_abs_error"] == pytest.approx(clin["LV_EF_abs_error"].median())
    assert "LV" in segmentation_table(load_summary(out)) and "LV_EF" in clinical_table(summary)


def test_each_post_processing_setting_keeps_its_own_tables(run):
    plain = run["run"] / "eval" / "test" / "summary.json"
    evaluate_run(run["run"])
    before = plain.read_text()
    summary = evaluate_run(run["run"], tta=True, largest_component=True)
    on_disk = json.loads((run["run"] / "eval" / "test-tta-lcc" / "summary.json").read_text())
    assert on_disk["tta"] and on_disk["largest_component"] and on_disk["overall"] == summary["overall"]
    assert plain.read_text() == before  # the runner reads eval/test: never overwritten by another setting


def _gt_predictor(cache: SliceCache, erase: tuple[int, int] | None = None):
    """predict_cached replacement returning the ground truth, optionally with LV of slice z erased in frame t."""

    def predict_cached(self, sc, subject, frames=None, tta=None, largest_component=None):
        gts = cache.native_labels(subject)
        out = {t: gts[t].copy() for t in frames}
        if erase is not None:
            t, z = erase
            out[t][..., z][out[t][..., z] == LV] = 0
        return out

    return predict_cached


def test_perfect_and_perturbed_predictions_give_hand_computed_metrics(run, monkeypatch, tmp_path):
    sc = SliceCache(run["cache"])
    monkeypatch.setattr(Segmenter, "predict_cached", _gt_predictor(sc))
    perfect = evaluate_run(run["run"], out=tmp_path / "perfect")
    for c in ("LV", "MYO", "RV"):
        assert perfect["overall"][f"dice_{c}"]["mean"] == 1.0
        assert perfect["overall"][f"hd95_{c}"]["mean"] == 0.0
    assert perfect["clinical"]["LV_EF"]["mae"] == 0.0

    test_ids = sorted(pd.read_csv(tmp_path / "perfect" / "per_subject.csv")["subject"].unique())
    ed = sc.meta(test_ids[0])["ed_frame"]
    monkeypatch.setattr(Segmenter, "predict_cached", _gt_predictor(sc, erase=(ed, 1)))
    evaluate_run(run["run"], out=tmp_path / "erased")
    per = pd.read_csv(tmp_path / "erased" / "per_subject.csv").set_index(["subject", "phase"])
    clin = pd.read_csv(tmp_path / "erased" / "clinical.csv").set_index("subject")
    for s in test_ids:  # every subject loses LV of slice 1 at ED
        gt = sc.native_labels(s)[sc.meta(s)["ed_frame"]]
        g, e = int((gt == LV).sum()), int((gt[..., 1] == LV).sum())
        assert e > 0
        assert per.loc[(s, "ED"), "dice_LV"] == pytest.approx(2 * (g - e) / (2 * g - e))
        assert per.loc[(s, "ED"), "dice_MYO"] == 1.0 and per.loc[(s, "ES"), "dice_LV"] == 1.0
        voxel_ml = np.prod(sc.geometry(s).spacing) / 1000
        assert clin.loc[s, "LV_EDV_error"] == pytest.approx(-e * voxel_ml)
        assert clin.loc[s, "LV_EDV_pred"] == pytest.approx((g - e) * voxel_ml)


def test_clinical_volumes_are_voxel_counts_times_voxel_volume(run, monkeypatch, tmp_path):
    sc = SliceCache(run["cache"])
    monkeypatch.setattr(Segmenter, "predict_cached", _gt_predictor(sc))
    evaluate_run(run["run"], subset="val", out=tmp_path)
    clin = pd.read_csv(tmp_path / "clinical.csv")
    assert len(clin) == 1
    row = clin.iloc[0]
    meta, sp = sc.meta(row["subject"]), sc.geometry(row["subject"]).spacing
    gts = sc.native_labels(row["subject"])
    ed, es = gts[meta["ed_frame"]], gts[meta["es_frame"]]
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000
    assert row["LV_EDV_gt"] == pytest.approx((ed == LV).sum() * voxel_ml)
    assert row["RV_ESV_gt"] == pytest.approx((es == RV).sum() * voxel_ml)
    assert row["LV_mass_g_gt"] == pytest.approx((ed == MYO).sum() * voxel_ml * 1.05)
    lv_ef = 100 * ((ed == LV).sum() - (es == LV).sum()) / (ed == LV).sum()
    assert row["LV_EF_gt"] == pytest.approx(lv_ef)


class Oracle(nn.Module):
    """Looks each input slice up among the cached image slices; returns the one-hot of its cached label."""

    def __init__(self, cache: SliceCache, subjects):
        super().__init__()
        images, labels = [], []
        for s in subjects:
            img, lab = cache.arrays(s)
            for i, t in enumerate(cache.meta(s)["label_frames"]):
                images.append(torch.from_numpy(np.asarray(img[t], dtype=np.float32)))
                labels.append(torch.from_numpy(np.asarray(lab[i], dtype=np.int64)))
        self.images, self.labels = torch.cat(images), torch.cat(labels)  # (N, S, S)

    def forward(self, x):
        out = []
        for sl in x[:, 0]:
            d = (self.images - sl).abs().flatten(1).amax(1)
            assert float(d.min()) == 0.0, "slice not found in the cache"
            out.append(nn.functional.one_hot(self.labels[int(d.argmin())], 4).permute(2, 0, 1).float() * 30)
        return torch.stack(out)


def test_oracle_predictions_reach_the_resampling_limit(run, tmp_path):
    sc = SliceCache(run["cache"])
    seg = Segmenter(Oracle(sc, sc.subject_ids()), spacing=sc.spacing, size=sc.size, batch_size=3)
    evaluate_run(run["run"], segmenter=seg, out=tmp_path)
    per = pd.read_csv(tmp_path / "per_subject.csv")
    for _, row in per.iterrows():  # slow reference: cached labels mapped back, Dice by hand
        meta = sc.meta(row["subject"])
        i = meta["label_frames"].index(row["frame"])
        back = labels_to_native(np.asarray(sc.arrays(row["subject"])[1][i]), sc.geometry(row["subject"]))
        gt = sc.native_labels(row["subject"])[row["frame"]]
        for c, name in ((LV, "LV"), (MYO, "MYO"), (RV, "RV")):
            assert row[f"dice_{name}"] == pytest.approx(dice_3d(back, gt, c), abs=0.01)
            assert row[f"dice_{name}"] > 0.9  # 1.2 -> 1.5 -> 1.2 mm resampling of small phantom structures
    assert per["dice_LV"].mean() > 0.95


def test_evaluate_run_errors(run, tmp_path):
    with pytest.raises(ConfigError, match="unknown subset"):
        evaluate_run(run["run"], subset="nope")
    with pytest.raises(ConfigError, match="config.yaml"):
        evaluate_run(tmp_path)
    other = tmp_path / "run"
    shutil.copytree(run["run"], other, ignore=shutil.ignore_patterns("eval", "checkpoints"))
    with pytest.raises(CheckpointError, match="no checkpoints"):
        evaluate_run(other)
    ck = torch.load(run["run"] / "checkpoints" / "last.ckpt", weights_only=True)
    ck["hyper_parameters"]["cfg"]["model"]["n_stages"] = 4
    (other / "checkpoints").mkdir()
    torch.save(ck, other / "checkpoints" / "best.ckpt")
    with pytest.raises(CheckpointError, match="missing keys"):
        evaluate_run(other)
    assert not (other / "eval").exists()


def test_evaluate_a_lightning_trained_run(run, tmp_path):
    """A real Lightning checkpoint (one training step) loads with weights_only and evaluates."""
    from cardiossp.train.fit import train_segmentation

    cfg = load_config(TrainConfig, "train", "tiny", {**TINY, "schedule.epochs": 1, "schedule.iters_per_epoch": 1,
                                                     "data.batch_size": 2, "data.augment": "none"})
    out = train_segmentation(cfg, run["cache"], run["split"], tmp_path / "run", progress=False)
    summary = evaluate_run(out, subset="val")
    assert summary["checkpoint"].endswith("best.ckpt") and summary["n_cases"] == 2
    assert 0.0 <= summary["overall"]["dice_mean"]["mean"] <= 1.0


def test_uncontoured_slices_do_not_count_as_false_positives():
    """Sunnybrook-style partial contours: the net segments every slice, the ground truth only traces some."""
    from cardiossp.evaluate.run import mask_uncontoured

    truth = np.zeros((8, 8, 4), np.uint8)
    truth[2:5, 2:5, 1] = LV  # slice 1 traced; slices 0, 2, 3 not traced
    pred = np.zeros_like(truth)
    pred[2:5, 2:5, :] = LV  # right on slice 1, and a heart on the untraced slices too
    assert dice_3d(pred, truth, LV) == pytest.approx(2 * 9 / (36 + 9))
    masked = mask_uncontoured({3: pred, 7: pred}, {"labeled_slices": {"3": [1]}})
    assert dice_3d(masked[3], truth, LV) == 1.0
    assert masked[7] is pred  # a fully labeled frame is untouched
    assert pred[..., 0].any()  # the caller's prediction is not modified in place


def test_one_degenerate_case_moves_the_lvef_mae_but_not_its_median():
    # a predicted EDV near 0 gives an EF of hundreds of per cent: the median absolute error stays the typical error
    per = pd.DataFrame({"subject": ["a", "b", "c"], "phase": ["ED"] * 3, "vendor": [None] * 3,
                        "dice_LV": [0.9, 0.8, 0.1]})
    clin = pd.DataFrame({"LV_EF_gt": [60.0, 50.0, 55.0], "LV_EF_pred": [62.0, 46.0, -845.0]})
    clin["LV_EF_error"] = clin.LV_EF_pred - clin.LV_EF_gt
    ef = summarise(per, clin)["clinical"]["LV_EF"]
    assert ef["mae"] == pytest.approx((2 + 4 + 900) / 3) and ef["median_abs_error"] == pytest.approx(4.0)
    assert ef["bias"] == pytest.approx((2 - 4 - 900) / 3) and ef["n"] == 3
    assert "4.00" in clinical_table({"clinical": {"LV_EF": ef}})
