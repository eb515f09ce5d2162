"""Contrastive losses under real multi-process training (2 CPU processes, gloo on 127.0.0.1).

With ``gather_distributed`` each process scores its own anchors against the candidates of
*every* process (SimCLR: lightly's ``NTXentLoss``, Chen et al. 2020; PCL: Zeng et al. 2021),
so the mean of the per-process losses equals the loss one process computes on the whole
batch, and DDP's gradient averaging gives the whole-batch gradient. DINO (Caron et al. 2021)
all-reduces its teacher centre. This file is also the worker script: the test starts
``python test_distributed.py RANK PORT OUT`` once per rank.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

WORLD = 2
N, D, SIZE = 8, 16, 32  # whole batch, embedding width, image size
POSITIONS = [0.0, 0.3, 0.5, 0.8, 0.05, 0.33, 0.7, 0.95]  # rows 0/4 and 1/5 are positives across ranks
CFG = {
    "simclr": {"input_size": SIZE, "augment": "none", "proj_hidden_dim": 16, "proj_output_dim": 8},
    "pcl": {"input_size": SIZE, "augment": "none", "proj_hidden_dim": 16, "proj_output_dim": 8, "threshold": 0.1},
    "dino": {"input_size": SIZE, "augment": "none", "head_hidden_dim": 16, "head_bottleneck_dim": 8,
             "head_output_dim": D, "epochs": 2, "warmup_teacher_temp_epochs": 1, "n_local": 1},
}


def backbone(num_classes: int, deep_supervision: bool):
    from cardiossp.models import build_unet

    return build_unet(1, num_classes, 3, base_features=4, max_features=16, deep_supervision=deep_supervision)


def make_method(name: str):
    from cardiossp.ssp import build_method

    torch.manual_seed(0)
    return build_method(name, backbone, CFG[name]).double()


def embeddings() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed batch: projections of two views (N, D) each, and slice positions (N,)."""
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(N, D, generator=g, dtype=torch.float64)
    z1 = z0 + 0.7 * torch.randn(N, D, generator=g, dtype=torch.float64)
    return z0, z1, torch.tensor(POSITIONS, dtype=torch.float64)


def images() -> dict:
    g = torch.Generator().manual_seed(2)
    return {"view0": torch.randn(N, 1, SIZE, SIZE, generator=g, dtype=torch.float64),
            "view1": torch.randn(N, 1, SIZE, SIZE, generator=g, dtype=torch.float64),
            "position": torch.tensor(POSITIONS, dtype=torch.float64)}


def local_criterion(name: str):
    """The method's loss without gathering (what each process would compute on its own)."""
    from lightly.loss import NTXentLoss

    from cardiossp.ssp import PositionalContrastiveLoss

    c = {**make_method(name).cfg}
    if name == "simclr":
        return lambda a, b, pos: NTXentLoss(temperature=c["temperature"], gather_distributed=False)(a, b)
    return lambda a, b, pos: PositionalContrastiveLoss(c["temperature"], c["threshold"], gather_distributed=False)(
        a, b, pos)


def compute(rows: slice) -> dict:
    """Everything the test compares, on the rows ``rows`` of the fixed batch (all rows = 1 process)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    out: dict = {}
    z0, z1, pos = embeddings()
    for name in ("simclr", "pcl"):
        method = make_method(name)
        a0, a1 = z0[rows].clone().requires_grad_(), z1[rows].clone().requires_grad_()
        loss = method.contrastive_loss(a0, a1, {"position": pos[rows]})
        loss.backward()
        out[f"{name}_loss"] = loss.detach()
        out[f"{name}_grad0"], out[f"{name}_grad1"] = a0.grad, a1.grad
        out[f"{name}_loss_local"] = local_criterion(name)(z0[rows], z1[rows], pos[rows])
        # the whole method, wrapped as the engine wraps it under DDP: parameter gradients
        method = make_method(name)
        net = DDP(method) if dist.is_initialized() else method
        res = net({k: v[rows] for k, v in images().items()}, 0.0)
        res["loss"].backward()
        out[f"{name}_param_grads"] = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    dino = make_method("dino")
    g = torch.Generator().manual_seed(3)
    teacher = [torch.randn(N, D, generator=g, dtype=torch.float64)[rows] for _ in range(2)]
    student = [torch.randn(N, D, generator=g, dtype=torch.float64)[rows] for _ in range(3)]
    out["dino_loss"] = dino.criterion(teacher, student, teacher_temp=0.04)
    out["dino_center"] = dino.criterion.center.detach().clone()
    return out


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        n = N // world
        torch.save(compute(slice(rank * n, (rank + 1) * n)), Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Start the 2 ranks as 2 processes (``python test_distributed.py RANK PORT OUT``) and read their results."""
    folder = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = free_port()
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(port), str(folder)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(WORLD)]
    try:
        errs = [p.communicate(timeout=240)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, err in zip(procs, errs):
        assert p.returncode == 0, err[-3000:]
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> dict:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return compute(slice(None))
    finally:
        torch.set_num_threads(n)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["simclr", "pcl"])
def test_gathered_loss_is_the_whole_batch_loss(name, ranks, single):
    per_rank = torch.stack([r[f"{name}_loss"] for r in ranks])
    torch.testing.assert_close(per_rank.mean(), single[f"{name}_loss"], rtol=1e-10, atol=0)
    assert not torch.allclose(per_rank[0], per_rank[1])  # the ranks really hold different anchors
    # without gathering each rank sees only its own negatives: a different (smaller-batch) loss
    local = torch.stack([r[f"{name}_loss_local"] for r in ranks]).mean()
    assert abs(local.item() - single[f"{name}_loss"].item()) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["simclr", "pcl"])
def test_gradients_reach_the_local_embeddings(name, ranks, single):
    """The gather passes gradients back to the process that owns each row: a rank's gradient is
    d(sum of all ranks' losses)/d(its rows) = WORLD x the whole-batch gradient of those rows."""
    n = N // WORLD
    for rank, r in enumerate(ranks):
        for v in ("grad0", "grad1"):
            g = r[f"{name}_{v}"]
            assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
            torch.testing.assert_close(g, WORLD * single[f"{name}_{v}"][rank * n:(rank + 1) * n], rtol=1e-8,
                                       atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["simclr", "pcl"])
def test_ddp_parameter_gradients_equal_the_whole_batch_gradients(name, ranks, single):
    """End to end through the method and DistributedDataParallel: half a batch per process gives
    the parameter gradients of the whole batch in one process."""
    ref = single[f"{name}_param_grads"]
    for r in ranks:
        got = r[f"{name}_param_grads"]
        assert got.keys() == ref.keys() and any(k.startswith("encoder.") for k in got)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-7, atol=1e-12, msg=k)


@pytest.mark.slow
def test_dino_centre_is_all_reduced(ranks, single):
    torch.testing.assert_close(ranks[0]["dino_center"], ranks[1]["dino_center"], rtol=0, atol=0)
    torch.testing.assert_close(ranks[0]["dino_center"], single["dino_center"], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(torch.stack([r["dino_loss"] for r in ranks]).mean(), single["dino_loss"],
                               rtol=1e-10, atol=0)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), WORLD, int(sys.argv[2]), sys.argv[3])
