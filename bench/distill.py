"""Knowledge distillation: the KD loss, teacher ensembles (averaging, DS-FlexiNet's learned fusion).

Teacher logits are raw (pre-softmax) scores ``[N, C]``; the temperature is applied inside the loss. See
docs/distillation.md for the reduction choice and the fusion's guarantees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bench.config import Key, Schema

REDUCTIONS = ("mean", "batchmean")
SOFT_TARGETS = ("kl", "ce")
KD_MODES = ("fused", "average", "per_device", "none")

KD = Schema("kd", {
    "kd": Key(str, "average", "teacher targets: DS-FlexiNet's learned fusion, the (weighted) average, teacher weights "
              "per recording device fitted on validation, or no distillation", choices=KD_MODES),
    "kd_teachers": Key(list, None, "names of the teachers distilled from (default: every teacher the gate kept)"),
    "kd_weights": Key(dict, None, "weight per teacher name for kd = \"average\" (normalised to sum 1; default equal)"),
    "kd_lambda": Key(float, 0.02, "weight of the label term (the soft term gets 1 - kd_lambda)"),
    "kd_temperature": Key(float, 2.0, "softmax temperature of the soft term"),
    "kd_reduction": Key(str, "mean", "soft-term reduction: element-wise mean (CP-JKU) or sum over classes",
                        choices=REDUCTIONS),
    "kd_soft_target": Key(str, "kl", "soft term: KL divergence, or soft-target cross-entropy (DS-FlexiNet eq. 5)",
                          choices=SOFT_TARGETS),
})


def _check_options(reduction: str, soft_target: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if soft_target not in SOFT_TARGETS:
        raise ValueError(f"soft_target must be one of {SOFT_TARGETS}, got {soft_target!r}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, lam: float = 0.02,
            T: float = 2.0, reduction: str = "mean", soft_target: str = "kl") -> torch.Tensor:
    """``lam * CE(student, y) + (1 - lam) * T**2 * D(softmax(teacher/T), softmax(student/T))``.

    ``reduction="mean"`` averages the soft term over batch x classes, as CP-JKU and EASY do (their ``lam = 0.02``,
    ``T = 2`` assume it); ``"batchmean"`` sums over classes (the textbook KL), i.e. ``n_classes`` times larger.
    ``soft_target="kl"`` uses KL; ``"ce"`` the soft-target cross-entropy of DS-FlexiNet eq. 5, which is KL plus the
    teacher entropy: same gradients, different value.
    """
    _check_options(reduction, soft_target)
    log_s = F.log_softmax(student_logits.float() / T, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / T, dim=-1)
    per = log_t.exp() * ((log_t - log_s) if soft_target == "kl" else -log_s)
    soft = per.mean() if reduction == "mean" else per.sum() / per.shape[0]
    return lam * F.cross_entropy(student_logits.float(), labels) + (1 - lam) * T * T * soft


@dataclass(frozen=True)
class KDLoss:
    """``kd_loss`` as a task loss ``loss(logits, batch)`` reading ``batch["label"]`` and ``batch["teacher_logits"]``;
    a plain dataclass so the task pickles for DDP spawn.

    The task's mixup calls the loss on the batch and on its permutation with the same lambda, so the teacher term is
    mixed like the labels: Soft-Mixup without extra code."""

    lam: float = 0.02
    T: float = 2.0
    reduction: str = "mean"
    soft_target: str = "kl"

    def __post_init__(self) -> None:
        _check_options(self.reduction, self.soft_target)

    def __call__(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return kd_loss(logits, batch["teacher_logits"], batch["label"], self.lam, self.T, self.reduction,
                       self.soft_target)


def kd_loss_from_config(cfg) -> KDLoss:
    """The KD loss of a config that declares ``KD``."""
    return KDLoss(cfg["kd_lambda"], cfg["kd_temperature"], cfg["kd_reduction"], cfg["kd_soft_target"])


def _stack(logits_list: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[K, N, C]`` from K teachers' ``[N, C]`` logits, refusing ragged inputs."""
    if len(logits_list) == 0:
        raise ValueError("need the logits of at least one teacher")
    shapes = {tuple(torch.as_tensor(z).shape) for z in logits_list}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"teacher logits must all be [N, C] of one shape, got {sorted(shapes)}")
    return torch.stack([torch.as_tensor(z) for z in logits_list])


