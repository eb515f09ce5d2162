"""Where a semi-supervised training step spends its time, per method, on this machine.

    python benchmarks/semi_step_cost.py                # the few preset's network and batches (8 + 8, 128^2)
    python benchmarks/semi_step_cost.py --bf16         # under bf16 autocast (CPUs with AVX512-BF16 or AMX)
    python benchmarks/semi_step_cost.py --quick        # a seconds-long smoke run of the same code
    python benchmarks/semi_step_cost.py --methods scratch --compile    # the student under torch.compile
    python benchmarks/semi_step_cost.py --methods scratch --threads 1  # one thread (run two side by side)

One row per method of ``SEMI_METHODS`` plus ``scratch`` (the supervised step on the labeled batch alone),
each the mean over ``--steps`` timed steps after two warm-up steps: seconds per step in all, and the parts
of it - the method's ``training_terms`` (student forward and losses; the EMA teacher's forward, timed on
its own, is inside it), ``backward``, the optimiser step and ``on_train_batch_end`` (the EMA update).
Random images; the network, the supervised loss, the methods and the optimiser are the project's, at
``progress`` 0.5 (BCP past its warm start). ``self-training`` gets random pseudo-labels on its unlabeled
batch, as its store would give. This is the bare step: the engine's loader, logging and validation
are not in it (``cardiossp bench --throughput`` measures the engine's overhead on the supervised step).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from cardiossp.machine import cpu_name
from cardiossp.models import build_model
from cardiossp.semi import SEMI_METHODS, EMATeacher, Step, build_semi, step_generator
from cardiossp.train.losses import DeepSupervisionLoss, DiceCELoss

FEW = (6, 16, 256, 128, 8, 8)  # n_stages, base, top, size, labeled batch, unlabeled batch (preset `few`)
QUICK = (4, 8, 32, 64, 4, 4)
PARTS = ("terms", "teacher", "backward", "optimiser", "batch_end")


@contextlib.contextmanager
def timed_teacher(totals: dict):
    """Adds the time of every EMA-teacher forward to ``totals['teacher']`` while the block runs."""
    original = EMATeacher.forward

    def forward(self, x):
        t0 = time.perf_counter()
        out = original(self, x)
        totals["teacher"] += time.perf_counter() - t0
        return out

    EMATeacher.forward = forward
    try:
        yield
    finally:
        EMATeacher.forward = original


def step_parts(method: str, net_cfg: tuple, steps: int, bf16: bool, compile_net: bool = False) -> dict[str, float]:
    """Mean seconds per step of each part of ``method``'s training step (``scratch``: supervised only); with
    ``compile_net`` the student runs under ``torch.compile`` (compiled in the two warm-up steps)."""
    n_stages, base, top, size, bl, bu = net_cfg
    torch.manual_seed(0)
    net = build_model("unet", n_stages=n_stages, base_features=base, max_features=top)
    if compile_net:
        net = torch.compile(net)
    x, y = torch.randn(bl, 1, size, size), torch.randint(0, 4, (bl, 1, size, size))
    unlabeled = {"image": torch.randn(bu, 1, size, size)}
    semi = None if method == "scratch" else build_semi(method, net)
    if semi is not None and semi.uses_pseudo_labels:
        unlabeled["segmentation"] = torch.randint(0, 4, (bu, 1, size, size))
    ds = DeepSupervisionLoss(DiceCELoss(), n_stages - 1)

    def supervised(outputs, targets):
        outputs = [o.float() for o in outputs] if isinstance(outputs, (list, tuple)) else outputs.float()
        return {"loss": ds(outputs, targets)}

    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    totals = dict.fromkeys(PARTS, 0.0)
    with timed_teacher(totals):
        for i in range(steps + 2):
            if i == 2:
                totals.update(dict.fromkeys(totals, 0.0))
                start = time.perf_counter()
            t = time.perf_counter()
            opt.zero_grad()
            with autocast:
                if semi is None:
                    loss = supervised(net(x), y)["loss"]
                else:
                    g = step_generator(0, i, x.device)
                    loss = semi.training_terms(net, supervised, {"image": x, "segmentation": y}, unlabeled,
                                               Step(progress=0.5, global_step=i, generator=g))["loss"]
            totals["terms"] += time.perf_counter() - t
            t = time.perf_counter()
            loss.backward()
            totals["backward"] += time.perf_counter() - t
            t = time.perf_counter()
            opt.step()
            totals["optimiser"] += time.perf_counter() - t
            t = time.perf_counter()
            if semi is not None:
                semi.on_train_batch_end(net, i)
            totals["batch_end"] += time.perf_counter() - t
    total = time.perf_counter() - start
    return {"step": total / steps, **{k: v / steps for k, v in totals.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny network and batch: checks the code in seconds")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (only where the CPU has native bf16)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    ap.add_argument("--compile", action="store_true", help="the student network under torch.compile (inductor)")
    ap.add_argument("--methods", default="scratch," + ",".join(SEMI_METHODS.names()),
                    help="comma-separated, e.g. scratch,bcp")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else FEW
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'bf16' if args.bf16 else 'fp32'}{', torch.compile' if args.compile else ''}; "
          f"net {cfg[0]} stages {cfg[1]}..{cfg[2]}, {cfg[3]}^2, "
          f"batch {cfg[4]} labeled + {cfg[5]} unlabeled\n")
    print("| method | s/step | x scratch | terms (fwd + losses) | of which EMA teacher | backward | optimiser "
          "| batch end (EMA) |")
    print("|---|---|---|---|---|---|---|---|")
    step = {}
    for method in (m.strip() for m in args.methods.split(",")):
        p = step_parts(method, cfg, args.steps, args.bf16, args.compile)
        step[method] = p["step"]
        ratio = f"{p['step'] / step['scratch']:.2f}" if "scratch" in step else ""
        print(f"| {method} | {p['step']:.3f} | {ratio} | {p['terms']:.3f} | {p['teacher']:.3f} | {p['backward']:.3f} "
              f"| {p['optimiser']:.3f} | {p['batch_end']:.3f} |", flush=True)
    if {"scratch", "bcp"} <= set(step) and not args.quick:
        print("\n" + recipe_minutes(step["scratch"], step["bcp"]))


def recipe_minutes(supervised_step: float, bcp_step: float) -> str:
    """The few-label recipe's (``--preset few-bcp``) bare network compute on this machine: its warm start
    in supervised steps, the rest in BCP steps."""
    from cardiossp.config import TrainConfig, load_config
    from cardiossp.semi.bcp import BCP

    recipe = load_config(TrainConfig, "train", "few-bcp")
    total = recipe.schedule.epochs * recipe.schedule.iters_per_epoch
    warm = round(total * {**BCP.defaults, **recipe.semi.options}["warmup_fraction"])
    seconds = warm * supervised_step + (total - warm) * bcp_step
    return (f"the recipe (few-bcp): {warm} warm-up + {total - warm} BCP steps = {seconds / 60:.1f} min of bare "
            "network compute, before the run's loading, logging and validation")


if __name__ == "__main__":
    main()
