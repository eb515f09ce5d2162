"""Does PCL collapse in its first steps? A few SGD steps of the `cpu` PCL preset on real cached slices.

    python benchmarks/pcl_collapse_probe.py CACHE [--steps 8]

Prints, per setting (learning rate, BatchNorm in the projection head), the loss and the mean
cosine between each slice's two augmented views after every step. Collapse: the loss sits at
log(2N - 1) (4.14 for N = 32) while the twin cosine climbs to 1, i.e. every image maps to the
same embedding. One thread, 20 subjects of the cache, seed 0.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.utils.data import default_collate

from cardiossp.config import PretrainConfig, load_config
from cardiossp.data.datasets import UnlabeledSlices
from cardiossp.data.slices import SliceCache
from cardiossp.train.pretrain import PretrainModule

SETTINGS = [(0.1, False), (0.1, True), (0.01, False)]  # (lr, BatchNorm in the projection head)


def probe(cache: SliceCache, lr: float, head_bn: bool, steps: int, batch: int = 32) -> list[tuple[float, float]]:
    torch.manual_seed(0)
    cfg = load_config(PretrainConfig, "pretrain", "cpu", {"method": "pcl", "model.norm": "batch",
                                                          "method_options.proj_batch_norm": head_bn})
    method = PretrainModule(cfg).method
    ds = UnlabeledSlices(cache, cache.subject_ids()[:20], transform=method.view_maker)
    opt = torch.optim.SGD(method.parameters(), lr=lr, momentum=0.9, weight_decay=1e-5)
    rng = np.random.default_rng(0)
    out = []
    for step in range(steps):
        b = default_collate([ds[int(i)] for i in rng.integers(0, len(ds), batch)])
        b.pop("subject", None)
        res = method.forward_loss(b, step / steps)
        opt.zero_grad()
        res["loss"].backward()
        opt.step()
        out.append((round(res["loss"].item(), 3), round(res["twin_cos"], 3)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = SliceCache(args.cache)
    for lr, bn in SETTINGS:
        print(f"lr {lr}, BatchNorm in head {bn}: (loss, twin cosine) per step", probe(cache, lr, bn, args.steps),
              flush=True)


if __name__ == "__main__":
    main()
