"""Accuracy metrics of DCASE 2025 Task 1, computed from logits.

The official metric is the macro-average class-wise accuracy: the mean over classes of the fraction of that class's
clips classified correctly. Per-device and per-group accuracies are plain accuracies over the clips of that device
or group, as the baseline logs them. Device groups follow the baseline: ``real`` (a, b, c), ``seen`` (simulated
devices with training data, s1-s3) and ``unseen`` (everything else, including eval-set ``unknown``); ``known`` is
real + seen. Roles come from the dataset manifest (``Manifest.roles()``); a device the mapping does not name is
unseen.

Confidence intervals are percentile bootstraps over **recording locations**, stratified by scene: clips of one
location (its segments, each recorded by every device) succeed or fail together, so resampling clips as if they were
independent understates the interval (design effect 1 + (m - 1) rho for m clips per location). Each replicate draws,
for every scene, as many of that scene's locations as it has, with replacement, and keeps all their clips. Where a
split has no location identifiers the clips are resampled instead and the method says so; the clip bootstrap is also
reported as a labelled diagnostic (``intervals["macro_acc_clip_bootstrap"]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

ROLES = ("real", "seen", "unseen")


@dataclass
class Scores:
    """All metrics of one run; ``row()`` flattens them into table columns."""

    n_clips: int
    macro_accuracy: float
    accuracy: float
    log_loss: float
    macro_accuracy_ci: tuple[float, float]
    accuracy_ci: tuple[float, float]
    class_accuracy: dict[str, float]
    device_accuracy: dict[str, float]
    device_clips: dict[str, int]
    group_accuracy: dict[str, float]
    confusion: list[list[int]]
    ci_method: str = ""
    intervals: dict[str, list[float]] = field(default_factory=dict)

    def row(self) -> dict[str, float | int]:
        """One flat table row: overall metrics, CI bounds, ``acc_<group>``, ``acc_dev_<device>``,
        ``acc_class_<class>``. Groups without clips are NaN so that rows of different runs share columns."""
        row: dict[str, float | int] = {
            "n_clips": self.n_clips, "macro_acc": self.macro_accuracy,
            "macro_acc_ci_low": self.macro_accuracy_ci[0], "macro_acc_ci_high": self.macro_accuracy_ci[1],
            "acc": self.accuracy, "acc_ci_low": self.accuracy_ci[0], "acc_ci_high": self.accuracy_ci[1],
            "log_loss": self.log_loss,
        }
        row.update({f"acc_{group}": acc for group, acc in self.group_accuracy.items()})
        row.update({f"acc_dev_{device}": acc for device, acc in self.device_accuracy.items()})
        row.update({f"acc_class_{name}": acc for name, acc in self.class_accuracy.items()})
        return row


def _validate(y_true, logits, devices, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be a 2-D array (clips x classes), got shape {logits.shape}")
    n = logits.shape[0]
    if n == 0:
        raise ValueError("no clips to score")
    if logits.shape[1] != n_classes:
        raise ValueError(f"logits have {logits.shape[1]} columns but there are {n_classes} classes")
    bad = ~np.isfinite(logits)
    if bad.any():
        raise ValueError(f"logits contain {int(bad.sum())} non-finite values (NaN or inf) "
                         f"in {int(bad.any(axis=1).sum())} clips")
    y_true = np.asarray(y_true)
    if y_true.shape != (n,):
        raise ValueError(f"y_true has shape {y_true.shape} but logits have {n} rows")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class ids, got dtype {y_true.dtype}")
    outside = np.unique(y_true[(y_true < 0) | (y_true >= n_classes)])
    if outside.size:
        raise ValueError(f"y_true has class ids outside 0..{n_classes - 1}: {outside.tolist()}")
    devices = np.asarray(devices, dtype=str)
    if devices.shape != (n,):
        raise ValueError(f"devices has shape {devices.shape} but logits have {n} rows")
    return y_true, logits, devices


def _role_of(devices: np.ndarray, device_roles: Mapping[str, str]) -> np.ndarray:
    wrong = {d: r for d, r in device_roles.items() if r not in ROLES}
    if wrong:
        raise ValueError(f"device roles must be one of {', '.join(ROLES)}; got {wrong}")
    return np.array([device_roles.get(d, "unseen") for d in devices], dtype=object)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def log_loss(y_true: np.ndarray, logits: np.ndarray) -> float:
    """Mean negative log-likelihood of the softmax, probabilities clipped to [eps, 1 - eps] as scikit-learn does."""
    eps = np.finfo(np.float64).eps
    p_true = np.exp(log_softmax(logits)[np.arange(len(y_true)), y_true])
    return float(-np.log(np.clip(p_true, eps, 1 - eps)).mean())


def class_accuracies(y_true: np.ndarray, correct: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class accuracy; NaN for a class without clips (it then does not enter the macro average)."""
    counts = np.bincount(y_true, minlength=n_classes)
    hits = np.bincount(y_true, weights=correct, minlength=n_classes)
    return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)


