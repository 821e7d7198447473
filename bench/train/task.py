"""The Lightning task every stage trains through.

One training step reads top to bottom: waveform augmentations -> front-end -> feature augmentations -> (mixup)
-> network -> loss. Recipes differ only in which augmentations and which loss they hand in.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from bench.models.base import ASCModel
from bench.train.optim import warmup_cosine

LossFn = Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class OptimConfig:
    """Hyperparameters of one training run (one profile of one stage gives these)."""

    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"          # adamw | adam
    warmup_steps: int = 0
    final_lr_factor: float = 0.0
    grad_clip: float = 0.0            # 0 = off
    mixup_alpha: float = 0.0          # 0 = off; labels (and teacher targets) are mixed with the same lambda
    val_every: int = 1                # validate every n epochs (0 = never)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "OptimConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})


def cross_entropy(logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    return F.cross_entropy(logits, batch["label"])


def permute_batch(batch: dict[str, Any], perm: torch.Tensor) -> dict[str, Any]:
    return {k: (v[perm] if isinstance(v, torch.Tensor) and v.ndim > 0 and len(v) == len(perm) else v)
            for k, v in batch.items()}


class ClassifierTask(L.LightningModule):
    def __init__(self, model: ASCModel, optim: OptimConfig, wave_augment: list[nn.Module] | None = None,
                 feature_augment: list[nn.Module] | None = None, loss: LossFn = cross_entropy):
        super().__init__()
        self.model = model
        self.optim = optim
        self.wave_augment = nn.ModuleList(wave_augment or [])
        self.feature_augment = nn.ModuleList(feature_augment or [])
        self.loss_fn = loss
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self.val_history: list[dict[str, float]] = []

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model(wave)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        wave = batch["wave"]
        for aug in self.wave_augment:
            wave = aug(wave, batch["device"]) if getattr(aug, "needs_device", False) else aug(wave)
        x = self.model.features(wave)
        for aug in self.feature_augment:
            x = aug(x)
        if self.optim.mixup_alpha > 0:
            lam = float(torch.distributions.Beta(self.optim.mixup_alpha, self.optim.mixup_alpha).sample())
            perm = torch.randperm(x.shape[0], device=x.device)
            logits = self.model.net(lam * x + (1 - lam) * x[perm])
            loss = lam * self.loss_fn(logits, batch) + (1 - lam) * self.loss_fn(logits, permute_batch(batch, perm))
        else:
            loss = self.loss_fn(self.model.net(x), batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss became {loss.item()} at step {self.global_step} (epoch "
                                     f"{self.current_epoch}); lower the learning rate or check the inputs")
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(wave))
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._val_logits.append(self.model(batch["wave"]).float())
        self._val_labels.append(batch["label"])

    def on_validation_epoch_end(self) -> None:
        if not self._val_logits:
            return
        logits = self.all_gather(torch.cat(self._val_logits)).reshape(-1, self._val_logits[0].shape[-1])
        labels = self.all_gather(torch.cat(self._val_labels)).reshape(-1)
        self._val_logits.clear()
        self._val_labels.clear()
        pred = logits.argmax(1)
        classes = labels.unique()
        macro = torch.stack([(pred[labels == c] == c).float().mean() for c in classes]).mean()
        loss = F.cross_entropy(logits, labels)
        self.log("val_macro_acc", macro, prog_bar=True, sync_dist=False)
        self.log("val_loss", loss, sync_dist=False)
        if not self.trainer.sanity_checking:
            self.val_history.append({"epoch": self.current_epoch, "val_macro_acc": float(macro),
                                     "val_loss": float(loss)})

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[self.optim.optimizer]
        opt = cls(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = warmup_cosine(opt, self.optim.warmup_steps, total, self.optim.final_lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
