"""Self-training: `pseudo-label` writes a teacher's predictions for the split's training and unlabeled
subjects (never val / test, never reading their labels), checked against the network run by hand;
the store is resumable and checked on use; the student trains through the real engine on them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cardiossp.config import TrainConfig, load_config
from cardiossp.data.budgets import training_subjects
from cardiossp.data.datasets import PseudoLabeledSlices
from cardiossp.data.labels import keep_connected_heart
from cardiossp.data.pseudo import PseudoLabels
from cardiossp.data.slices import SliceCache
from cardiossp.data.splits import load_split
from cardiossp.errors import ConfigError, DataError
from cardiossp.inference import Segmenter
from cardiossp.pseudo_label import pseudo_label
from cardiossp.train.fit import train_segmentation, unlabeled_pool


def guard_labels(monkeypatch, subjects):
    real = SliceCache.label_array

    def guarded(self, subject):
        assert subject not in subjects, f"read the labels of {subject}"
        return real(self, subject)

    monkeypatch.setattr(SliceCache, "label_array", guarded)


def test_pseudo_labels_are_the_teachers_argmax_and_never_read_labels(tmp_path, phantom_cache, teacher, monkeypatch):
    cache, split = phantom_cache
    sp, sc = load_split(split), SliceCache(cache)
    guard_labels(monkeypatch, set(sc.subject_ids()))  # no subject's labels are read
    out = pseudo_label(teacher, cache, split, tmp_path / "pl", tta=False, largest_component=False, device="cpu")
    record = json.loads((out / "pseudo.json").read_text())
    assert sorted(record["subjects"]) == sorted(set(sp["train"]) | set(sp["unlabeled"]))
    assert not set(record["subjects"]) & (set(sp["val"]) | set(sp["test"]))
    model = Segmenter.from_checkpoint(teacher, device="cpu").model.float().eval()
    s = sp["unlabeled"][0]
    image = torch.from_numpy(np.asarray(sc.image_array(s), dtype=np.float32))
    with torch.no_grad():  # the reference: the network run by hand on every slice of every frame
        out_ = model(image.reshape(-1, 1, *image.shape[-2:]))
        want = (out_[0] if isinstance(out_, (list, tuple)) else out_).argmax(1).reshape(image.shape).numpy()
    got = np.load(out / f"{s}.npy")
    assert got.dtype == np.uint8 and got.shape == image.shape
    assert (got == want).mean() > 0.999  # bf16 / fp32 ties at most
    assert len(record["subjects"][s]["mean_confidence"]) == image.shape[0]


def test_clean_up_and_resume(tmp_path, phantom_cache, teacher):
    cache, split = phantom_cache
    out = pseudo_label(teacher, cache, split, tmp_path / "pl", device="cpu")  # TTA + largest component
    raw = pseudo_label(teacher, cache, split, tmp_path / "raw", largest_component=False, device="cpu")
    record = json.loads((out / "pseudo.json").read_text())
    changed = 0
    for k in record["subjects"]:  # the clean-up is the 3D clean-up of the raw (TTA) labels, frame by frame
        cleaned, plain = np.load(out / f"{k}.npy"), np.load(raw / f"{k}.npy")
        for t in range(cleaned.shape[0]):
            assert np.array_equal(cleaned[t], keep_connected_heart(plain[t]))
        changed += int((cleaned != plain).sum())
    assert changed > 0  # the untrained teacher's labels have stray components: the clean-up removed some
    s = sorted(record["subjects"])[0]
    labels = np.load(out / f"{s}.npy")
    (out / f"{s}.npy").write_bytes(b"damaged")
    before = {k: (out / f"{k}.npy").stat().st_mtime_ns for k in record["subjects"] if k != s}
    pseudo_label(teacher, cache, split, out, device="cpu")
    assert np.array_equal(np.load(out / f"{s}.npy"), labels)  # only the damaged subject is written again
    assert {k: (out / f"{k}.npy").stat().st_mtime_ns for k in before} == before
    with pytest.raises(DataError, match="another teacher, cache or setting"):
        pseudo_label(teacher, cache, split, out, tta=False, device="cpu")


def test_store_is_checked_on_use(tmp_path, phantom_cache, teacher):
    cache, split = phantom_cache
    sc = SliceCache(cache)
    out = pseudo_label(teacher, cache, split, tmp_path / "pl", tta=False, device="cpu")
    store = PseudoLabels(out, sc)
    pool = unlabeled_pool(load_split(split), training_subjects(load_split(split), 2))
    store.require(pool)
    with pytest.raises(DataError, match="no pseudo-labels for 1 subject"):
        store.require(pool + [load_split(split)["test"][0]])
    arr = np.load(out / f"{pool[0]}.npy")
    np.save(out / f"{pool[0]}.npy", (arr + 1) % 4)  # same shape, other contents
    with pytest.raises(DataError, match="SHA-256"):
        PseudoLabels(out, sc).require(pool)
    np.save(out / f"{pool[0]}.npy", arr[:, :1])
    with pytest.raises(DataError, match="do not fit the cached image"):
        PseudoLabels(out, sc).array(pool[0])
    rec = json.loads((out / "pseudo.json").read_text())
    (out / "pseudo.json").write_text(json.dumps({**rec, "size": 32}))
    with pytest.raises(DataError, match="px grid"):
        PseudoLabels(out, sc)


def test_pseudo_labeled_slices_carry_the_store(tmp_path, phantom_cache, teacher, monkeypatch):
    cache, split = phantom_cache
    sc = SliceCache(cache)
    out = pseudo_label(teacher, cache, split, tmp_path / "pl", tta=False, device="cpu")
    pool = unlabeled_pool(load_split(split), training_subjects(load_split(split), 2))
    guard_labels(monkeypatch, set(pool))
    ds = PseudoLabeledSlices(sc, PseudoLabels(out, sc), pool)
    assert len(ds) == len(sc.rows(subjects=pool))  # every slice of every cached frame
    for i in (0, len(ds) - 1):
        item = ds[i]
        want = np.load(out / f"{ds.subject[i]}.npy")[int(ds.frame[i]), int(ds.slice[i])]
        assert np.array_equal(item["segmentation"][0].numpy(), want)


def test_student_trains_on_pseudo_labels_without_reading_pool_labels(tmp_path, phantom_cache, teacher, monkeypatch):
    cache, split = phantom_cache
    out = pseudo_label(teacher, cache, split, tmp_path / "pl", device="cpu")
    pool = unlabeled_pool(load_split(split), training_subjects(load_split(split), 2))
    guard_labels(monkeypatch, set(pool))
    cfg = load_config(TrainConfig, "train", "tiny", {"labeled_subjects": 2, "schedule.epochs": 1,
                                                      "schedule.iters_per_epoch": 2, "data.batch_size": 4,
                                                      "semi.method": "self-training",
                                                      "semi.pseudo_labels": str(out)})
    run = train_segmentation(cfg, cache, split, tmp_path / "student", progress=False)
    done = json.loads((run / "done.json").read_text())
    assert done["semi"] == "self-training" and done["unlabeled_subjects"] == len(pool)
    assert done["pseudo_labels"]["tta"] is True and done["pseudo_labels"]["teacher_sha256"]
    assert done["pseudo_labels"]["clean_up"] == "connected-heart"
    m = pd.read_csv(run / "logs" / "metrics.csv")
    assert (m.dropna(subset=["train_unsup"])["train_unsup"] > 0).all()


def test_reliable_frames_are_the_most_confident_and_the_student_trains_on_them_only(tmp_path, phantom_cache,
                                                                                   teacher, monkeypatch):
    cache, split = phantom_cache
    sc = SliceCache(cache)
    out = pseudo_label(teacher, cache, split, tmp_path / "pl", tta=False, device="cpu")
    pool = unlabeled_pool(load_split(split), training_subjects(load_split(split), 2))
    store = PseudoLabels(out, sc)
    conf = {(s, t): c for s in pool for t, c in enumerate(store.record["subjects"][s]["mean_confidence"])}
    kept = store.most_confident_frames(pool, 0.5)
    assert len(kept) == int(np.floor(0.5 * len(conf) + 0.5)) and kept < set(conf)
    assert min(conf[f] for f in kept) >= max(conf[f] for f in set(conf) - kept)  # the slow reference: compare all
    assert len(store.most_confident_frames(pool, 1e-6)) == 1
    ds = PseudoLabeledSlices(sc, store, pool, frames=kept)
    assert {(s, int(t)) for s, t in zip(ds.subject, ds.frame)} == kept
    assert len(ds) == sum(len(sc.rows(subjects=[s]).query("frame == @t")) for s, t in kept)
    guard_labels(monkeypatch, set(pool))
    cfg = load_config(TrainConfig, "train", "tiny", {"labeled_subjects": 2, "schedule.epochs": 1,
                                                      "schedule.iters_per_epoch": 2, "data.batch_size": 4,
                                                      "semi.method": "self-training", "semi.pseudo_labels": str(out),
                                                      "semi.options": {"reliable": 0.5}})
    done = json.loads((train_segmentation(cfg, cache, split, tmp_path / "student", progress=False)
                       / "done.json").read_text())
    assert done["unlabeled_slices"] == len(ds) < len(sc.rows(subjects=pool))
    assert done["pseudo_labels"]["frames"] == len(kept)
    cfg.semi.options = {"reliable": 1.5}
    with pytest.raises(ConfigError, match="reliable=1.5"):
        train_segmentation(cfg, cache, split, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_config_pairs_method_and_store():
    with pytest.raises(ConfigError, match="pseudo_labels"):
        load_config(TrainConfig, "train", "tiny", {"semi.method": "self-training"})
    with pytest.raises(ConfigError, match="self-training when semi.pseudo_labels"):
        load_config(TrainConfig, "train", "tiny", {"semi.method": "unimatch", "semi.pseudo_labels": "x"})


@pytest.mark.slow
def test_campaign_runs_teacher_then_pseudo_labels_then_student(tmp_path):
    """A real campaign on the phantom: the student waits for its teacher (``needs``), then the executor
    labels the pool with it and trains on those labels; the plan's ``evaluate`` section picks the test
    evaluation the results come from; a rerun redoes nothing."""
    import yaml

    from cardiossp.experiments import load_plan, run_campaign
    from cardiossp.experiments.results import collect_results

    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "data": [{"reader": "phantom", "path": "builtin"}],
        "phantom": {"n_subjects": 8, "n_unlabeled": 1, "size": 48, "n_slices": 3, "n_frames": 3, "seed": 0},
        "cache": {"spacing": 1.5, "size": 48}, "split": {"seed": 0, "val": 1, "test": 2},
        "train": {"preset": "tiny", "set": {"data.patch_size": 48, "schedule.epochs": 1,
                                            "schedule.iters_per_epoch": 2}},
        "evaluate": {"tta": True, "largest_component": True},
        "studies": {"label_budget": {"methods": ["scratch+self-training"], "budgets": [2], "seeds": [0]}}}))
    out = tmp_path / "c"
    student = "runs/scratch+self-training-n2-s0"
    rows = run_campaign(load_plan(plan), out, shard=(1, 2), say=lambda s: None)  # the student's shard alone
    assert rows == [{"run": student, "status": "needs runs/scratch-n2-s0"}]
    rows = run_campaign(load_plan(plan), out, say=lambda s: None)
    assert [r["status"] for r in rows] == ["ran", "ran"]
    done = json.loads((out / student / "done.json").read_text())
    assert done["semi"] == "self-training"
    assert done["pseudo_labels"]["teacher"] == str((out / "runs/scratch-n2-s0/checkpoints/best.ckpt").resolve())
    record = json.loads((out / "pseudo/scratch-n2-s0/pseudo.json").read_text())
    sp = load_split(out / "split.yaml")
    assert sorted(record["subjects"]) == sorted(set(sp["train"]) | set(sp["unlabeled"]))
    summary = json.loads((out / student / "eval" / "test-tta-lcc" / "summary.json").read_text())
    assert summary["tta"] and summary["largest_component"]
    results = collect_results(out)
    assert set(results["run"]) == {"scratch-n2-s0", "scratch+self-training-n2-s0"}
    assert [r["status"] for r in run_campaign(load_plan(plan), out, say=lambda s: None)] == ["done", "done"]
