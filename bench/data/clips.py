"""A set of clips a stage trains or validates on: rows of one prepared store, with the label space they carry.

The run's training split, a device subset of it, and another dataset with its own classes and multi-label targets
(a pre-training corpus) all reach ``ctx.fit`` in this one shape, so the loader always reads the right store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.data.loaders import ClipDataset
from bench.data.store import Store

LABEL_SEPARATOR = ";"


@dataclass(frozen=True)
class ClipSet:
    store: Store
    frame: pd.DataFrame
    classes: tuple[str, ...]
    device_vocab: tuple[str, ...]   # device ids in index order (augmentations receive indices into it)
    multilabel: bool = False

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def rows(self) -> np.ndarray:
        return self.frame["row"].to_numpy()

    @property
    def labels(self) -> np.ndarray:
        """Class ids (single-label datasets)."""
        return self.frame["label"].to_numpy(copy=True)

    def targets(self) -> np.ndarray:
        """Multi-hot ``[N, n_classes]`` float32 (multi-label datasets)."""
        index = {c: i for i, c in enumerate(self.classes)}
        out = np.zeros((len(self.frame), len(self.classes)), dtype=np.float32)
        for i, labels in enumerate(self.frame["labels"].fillna("")):
            for name in filter(None, labels.split(LABEL_SEPARATOR)):
                out[i, index[name]] = 1.0
        return out

    def of_devices(self, devices: list[str] | None) -> "ClipSet":
        if devices is None:
            return self
        return ClipSet(self.store, self.frame[self.frame["device"].isin(devices)], self.classes, self.device_vocab,
                       self.multilabel)

    def concat(self, other: "ClipSet") -> "ClipSet":
        if other.store.root != self.store.root:
            raise ValueError("clips of two stores cannot be combined")
        return ClipSet(self.store, pd.concat([self.frame, other.frame]), self.classes, self.device_vocab,
                       self.multilabel)

    def dataset(self, extras: dict[str, np.ndarray] | None = None) -> ClipDataset:
        return ClipDataset(self.store, self.frame, list(self.device_vocab), extras,
                           self.targets() if self.multilabel else None)
