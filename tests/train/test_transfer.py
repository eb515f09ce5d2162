"""Fine-tuning from pretrained weights: loud loading and the freezing strategies.

Strategies (Bai et al. 2019): ``all`` (SSL+All), ``frozen-encoder`` (SSL+Decoder) and
``warmup-frozen`` (encoder frozen for the first epochs). Checked through ``train_segmentation``
on the phantom, by snapshotting the network at the start and at the end of every epoch.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from cardiossp.config import FinetuneConfig, PretrainConfig, TrainConfig, load_config
from cardiossp.errors import CheckpointError, ConfigError
from cardiossp.models import parameter_groups
from cardiossp.train.fit import train_segmentation
from cardiossp.train.pretrain import PretrainModule
from cardiossp.train.segmentation import build_segmentation_model, poly_lr
from cardiossp.train.transfer import (
    apply_finetune_init,
    load_pretrained,
    transfer_weights,
)


def write_pretrained(folder, method: str = "simclr", seed: int = 123, **model) -> dict:
    """``folder/pretrained.pt`` as ``pretrain`` writes it (its record, untrained: only shapes and
    values matter here), for a tiny-preset model with ``model`` overrides."""
    over = {"method": method, **{f"model.{k}": v for k, v in model.items()}}
    torch.manual_seed(seed)
    record = PretrainModule(load_config(PretrainConfig, "pretrain", "tiny", over)).pretrained_record()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(record, folder / "pretrained.pt")
    return record


def tiny_train(**over) -> TrainConfig:
    return load_config(TrainConfig, "train", "tiny", over)


# ------------------------------------------------------------------ loud loading
def test_other_architecture_fits_nothing(tmp_path):
    write_pretrained(tmp_path / "narrow", base_features=4)  # 4..32 features vs the tiny 8..64
    record = load_pretrained(tmp_path / "narrow")
    model = build_segmentation_model(tiny_train())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"narrow.*no tensor .* fits"):
        transfer_weights(model, record["state_dict"], record["path"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


def test_partial_fit_reports_mismatched_and_unexpected_keys(tmp_path, capsys):
    # 5 stages 8..32: stages 0-2 fit the tiny 4-stage 8..64 encoder, stage 3 has other widths, stage 4 is extra
    record = write_pretrained(tmp_path / "other", n_stages=5, max_features=32)
    state = record["state_dict"]
    model = build_segmentation_model(tiny_train())
    own = model.state_dict()
    report = transfer_weights(model, state, "other-run")
    fits = [k for k in state if k in own and own[k].shape == state[k].shape]
    assert report["transferred"] == len(fits) > 0
    assert report["mismatched"] and all(".stages.3." in k for k in report["mismatched"])
    assert report["unexpected"] and all(".stages.4." in k for k in report["unexpected"])
    assert set(report["mismatched"]) | set(report["unexpected"]) | set(fits) == set(state)
    assert set(report["not_pretrained"]) == set(own) - set(fits)
    after = model.state_dict()
    for k in fits:
        assert torch.equal(after[k], state[k]), k
    for k in report["mismatched"]:
        assert torch.equal(after[k], own[k]), k  # kept its initialisation
    out = capsys.readouterr().out
    assert "shape mismatches" in out and "unexpected" in out and report["mismatched"][0] in out


def test_missing_or_bad_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere.*no pretrained weights"):
        load_pretrained(tmp_path / "nowhere")
    garbage = tmp_path / "garbage" / "pretrained.pt"
    garbage.parent.mkdir()
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(CheckpointError, match=r"garbage.pretrained\.pt: cannot read"):
        load_pretrained(garbage.parent)
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {}}, wrong)  # a readable torch file that is not a pretrained record
    with pytest.raises(CheckpointError, match=r"wrong\.pt: not a cardiossp pretrained"):
        load_pretrained(wrong)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "cardiossp-pretrained-1", "payload": FinetuneConfig()}, unsafe)  # arbitrary object
    with pytest.raises(CheckpointError, match=r"unsafe\.pt: cannot read"):  # weights_only refuses to unpickle it
        load_pretrained(unsafe)


def test_unknown_strategy_is_a_config_error(tmp_path):
    write_pretrained(tmp_path / "run")
    from cardiossp.train.segmentation import SegmentationModule

    ft = FinetuneConfig(init=str(tmp_path / "run"), strategy="half-frozen")
    with pytest.raises(ConfigError, match="half-frozen"):
        apply_finetune_init(SegmentationModule(tiny_train()), ft)


# ------------------------------------------------------------------ strategies through train_segmentation
class Snapshots(Callback):
    """Copies of the network's state at the start of training and after every epoch, and the optimiser lr."""

    def __init__(self):
        self.start: dict | None = None
        self.epochs: list[dict] = []
        self.module_lr = self.initial_lr = None

    @staticmethod
    def _copy(pl_module) -> dict:
        return {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_start(self, trainer, pl_module):
        self.start = self._copy(pl_module)
        self.module_lr = pl_module.lr
        self.initial_lr = trainer.optimizers[0].param_groups[0]["initial_lr"]

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(self._copy(pl_module))


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrained") / "run"
    write_pretrained(folder)
    return folder


def finetune(strategy: str, pretrained_run, phantom_cache, out, epochs: int = 2, **over):
    cache, split = phantom_cache
    cfg = tiny_train(**{"finetune.init": str(pretrained_run), "finetune.strategy": strategy, "finetune.lr": 0.005,
                        "schedule.epochs": epochs, "schedule.iters_per_epoch": 2, **over})
    snaps = Snapshots()
    run = train_segmentation(cfg, cache, split, out, progress=False, callbacks=[snaps])
    return cfg, run, snaps


def keys_of(group: str) -> list[str]:
    """Parameter names of ``group`` in the tiny segmentation model (InstanceNorm keeps no buffers)."""
    names = parameter_groups(build_segmentation_model(tiny_train()))[group]
    assert names
    return names


def same(a: dict, b: dict, keys) -> list[str]:
    return [k for k in keys if torch.equal(a[k], b[k])]


@pytest.mark.usefixtures("one_thread")
def test_frozen_encoder_keeps_the_pretrained_encoder(tmp_path, pretrained_run, phantom_cache):
    record = load_pretrained(pretrained_run)
    _, run, snaps = finetune("frozen-encoder", pretrained_run, phantom_cache, tmp_path / "ft")
    enc, dec = keys_of("encoder"), keys_of("decoder")
    # training starts from the pretrained encoder
    assert same(snaps.start, record["state_dict"], enc) == enc
    final = {k.removeprefix("model."): v for k, v in
             torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"].items()}
    enc_state = [k for k in final if k.startswith(("encoder.", "decoder.encoder."))]
    assert set(enc_state) == set(record["state_dict"])
    assert same(final, record["state_dict"], enc_state) == enc_state  # every encoder tensor, aliases included
    assert not same(final, snaps.start, dec)  # the whole decoder trained
    assert not same(final, snaps.start, keys_of("head"))


@pytest.mark.usefixtures("one_thread")
def test_warmup_frozen_releases_the_encoder_after_the_warmup(tmp_path, pretrained_run, phantom_cache):
    record = load_pretrained(pretrained_run)
    _, _, snaps = finetune("warmup-frozen", pretrained_run, phantom_cache, tmp_path / "ft",
                           **{"finetune.warmup_frozen_epochs": 1})
    enc, dec = keys_of("encoder"), keys_of("decoder")
    assert len(snaps.epochs) == 2
    after1, after2 = snaps.epochs
    assert same(after1, record["state_dict"], enc) == enc  # frozen in epoch 1
    assert not same(after1, snaps.start, dec)  # while the decoder trained
    assert not same(after2, after1, enc)  # then the encoder trains too


@pytest.mark.usefixtures("one_thread")
def test_all_trains_the_encoder_at_the_finetuning_lr(tmp_path, pretrained_run, phantom_cache):
    record = load_pretrained(pretrained_run)
    cfg, run, snaps = finetune("all", pretrained_run, phantom_cache, tmp_path / "ft", epochs=1)
    enc = keys_of("encoder")
    assert same(snaps.start, record["state_dict"], enc) == enc
    assert not same(snaps.epochs[0], snaps.start, enc)  # the encoder trains from the first epoch
    # the optimiser used finetune.lr (paper: 0.005), not optim.lr (0.01)
    assert cfg.optim.lr != cfg.finetune.lr
    assert snaps.module_lr == snaps.initial_lr == 0.005
    steps = cfg.schedule.iters_per_epoch
    m = pd.read_csv(run / "logs" / "metrics.csv").dropna(subset=["lr"])
    expected = np.mean([0.005 * poly_lr(s, steps, cfg.optim.poly_power) for s in range(steps)])
    assert m["lr"].iloc[0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.usefixtures("one_thread")
def test_from_scratch_uses_the_training_lr_and_no_pretrained_weights(tmp_path, phantom_cache, pretrained_run):
    """Control for the tests above: without ``finetune.init`` nothing is loaded and optim.lr is used."""
    cache, split = phantom_cache
    cfg = tiny_train(**{"schedule.epochs": 1, "schedule.iters_per_epoch": 1})
    snaps = Snapshots()
    L.seed_everything(0, verbose=False)
    train_segmentation(cfg, cache, split, tmp_path / "scratch", progress=False, callbacks=[snaps])
    conv = [k for k in keys_of("encoder") if k.endswith("conv.weight")]  # biases / norms start at 0 / 1 anyway
    assert not same(snaps.start, load_pretrained(pretrained_run)["state_dict"], conv)
    assert snaps.initial_lr == cfg.optim.lr == 0.01


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["frozen-encoder", "warmup-frozen"])
def test_freezing_strategies_under_ddp(strategy, tmp_path, pretrained_run, phantom_cache):
    """2 gloo processes through the CLI. Switching requires_grad after DDP wrapped the model made DDP
    fail with "Expected to have finished reduction" at the second step of a frozen epoch."""
    import json
    import os
    import subprocess
    import sys

    cache, split = phantom_cache
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "cardiossp", "train", "--cache", str(cache), "--split", str(split), "--out", str(out),
           "--preset", "tiny", "--devices", "2", "--init", str(pretrained_run), "--strategy", strategy,
           "--warmup-frozen-epochs", "1", "--set", "accelerator=cpu", "--set", "schedule.epochs=2",
           "--set", "schedule.iters_per_epoch=4"]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "done.json").read_text())["steps"] == 8  # 2 epochs x 4 iterations (global batch fixed)
    final = {k.removeprefix("model."): v for k, v in
             torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"].items()}
    pretrained = load_pretrained(pretrained_run)["state_dict"]
    enc = keys_of("encoder")
    if strategy == "frozen-encoder":
        assert same(final, pretrained, enc) == enc
    else:
        assert not same(final, pretrained, [k for k in enc if k.endswith("conv.weight")])
