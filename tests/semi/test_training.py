"""Semi-supervised fine-tuning through the real engine on the phantom: every method x every
registered model x (scratch, an SSP init); labels of the unlabeled pool never read; resume; DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from cardiossp.config import PretrainConfig, TrainConfig, load_config
from cardiossp.data.budgets import training_subjects
from cardiossp.data.datasets import LabeledSlices
from cardiossp.data.slices import SliceCache
from cardiossp.data.splits import load_split
from cardiossp.errors import ConfigError
from cardiossp.models import MODELS
from cardiossp.semi import SEMI_METHODS
from cardiossp.train.fit import train_segmentation, unlabeled_pool
from cardiossp.train.pretrain import PretrainModule
from cardiossp.train.run import in_eval_by_design
from cardiossp.train.segmentation import SegmentationModule
from tests.stop_after import StopAfter

TINY_MODELS = {  # every registered model, small enough for two semi-supervised steps at 64 px
    "unet": {},
    "resnet_unet": {"model.options": {"depth": 18, "decoder_channels": [32, 16, 16, 8, 8]}},
    "deeplabv3": {},
}


def semi_cfg(method: str, model: str = "unet", **over) -> TrainConfig:
    base = {"semi.method": method, "labeled_subjects": 2, "schedule.epochs": 1, "schedule.iters_per_epoch": 2,
            "data.batch_size": 2 if model == "deeplabv3" else 4, "model.name": model, **TINY_MODELS[model], **over}
    return load_config(TrainConfig, "train", "tiny", base)


def write_pretrained(folder, method: str, **model) -> dict:
    """``folder/pretrained.pt`` as ``pretrain`` writes it (an untrained record: only its values matter)."""
    torch.manual_seed(123)
    over = {"method": method, **{f"model.{k}": v for k, v in model.items()}}
    record = PretrainModule(load_config(PretrainConfig, "pretrain", "tiny", over)).pretrained_record()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(record, folder / "pretrained.pt")
    return record


class FirstWeights(Callback):
    """The student's state at the start of training."""

    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def test_every_semi_method_and_model_is_listed():
    assert set(MODELS.names()) == set(TINY_MODELS)
    assert set(SEMI_METHODS.names()) == {"mean-teacher", "unimatch", "bcp", "self-training"}


@pytest.mark.slow
@pytest.mark.parametrize("init", ["scratch", "mim"])
@pytest.mark.parametrize("model", sorted(TINY_MODELS))
@pytest.mark.parametrize("method", sorted(["mean-teacher", "unimatch", "bcp", "self-training"]))
def test_semi_method_trains_every_model_from_every_start(tmp_path, phantom_cache, one_thread, method, model, init,
                                                         request):
    cache, split = phantom_cache
    # BCP's mixed loss from step 0; every UniMatch pixel confident (an untrained net reaches no 0.95)
    over = {"semi.options": {"bcp": {"warmup_fraction": 0.0}, "unimatch": {"threshold": 0.0}}.get(method, {})}
    if method == "self-training":
        over["semi.pseudo_labels"] = str(request.getfixturevalue("pseudo_store"))
    if init != "scratch":
        model_over = {k.removeprefix("model."): v for k, v in {"name": model, **TINY_MODELS[model]}.items()}
        record = write_pretrained(tmp_path / "pre", method=init, **{k: v for k, v in model_over.items()})
        over["finetune.init"] = str(tmp_path / "pre")
    first = FirstWeights()
    run = train_segmentation(semi_cfg(method, model, **over), cache, split, tmp_path / "run", progress=False,
                             callbacks=[first])
    done = json.loads((run / "done.json").read_text())
    assert done["steps"] == 2 and done["semi"] == method and done["unlabeled_subjects"] == 4
    m = pd.read_csv(run / "logs" / "metrics.csv")
    unsup = m.dropna(subset=["train_unsup"])["train_unsup"]
    assert len(unsup) and (unsup > 0).all()  # the unlabeled batch contributed a loss
    if init != "scratch":  # the pretrained weights are the fine-tuning start
        transferred = [k for k in record["state_dict"] if k in first.state]
        assert transferred and all(torch.equal(first.state[k], record["state_dict"][k]) for k in transferred)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    teacher = [k for k in ckpt if k.startswith("semi.teacher.")]
    assert bool(teacher) == (method in ("mean-teacher", "bcp"))  # the EMA teacher is checkpointed


def test_unlabeled_pool_never_reads_labels(tmp_path, phantom_cache, monkeypatch, one_thread):
    """Every read of an unlabeled-pool subject's label array fails: semi-supervised training still runs."""
    src, split = phantom_cache
    sp = load_split(split)
    labeled = training_subjects(sp, 2)
    pool = set(unlabeled_pool(sp, labeled))
    assert pool and not pool & (set(labeled) | set(sp["val"]) | set(sp["test"]))
    real = SliceCache.label_array

    def guarded(self, subject):
        assert subject not in pool, f"read the labels of unlabeled-pool subject {subject}"
        return real(self, subject)

    monkeypatch.setattr(SliceCache, "label_array", guarded)
    labeled_pool = [s for s in pool if s in sp["train"]]
    with pytest.raises(AssertionError, match="read the labels"):  # the guard bites: their labels cannot be read
        LabeledSlices(SliceCache(src), labeled_pool)[0]
    run = train_segmentation(semi_cfg("unimatch"), src, split, tmp_path / "run", progress=False)
    assert (run / "done.json").is_file()


