"""Self-supervised pre-training pieces for BEATs' first iteration: masked patch prediction against the labels of a
frozen random-projection tokenizer (Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers", ICML 2023,
arXiv 2212.09058, Sec. 3; the random-projection tokenizer follows BEST-RQ, Chiu et al., 2022).

- :class:`RandomProjectionTokenizer`: each 16 x 16 fbank patch, cut on the same grid and in the same (time-major)
  order as the encoder's patch embedding, is projected by a frozen random matrix and L2-normalised; its label is the
  nearest vector (cosine) of a frozen random codebook of L2-normalised codes. Everything is a buffer drawn from
  ``seed``, so a seed fixes the labels.
- :class:`MaskedPatchObjective`: masks a random 75 % of each clip's patches (BEATs' mask ratio), encodes, and
  scores a linear predictor's cross-entropy against the tokenizer's labels on the masked positions only.

The objective is its own ``nn.Module`` (tokenizer buffers, mask embedding, predictor): the network it trains
keeps exactly a scene model's state-dict keys, so its weights load into a scene model with
:func:`bench.models.pretrained.load_pretrained`, which drops only ``net.head.*``.

Simplified relative to BEATs:

- the masked patches are replaced by a learnable mask embedding at the encoder input (BEiT style) rather than
  dropped from the encoder's input and re-inserted before a separate label predictor;
- the label predictor is one linear layer, not a (shallow) transformer;
- one iteration only: the tokenizer is never trained (BEATs' later iterations distil a VQ tokenizer from the
  previous encoder) and no encoder is ever distilled into it;
- uniform random masking of single patches (no span/block masking), a fixed number per clip;
- the codebook size and dimension (``n_codes=1024``, ``code_dim=16``) are our defaults, not checked against the
  paper's iteration-1 setting.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bench.models.base import ASCModel
from bench.train.task import ClassifierTask, OptimConfig

MASK_RATIO = 0.75


def patches(features: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, 1, F, T]`` features -> ``[B, N, patch * patch]`` flattened patches on the encoder's grid: the (T, F)
    image cut into non-overlapping tiles (a remainder under one tile dropped), time-major (``t * F' + f``)."""
    if features.dim() != 4 or features.shape[1] != 1:
        raise ValueError(f"expected [B, 1, F, T] features, got {tuple(features.shape)}")
    x = features[:, 0].transpose(1, 2)  # [B, T, F]
    b, t, f = x.shape
    tiles = x[:, : t // patch * patch, : f // patch * patch].unfold(1, patch, patch).unfold(2, patch, patch)
    return tiles.reshape(b, (t // patch) * (f // patch), patch * patch)  # [B, T'*F', (t, f) within the tile]


class RandomProjectionTokenizer(nn.Module):
    """Frozen random-projection quantiser of fbank patches: ``label = argmax_c cos(normalize(P x), code_c)``."""

    def __init__(self, patch: int = 16, n_codes: int = 1024, code_dim: int = 16, seed: int = 0):
        super().__init__()
        self.patch, self.n_codes, self.code_dim, self.seed = patch, n_codes, code_dim, seed
        gen = torch.Generator().manual_seed(seed)
        # Xavier-normal projection (variance preserving for unit-variance inputs); unit-norm codes.
        projection = torch.randn(patch * patch, code_dim, generator=gen) * math.sqrt(2.0 / (patch * patch + code_dim))
        codebook = F.normalize(torch.randn(n_codes, code_dim, generator=gen), dim=1)
        self.register_buffer("projection", projection)
        self.register_buffer("codebook", codebook)

    @torch.no_grad()
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, 1, F, T]`` -> ``[B, N]`` long labels in ``[0, n_codes)``."""
        z = F.normalize(patches(features.float(), self.patch) @ self.projection, dim=-1)  # [B, N, code_dim]
        return (z @ self.codebook.T).argmax(dim=-1)


def random_mask(batch: int, n: int, ratio: float = MASK_RATIO, generator: torch.Generator | None = None,
                device=None) -> torch.Tensor:
    """``[batch, n]`` bool: ``round(ratio * n)`` (at least 1, at most ``n - 1``) positions per row, uniformly."""
    k = min(max(1, round(ratio * n)), n - 1) if n > 1 else 1
    noise = torch.rand(batch, n, generator=generator,
                       device=generator.device if generator is not None else device)
    order = noise.argsort(dim=1)[:, :k].to(device)
    return torch.zeros(batch, n, dtype=torch.bool, device=device).scatter_(1, order, True)


class MaskedPatchObjective(nn.Module):
    """Masked patch prediction for a network exposing ``embed`` (``[B, 1, F, T]`` -> ``[B, N, D]``), ``encode``
    (``[B, N, D]`` -> ``[B, N, D]``) and ``patch_size`` (e.g. :class:`bench.models.beats.BEATs`).

    Holds the tokenizer, a learnable mask embedding ``[D]`` and a linear predictor ``D -> n_codes``; optimise its
    parameters together with the network's.
    """

    def __init__(self, dim: int, n_codes: int = 1024, code_dim: int = 16, patch: int = 16, seed: int = 0,
                 mask_ratio: float = MASK_RATIO):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio {mask_ratio} must lie in (0, 1)")
        self.dim, self.mask_ratio = dim, mask_ratio
        self.tokenizer = RandomProjectionTokenizer(patch, n_codes, code_dim, seed)
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())  # wav2vec 2.0 / fairseq init
        self.predictor = nn.Linear(dim, n_codes)

    def _check(self, net: nn.Module, tokens: torch.Tensor, labels: torch.Tensor) -> None:
        if getattr(net, "patch_size", self.tokenizer.patch) != self.tokenizer.patch:
            raise ValueError(f"the network's patches are {net.patch_size}, the tokenizer's {self.tokenizer.patch}")
        if tokens.shape[-1] != self.dim:
            raise ValueError(f"the network's tokens are {tokens.shape[-1]}-d, the objective was built for {self.dim}")
        if tokens.shape[:2] != labels.shape:
            raise ValueError(f"{tokens.shape[1]} tokens but {labels.shape[1]} tokenizer labels per clip")

    def loss(self, net: nn.Module, features: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy over the masked patches and the predictor's accuracy there (a detached scalar)."""
        labels = self.tokenizer(features)
        tokens = net.embed(features)
        self._check(net, tokens, labels)
        b, n, _ = tokens.shape
        mask = random_mask(b, n, self.mask_ratio, generator, tokens.device)
        tokens = torch.where(mask.unsqueeze(-1), self.mask_embedding.to(tokens.dtype), tokens)
        logits = self.predictor(net.encode(tokens)[mask])  # [masked, n_codes]
        target = labels[mask]
        loss = F.cross_entropy(logits.float(), target)
        accuracy = (logits.argmax(dim=-1) == target).float().mean().detach()
        return loss, accuracy

    def forward(self, net: nn.Module, features: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss(net, features, generator)


class MaskedPatchTask(ClassifierTask):
    """Self-supervised pre-training of a network with ``embed``/``encode`` on a corpus's clips, labels unused: the
    usual training step (waveform and feature augmentations, front-end) with :class:`MaskedPatchObjective` as its
    loss. Validation scores masked-patch accuracy on the validation clips with the same masks every epoch
    (``val_masked_acc``, also ``val_score`` for ``select = "best"``)."""

    def __init__(self, model: ASCModel, optim: OptimConfig, mask_ratio: float = MASK_RATIO, n_codes: int = 1024,
                 seed: int = 0, wave_augment: list[nn.Module] | None = None,
                 feature_augment: list[nn.Module] | None = None):
        if optim.mixup_alpha > 0:
            raise ValueError("masked-patch pre-training has no labels to mix: set mixup_alpha = 0")
        super().__init__(model, optim, wave_augment, feature_augment)
        patch = getattr(model.net, "patch_size", None)
        if patch is None or not hasattr(model.net, "embed") or not hasattr(model.net, "encode"):
            raise ValueError(f"{model.arch_name or type(model.net).__name__} has no patch embedding and encoder "
                             "(embed/encode) for masked-patch pre-training")
        self.objective = MaskedPatchObjective(model.net.dim, n_codes, patch=patch, seed=seed, mask_ratio=mask_ratio)
        self._val_sums: list[torch.Tensor] = []

    def batch_loss(self, x: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        loss, accuracy = self.objective.loss(self.model.net, x)
        self.log("train_masked_acc", accuracy, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(batch_idx)  # the same masks every epoch
        loss, accuracy = self.objective.loss(self.model.net, self.model.features(batch["wave"]), generator)
        n = float(len(batch["wave"]))
        self._val_sums.append(torch.stack([loss.detach() * n, accuracy * n, torch.tensor(n)]))

    def on_validation_epoch_end(self) -> None:
        if not self._val_sums:
            return
        sums = self.all_gather(torch.stack(self._val_sums).sum(0)).reshape(-1, 3).sum(0)
        self._val_sums.clear()
        metrics = {"val_masked_acc": sums[1] / sums[2], "val_loss": sums[0] / sums[2]}
        self.log_dict({**metrics, "val_score": metrics["val_masked_acc"]}, prog_bar=False, sync_dist=False)
        if not self.trainer.sanity_checking:
            self.val_history.append({"epoch": self.current_epoch, **{k: float(v) for k, v in metrics.items()}})
