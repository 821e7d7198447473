"""Validation split carved from the training split by recording location.

The test split is for scoring only. Model selection, early stopping, quantization calibration and teacher fusion
use this validation split instead (several public recipes select on the test split; the harness does not).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def carve_validation(train: pd.DataFrame, fraction: float = 0.1, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``train`` into (fit, validation) by location, per scene, so no location is in both.

    Each scene gives ``round(fraction * its locations)`` locations (at least one when it has two or more).
    All recordings of a chosen location, on every device, go to validation. A corpus without locations (or
    without scene labels) is split by clip (in one group).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    if train["identifier"].isna().all():
        train = train.assign(identifier=train["filename"])
    elif train["identifier"].isna().any():
        raise ValueError("some training clips have no location identifier; they cannot be split by location")
    groups = train.groupby("scene_label", sort=True) if train["scene_label"].notna().all() else [(None, train)]
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for _, group in groups:
        locations = np.array(sorted(group["identifier"].unique()))
        k = int(round(fraction * len(locations)))
        k = max(k, 1) if len(locations) >= 2 else 0
        chosen.update(rng.choice(locations, size=k, replace=False).tolist())
    is_val = train["identifier"].isin(chosen)
    return train[~is_val], train[is_val]
