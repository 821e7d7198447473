"""Metrics cross-checked against scikit-learn on the same random predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, log_loss

from bench.data.manifest import load_manifest
from bench.score.metrics import aggregate_seeds, score_predictions

ROLES = load_manifest("tau22-dev").roles()

CLASSES = ["airport", "bus", "metro", "metro_station", "park", "public_square", "shopping_mall",
           "street_pedestrian", "street_traffic", "tram"]
DEVICES = ["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6", "unknown"]


def make_predictions(seed: int, n: int = 2000):
    """Random labels and logits that are right more often than chance, so accuracies differ between groups."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    logits = rng.normal(size=(n, len(CLASSES)))
    logits[np.arange(n), y] += rng.uniform(0, 2.5, n)
    devices = rng.choice(DEVICES, n)
    return y, logits, devices


@pytest.fixture(scope="module")
def data():
    return make_predictions(0)


@pytest.fixture(scope="module")
def scores(data):
    return score_predictions(*data, CLASSES, ROLES, n_boot=300, seed=1)


def test_against_sklearn(data, scores):
    y, logits, _ = data
    pred = logits.argmax(1)
    assert scores.macro_accuracy == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert scores.accuracy == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert scores.log_loss == pytest.approx(log_loss(y, softmax(logits, axis=1), labels=range(10)), rel=1e-9)
    assert scores.confusion == confusion_matrix(y, pred, labels=range(10)).tolist()
    assert scores.n_clips == len(y)


def test_class_accuracy_is_recall_per_class(data, scores):
    y, logits, _ = data
    conf = confusion_matrix(y, logits.argmax(1), labels=range(10))
    expected = np.diag(conf) / conf.sum(1)
    assert list(scores.class_accuracy) == CLASSES
    assert np.allclose(list(scores.class_accuracy.values()), expected)
    assert scores.macro_accuracy == pytest.approx(expected.mean())


def test_device_and_group_accuracy(data, scores):
    y, logits, devices = data
    pred = logits.argmax(1)
    for device in DEVICES:
        mask = devices == device
        assert scores.device_accuracy[device] == pytest.approx(accuracy_score(y[mask], pred[mask]))
        assert scores.device_clips[device] == mask.sum()
    roles = np.array([ROLES.get(d, "unseen") for d in devices])
    for group, mask in {"real": roles == "real", "seen": roles == "seen", "unseen": roles == "unseen",
                        "known": roles != "unseen"}.items():
        assert scores.group_accuracy[group] == pytest.approx(accuracy_score(y[mask], pred[mask]))


def test_missing_device_in_mapping_is_unseen(data):
    y, logits, devices = data
    only_a = score_predictions(y, logits, devices, CLASSES, device_roles={"a": "real"}, n_boot=10)
    mask = devices != "a"
    assert only_a.group_accuracy["unseen"] == pytest.approx(accuracy_score(y[mask], logits[mask].argmax(1)))
    assert math.isnan(only_a.group_accuracy["seen"])


def test_bootstrap_ci_contains_point_and_is_seeded(data, scores):
    lo, hi = scores.macro_accuracy_ci
    assert lo < scores.macro_accuracy < hi
    assert hi - lo < 0.1
    lo, hi = scores.accuracy_ci
    assert lo < scores.accuracy < hi
    again = score_predictions(*data, CLASSES, ROLES, n_boot=300, seed=1)
    assert again.macro_accuracy_ci == scores.macro_accuracy_ci
    other = score_predictions(*data, CLASSES, ROLES, n_boot=300, seed=2)
    assert other.macro_accuracy_ci != scores.macro_accuracy_ci


def test_row_is_flat_and_complete(scores):
    row = scores.row()
    assert all(isinstance(v, (int, float)) for v in row.values())
    for key in ("macro_acc", "macro_acc_ci_low", "acc", "log_loss", "acc_known", "acc_unseen", "acc_dev_s4",
                "acc_class_tram"):
        assert key in row


def test_aggregate_seeds():
    runs = [score_predictions(*make_predictions(seed, 500), CLASSES, ROLES, n_boot=20) for seed in range(3)]
    agg = aggregate_seeds(runs)
    values = [r.macro_accuracy for r in runs]
    assert agg["n_seeds"] == 3
    assert agg["macro_acc_mean"] == pytest.approx(np.mean(values))
    assert agg["macro_acc_std"] == pytest.approx(np.std(values, ddof=1))
    assert agg["acc_dev_a_mean"] == pytest.approx(np.mean([r.device_accuracy["a"] for r in runs]))
    assert math.isnan(aggregate_seeds(runs[:1])["macro_acc_std"])


@pytest.mark.parametrize("mutate, message", [
    (lambda y, l, d: (y, np.where(np.arange(l.size).reshape(l.shape) == 3, np.nan, l), d), "non-finite"),
    (lambda y, l, d: (y, np.where(np.arange(l.size).reshape(l.shape) == 5, np.inf, l), d), "non-finite"),
    (lambda y, l, d: (y[:-1], l, d), "y_true has shape"),
    (lambda y, l, d: (y, l, d[:-1]), "devices has shape"),
    (lambda y, l, d: (y, l[:, :9], d), "9 columns but there are 10 classes"),
    (lambda y, l, d: (np.where(np.arange(len(y)) == 0, 10, y), l, d), "outside 0..9"),
    (lambda y, l, d: (y, l[0], d), "2-D"),
])
def test_invalid_input_raises(data, mutate, message):
    with pytest.raises(ValueError, match=message):
        score_predictions(*mutate(*data), CLASSES, ROLES, n_boot=5)


def test_invalid_role_raises(data):
    with pytest.raises(ValueError, match="device roles"):
        score_predictions(*data, CLASSES, device_roles={"a": "simulated"}, n_boot=5)
