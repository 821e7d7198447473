"""The Lightning task every stage trains through.

One training step reads top to bottom: waveform augmentations -> front-end -> feature augmentations -> (mixup)
-> network -> loss. Recipes differ only in which augmentations and which loss they hand in.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from bench.config import ConfigError, Key, Schema
from bench.models.base import ASCModel, declared_memory_format
from bench.train.optim import warmup_cosine

LossFn = Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]


class NonFiniteLossError(RuntimeError):
    pass


OPTIM = Schema("optim", {
    "epochs": Key(int, 1, "training epochs"),
    "batch_size": Key(int, 64, "clips per optimizer step (per process under DDP)"),
    "lr": Key(float, 1e-3, "peak learning rate"),
    "weight_decay": Key(float, 1e-4, "decoupled (adamw) or L2 (adam) weight decay"),
    "optimizer": Key(str, "adamw", "optimizer", choices=("adamw", "adam")),
    "schedule": Key(str, "warmup_cosine", "learning-rate schedule: linear warm-up then cosine decay, stepped per "
                    "batch; or cosine annealing with warm restarts, stepped per epoch",
                    choices=("warmup_cosine", "cosine_restarts")),
    "warmup_steps": Key(int, 0, "warm-up steps (warmup_cosine)"),
    "warmup_ratio": Key(float, 0.0, "warm-up as a fraction of the fit's steps (warmup_cosine; used instead of "
                        "warmup_steps when > 0)"),
    "final_lr_factor": Key(float, 0.0, "last learning rate as a fraction of lr (warmup_cosine)"),
    "restart_epochs": Key(int, 10, "epochs of the first cosine cycle, T_0 (cosine_restarts)"),
    "restart_mult": Key(int, 2, "growth of each next cycle, T_mult (cosine_restarts)"),
    "grad_clip": Key(float, 0.0, "gradient-norm clipping (0: off)"),
    "mixup_alpha": Key(float, 0.0, "mixup Beta(alpha, alpha) on features; labels and teacher targets mixed alike "
                       "(0: off)"),
    "batches": Key(str, "random", "how clips form batches: shuffled at random, or stratified by device (every "
                   "batch holds each device's share of the clips, so every batch has several devices)",
                   choices=("random", "device_stratified")),
    "trainable": Key(str, "all", "which parameters train: all, or only the classifier head `net.head` (everything "
                     "else frozen and kept in eval mode: a linear probe)", choices=("all", "head")),
    "val_every": Key(int, 1, "validate every n epochs (0: never)"),
    "select": Key(str, "last", "weights kept at the end: the last epoch, or the epoch with the best validation "
                  "accuracy (validates every epoch)", choices=("last", "best")),
})


@dataclass(frozen=True)
class OptimConfig:
    """Hyperparameters of one training run: the ``OPTIM`` keys of a stage's config, defaults from ``OPTIM``."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    optimizer: str
    schedule: str
    warmup_steps: int
    warmup_ratio: float
    final_lr_factor: float
    restart_epochs: int
    restart_mult: int
    grad_clip: float
    mixup_alpha: float
    batches: str
    trainable: str
    val_every: int
    select: str

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "OptimConfig":
        return cls(**{f.name: cfg.get(f.name, OPTIM.keys[f.name].default) for f in fields(cls)})


