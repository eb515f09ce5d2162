"""The engine under DDP: equal per-rank sampling, schedules from the trainer's world size, strategy
choice, SyncBatchNorm, and real multi-process pretraining (gloo on 127.0.0.1, 2 CPU processes).

The phantom cache here holds 15 slices (1 subject x 3 slices x 5 frames), pretrained in batches of 4
on 2 ranks: without padding rank 0 gets 8 items (2 batches) and rank 1 gets 7 (1 batch), so rank 0
waits forever in its second step's collectives (the run hung before the sampler padded).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from cardiossp.config import PretrainConfig, load_config
from cardiossp.ssp import SSP_METHODS
from cardiossp.train import engine, precision
from cardiossp.train import pretrain as pretrain_mod
from cardiossp.train.engine import build_trainer, may_be_distributed, steps_per_epoch
from cardiossp.train.sampling import PaddedEval, SeededSampler, ShardedEvalSampler

N_SLICES, BATCH = 15, 4
TIMEOUT = 240


# ------------------------------------------------------------------------------ samplers
def per_rank(monkeypatch, cls, sampler, world: int) -> tuple[list[list], list[int]]:
    """What ``sampler`` yields and reports as its length on each rank of ``world``."""
    items, lengths = [], []
    for rank in range(world):
        monkeypatch.setattr(cls, "_world", staticmethod(lambda r=rank: (r, world)))
        items.append(list(sampler))
        lengths.append(len(sampler))
    return items, lengths


def unpadded_reference(n_items: int, seed: int, epoch: int, total: int) -> list[tuple[int, int]]:
    """The global (index, seed) order the sampler used before padding existed."""
    rng = np.random.default_rng([seed, epoch])
    reps = -(-total // n_items)
    idx = np.concatenate([rng.permutation(n_items) for _ in range(reps)])[:total]
    return list(zip(idx.tolist(), rng.integers(0, 2**31 - 1, size=total).tolist()))


@pytest.mark.parametrize(("n_items", "num_samples", "world"), [(95, None, 2), (95, None, 3), (7, 30, 4), (3, None, 5)])
def test_seeded_sampler_gives_every_rank_the_same_number(monkeypatch, n_items, num_samples, world):
    sampler = SeededSampler(n_items, seed=3, num_samples=num_samples)
    sampler.set_epoch(2)
    total = num_samples or n_items
    items, lengths = per_rank(monkeypatch, SeededSampler, sampler, world)
    per = math.ceil(total / world)
    assert lengths == [per] * world and [len(x) for x in items] == lengths
    ref = unpadded_reference(n_items, 3, 2, total)
    for rank, got in enumerate(items):
        real = len(range(rank, total, world))
        assert got[:real] == ref[rank::world]  # the seeded order of the real part is what it was
    # the padding repeats the first items of the global order: padded position total + j holds item ref[j]
    for j in range(per * world - total):
        p = total + j
        assert items[p % world][p // world][0] == ref[j % total][0]
    covered = {i for x in items for i, _ in x}
    assert covered == set(range(n_items))


def test_seeded_sampler_on_one_process_is_unchanged(monkeypatch):
    sampler = SeededSampler(95, seed=0)
    items, lengths = per_rank(monkeypatch, SeededSampler, sampler, 1)
    assert lengths == [95] and items[0] == unpadded_reference(95, 0, 0, 95)


@pytest.mark.parametrize("n_items", [1, 5, 95])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharded_eval_counts_every_item_exactly_once(monkeypatch, n_items, world):
    data = [{"x": torch.tensor(float(i)), "i": i} for i in range(n_items)]
    sampler = ShardedEvalSampler(n_items)
    positions, lengths = per_rank(monkeypatch, ShardedEvalSampler, sampler, world)
    assert lengths == [math.ceil(n_items / world)] * world and [len(p) for p in positions] == lengths
    ds = PaddedEval(data)
    valid = [ds[p]["i"] for ps in positions for p in ps if ds[p]["valid"].item() == 1]
    assert sorted(valid) == list(range(n_items))  # every item exactly once
    pads = [ds[p] for ps in positions for p in ps if ds[p]["valid"].item() == 0]
    assert len(pads) == world * lengths[0] - n_items
    # batched like a validation loader: the collated batch carries valid (B,)
    monkeypatch.setattr(ShardedEvalSampler, "_world", staticmethod(lambda: (world - 1, world)))
    batches = list(DataLoader(ds, batch_size=2, sampler=sampler))
    assert all(b["valid"].shape == b["x"].shape for b in batches)
    assert sum(int(b["valid"].sum()) for b in batches) == len(range(world - 1, n_items, world))


# ------------------------------------------------------------------------------ engine, in process
def test_steps_per_epoch_uses_the_padded_per_rank_length():
    assert steps_per_epoch(SimpleNamespace(world_size=1), 15, 4) == 3
    assert steps_per_epoch(SimpleNamespace(world_size=2), 15, 4) == 2  # ceil(15 / 2) = 8 per rank
    assert steps_per_epoch(SimpleNamespace(world_size=8), 11327 * 8 + 1, 8) == 11328 // 8
    assert steps_per_epoch(SimpleNamespace(world_size=4), 3, 8) == 1  # at least one


class RecordTrainer:
    """Stands in for ``L.Trainer`` and records its arguments (no accelerator checks)."""

    def __init__(self, **kw):
        self.kw = kw


@pytest.mark.parametrize(("devices", "num_nodes", "cuda", "ddp"), [
    (1, 1, 0, False), ("auto", 1, 0, False), ("auto", 1, 1, False), (2, 1, 0, True), ("2", 1, 0, True),
    ("auto", 1, 4, True), (1, 2, 0, True), ("auto", 3, 0, True), ([0, 1], 1, 2, True), ("-1", 1, 2, True)])
@pytest.mark.parametrize("find_unused", [False, True])
def test_build_trainer_uses_ddp_whenever_the_world_may_exceed_one(tmp_path, monkeypatch, devices, num_nodes, cuda, ddp,
                                                                  find_unused):
    from lightning.pytorch.strategies import DDPStrategy

    monkeypatch.setattr(engine.L, "Trainer", RecordTrainer)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(precision, "cuda_has_native_bf16", lambda: True)
    for var in ("WORLD_SIZE", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    kw = build_trainer(tmp_path, 1, devices=devices, num_nodes=num_nodes, find_unused_parameters=find_unused,
                       progress=False).kw
    assert isinstance(kw["strategy"], DDPStrategy) == ddp
    if ddp:  # from the method, also when devices were left at auto
        assert kw["strategy"]._ddp_kwargs["find_unused_parameters"] is find_unused
    # SyncBatchNorm with DDP on CUDA; torch's SyncBatchNorm raises on CPU tensors, so never there
    assert kw["sync_batchnorm"] == (ddp and cuda > 0)
    assert kw["num_nodes"] == num_nodes
    assert build_trainer(tmp_path, 1, devices=devices, num_nodes=num_nodes, sync_batchnorm=False,
                         progress=False).kw["sync_batchnorm"] is False


def test_torchelastic_launch_counts_as_distributed(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_torchelastic_launched", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert may_be_distributed(1, 1, "cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not may_be_distributed(1, 1, "cpu")


@pytest.fixture(scope="module")
def odd_cache(tmp_path_factory) -> Path:
    """1 phantom subject x 3 slices x 5 frames = 15 slices (odd: does not divide by 2 x batch)."""
    from cardiossp.data.cache import prepare
    from cardiossp.data.datasets import UnlabeledSlices
    from cardiossp.data.readers.phantom import write_phantom_config
    from cardiossp.data.slices import SliceCache

    root = tmp_path_factory.mktemp("odd")
    write_phantom_config(root / "raw", n_subjects=1, n_unlabeled=0, size=64, n_slices=3, n_frames=5)
    cache = prepare([("phantom", root / "raw")], root / "cache", spacing=1.5, size=64)
    sc = SliceCache(cache)
    assert len(UnlabeledSlices(sc, sc.subject_ids())) == N_SLICES
    return cache


def odd_cfg(method: str, **over) -> PretrainConfig:
    return load_config(PretrainConfig, "pretrain", "tiny", {
        "method": method, "schedule.epoch_mode": "pass", "schedule.epochs": 2, "data.batch_size": BATCH,
        "accelerator": "cpu", **over})


@pytest.mark.parametrize(("devices", "num_nodes", "world"), [(1, 1, 1), (2, 1, 2), (1, 2, 2), (2, 2, 4)])
@pytest.mark.parametrize("method", ["pcl", "mim"])
def test_total_steps_follow_the_trainers_world_size(tmp_path, monkeypatch, odd_cache, method, devices, num_nodes,
                                                    world):
    """The global batch stays fixed (each rank takes batch / world slices a step), so the schedule is the
    1-process one: total_steps = ceil(N / world) // (batch / world) x epochs ~ N // batch x epochs;
    DDP's find_unused_parameters comes from the method class (MIM), not from its name."""
    seen = {}

    def fake_fit(trainer, module, *args, **kwargs):
        seen.update(trainer=trainer, module=module)

    monkeypatch.setattr(L.Trainer, "fit", fake_fit)
    cfg = odd_cfg(method, devices=devices, num_nodes=num_nodes)
    pretrain_mod.pretrain(cfg, odd_cache, tmp_path / "run", progress=False)
    trainer, module = seen["trainer"], seen["module"]
    assert trainer.world_size == world
    per_epoch = math.ceil(N_SLICES / world) // (BATCH // world)
    assert N_SLICES // BATCH <= per_epoch <= N_SLICES // BATCH + 1  # padding to a multiple of world may add one
    assert module.steps_per_epoch == per_epoch and module.total_steps == per_epoch * 2
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["world_size"] == world and saved["config"]["num_nodes"] == num_nodes
    if world > 1:
        assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is (method == "mim")
        assert trainer.strategy._layer_sync is None  # CPU: no SyncBatchNorm (torch cannot run it there)


