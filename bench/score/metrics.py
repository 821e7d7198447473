"""Accuracy metrics of DCASE 2025 Task 1, computed from logits.

The official metric is the macro-average class-wise accuracy: the mean over classes of the fraction of that class's
clips classified correctly. Per-device and per-group accuracies are plain accuracies over the clips of that device
or group, as the baseline logs them. Device groups follow the baseline: ``real`` (a, b, c), ``seen`` (simulated
devices with training data, s1-s3) and ``unseen`` (everything else, including eval-set ``unknown``); ``known`` is
real + seen. Roles come from the dataset manifest (``Manifest.roles()``); a device the mapping does not name is
unseen. Confidence intervals are percentile bootstraps over clips.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def bootstrap_ci(y_true: np.ndarray, correct: np.ndarray, n_classes: int, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile-bootstrap intervals over clips for (macro accuracy, accuracy); resamples are seeded."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    macro, overall = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        macro[b] = macro_accuracy(y_true[idx], correct[idx], n_classes)
        overall[b] = correct[idx].mean()
    tail = 100 * (1 - level) / 2
    bounds = (tail, 100 - tail)
    return tuple(np.percentile(macro, bounds).tolist()), tuple(np.percentile(overall, bounds).tolist())


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def score_predictions(y_true, logits, devices, class_names: Sequence[str],
                      device_roles: Mapping[str, str], n_boot: int = 1000, seed: int = 0,
                      ci_level: float = 0.95) -> Scores:
    """Score logits (clips x classes, columns in ``class_names`` order) against integer labels.

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
    macro_ci, acc_ci = bootstrap_ci(y_true, correct, n_classes, n_boot, seed, ci_level)
    device_ids = sorted(set(devices.tolist()))
    return Scores(
        n_clips=len(y_true),
        macro_accuracy=macro_accuracy(y_true, correct, n_classes),
        accuracy=float(correct.mean()),
        log_loss=log_loss(y_true, logits),
        macro_accuracy_ci=macro_ci,
        accuracy_ci=acc_ci,
        class_accuracy=dict(zip(class_names, class_accuracies(y_true, correct, n_classes).tolist())),
        device_accuracy={d: float(correct[devices == d].mean()) for d in device_ids},
        device_clips={d: int((devices == d).sum()) for d in device_ids},
        group_accuracy={group: _mean_or_nan(values) for group, values in groups.items()},
        confusion=confusion.tolist(),
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