def average_logits(logits_list: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """The CP-JKU/EASY ensemble: mean of the teachers' raw logits; with ``weights``, their weighted mean (the
    weights are normalised to sum 1)."""
    z = _stack(logits_list).float()
    if weights is None:
        return z.mean(dim=0)
    w = torch.as_tensor(weights, dtype=torch.float32)
    if w.shape != (z.shape[0],) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"need one non-negative weight per teacher ({z.shape[0]}), not all zero; got {w.tolist()}")
    return torch.einsum("knc,k->nc", z, w / w.sum())


class DeviceWeights:
    """Teacher weights per recording device: for each device with labelled clips, the convex combination of the
    teachers' logits (``softmax(a)``) that minimises cross-entropy on that device's clips plus ``l2 * ||a||**2``
    (shrinking toward equal weights, which a device with few clips keeps); devices without clips get the weights
    fitted on all clips. Our reading of Jeong & Kim's "adaptive" ensemble, whose weighting is not public. Fitted on
    validation clips only (``fit`` refuses a test split)."""

    def __init__(self, l2: float = 1e-2, max_iter: int = 100):
        self.l2, self.max_iter = float(l2), int(max_iter)
        self.weights: dict[str, list[float]] = {}
        self.overall: list[float] = []

    def _fit_one(self, z: torch.Tensor, y: torch.Tensor) -> list[float]:
        a = torch.zeros(z.shape[0], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([a], lr=1.0, max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def objective() -> torch.Tensor:
            opt.zero_grad()
            value = F.cross_entropy(torch.einsum("knc,k->nc", z, a.softmax(0)), y) + self.l2 * a.pow(2).sum()
            value.backward()
            return value

        opt.step(objective)
        return a.detach().softmax(0).tolist()

    def fit(self, logits_list: Sequence[torch.Tensor], labels: torch.Tensor, devices: Sequence[str], *,
            split: str) -> "DeviceWeights":
        if "test" in split.lower():
            raise ValueError(f"DeviceWeights.fit refuses split {split!r}: fit on validation clips, never on test")
        z = _stack(logits_list).detach().cpu().double()
        y = torch.as_tensor(labels).long()
        devices = list(devices)
        self.overall = self._fit_one(z, y)
        for d in sorted(set(devices)):
            idx = torch.tensor([i for i, x in enumerate(devices) if x == d])
            self.weights[d] = self._fit_one(z[:, idx], y[idx])
        return self

    def transform(self, logits_list: Sequence[torch.Tensor], devices: Sequence[str]) -> torch.Tensor:
        """Per-clip weighted logits: each clip gets its device's weights."""
        z = _stack(logits_list).float()
        w = torch.tensor([self.weights.get(d, self.overall) for d in devices], dtype=torch.float32)  # [N, K]
        return torch.einsum("knc,nk->nc", z, w)

    def to_dict(self) -> dict[str, Any]:
        return {"per_device": self.weights, "overall": self.overall, "l2": self.l2}


class TeacherFusion:
    """DS-FlexiNet's learned teacher fusion (eq. 4): ``z[n, c] = sum_k w_k * z_k[n, c] + b_c``, one weight per teacher
    and one bias per class, fitted by minimising cross-entropy on labelled training/validation logits (never test).

    The objective is convex in ``(w, b)``. Two fits are run, each anchored at a reference ensemble -- the average
    (``w = 1/K, b = 0``) and the most accurate single teacher (``w = e_k, b = 0``): start at the anchor and minimise
    ``CE + l2 * ||theta - anchor||**2`` with L-BFGS in float64 (deterministic). Each fit ends with a training loss no
    higher than its anchor's; the shrinkage keeps the weights finite when the teachers separate the data (their own
    training clips). Among the two fits and the two anchors, ``fit`` keeps the lowest-loss candidate whose accuracy is
    at least both anchors', so on the fitting data the fused ensemble is as accurate as the average and the best
    teacher, and no worse in loss than the more accurate of them (in practice a fit wins and beats both).
    """

    def __init__(self, l2: float = 1e-3, max_iter: int = 300):
        self.l2, self.max_iter = float(l2), int(max_iter)
        self.weights: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.info: dict[str, Any] = {}

    def fit(self, logits_list: Sequence[torch.Tensor], labels: torch.Tensor, *, split: str) -> "TeacherFusion":
        """Fit on the logits of ``split``; refuses any split named like a test split."""
        if "test" in split.lower():
            raise ValueError(f"TeacherFusion.fit refuses split {split!r}: fit fusion weights on training or "
                             "validation logits, never on the test split")
        z = _stack(logits_list).detach().cpu().double()
        y = torch.as_tensor(labels).detach().cpu().long()
        k, n, c = z.shape
        if y.shape != (n,):
            raise ValueError(f"labels must be [{n}], got {list(y.shape)}")
        average = torch.cat([torch.full((k,), 1.0 / k, dtype=z.dtype), torch.zeros(c, dtype=z.dtype)])
        singles = [torch.cat([F.one_hot(torch.tensor(i), k).double(), average[k:]]) for i in range(k)]
        single_scores = [self._score(z, y, theta) for theta in singles]
        best = max(range(k), key=lambda i: (single_scores[i][1], -single_scores[i][0]))
        anchors = {"average": average, f"teacher {best}": singles[best]}
        candidates = dict(anchors)
        candidates.update({f"fit from {name}": self._minimise(z, y, theta) for name, theta in anchors.items()})
        scores = {name: self._score(z, y, theta) for name, theta in candidates.items()}
        floor = max(scores[name][1] for name in anchors)
        chosen = min((name for name in candidates if scores[name][1] >= floor), key=lambda name: scores[name][0])
        theta = candidates[chosen]
        self.weights, self.bias = theta[:k].float(), theta[k:].float()
        self.info = {"split": split, "n": n, "chosen": chosen,
                     "scores": {name: {"loss": s[0], "accuracy": s[1]} for name, s in scores.items()}}
        return self

    def transform(self, logits_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fused logits ``[N, C]``."""
        if self.weights is None:
            raise RuntimeError("TeacherFusion.transform before fit/from_dict")
        z = _stack(logits_list).float()
        if z.shape[0] != len(self.weights) or z.shape[2] != len(self.bias):
            raise ValueError(f"fusion was fitted for {len(self.weights)} teachers x {len(self.bias)} classes, got "
                             f"{z.shape[0]} x {z.shape[2]}")
        return self._fused(z, torch.cat([self.weights, self.bias]).to(z.device))

    def to_dict(self) -> dict[str, Any]:
        if self.weights is None:
            raise RuntimeError("TeacherFusion.to_dict before fit")
        return {"weights": self.weights.tolist(), "bias": self.bias.tolist(), "l2": self.l2,
                "max_iter": self.max_iter, "info": self.info}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "TeacherFusion":
        fusion = cls(**{key: state[key] for key in ("l2", "max_iter") if key in state})
        fusion.weights = torch.tensor(state["weights"], dtype=torch.float32)
        fusion.bias = torch.tensor(state["bias"], dtype=torch.float32)
        fusion.info = dict(state.get("info", {}))
        return fusion

    @staticmethod
    def _fused(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return torch.einsum("knc,k->nc", z, theta[:z.shape[0]]) + theta[z.shape[0]:]

    @classmethod
    def _score(cls, z: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> tuple[float, float]:
        """(cross-entropy, accuracy) of the fused logits."""
        fused = cls._fused(z, theta)
        return float(F.cross_entropy(fused, y)), float((fused.argmax(1) == y).double().mean())

    def _minimise(self, z: torch.Tensor, y: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        theta = anchor.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=self.max_iter, history_size=20,
                                tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

        def objective() -> torch.Tensor:
            opt.zero_grad()
            value = F.cross_entropy(self._fused(z, theta), y) + self.l2 * (theta - anchor).pow(2).sum()
            value.backward()
            return value

        opt.step(objective)
        theta = theta.detach()
        # Guard the guarantee against a failed line search: never return something worse than the anchor.
        return theta if self._score(z, y, theta)[0] <= self._score(z, y, anchor)[0] else anchor