def test_run_config_is_written_by_global_rank_zero_only(tmp_path, monkeypatch, odd_cache):
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: None)
    monkeypatch.setenv("NODE_RANK", "1")  # this process is global rank 1 of 2 x 1
    pretrain_mod.pretrain(odd_cfg("pcl", devices=1, num_nodes=2), odd_cache, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()
    monkeypatch.setenv("NODE_RANK", "0")
    pretrain_mod.pretrain(odd_cfg("pcl", devices=1, num_nodes=2), odd_cache, tmp_path / "run0", progress=False)
    assert (tmp_path / "run0" / "config.yaml").is_file()


def test_method_traits_are_class_attributes():
    assert {n for n in SSP_METHODS.names() if SSP_METHODS.get(n).find_unused_parameters} == {"mim"}
    assert {n for n in SSP_METHODS.names() if SSP_METHODS.get(n).multitask} == {"position"}
    assert SSP_METHODS.get("dino").schedule_options(4) == {"epochs": 4, "warmup_teacher_temp_epochs": 4}
    assert SSP_METHODS.get("dino").schedule_options(100)["warmup_teacher_temp_epochs"] == 30
    assert all(SSP_METHODS.get(n).schedule_options(4) == {} for n in SSP_METHODS.names() if n != "dino")


# ------------------------------------------------------------------------------ SyncBatchNorm (needs 2 GPUs)
def _sync_bn_worker(rank: int, world: int, port: int, x: torch.Tensor, out: str) -> None:
    torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.cuda.set_device(rank)
        bn = torch.nn.SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3))).cuda(rank)
        n = x.shape[0] // world
        bn(x[rank * n:(rank + 1) * n].cuda(rank))
        torch.save({"mean": bn[0].running_mean.cpu(), "var": bn[0].running_var.cpu()}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="torch's SyncBatchNorm runs on CUDA only; needs 2 GPUs")
