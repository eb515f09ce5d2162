"""Training cost per slice (forward + backward + SGD step) of U-Net configurations on this machine.

    python benchmarks/step_cost.py            # the figures quoted in docs/BENCHMARKS.md
    python benchmarks/step_cost.py --quick    # a seconds-long smoke run of the same code

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
]
QUICK = [("tiny 4 stages 8..32, 64^2", 4, 8, 32, 64, 4, False)]


def seconds_per_slice(n_stages, base, top, size, batch, channels_last, steps=4) -> float:
    return 1.0 / bare_step_rate(n_stages, base, top, size, batch, bf16=False, steps=steps,
                                channels_last=channels_last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for label, *cfg in QUICK if args.quick else CONFIGS:
        print(f"{label}: {seconds_per_slice(*cfg):.4f} s/slice", flush=True)


if __name__ == "__main__":
    main()
