"""Device-Aware Feature Alignment (DAFA), the loss of Jeong & Kim's "generalization expert" teacher (DCASE 2025,
arXiv 2509.09262), read from its predecessor PAFA (Jeong et al., arXiv 2505.23834; wa976/Patient-Aware-Feature-
Alignment, method/pafa.py) with device labels in place of patient labels.

A projection head ``g`` (Linear -> norm -> ReLU -> Linear) maps the encoder's pooled embedding to ``z``; per mini-batch,
with ``mu_k`` the centroid of device ``k``'s projected features and ``mu`` the mean of the centroids:

- DCSL (device cohesion-separation) = sum_k sum_{i in k} ||z_i - mu_k||^2 / (sum_{k<l} ||mu_k - mu_l||^2 + eps)
- GDAL (global device alignment)    = mean_k ||mu_k - mu||^2
- DAFA = dcsl * DCSL + gdal * GDAL, zero when the batch holds fewer than two devices.

Total loss = CE + weight * DAFA. Both terms depend on which devices a batch holds, so the expert trains on
device-stratified batches (``batches = "device_stratified"``, :class:`bench.data.loaders.DeviceStratifiedBatchSampler`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.config import ConfigError, Key, Schema
from bench.models.base import ASCModel
from bench.train.task import ClassifierTask, LossFn, OptimConfig, cross_entropy

EPS = 1e-6

DAFA = Schema("dafa", {
    "weight": Key(float, 1.0, "weight of the DAFA term beside cross-entropy (PAFA's w_pafa; 0: plain CE)"),
    "dcsl": Key(float, 5.0, "lambda of DCSL (PAFA's AST setting; our choice for DCASE, the report gives none)"),
    "gdal": Key(float, 0.005, "lambda of GDAL (PAFA's AST setting; our choice)"),
    "proj_dim": Key(int, 128, "output size of the projection head (PAFA's code default)"),
    "proj_hidden": Key(int, 0, "hidden size of the projection head (0: the embedding size, PAFA's default)"),
    "proj_norm": Key(str, "layer", "norm inside the projection head", choices=("layer", "batch")),
})


def device_centroids(z: torch.Tensor, devices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids ``[K, D]`` of the devices present, the index of each row's centroid ``[N]``)."""
    present, inverse = torch.unique(devices, return_inverse=True)
    sums = torch.zeros(len(present), z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, inverse, z)
    counts = torch.bincount(inverse, minlength=len(present)).to(z.dtype)
    return sums / counts[:, None], inverse


def dcsl(z: torch.Tensor, devices: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Within-device scatter over the summed squared distances between device centroids (0 with < 2 devices)."""
    mu, inverse = device_centroids(z, devices)
    if len(mu) < 2:
        return z.sum() * 0.0
    within = (z - mu[inverse]).pow(2).sum()
    between = torch.pdist(mu).pow(2).sum()
    return within / (between + eps)


def gdal(z: torch.Tensor, devices: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the device centroids to their mean (0 with < 2 devices)."""
    mu, _ = device_centroids(z, devices)
    if len(mu) < 2:
        return z.sum() * 0.0
    return (mu - mu.mean(0)).pow(2).sum(1).mean()


def dafa_loss(z: torch.Tensor, devices: torch.Tensor, lam_dcsl: float, lam_gdal: float) -> torch.Tensor:
    return lam_dcsl * dcsl(z, devices) + lam_gdal * gdal(z, devices)


class ProjectionHead(nn.Module):
    """Linear -> LayerNorm/BatchNorm -> ReLU -> Linear (PAFA's head over an AST-style pooled embedding)."""

    def __init__(self, dim: int, hidden: int, out: int, norm: str = "layer"):
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden) if norm == "layer"
                                 else nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def embedding_size(model: ASCModel) -> int:
    """The pooled embedding size of an encoder with ``forward_features`` and ``head`` (PaSST)."""
    net = model.net
    if not (hasattr(net, "forward_features") and hasattr(net, "head")):
        raise ConfigError(f"DAFA needs an encoder with forward_features() and head (PaSST); {model.arch_name!r} "
                          "has none")
    with torch.no_grad():
        was = net.training
        net.eval()
        size = net.forward_features(model.features(torch.zeros(1, model.sample_rate))).shape[-1]
        net.train(was)
    return int(size)


class DAFATask(ClassifierTask):
    """Cross-entropy on the classifier plus DAFA on the projected embedding; the projection head trains with the
    encoder (it is part of the task, not of the model, so the teacher's weights are the plain encoder + head)."""

    def __init__(self, model: ASCModel, optim: OptimConfig, dafa: dict[str, Any], wave_augment=None,
                 feature_augment=None, loss: LossFn = cross_entropy):
        if optim.mixup_alpha > 0:
            raise ConfigError("DAFA is computed on un-mixed embeddings: set mixup_alpha = 0 for a DAFA teacher")
        super().__init__(model, optim, wave_augment, feature_augment, loss)
        self.dafa = {**DAFA.defaults(), **dafa}
        self.projection = ProjectionHead(embedding_size(model), self.dafa["proj_hidden"], self.dafa["proj_dim"],
                                         self.dafa["proj_norm"])

    def batch_loss(self, x: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        embedding = self.model.net.forward_features(x)
        ce = self.loss_fn(self.model.net.head(embedding), batch)
        term = dafa_loss(self.projection(embedding), batch["device"], self.dafa["dcsl"], self.dafa["gdal"])
        self.log("train_dafa", term, on_step=True, on_epoch=True, batch_size=len(x))
        return ce + self.dafa["weight"] * term
