"""Augmentation throughput: per-sample batchgeneratorsv2 (loader workers) vs batched device-side (CPU here).

Slices of 160x160 float32 with 4-class labels, patch 128x128, preset ``paper``:

(a) ``augment.build_transforms("paper", 128)`` applied per sample, one process, one thread;
(b) ``batch_augment.draw_params`` + ``apply_batch`` on batches of 16 on the CPU, with 1 and 2 threads.

    python benchmarks/augment_throughput.py --n 480

Prints a markdown table of slices/s (median of ``--repeats`` timed passes over ``n`` slices).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from cardiossp.data.augment import build_transforms, seed_augmentation
from cardiossp.data.batch_augment import apply_batch, draw_params


def _slices(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(n, 1, size, size, generator=g)
    seg = torch.zeros(n, 1, size, size, dtype=torch.int64)
    seg[:, :, 50:110, 40:100] = 1
    seg[:, :, 65:95, 55:85] = 2
    seg[:, :, 30:50, 60:120] = 3
    image += seg.float()
    return image, seg


def bench_bgv2(image, seg, patch: int) -> float:
    aug = build_transforms("paper", patch)
    seed_augmentation(0)
    t0 = time.perf_counter()
    for i in range(len(image)):
        aug({"image": image[i], "segmentation": seg[i]})
    return len(image) / (time.perf_counter() - t0)


def bench_batched(image, seg, patch: int, batch: int) -> float:
    rng = np.random.default_rng(0)
    size = tuple(image.shape[2:])
    t0 = time.perf_counter()
    for start in range(0, len(image), batch):
        img, lab = image[start:start + batch], seg[start:start + batch]
        params = torch.from_numpy(np.stack([draw_params("paper", rng, patch, size) for _ in range(len(img))]))
        apply_batch(params, img, lab, patch, generator=torch.Generator().manual_seed(start))
    return len(image) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=480, help="slices per timed pass")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    image, seg = _slices(args.n, args.size)

    rows = []

    def run(name, threads, fn):
        torch.set_num_threads(threads)
        fn(image[: min(len(image), 2 * args.batch)], seg[: min(len(seg), 2 * args.batch)])  # warm-up
        rates = [fn(image, seg) for _ in range(args.repeats)]
        rows.append((name, threads, float(np.median(rates))))

    run("(a) batchgeneratorsv2 per sample", 1, lambda i, s: bench_bgv2(i, s, args.patch))
    for threads in (1, 2):
        run(f"(b) draw_params + apply_batch, B={args.batch}", threads,
            lambda i, s: bench_batched(i, s, args.patch, args.batch))

    base = rows[0][2]
    print(f"\n{args.n} slices {args.size}x{args.size} -> patch {args.patch}, preset 'paper', CPU: "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}\n")
    print("| pipeline | threads | slices/s | vs (a) |")
    print("|---|---:|---:|---:|")
    for name, threads, rate in rows:
        print(f"| {name} | {threads} | {rate:.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