def macro_accuracy(y_true: np.ndarray, correct: np.ndarray, n_classes: int) -> float:
    return float(np.nanmean(class_accuracies(y_true, correct, n_classes)))


@dataclass
class Resampler:
    """Bootstrap replicates as multiplicity weights (``weights``: replicates x clusters) over clusters of clips."""

    cluster: np.ndarray     # clip -> cluster index
    weights: np.ndarray     # replicates x clusters, how often each cluster is drawn
    method: str

    @classmethod
    def locations(cls, labels: np.ndarray, locations, n_boot: int = 1000, seed: int = 0) -> "Resampler":
        """Locations resampled within their scene (the scene most of a location's clips carry); clips instead where
        any clip has no location."""
        locations = None if locations is None else np.asarray(locations, dtype=object)
        if locations is None or len(locations) == 0 or any(loc is None or loc == "" or loc != loc for loc in locations):
            return cls.clips(len(labels), n_boot, seed, "clip bootstrap (the split has no recording locations)")
        names, cluster = np.unique(locations.astype(str), return_inverse=True)
        scene = np.array([np.bincount(labels[cluster == k]).argmax() for k in range(len(names))])
        rng = np.random.default_rng(seed)
        weights = np.zeros((n_boot, len(names)))
        for s in np.unique(scene):
            members = np.flatnonzero(scene == s)
            draws = rng.integers(0, len(members), (n_boot, len(members)))
            for j in range(len(members)):
                np.add.at(weights, (np.arange(n_boot), members[draws[:, j]]), 1)
        single = int(sum((scene == s).sum() == 1 for s in np.unique(scene)))
        caveat = (f"; {single} scene(s) with a single location, whose variation it cannot see" if single else "")
        return cls(cluster, weights, f"location bootstrap ({len(names)} recording locations, stratified by scene, "
                                     f"{n_boot} resamples{caveat})")

    @classmethod
    def clips(cls, n: int, n_boot: int = 1000, seed: int = 0, method: str | None = None) -> "Resampler":
        """Clips resampled as if independent (the diagnostic, or the fallback without locations)."""
        rng = np.random.default_rng(seed)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
        return cls(np.arange(n), weights, method or f"clip bootstrap ({n_boot} resamples)")

    def class_sums(self, labels: np.ndarray, correct: np.ndarray, n_classes: int,
                   keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per replicate and class: (correct clips, clips), of the clips in ``keep``."""
        keep = np.ones(len(labels), bool) if keep is None else keep
        hits = np.zeros((self.weights.shape[1], n_classes))
        counts = np.zeros_like(hits)
        np.add.at(hits, (self.cluster[keep], labels[keep]), correct[keep])
        np.add.at(counts, (self.cluster[keep], labels[keep]), 1.0)
        return self.weights @ hits, self.weights @ counts

    def macro(self, labels, correct, n_classes, keep=None) -> np.ndarray:
        hits, counts = self.class_sums(labels, correct, n_classes, keep)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nanmean(np.where(counts > 0, hits / np.maximum(counts, 1e-300), np.nan), axis=1)

    def accuracy(self, labels, correct, n_classes, keep=None) -> np.ndarray:
        hits, counts = self.class_sums(labels, correct, n_classes, keep)
        with np.errstate(invalid="ignore", divide="ignore"):
            return hits.sum(axis=1) / counts.sum(axis=1)

    def per_class(self, labels, correct, n_classes) -> np.ndarray:
        hits, counts = self.class_sums(labels, correct, n_classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, hits / np.maximum(counts, 1e-300), np.nan)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile interval of bootstrap samples (NaN replicates ignored)."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if not samples.size:
        return [float("nan"), float("nan")]
    tail = 100 * (1 - level) / 2
    return np.percentile(samples, (tail, 100 - tail)).tolist()


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def score_predictions(y_true, logits, devices, class_names: Sequence[str],
                      device_roles: Mapping[str, str], n_boot: int = 1000, seed: int = 0,
                      ci_level: float = 0.95, locations=None) -> Scores:
    """Score logits (clips x classes, columns in ``class_names`` order) against integer labels; intervals resample
    ``locations`` (one recording-location id per clip) when given.

    Raises ``ValueError`` naming the problem for malformed input (wrong lengths or columns, NaN/inf logits,
    out-of-range labels); the caller adds which submission and device it was.
    """
    n_classes = len(class_names)
    y_true, logits, devices = _validate(y_true, logits, devices, n_classes)
    pred = logits.argmax(axis=1)
    correct = (pred == y_true).astype(np.float64)
    roles = _role_of(devices, device_roles)
    groups = {role: correct[roles == role] for role in ROLES}
    groups["known"] = correct[roles != "unseen"]
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, pred), 1)
    device_ids = sorted(set(devices.tolist()))
    resampler = Resampler.locations(y_true, locations, n_boot, seed)
    intervals = {"macro_acc": percentile_interval(resampler.macro(y_true, correct, n_classes), ci_level),
                 "acc": percentile_interval(resampler.accuracy(y_true, correct, n_classes), ci_level)}
    subsets = {f"acc_{role}": roles == role for role in ROLES} | {"acc_known": roles != "unseen"}
    subsets |= {f"acc_dev_{d}": devices == d for d in device_ids}
    for name, keep in subsets.items():
        if keep.any():
            intervals[name] = percentile_interval(resampler.accuracy(y_true, correct, n_classes, keep), ci_level)
    per_class = resampler.per_class(y_true, correct, n_classes)
    for k, name in enumerate(class_names):
        intervals[f"acc_class_{name}"] = percentile_interval(per_class[:, k], ci_level)
    clip_resampler = Resampler.clips(len(y_true), n_boot, seed)
    intervals["macro_acc_clip_bootstrap"] = percentile_interval(clip_resampler.macro(y_true, correct, n_classes),
                                                                ci_level)
    return Scores(
        n_clips=len(y_true),
        macro_accuracy=macro_accuracy(y_true, correct, n_classes),
        accuracy=float(correct.mean()),
        log_loss=log_loss(y_true, logits),
        macro_accuracy_ci=tuple(intervals["macro_acc"]),
        accuracy_ci=tuple(intervals["acc"]),
        class_accuracy=dict(zip(class_names, class_accuracies(y_true, correct, n_classes).tolist())),
        device_accuracy={d: float(correct[devices == d].mean()) for d in device_ids},
        device_clips={d: int((devices == d).sum()) for d in device_ids},
        group_accuracy={group: _mean_or_nan(values) for group, values in groups.items()},
        confusion=confusion.tolist(),
        ci_method=resampler.method,
        intervals=intervals,
    )


def aggregate_seeds(runs: Sequence[Scores | Mapping[str, float]], ddof: int = 1) -> dict[str, float]:
    """Mean and standard deviation (sample std by default; NaN for a single run) of every numeric column that all
    runs share: ``<metric>_mean``, ``<metric>_std`` and ``n_seeds``."""
    if not runs:
        raise ValueError("no runs to aggregate")
    rows = [run.row() if isinstance(run, Scores) else dict(run) for run in runs]
    keys = [k for k, v in rows[0].items()
            if isinstance(v, (int, float)) and all(isinstance(r.get(k), (int, float)) for r in rows)]
    out: dict[str, float] = {"n_seeds": len(rows)}
    for key in keys:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=ddof)) if len(values) > ddof else float("nan")
    return out
