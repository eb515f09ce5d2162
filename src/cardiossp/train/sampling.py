"""A sampler whose order and per-item augmentation seeds are pure functions of (seed, epoch).

It yields ``(index, item_seed)`` pairs; ``SeededItems`` seeds every RNG the augmentation
uses from ``item_seed`` before transforming the item. So the data a run sees does not
depend on worker count, process restarts or ``--resume``: a resumed run gets exactly the
batches an uninterrupted one would. Under DDP each rank takes every ``world``-th item.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from ..data.augment import seed_augmentation


class SeededSampler(Sampler):
    def __init__(self, n_items: int, seed: int = 0, num_samples: int | None = None, shuffle: bool = True):
        """``num_samples`` None: one pass (a permutation); else that many draws (nnU-Net-style epochs)."""
        if n_items < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n_items, self.seed, self.num_samples, self.shuffle = n_items, seed, num_samples, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    @staticmethod
    def _world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _global_order(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.num_samples or self.n_items
        if not self.shuffle:
            idx = np.arange(total) % self.n_items
        else:
            reps = -(-total // self.n_items)
            idx = np.concatenate([rng.permutation(self.n_items) for _ in range(reps)])[:total]
        return idx, rng.integers(0, 2**31 - 1, size=total)

    def __iter__(self):
        rank, world = self._world()
        idx, seeds = self._global_order()
        for i, s in zip(idx[rank::world], seeds[rank::world]):
            yield int(i), int(s)

    def __len__(self) -> int:
        rank, world = self._world()
        total = self.num_samples or self.n_items
        return len(range(rank, total, world))


class SeededItems(Dataset):
    """Wraps a dataset whose transform draws from global RNGs; accepts ``(index, seed)`` keys."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            seed_augmentation(seed)
            return self.dataset[index]
        return self.dataset[key]


def worker_threads(_: int) -> None:
    """DataLoader workers use one thread each (the main process keeps the cores for the network)."""
    torch.set_num_threads(1)