def test_pool_without_unlabeled_subjects_is_refused():
    split = {"train": ["a", "b"], "unlabeled": [], "val": [], "test": []}
    with pytest.raises(ConfigError, match="needs unlabeled subjects"):
        unlabeled_pool(split, ["a", "b"])
    assert unlabeled_pool({**split, "unlabeled": ["u"]}, ["a"]) == ["b", "u"]


def test_semi_resume_gives_the_uninterrupted_weights(tmp_path, phantom_cache, one_thread):
    """Device-side perturbations are seeded by (seed, step): a resumed UniMatch / Mean Teacher run ends
    with the weights (and teacher) of the uninterrupted one."""
    cache, split = phantom_cache
    for method in ("unimatch", "mean-teacher"):
        cfg = semi_cfg(method, **{"schedule.epochs": 2})
        full = train_segmentation(cfg, cache, split, tmp_path / f"{method}-full", progress=False)
        part = train_segmentation(cfg, cache, split, tmp_path / f"{method}-part", progress=False,
                                  callbacks=[StopAfter()])
        assert not (part / "done.json").exists()
        train_segmentation(cfg, cache, split, part, progress=False, resume=True)
        a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        b = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{method}: {k}")


@pytest.mark.parametrize("stop_epochs,copy_paste_warm_start", [(1, False), (2, False), (2, True)])
def test_bcp_resume_before_and_after_its_teacher_starts(tmp_path, phantom_cache, one_thread, stop_epochs,
                                                        copy_paste_warm_start):
    """BCP copies its EMA teacher from the student when the warm start ends (step 2 of 6 here): a run
    interrupted before that (1 epoch) or after it (2 epochs) resumes to the uninterrupted student and
    teacher, and the teacher is not copied a second time on resume; also with the authors' copy-paste
    warm start (``warmup_copy_paste``)."""
    cache, split = phantom_cache
    options = {"warmup_fraction": 0.3, "warmup_copy_paste": copy_paste_warm_start}
    cfg = semi_cfg("bcp", **{"schedule.epochs": 3, "semi.options": options})
    full = train_segmentation(cfg, cache, split, tmp_path / "full", progress=False)
    part = train_segmentation(cfg, cache, split, tmp_path / "part", progress=False,
                              callbacks=[StopAfter(stop_epochs)])
    assert not (part / "done.json").exists()
    started = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    flag = [k for k in started if k.endswith("teacher_started")]
    assert len(flag) == 1 and bool(started[flag[0]]) == (stop_epochs == 2)
    train_segmentation(cfg, cache, split, part, progress=False, resume=True)
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and any(".teacher." in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_lightning_is_quiet_about_ema_teachers_but_not_about_other_eval_modules(tmp_path, phantom_cache, one_thread):
    """The EMA teacher stays in eval mode by design: no "modules in eval mode" warning for it; any other
    submodule left in eval mode still counts."""
    cache, split = phantom_cache
    module = SegmentationModule(semi_cfg("mean-teacher"), total_steps=1)
    assert in_eval_by_design(module)
    assert not in_eval_by_design(SegmentationModule(semi_cfg("unimatch"), total_steps=1))  # nothing in eval
    next(iter(module.model.children())).eval()
    assert not in_eval_by_design(module)  # a student part in eval mode is not by design
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train_segmentation(semi_cfg("mean-teacher"), cache, split, tmp_path / "run", progress=False)
    assert not [w for w in seen if "in eval mode" in str(w.message)]


def test_semi_with_multitask_is_refused(tmp_path, phantom_cache):
    cache, split = phantom_cache
    with pytest.raises(ConfigError, match="multitask"):
        train_segmentation(semi_cfg("unimatch", **{"finetune.strategy": "multitask"}), cache, split,
                           tmp_path / "run", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["unimatch", "self-training"])
def test_semi_ddp_two_cpu_processes(tmp_path, phantom_cache, method, request):
    """UniMatch and self-training under 2-process gloo DDP through the CLI: the 1-process schedule, split
    across ranks (self-training's loader pickles the pseudo-label store into each rank's workers)."""
    cache, split = phantom_cache
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    semi = (["--pseudo-labels", str(request.getfixturevalue("pseudo_store"))] if method == "self-training"
            else ["--semi", method])
    cmd = [sys.executable, "-m", "cardiossp", "train", "--cache", str(cache), "--split", str(split), "--out",
           str(tmp_path / "ddp"), "--preset", "tiny", "--devices", "2", "--set", "accelerator=cpu",
           *semi, "--labeled-subjects", "2", "--set", "data.num_workers=1",
           "--set", "schedule.epochs=1", "--set", "schedule.iters_per_epoch=3"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    done = json.loads((tmp_path / "ddp" / "done.json").read_text())
    assert done["steps"] == 3 and done["semi"] == method
