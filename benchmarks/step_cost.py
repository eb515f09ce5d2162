"""Training cost per slice (forward + backward + SGD step) of U-Net configurations on this machine.

    python benchmarks/step_cost.py            # the figures quoted in docs/BENCHMARKS.md
    python benchmarks/step_cost.py --quick    # a seconds-long smoke run of the same code

Prints one line per configuration: seconds per training slice, the mean over timed steps
after one warm-up step. Random inputs; the network, loss and optimiser are the project's.
"""

from __future__ import annotations

import argparse
import time

import torch

from cardiossp.models import build_model
from cardiossp.train.losses import DeepSupervisionLoss, DiceCELoss

CONFIGS = [  # (label, n_stages, base_features, max_features, size, batch, channels_last)
    ("paper net 7 stages 32..512, 256^2", 7, 32, 512, 256, 8, False),
    ("cpu net 6 stages 16..256, 128^2", 6, 16, 256, 128, 16, False),
    ("cpu net, channels_last", 6, 16, 256, 128, 16, True),
]
QUICK = [("tiny 4 stages 8..32, 64^2", 4, 8, 32, 64, 4, False)]


def seconds_per_slice(n_stages, base, top, size, batch, channels_last, steps=4) -> float:
    net = build_model("unet", n_stages=n_stages, base_features=base, max_features=top)
    x = torch.randn(batch, 1, size, size)
    y = torch.randint(0, 4, (batch, 1, size, size))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    loss = DeepSupervisionLoss(DiceCELoss(), n_stages - 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss(net(x), y).backward()
        opt.step()
    return (time.perf_counter() - t0) / steps / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for label, *cfg in QUICK if args.quick else CONFIGS:
        print(f"{label}: {seconds_per_slice(*cfg):.4f} s/slice", flush=True)


if __name__ == "__main__":
    main()