def cross_entropy(logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    return F.cross_entropy(logits, batch["label"])


def binary_cross_entropy(logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Multi-label loss on multi-hot ``batch["target"]`` (a pre-training corpus)."""
    return F.binary_cross_entropy_with_logits(logits, batch["target"])


def permute_batch(batch: dict[str, Any], perm: torch.Tensor) -> dict[str, Any]:
    return {k: (v[perm] if isinstance(v, torch.Tensor) and v.ndim > 0 and len(v) == len(perm) else v)
            for k, v in batch.items()}


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Macro mAP over the classes that have a positive clip (the AudioSet-style multi-label metric)."""
    order = scores.argsort(dim=0, descending=True)
    hits = torch.gather(targets.float(), 0, order)
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, device=hits.device)[:, None]
    positives = hits.sum(0)
    keep = positives > 0
    return ((precision * hits).sum(0)[keep] / positives[keep]).mean()


class ClassifierTask(L.LightningModule):
    """``initial_optimizer_state`` ({"optimizer", "scheduler"} state dicts, e.g. another fit's
    ``final_optimizer_state``) resumes that optimizer and learning-rate schedule instead of starting fresh."""

    def __init__(self, model: ASCModel, optim: OptimConfig, wave_augment: list[nn.Module] | None = None,
                 feature_augment: list[nn.Module] | None = None, loss: LossFn = cross_entropy,
                 initial_optimizer_state: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.optim = optim
        self.wave_augment = nn.ModuleList(wave_augment or [])
        self.feature_augment = nn.ModuleList(feature_augment or [])
        self.loss_fn = loss
        self.initial_optimizer_state = initial_optimizer_state
        self.final_optimizer_state: dict[str, Any] | None = None  # set by StageContext.fit
        self._val_logits: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []
        self.val_history: list[dict[str, float]] = []
        self._fill_uninitialized = torch.utils.deterministic.fill_uninitialized_memory  # restored by teardown
        if optim.trainable == "head":
            if not isinstance(getattr(model.net, "head", None), nn.Module) or not any(
                    True for _ in model.net.head.parameters()):
                raise ConfigError(f"trainable = 'head': {type(model.net).__name__} has no classifier head `net.head` "
                                  "with parameters to train; use trainable = 'all'")
            for name, param in model.named_parameters():
                param.requires_grad_(name.startswith("net.head."))

    def setup(self, stage: str) -> None:
        """Per process (DDP workers too), before Lightning builds the optimizer and any DDP wrapper:

        - train in the layout the network declares it trains fastest in (``memory_format``, e.g. CP-Mobile's
          channels-last; ``bench.benchmarks.training_step --memory-format``);
        - the Trainer's deterministic mode would also fill every new tensor with NaN, a debugging aid that cost
          20 % of a batch-256 CP-Mobile step: off (no kernel reads memory it has not written; results unchanged).
        """
        self.model.net.to(memory_format=declared_memory_format(self.model.net))
        self._fill_uninitialized = torch.utils.deterministic.fill_uninitialized_memory
        torch.utils.deterministic.fill_uninitialized_memory = False

    def teardown(self, stage: str) -> None:
        """Back to the default layout (saved weights, quantization and export see ordinary tensors) and setting."""
        self.model.net.to(memory_format=torch.contiguous_format)
        torch.utils.deterministic.fill_uninitialized_memory = self._fill_uninitialized

    def on_train_epoch_start(self) -> None:
        """A frozen network stays in eval mode (no dropout, fixed BatchNorm statistics) under its trained head."""
        if self.optim.trainable == "head":
            self.model.eval()
            self.model.net.head.train()

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model(wave)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        wave = batch["wave"]
        for aug in self.wave_augment:
            wave = aug(wave, batch["device"]) if getattr(aug, "needs_device", False) else aug(wave)
        x = self.model.features(wave)
        for aug in self.feature_augment:
            x = aug(x)
        loss = self.batch_loss(x, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss became {loss.item()} at step {self.global_step} (epoch "
                                     f"{self.current_epoch}); lower the learning rate or check the inputs")
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(wave))
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def batch_loss(self, x: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The loss on augmented features ``x``; with mixup, ``lam * loss(batch) + (1 - lam) * loss(batch[perm])``
        on the mixed features (labels and teacher targets mixed with the same lambda and permutation)."""
        if self.optim.mixup_alpha > 0:
            lam = float(torch.distributions.Beta(self.optim.mixup_alpha, self.optim.mixup_alpha).sample())
            perm = torch.randperm(x.shape[0], device=x.device)
            logits = self.model.net(lam * x + (1 - lam) * x[perm])
            return lam * self.loss_fn(logits, batch) + (1 - lam) * self.loss_fn(logits, permute_batch(batch, perm))
        return self.loss_fn(self.model.net(x), batch)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._val_logits.append(self.model(batch["wave"]).float())
        self._val_targets.append(batch["target"] if "target" in batch else batch["label"])

    def on_validation_epoch_end(self) -> None:
        """Single-label: macro class-wise accuracy and cross-entropy; multi-label: mAP and BCE. ``val_score`` is
        the one a ``select = "best"`` fit keeps the best epoch of."""
        if not self._val_logits:
            return
        n_classes = self._val_logits[0].shape[-1]
        logits = self.all_gather(torch.cat(self._val_logits)).reshape(-1, n_classes)
        targets = self.all_gather(torch.cat(self._val_targets))
        self._val_logits.clear()
        self._val_targets.clear()
        if targets.is_floating_point():  # multi-hot
            targets = targets.reshape(-1, n_classes)
            score = mean_average_precision(logits, targets)
            loss = F.binary_cross_entropy_with_logits(logits, targets)
            metrics = {"val_map": score, "val_loss": loss}
        else:
            labels = targets.reshape(-1)
            pred = logits.argmax(1)
            score = torch.stack([(pred[labels == c] == c).float().mean() for c in labels.unique()]).mean()
            metrics = {"val_macro_acc": score, "val_loss": F.cross_entropy(logits, labels)}
        self.log_dict({**metrics, "val_score": score}, prog_bar=False, sync_dist=False)
        if not self.trainer.sanity_checking:
            self.val_history.append({"epoch": self.current_epoch, **{k: float(v) for k, v in metrics.items()}})

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[self.optim.optimizer]
        opt = cls(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        if self.optim.schedule == "cosine_restarts":
            sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, self.optim.restart_epochs,
                                                                         self.optim.restart_mult)
            interval = "epoch"
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warmup = round(self.optim.warmup_ratio * total) if self.optim.warmup_ratio > 0 else self.optim.warmup_steps
            sched = warmup_cosine(opt, warmup, total, self.optim.final_lr_factor)
            interval = "step"
        if self.initial_optimizer_state is not None:  # a copy: Adam steps its state tensors in place
            state = copy.deepcopy(self.initial_optimizer_state)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}
