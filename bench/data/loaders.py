"""Batches from the packed store for training and scoring.

``ClipDataset`` implements ``__getitems__`` so a DataLoader fetches a whole batch with one memmap gather
instead of one Python call per clip; it works with any sampler, including the DistributedSampler Lightning
injects under DDP.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from bench.data.store import Store


class ClipDataset(Dataset):
    """Clips (rows of a store split) with labels, device ids and optional per-clip extras (e.g. teacher logits)."""

    def __init__(self, store: Store, clips: pd.DataFrame, devices: list[str],
                 extras: dict[str, np.ndarray] | None = None, targets: np.ndarray | None = None):
        self.store = store
        self.rows = clips["row"].to_numpy()
        self.labels = torch.tensor(clips["label"].to_numpy(copy=True), dtype=torch.long)
        vocab = {d: i for i, d in enumerate(devices)}
        self.device_names = clips["device"].tolist()
        self.device_idx = torch.as_tensor([vocab.get(d, -1) for d in self.device_names], dtype=torch.long)
        self.extras = {k: torch.as_tensor(v) for k, v in (extras or {}).items()}
        if targets is not None:  # multi-hot labels of a multi-label dataset
            self.extras["target"] = torch.as_tensor(targets, dtype=torch.float32)
        for k, v in self.extras.items():
            if len(v) != len(self.rows):
                raise ValueError(f"extra {k!r} has {len(v)} rows for {len(self.rows)} clips")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, idx: list[int]) -> dict[str, Any]:
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        batch = {"wave": torch.from_numpy(self.store.waveforms(self.rows[idx])),
                 "label": self.labels[idx_t], "device": self.device_idx[idx_t], "index": idx_t}
        for k, v in self.extras.items():
            batch[k] = v[idx_t]
        return batch

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


class DeviceStratifiedBatchSampler(Sampler[list[int]]):
    """Batches stratified by device: every clip once per epoch, and every batch holds each device's share of the
    clips (device a is 73 % of split25: a batch of 32 then has about 23 clips of a and one or two of every other
    device), so a loss computed across devices in a batch (DAFA) always sees several of them.

    Per epoch: each device's clips are shuffled, laid end to end device by device, and dealt round-robin into
    ``ceil(N / batch_size)`` batches (sizes differ by at most one; nothing is dropped); the batch order and the
    order inside each batch are shuffled. The permutation depends on ``seed`` and the epoch only (Lightning calls
    :meth:`set_epoch`), so a resumed fit sees the same batches. Under torch.distributed each process takes every
    ``world``-th batch (cut to equal counts). The expected cross-entropy gradient is that of random batches; only
    the variance of the device mix goes down."""

    def __init__(self, devices: torch.Tensor, batch_size: int, seed: int = 0, rank: int | None = None,
                 world: int | None = None):
        self.devices = torch.as_tensor(devices)
        self.batch_size, self.seed, self.epoch = int(batch_size), int(seed), 0
        self._rank, self._world = rank, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _layout(self) -> tuple[int, int]:
        if self._world is not None:
            return self._rank or 0, self._world
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _all_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.cat([idx[torch.randperm(len(idx), generator=g)]
                           for d in torch.unique(self.devices) for idx in [torch.nonzero(self.devices == d)[:, 0]]])
        n_batches = max(1, -(-len(order) // self.batch_size))
        batches = [order[b::n_batches] for b in range(n_batches)]
        batches = [b[torch.randperm(len(b), generator=g)].tolist() for b in batches]
        return [batches[i] for i in torch.randperm(n_batches, generator=g).tolist()]

    def __iter__(self):
        rank, world = self._layout()
        batches = self._all_batches()
        per_rank = len(batches) // world if world > 1 else len(batches)
        return iter(batches[rank::world][:per_rank])

    def __len__(self) -> int:
        rank, world = self._layout()
        n_batches = max(1, -(-len(self.devices) // self.batch_size))
        return n_batches // world if world > 1 else n_batches


def _whole_batch(batch):
    return batch


def make_loader(dataset: ClipDataset, batch_size: int, shuffle: bool, seed: int | None = 0, drop_last: bool = False,
                num_workers: int = 0, batches: str = "random") -> DataLoader:
    """``seed=None`` leaves shuffling to the sampler Lightning installs under DDP (seeded by ``seed_everything``);
    a seeded ``torch.Generator`` cannot be handed to spawned DDP workers (its pickled state is a temporary shared
    tensor whose file descriptor closes before the workers start). ``batches="device_stratified"`` (training
    loaders) uses :class:`DeviceStratifiedBatchSampler`, which shards itself under DDP."""
    if shuffle and batches == "device_stratified":
        sampler = DeviceStratifiedBatchSampler(dataset.device_idx, batch_size, seed or 0)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=_whole_batch, num_workers=num_workers,
                          persistent_workers=num_workers > 0)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator,
                      collate_fn=_whole_batch, num_workers=num_workers, persistent_workers=num_workers > 0)
