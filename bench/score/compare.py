"""Paired comparison of two board rows on the clips both scored: is A better than B?

The difference of macro accuracies (and of the device-group accuracies) gets a paired bootstrap interval: each
replicate resamples recording locations within their scene (:class:`bench.score.metrics.Resampler`) once, and both
rows are scored on that same resample, so what the clips have in common cancels. A row that aggregates several seeds
enters as the mean over its seeds; its seeds are resampled too (with replacement, independently for A and B), so the
interval also carries the seed-to-seed spread. The p-value is the two-sided bootstrap one,
``2 * min(P*(d <= 0), P*(d >= 0))`` with the usual +1 correction. An effect is **shown** only when the interval
excludes zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from bench.score.metrics import Resampler, macro_accuracy, percentile_interval
from bench.score.predictions import ClipPredictions

METRICS = ("macro_acc", "acc_real", "acc_seen", "acc_unseen", "acc_known")
LABELS = {"macro_acc": "macro accuracy", "acc_real": "real devices", "acc_seen": "seen devices",
          "acc_unseen": "unseen devices", "acc_known": "known devices"}
DEVICE_METRIC = "device:"  # ``device:<id>``: the accuracy on one device's clips


def metric_label(metric: str) -> str:
    return f"device {metric[len(DEVICE_METRIC):]}" if metric.startswith(DEVICE_METRIC) else LABELS.get(metric, metric)


class ComparisonError(ValueError):
    """Two rows that cannot be compared; the message says why and what to do."""


@dataclass
class Comparison:
    """A - B for one metric, in fractions (``sentence`` prints points)."""

    a: str
    b: str
    metric: str
    a_value: float
    b_value: float
    diff: float
    ci: tuple[float, float]
    p_value: float
    level: float
    n_clips: int
    method: str
    seeds_a: int = 1
    seeds_b: int = 1

    @property
    def shown(self) -> bool:
        return bool(self.ci[0] > 0 or self.ci[1] < 0)

    def sentence(self) -> str:
        lo, hi = (100 * x for x in self.ci)
        verdict = ("shown" if self.shown else "not shown")
        return (f"{self.a} - {self.b} = {100 * self.diff:+.1f} points of {metric_label(self.metric)}, "
                f"{round(100 * self.level)} % CI [{lo:+.1f}, {hi:+.1f}], p = {self.p_value:.3f}: {verdict}")

    def to_dict(self) -> dict:
        return {**asdict(self), "shown": self.shown, "sentence": self.sentence()}


def _replicates(resampler: Resampler, p: ClipPredictions, metric: str, masks: dict[str, np.ndarray]) -> np.ndarray:
    n_classes = len(p.classes)
    if metric == "macro_acc":
        return resampler.macro(p.labels, p.correct, n_classes)
    return resampler.accuracy(p.labels, p.correct, n_classes, masks[metric])


def _point(p: ClipPredictions, metric: str, masks: dict[str, np.ndarray]) -> float:
    if metric == "macro_acc":
        return macro_accuracy(p.labels, p.correct, len(p.classes))
    keep = masks[metric]
    return float(p.correct[keep].mean()) if keep.any() else float("nan")


def check_comparable(a: Sequence[ClipPredictions], b: Sequence[ClipPredictions], name_a: str, name_b: str) -> None:
    digests = {m.digest for m in a} | {m.digest for m in b}
    if len(digests) > 1:
        raise ComparisonError(
            f"{name_a} and {name_b} were scored on different test clips ({len(a[0].labels)} clips, digest "
            f"{a[0].digest[:12]} vs {len(b[0].labels)} clips, digest {b[0].digest[:12]}); a paired comparison needs "
            "rows of the same dataset and split: score both on the same data")
    if a[0].classes != b[0].classes:
        raise ComparisonError(f"{name_a} and {name_b} use different class lists")


def compare(a: Sequence[ClipPredictions], b: Sequence[ClipPredictions], name_a: str = "A", name_b: str = "B", metrics: Sequence[str] = METRICS, n_boot: int = 2000,
            seed: int = 0, level: float = 0.95) -> dict[str, Comparison]:
    """A - B per metric; ``a`` and ``b`` hold one prediction per seed of each row (one for a single-seed row)."""
    if not a or not b:
        raise ComparisonError("nothing to compare: a row without predictions")
    check_comparable(a, b, name_a, name_b)
    first = a[0]
    resampler = Resampler.locations(first.labels, first.locations if first.has_locations else None, n_boot, seed)
    rng = np.random.default_rng(seed + 1)
    masks = first.role_masks()
    pick_a = rng.integers(0, len(a), (n_boot, len(a)))
    pick_b = rng.integers(0, len(b), (n_boot, len(b)))
    out = {}
    for metric in metrics:
        if metric != "macro_acc" and not masks.get(metric, np.zeros(1, bool)).any():
            continue
        rep_a = np.stack([_replicates(resampler, m, metric, masks) for m in a])  # seeds x replicates
        rep_b = np.stack([_replicates(resampler, m, metric, masks) for m in b])
        cols = np.arange(n_boot)
        boot = rep_a[pick_a, cols[:, None]].mean(axis=1) - rep_b[pick_b, cols[:, None]].mean(axis=1)
        value_a = float(np.mean([_point(m, metric, masks) for m in a]))
        value_b = float(np.mean([_point(m, metric, masks) for m in b]))
        boot = boot[np.isfinite(boot)]
        tail = min((1 + (boot <= 0).sum()) / (len(boot) + 1), (1 + (boot >= 0).sum()) / (len(boot) + 1))
        seeds = "" if len(a) == len(b) == 1 else f"; seeds resampled ({len(a)} vs {len(b)})"
        out[metric] = Comparison(name_a, name_b, metric, value_a, value_b, value_a - value_b,
                                 tuple(percentile_interval(boot, level)), float(min(1.0, 2 * tail)), level,
                                 len(first.labels), f"paired {resampler.method}{seeds}", len(a), len(b))
    return out
