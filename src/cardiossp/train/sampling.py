"""A sampler whose order and per-item augmentation seeds are pure functions of (seed, epoch).

It yields ``(index, item_seed)`` pairs; ``SeededItems`` seeds every RNG the augmentation
uses from ``item_seed`` before transforming the item. So the data a run sees does not
depend on worker count, process restarts or ``--resume``: a resumed run gets exactly the
batches an uninterrupted one would. Under DDP each rank takes every ``world``-th item of the
global order, padded (like ``torch.utils.data.DistributedSampler``) by repeating its first items
so that every rank gets the same number, ``ceil(total / world)``: unequal counts would leave one
rank in a collective (DDP's gradient all-reduce, PCL's / SimCLR's gather, DINO's centre) that
the others never enter, and the run would hang.

Validation under DDP: :class:`ShardedEvalSampler` shards the items the same way (padded, no
shuffling) and :class:`PaddedEval` marks the padding with ``valid = 0`` so metrics can count
every real item exactly once.
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

    def _padded_order(self, world: int) -> tuple[np.ndarray, np.ndarray]:
        """The global order extended to a multiple of ``world`` by repeating its first items (with fresh
        augmentation seeds from a separate stream, so the unpadded order and seeds stay what they were)."""
        idx, seeds = self._global_order()
        pad = -len(idx) % world
        if pad:
            extra = np.random.default_rng([self.seed, self.epoch, 1]).integers(0, 2**31 - 1, size=pad)
            idx = np.concatenate([idx, np.resize(idx, pad)])  # np.resize repeats when pad > len(idx)
            seeds = np.concatenate([seeds, extra])
        return idx, seeds

    def __iter__(self):
        rank, world = self._world()
        idx, seeds = self._padded_order(world)
        for i, s in zip(idx[rank::world], seeds[rank::world]):
            yield int(i), int(s)

    def __len__(self) -> int:
        _, world = self._world()
        return -(-(self.num_samples or self.n_items) // world)  # the same on every rank


class ShardedEvalSampler(Sampler):
    """Validation / test order under DDP: rank ``r`` of ``world`` takes positions ``r, r + world, ...``
    of ``range(n_items)`` extended to ``ceil(n_items / world) * world`` positions, so every rank
    yields the same number of indices (collectives in validation cannot hang). Yields plain ints;
    positions ``>= n_items`` are padding. Wrap the dataset in :class:`PaddedEval`, which maps a
    padding position back onto a real item and marks it ``valid = 0``. One process: ``0..n-1``."""

    def __init__(self, n_items: int):
        if n_items < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n_items = n_items

    _world = staticmethod(SeededSampler._world)

    def padded_total(self, world: int) -> int:
        return -(-self.n_items // world) * world

    def __iter__(self):
        rank, world = self._world()
        yield from range(rank, self.padded_total(world), world)

    def __len__(self) -> int:
        _, world = self._world()
        return self.padded_total(world) // world


class PaddedEval(Dataset):
    """``dataset`` addressed by :class:`ShardedEvalSampler` positions: position ``i < len(dataset)`` is
    item ``i`` with ``"valid": tensor(1)``; a padding position ``i >= len(dataset)`` is the duplicate
    item ``i % len(dataset)`` with ``"valid": tensor(0)``. Items must be dicts (the collated batch
    then holds ``valid`` (B,), to weight per-sample statistics with and to skip in counts)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.n_items = len(dataset)
        if self.n_items < 1:
            raise ValueError("cannot evaluate an empty dataset")

    def __len__(self) -> int:
        return self.n_items  # the real items; padding positions lie past the end

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            raise IndexError(f"PaddedEval position {i} < 0")
        item = self.dataset[i % self.n_items]
        if not isinstance(item, dict):
            raise TypeError(f"PaddedEval needs dict items, got {type(item).__name__}")
        return {**item, "valid": torch.tensor(int(i < self.n_items))}


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