def test_sync_batchnorm_statistics_are_the_global_batch_statistics(tmp_path):
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    torch.multiprocessing.spawn(_sync_bn_worker, args=(2, free_port(), x, str(tmp_path)), nprocs=2)
    ref = torch.nn.BatchNorm2d(3)
    ref(x)
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        torch.testing.assert_close(got["mean"], ref.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["var"], ref.running_var, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ real DDP runs (subprocesses)
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(cmds: list[list[str]], envs: list[dict], timeout: float = TIMEOUT) -> list[subprocess.CompletedProcess]:
    """Run the commands side by side; on timeout kill their whole process groups (Lightning's rank
    processes too) and fail, instead of leaving a hung DDP run behind."""
    procs = [subprocess.Popen(c, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for c, e in zip(cmds, envs)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        outs = None
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if outs is None:
        pytest.fail(f"DDP run did not finish within {timeout} s (a rank waits in a collective?)")
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def pretrain_cmd(method: str, cache: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cardiossp", "pretrain", "--method", method, "--cache", str(cache), "--out",
            str(out), "--preset", "tiny", "--set", "schedule.epoch_mode=pass", "--set", f"data.batch_size={BATCH}",
            "--set", "schedule.epochs=1", "--set", "accelerator=cpu", *extra]


def base_env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "LOCAL_RANK", "GLOBAL_RANK"):
        env.pop(var, None)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pcl", "dino", "byol"])
def test_two_process_pretraining_finishes_when_the_data_does_not_divide(method, tmp_path, odd_cache):
    """15 slices, global batch 4 = 2 per rank, 2 ranks: both ranks take ceil(15 / 2) = 8 items = 4 steps
    (unpadded: 8 vs 7 items, 4 vs 3 steps, a hang)."""
    out = tmp_path / "run"
    env = {**base_env(), "MASTER_PORT": str(free_port())}
    (res,) = run_all([pretrain_cmd(method, odd_cache, out, "--devices", "2")], [env])
    assert res.returncode == 0, res.stderr[-3000:]
    done = json.loads((out / "done.json").read_text())
    per_epoch = math.ceil(N_SLICES / 2) // (BATCH // 2)
    assert done["world_size"] == 2 and done["steps"] == per_epoch
    hp = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hp["total_steps"] == done["steps"]  # the lr schedule ran to its end, no further
    assert (out / "pretrained.pt").is_file() and (out / "config.yaml").is_file()


@pytest.mark.slow
def test_two_nodes_on_localhost(tmp_path, odd_cache):
    """Two 'nodes' of one process each (Lightning's LightningEnvironment reads MASTER_ADDR, MASTER_PORT,
    NODE_RANK) share one run folder, as on a cluster's shared disk; both exit 0, rank 0 writes the run."""
    out = tmp_path / "run"
    port = str(free_port())
    envs = [{**base_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(r), "WORLD_SIZE": "2"}
            for r in range(2)]
    cmd = pretrain_cmd("pcl", odd_cache, out, "--devices", "1", "--num-nodes", "2")
    results = run_all([cmd, cmd], envs)
    for r, res in enumerate(results):
        assert res.returncode == 0, f"node {r}: {res.stderr[-3000:]}"
    done = json.loads((out / "done.json").read_text())
    assert done["world_size"] == 2 and done["steps"] == math.ceil(N_SLICES / 2) // (BATCH // 2)
    assert yaml.safe_load((out / "config.yaml").read_text())["config"]["num_nodes"] == 2
