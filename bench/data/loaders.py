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
from torch.utils.data import DataLoader, Dataset

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


def _whole_batch(batch):
    return batch


def make_loader(dataset: ClipDataset, batch_size: int, shuffle: bool, seed: int | None = 0, drop_last: bool = False,
                num_workers: int = 0) -> DataLoader:
    """``seed=None`` leaves shuffling to the sampler Lightning installs under DDP (seeded by ``seed_everything``);
    a seeded ``torch.Generator`` cannot be handed to spawned DDP workers (its pickled state is a temporary shared
    tensor whose file descriptor closes before the workers start)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator,
                      collate_fn=_whole_batch, num_workers=num_workers, persistent_workers=num_workers > 0)
