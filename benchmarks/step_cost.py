"""Training cost per slice (forward + backward + SGD step) of U-Net configurations on this machine.

    python benchmarks/step_cost.py            # the figures quoted in docs/BENCHMARKS.md
    python benchmarks/step_cost.py --quick    # a seconds-long smoke run of the same code
    python benchmarks/step_cost.py --bf16     # the same under bf16 autocast (CPUs with AVX512-BF16 or AMX)

Prints one line per configuration: seconds per training slice, the mean over timed steps
after one warm-up step. Random inputs; the network, loss and optimiser are the project's.
"""

from __future__ import annotations

import argparse

import torch

from cardiossp.throughput import bare_step_rate

CONFIGS = [  # (label, n_stages, base_features, max_features, size, batch, channels_last)
    ("paper net 7 stages 32..512, 256^2", 7, 32, 512, 256, 8, False),
    ("cpu net 6 stages 16..256, 128^2", 6, 16, 256, 128, 16, False),
    ("cpu net, channels_last", 6, 16, 256, 128, 16, True),
    ("cpu net, 160^2 patches", 6, 16, 256, 160, 16, False),
    ("cpu net x1.5 width (24..384), 128^2", 6, 24, 384, 128, 16, False),
    ("cpu net x2 width (32..512), 128^2", 6, 32, 512, 128, 16, False),
]
QUICK = [("tiny 4 stages 8..32, 64^2", 4, 8, 32, 64, 4, False)]


def seconds_per_slice(n_stages, base, top, size, batch, channels_last, bf16=False, steps=4) -> float:
    return 1.0 / bare_step_rate(n_stages, base, top, size, batch, bf16=bf16, steps=steps,
                                channels_last=channels_last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (only where the CPU has native bf16)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {'bf16' if args.bf16 else 'fp32'}")
    for label, *cfg in QUICK if args.quick else CONFIGS:
        print(f"{label}: {seconds_per_slice(*cfg, bf16=args.bf16):.4f} s/slice", flush=True)


if __name__ == "__main__":
    main()
