"""Anatomical position pretext (Bai et al. 2019): targets, loss against a slow reference,
targets from real ACDC / M&Ms-2 geometry, and SSL+MultiTask fine-tuning end to end.

Real data (cite when used): ACDC, Bernard et al., IEEE TMI 37(11) 2018; M&Ms-2, Martín-Isla
et al., IEEE JBHI 27(7) 2023.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import default_collate

from cardiossp.config import PretrainConfig, TrainConfig, load_config
from cardiossp.errors import ConfigError
from cardiossp.ssp import build_method
from cardiossp.ssp.position import (
    IGNORE,
    PositionPretext,
    position_pretext_loss,
    pretext_targets,
)
from cardiossp.ssp.views import FallbackAugment


def test_targets_by_hand():
    batch = {"position": torch.tensor([0.0, 0.19, 0.2, 0.5, 0.99, 1.0]),
             "view": ["SA", "SA", "SA", "LA", "sa", "AX"]}  # fmt: skip
    t = pretext_targets(batch, n_bins=5)
    assert t["bins"].tolist() == [0, 0, 1, IGNORE, 4, IGNORE]  # only short-axis slices have a position
    assert t["views"].tolist() == [0, 0, 0, 1, 0, IGNORE]  # SA 0, LA 1, unknown views ignored
    assert pretext_targets({"position": torch.zeros(2), "view": ["2CH", "4CH"]}, 5)["views"].tolist() == [2, 4]
    assert torch.isnan(t["normals"]).all() and t["normals"].shape == (6, 3)  # no plane_normal: unknown
    t = pretext_targets({"position": torch.tensor([1.0])}, n_bins=3)  # no view: short axis
    assert t["bins"].tolist() == [2] and t["views"].tolist() == [0]


def slow_reference(bin_logits, view_logits, normal_pred, targets, w_pos, w_view, w_normal) -> float:
    """Per-sample Python loops: mean cross-entropies over the samples with a target, mean sin^2."""
    total = 0.0
    for logits, target, w in ((bin_logits, targets["bins"], w_pos), (view_logits, targets["views"], w_view)):
        ces = []
        for row, k in zip(logits.tolist(), target.tolist()):
            if k != IGNORE:
                ces.append(math.log(sum(math.exp(v) for v in row)) - row[k])
        total += w * (sum(ces) / len(ces) if ces else 0.0)
    sins = []
    for p, n in zip(normal_pred.tolist(), targets["normals"].tolist()):
        if all(math.isfinite(v) for v in n):
            cos = sum(a * b for a, b in zip(p, n)) / math.sqrt(sum(a * a for a in p) * sum(b * b for b in n))
            sins.append(1.0 - cos * cos)
    return total + w_normal * (sum(sins) / len(sins) if sins else 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_slow_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 12, 5
    bins = torch.randint(0, k, (n,), generator=g)
    views = torch.randint(0, 5, (n,), generator=g)
    bins[torch.rand(n, generator=g) < 0.3] = IGNORE
    views[torch.rand(n, generator=g) < 0.2] = IGNORE
    normals = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    normals[torch.rand(n, generator=g) < 0.4] = math.nan
    targets = {"bins": bins, "views": views, "normals": normals}
    logits, vlogits, npred = 3 * torch.randn(n, k, generator=g), torch.randn(n, 5, generator=g), torch.randn(n, 3)
    weights = (0.7, 1.3, 0.5)
    out = position_pretext_loss(logits, vlogits, npred, targets, *weights)
    assert out["loss"].item() == pytest.approx(slow_reference(logits, vlogits, npred, targets, *weights), rel=1e-5)
    assert {"position_ce", "view_ce", "normal_sin2"} <= set(out)


def test_normal_loss_is_sign_blind_and_bounded():
    n = torch.nn.functional.normalize(torch.tensor([[0.5, -0.6, -0.62]]), dim=1)
    targets = {"bins": torch.tensor([IGNORE]), "views": torch.tensor([IGNORE]), "normals": n}
    z2, z1 = torch.zeros(1, 5), torch.zeros(1, 5)

    def sin2(pred):
        return position_pretext_loss(z1, z2, pred, targets, 1.0, 1.0, 1.0)["normal_sin2"].item()

    assert sin2(3 * n) == pytest.approx(0.0, abs=1e-6) and sin2(-0.5 * n) == pytest.approx(0.0, abs=1e-6)
    perpendicular = torch.linalg.cross(n, torch.tensor([[1.0, 0.0, 0.0]]))
    assert sin2(perpendicular) == pytest.approx(1.0, abs=1e-6)


def test_batch_without_targets_gives_a_zero_loss_that_still_reaches_every_head_weight():
    head = PositionPretext(in_dim=8, position_bins=4, hidden_dim=6, normal_weight=1.0)
    batch = {"position": torch.tensor([0.5, 0.5]), "view": ["AX", "AX"], "plane_normal": torch.full((2, 3), math.nan)}
    out = head(torch.randn(2, 8, 3, 3), batch)
    assert out["loss"].item() == 0.0 and set(out) == {"loss"}
    out["loss"].backward()
    assert all(p.grad is not None for p in head.parameters())  # DDP: no unused parameters


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="not all 0"):
        PositionPretext(8, position_weight=0.0, view_weight=0.0, normal_weight=0.0)
    with pytest.raises(ConfigError, match="position_bins"):
        PositionPretext(8, position_bins=1)
    with pytest.raises(ConfigError, match="unknown option"):
        build_method("position", lambda nc, ds: None, {"position_bin": 3})


def test_plane_normal_from_the_affine():
    from scipy.spatial.transform import Rotation

    from cardiossp.data.datasets import plane_normal

    rot = Rotation.from_euler("xyz", [30, -50, 70], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rot * np.array([1.4, 1.4, 8.0])  # columns: direction cosines x spacing
    got = plane_normal({"affine": affine.tolist(), "spacing": [1.4, 1.4, 8.0]})
    np.testing.assert_allclose(got, rot[:, 2], atol=1e-6)
    # ACDC-like: a +-identity affine that ignores the 1.56 mm pixels carries no orientation
    assert np.isnan(plane_normal({"affine": np.diag([-1.0, -1, 1, 1]).tolist(), "spacing": [1.5625, 1.5625, 10]})).all()
    # single-slice long-axis files often store 1 mm along z: only the in-plane columns are checked
    affine[:3, 2] = rot[:, 2]
    np.testing.assert_allclose(
        plane_normal({"affine": affine.tolist(), "spacing": [1.4, 1.4, 6.0]}), rot[:, 2], atol=1e-6
    )


# ------------------------------------------------------------------ real geometry
@pytest.fixture(scope="module")
def real_cache(tmp_path_factory, acdc_root, mnms2_root):
    """ACDC patient001 and M&Ms-2 001 (short and long axis) in a small cache (2.5 mm, 64 px)."""
    from cardiossp.data.cache import prepare
    from cardiossp.data.slices import SliceCache

    root = tmp_path_factory.mktemp("realpos")
    for name, src in (("acdc", acdc_root / "patient001"), ("mnms2", mnms2_root / "001")):
        (root / name).mkdir()
        (root / name / src.name).symlink_to(src, target_is_directory=True)
    return SliceCache(prepare([("acdc", root / "acdc"), ("mnms2", root / "mnms2")], root / "cache", 2.5, 64))


def test_targets_from_real_acdc_and_mnms2_geometry(real_cache, one_thread):
    from cardiossp.data.datasets import UnlabeledSlices

    sc = real_cache
    method = build_method(
        "position", tiny_unet, {"input_size": 32, "hidden_dim": 16, "normal_weight": 1.0}, augment=FallbackAugment(32)
    )
    ds = UnlabeledSlices(sc, sc.subject_ids(), transform=method.view_maker)
    first_frame = np.nonzero(ds.frame == 0)[0]
    batch = default_collate([ds[i] for i in first_frame])
    t = pretext_targets(batch, n_bins=5)
    subjects = np.asarray(batch["subject"])
    for key in ("acdc_patient001", "mnms2_001"):  # short-axis stacks, both stored base first
        rows = np.nonzero(subjects == key)[0]
        z = ds.slice[first_frame[rows]]
        pos = batch["position"][rows].numpy()
        assert pos[z == 0] == 0.0 and pos[z == z.max()] == 1.0
        assert t["bins"][rows][z == 0].item() == 0 and t["bins"][rows][z == z.max()].item() == 4
        assert (t["views"][rows] == 0).all()
        # anatomy agrees: the LV cavity is widest in the basal half (ED labels, native grid)
        lv_area = (sc.native_labels(key)[sc.meta(key)["ed_frame"]] == 1).sum(axis=(0, 1))
        assert int(np.argmax(lv_area)) / (len(lv_area) - 1) < 0.5
    la = np.nonzero(subjects == "mnms2_001_LA")[0]
    assert len(la) == 1 and batch["view"][la[0]] == "LA"
    assert t["bins"][la].item() == IGNORE and t["views"][la].item() == 1  # no base->apex position; view LA
    normal = {k: t["normals"][np.nonzero(subjects == k)[0][0]] for k in set(subjects)}
    assert torch.isnan(normal["acdc_patient001"]).all()  # ACDC affines hold no orientation: ignored
    sa, la_n = normal["mnms2_001"], normal["mnms2_001_LA"]
    assert sa.norm().item() == pytest.approx(1.0, abs=1e-5) and la_n.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert abs(torch.dot(sa, la_n).item()) < 0.3  # the 4-chamber plane is ~perpendicular to the short axis
    out = method.forward_loss(batch, 0.0)
    assert math.isfinite(out["loss"].item()) and {"position_ce", "view_ce", "normal_sin2"} <= set(out)


# ------------------------------------------------------------------ SSL+MultiTask
def tiny_unet(num_classes: int, deep_supervision: bool):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn

    return PlainConvUNet(1, 3, [8, 16, 16], nn.Conv2d, 3, [1, 2, 2], 1, num_classes, 1, True, nn.InstanceNorm2d,
                         {"affine": True}, nonlin=nn.LeakyReLU, deep_supervision=deep_supervision)  # fmt: skip


def test_multitask_terms_add_the_weighted_pretext_loss(one_thread):
    from cardiossp.train.losses import DeepSupervisionLoss, DiceCELoss
    from cardiossp.train.transfer import multitask_terms

    torch.manual_seed(0)
    model, pretext = tiny_unet(4, False), PositionPretext(16, position_bins=3, hidden_dim=8)
    batch = {"image": torch.randn(4, 1, 16, 16), "segmentation": torch.randint(0, 4, (4, 1, 16, 16)),
             "position": torch.tensor([0.0, 0.3, 0.7, 1.0]), "view": ["SA"] * 4}  # fmt: skip
    terms = multitask_terms(model, pretext, DeepSupervisionLoss(DiceCELoss(), 1), batch, pretext_weight=0.25)
    assert terms["loss"].item() == pytest.approx(terms["seg_loss"].item() + 0.25 * terms["pretext_loss"].item())
    assert terms["pretext_loss"].item() > 0 and "pretext_position_ce" in terms
    terms["loss"].backward()
    assert (
        pretext.head[0].weight.grad.abs().sum() > 0 and model.encoder.stages[0][0].convs[0].conv.weight.grad is not None
    )


@pytest.fixture(scope="module")
def position_run(tmp_path_factory, phantom_cache):
    from cardiossp.train.pretrain import pretrain

    cache, split = phantom_cache
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = load_config(PretrainConfig, "pretrain", "tiny", {"method": "position", "schedule.epochs": 1,
                                                           "schedule.iters_per_epoch": 3})  # fmt: skip
    run = pretrain(cfg, cache, tmp_path_factory.mktemp("pos") / "run", split=split, progress=False)
    torch.set_num_threads(n)
    return run


def multitask_cfg(init, **over) -> TrainConfig:
    return load_config(TrainConfig, "train", "tiny", {
        "finetune.init": str(init) if init else None, "finetune.strategy": "multitask", "finetune.pretext_weight": 0.5,
        "schedule.epochs": 1, "schedule.iters_per_epoch": 2, **over})  # fmt: skip


def test_multitask_needs_a_position_run(tmp_path):
    from cardiossp.train.pretrain import PretrainModule
    from cardiossp.train.segmentation import SegmentationModule

    with pytest.raises(ConfigError, match="needs finetune.init"):
        SegmentationModule(multitask_cfg(None))
    (tmp_path / "simclr").mkdir()
    record = PretrainModule(load_config(PretrainConfig, "pretrain", "tiny", {"method": "simclr"})).pretrained_record()
    torch.save(record, tmp_path / "simclr" / "pretrained.pt")
    with pytest.raises(ConfigError, match="needs a position pretraining run.*'simclr'"):
        SegmentationModule(multitask_cfg(tmp_path / "simclr"))


class HeadAtStart(Callback):
    def on_train_start(self, trainer, pl_module):
        self.head = {k: v.detach().clone() for k, v in pl_module.pretext.state_dict().items()}
        self.encoder = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def test_multitask_finetuning_end_to_end(tmp_path, position_run, phantom_cache, one_thread):
    from cardiossp.checkpoints import load_checkpoint
    from cardiossp.train.fit import train_segmentation
    from cardiossp.train.transfer import load_pretrained

    cache, split = phantom_cache
    spy = HeadAtStart()
    run = train_segmentation(
        multitask_cfg(position_run), cache, split, tmp_path / "ft", progress=False, callbacks=[spy]
    )
    pre = torch.load(position_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    pre_head = {k.removeprefix("method.pretext."): v for k, v in pre.items() if k.startswith("method.pretext.")}
    assert spy.head.keys() == pre_head.keys() and all(torch.equal(spy.head[k], v) for k, v in pre_head.items())
    encoder = load_pretrained(position_run)["state_dict"]
    assert all(torch.equal(spy.encoder[k], v) for k, v in encoder.items())  # the encoder came along too

    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    head_keys = [k for k in final if k.startswith("pretext.")]
    assert {k.removeprefix("pretext.") for k in head_keys} == set(pre_head)
    assert not all(torch.equal(final[f"pretext.{k}"], v) for k, v in pre_head.items())  # the head trained
    m = pd.read_csv(run / "logs" / "metrics.csv")
    row = m.dropna(subset=["train_pretext_loss"]).iloc[-1]
    assert row["train_loss_epoch"] == pytest.approx(row["train_seg_loss"] + 0.5 * row["train_pretext_loss"], rel=1e-5)

    cfg, weights = load_checkpoint(run)  # inference: the segmentation net only
    assert cfg.finetune.strategy == "multitask" and not any(k.startswith("pretext") for k in weights)
