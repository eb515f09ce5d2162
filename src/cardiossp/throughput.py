"""``cardiossp bench --throughput``: a table of training throughput on the machine at hand.

Rows, each measured in this one process (quote ratios, and the CPU this prints):

* the bare network's training step (forward + Dice/CE backward + SGD, random tensors) in fp32 and
  under bf16 autocast - the cpu net (6 stages 16..256) at 128^2, batch 16, and the paper net
  (7 stages 32..512) at 256^2, batch 8 (the paper's code measured 0.70 slices/s on a 2-core AVX2
  machine, within 3 % of the bare PlainConvUNet in fp32 there);
* the engine's step (``SegmentationModule.training_step`` through a Lightning Trainer, same network,
  batch and precision) and its overhead ratio to the bare step (target <= 1.1);
* ``precision: auto`` as this machine resolves it.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from .atomic import write_text
from .config import TrainConfig, load_config
from .machine import cpu_name
from .models import build_model
from .train.losses import DeepSupervisionLoss, DiceCELoss
from .train.precision import cpu_has_native_bf16, resolve_precision
from .train.segmentation import SegmentationModule

NETS = {  # label: (n_stages, base, top, size, batch)
    "cpu net 16..256, 128^2, batch 16": (6, 16, 256, 128, 16),
    "paper net 32..512, 256^2, batch 8": (7, 32, 512, 256, 8),
}
QUICK = {"tiny net 8..32, 64^2, batch 4": (4, 8, 32, 64, 4)}


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def bare_step_rate(n_stages: int, base: int, top: int, size: int, batch: int, bf16: bool, steps: int,
                   channels_last: bool = False) -> float:
    """Slices/s of forward + backward + SGD step of the bare PlainConvUNet (one warm-up step)."""
    torch.manual_seed(0)
    net = build_model("unet", n_stages=n_stages, base_features=base, max_features=top)
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 4, (batch, 1, size, size))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    loss = DeepSupervisionLoss(DiceCELoss(), n_stages - 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad()
        with _autocast(bf16):
            out = net(x)
        loss([o.float() for o in out], y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


class _Random(Dataset):
    def __init__(self, n: int, size: int, scales: list[float]):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, size, size, generator=g)
        self.y = torch.randint(0, 4, (n, 1, size, size), generator=g)
        self.sizes = [max(1, round(size * s)) for s in scales]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        y = self.y[i].float()[None]
        seg = [torch.nn.functional.interpolate(y, size=(s, s), mode="nearest-exact")[0].long() for s in self.sizes]
        return {"image": self.x[i], "segmentation": seg}


class _Timer(Callback):
    def __init__(self, skip: int = 1):
        self.skip, self.t0, self.n = skip, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.skip:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.t0 is not None:
            self.n += 1
            self.t1 = time.perf_counter()


def engine_step_rate(n_stages: int, base: int, top: int, size: int, batch: int, bf16: bool, steps: int,
                     out: Path) -> float:
    """Slices/s of the engine's training step (Lightning loop, SegmentationModule, in-memory batches)."""
    cfg: TrainConfig = load_config(TrainConfig, "train", "cpu", {
        "model.n_stages": n_stages, "model.base_features": base, "model.max_features": top,
        "data.batch_size": batch, "precision": "bf16-mixed" if bf16 else "32-true", "accelerator": "cpu"})
    torch.manual_seed(0)
    module = SegmentationModule(cfg, total_steps=steps + 1)
    scales = [1 / 2**i for i in range(n_stages - 1)]
    loader = DataLoader(_Random((steps + 1) * batch, size, scales), batch_size=batch, num_workers=0)
    timer = _Timer()
    trainer = L.Trainer(max_steps=steps + 1, accelerator="cpu", devices=1, precision=cfg.precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], default_root_dir=out, num_sanity_val_steps=0)
    trainer.fit(module, loader)
    return timer.n * batch / (timer.t1 - timer.t0)


def throughput_table(out: str | Path, quick: bool = False, steps: int = 6) -> str:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"CPU: {cpu_name()}; native bf16: {cpu_has_native_bf16()}; {torch.get_num_threads()} threads; "
             f"torch {torch.__version__}; `precision: auto` -> {resolve_precision('auto', 'cpu')}", "",
             "| network | precision | bare step (slices/s) | engine step (slices/s) | engine / bare time | "
             "bf16 / fp32 speed-up |", "|---|---|---|---|---|---|"]
    for label, net in (QUICK if quick else NETS).items():
        rates = {}
        for bf16 in (False, True):
            bare = bare_step_rate(*net, bf16=bf16, steps=steps)
            engine = engine_step_rate(*net, bf16=bf16, steps=steps, out=out / "engine")
            rates[bf16] = bare
            speed = f"{rates[True] / rates[False]:.2f}x" if bf16 else ""
            lines.append(f"| {label} | {'bf16' if bf16 else 'fp32'} | {bare:.2f} | {engine:.2f} | "
                         f"{bare / engine:.3f} | {speed} |")
    text = "\n".join(lines) + "\n"
    write_text(out / "throughput.md", text)
    return text
