"""PaSST (Koutini et al., "Efficient Training of Audio Transformers with Patchout"; fschmid56/cpjku_dcase23,
models/passt.py), the transformer teacher of the CPJKU DCASE23 ensemble.

A ViT over a 128-mel spectrogram: overlapping 16x16 patches at stride 10, separate learnable frequency and time
positional embeddings (the time table is cropped to the input, at a random offset in training), DeiT-style cls and
distillation tokens, pre-LN blocks, and a LayerNorm+Linear head on the mean of the two token outputs. Patchout
(structured rows/columns, unstructured tokens) shortens the sequence in training only.

Parameter names and shapes follow the published checkpoints (kkoutini/PaSST ``models/passt.py``,
``passt_s_swa_p16_128_ap476``) so that :func:`load_passt_checkpoint` can load them with strict key matching. As in
those checkpoints, ``head_dist`` exists but the forward pass does not use it.

Attention is written as explicit matmuls (not fused SDPA) so ``torch.utils.flop_counter.FlopCounterMode`` counts it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from bench.models import register
from bench.models.base import ASCModel
from bench.models.frontends import CpMel

log = logging.getLogger(__name__)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.scale = (dim // n_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4).unbind(0)
        weights = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        return self.proj_drop(self.proj((weights @ v).transpose(1, 2).reshape(b, n, d)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN transformer block (LayerNorm eps 1e-6 as in the published model)."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float, drop: float = 0.0, attn_drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, n_heads, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Overlapping patches: one conv, output kept as a ``[B, D, F', T']`` grid for the positional embeddings."""

    def __init__(self, dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, patch_size, stride)

    def forward(self, x):
        return self.proj(x)


def grid_size(n: int, patch_size: int, stride: int) -> int:
    """Patches along one axis of length ``n`` (the conv output size)."""
    return (n - patch_size) // stride + 1


def _random_subset(n: int, drop: int, device) -> torch.Tensor:
    """Sorted indices of ``n - drop`` randomly kept positions (sorting keeps the tokens' order)."""
    return torch.randperm(n, device=device)[: n - drop].sort().values


class PaSST(nn.Module):
    def __init__(self, n_classes: int = 10, embed_dim: int = 768, depth: int = 12, n_heads: int = 12,
                 mlp_ratio: float = 4.0, patch_size: int = 16, stride: int = 10, n_mels: int = 128,
                 max_frames: int = 998, s_patchout_f: int = 0, s_patchout_t: int = 0, u_patchout: int = 0,
                 drop: float = 0.0, attn_drop: float = 0.0):
        super().__init__()
        f_grid, t_grid = grid_size(n_mels, patch_size, stride), grid_size(max_frames, patch_size, stride)
        if s_patchout_f >= f_grid:
            raise ValueError(f"s_patchout_f={s_patchout_f} would drop all {f_grid} frequency rows")
        self.s_patchout_f, self.s_patchout_t, self.u_patchout = s_patchout_f, s_patchout_t, u_patchout
        self.patch_embed = PatchEmbed(embed_dim, patch_size, stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, embed_dim))  # for the cls and dist tokens
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, f_grid, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, 1, t_grid))
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.Sequential(*(Block(embed_dim, n_heads, mlp_ratio, drop, attn_drop) for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, n_classes))
        self.head_dist = nn.Linear(embed_dim, n_classes)
        self._init_weights()

    def _init_weights(self):
        for p in (self.cls_token, self.dist_token, self.new_pos_embed, self.freq_new_pos_embed,
                  self.time_new_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name.startswith("head"):
                    nn.init.zeros_(m.weight)
                else:
                    nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch grid + positional embeddings -> patchout (training) -> ``[B, 2 + N, D]`` with cls/dist first."""
        x = self.patch_embed(x)  # [B, D, F', T']
        b, _, _, t = x.shape
        t_max = self.time_new_pos_embed.shape[-1]
        if t > t_max:
            raise ValueError(f"{t} time patches exceed the {t_max} positions of the time embedding")
        offset = int(torch.randint(t_max - t + 1, (1,))) if self.training else 0
        x = x + self.time_new_pos_embed[..., offset:offset + t] + self.freq_new_pos_embed
        if self.training and self.s_patchout_t:
            x = x[..., _random_subset(x.shape[-1], self.s_patchout_t, x.device)]
        if self.training and self.s_patchout_f:
            x = x[:, :, _random_subset(x.shape[2], self.s_patchout_f, x.device)]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D], frequency-major
        if self.training and self.u_patchout:
            x = x[:, _random_subset(x.shape[1], self.u_patchout, x.device)]
        cls = self.cls_token.expand(b, -1, -1) + self.new_pos_embed[:, :1]
        dist = self.dist_token.expand(b, -1, -1) + self.new_pos_embed[:, 1:]
        return self.pos_drop(torch.cat((cls, dist, x), dim=1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of the normalised cls and dist token outputs (the embedding the head classifies)."""
        x = self.norm(self.blocks(self.tokens(x)))
        return (x[:, 0] + x[:, 1]) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


HEAD_KEYS = ("head.1.weight", "head.1.bias", "head_dist.weight", "head_dist.bias")


def load_passt_checkpoint(model: ASCModel | PaSST, path: str | Path) -> dict:
    """Load a local PaSST state dict (e.g. ``passt-s-f128-p16-s10-ap.476-swa.pt``) with strict key matching.

    Every key must match by name. Shapes must match too, except the classifier (``head.1``, ``head_dist``): when
    only its class count differs (527 AudioSet classes vs the model's), the model keeps its fresh head; the
    returned report lists those keys and a warning is logged. Nothing is ever downloaded.
    """
    net = model.net if isinstance(model, ASCModel) else model
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a plain state dict of tensors")
    own = net.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise KeyError(f"checkpoint keys do not match the model: missing {missing}, unexpected {unexpected}")
    replaced, mismatched = {}, []
    for key, mine in own.items():
        theirs = state[key]
        if theirs.shape == mine.shape:
            continue
        if key in HEAD_KEYS and theirs.shape[1:] == mine.shape[1:]:
            replaced[key] = (tuple(theirs.shape), tuple(mine.shape))
            state[key] = mine
        else:
            mismatched.append(f"{key}: checkpoint {tuple(theirs.shape)} vs model {tuple(mine.shape)}")
    if mismatched:
        raise ValueError("checkpoint shapes do not match the model: " + "; ".join(mismatched))
    net.load_state_dict(state, strict=True)
    if replaced:
        log.warning("PaSST checkpoint %s: classifier replaced (checkpoint -> model shape): %s", path, replaced)
    return {"path": str(path), "loaded": len(state) - len(replaced), "replaced_head": replaced}


def build_passt(n_classes: int, embed_dim: int, depth: int, n_heads: int, mlp_ratio: float, max_frames: int,
                s_patchout_f: int, s_patchout_t: int, u_patchout: int, drop: float, freqm: int, timem: int,
                fmax_aug_range: int) -> ASCModel:
    net = PaSST(n_classes, embed_dim, depth, n_heads, mlp_ratio, patch_size=16, stride=10, n_mels=128,
                max_frames=max_frames, s_patchout_f=s_patchout_f, s_patchout_t=s_patchout_t, u_patchout=u_patchout,
                drop=drop)
    # 1 s at 32 kHz -> 128 x 100 frames (pre-emphasis drops one sample) -> a 12 x 9 patch grid.
    return ASCModel(CpMel(n_mels=128, n_fft=1024, win_length=800, hop_length=320, freqm=freqm, timem=timem,
                          fmax_aug_range=fmax_aug_range), net)


# CP23 ASC fine-tuning recipe: structured frequency patchout 6, freqm 48, timem 20, fmax_aug_range 1000.
_COMMON = dict(n_classes=10, mlp_ratio=4.0, s_patchout_f=6, s_patchout_t=0, u_patchout=0, drop=0.0, freqm=48,
               timem=20, fmax_aug_range=1000)
# ViT-B as pre-trained on AudioSet: 99 time positions (998 frames = 10 s); a 1-s clip uses 9 of them.
register("passt_paper", build_passt, embed_dim=768, depth=12, n_heads=12, max_frames=998, **_COMMON)
# CPU-trainable sizes with a 1-s time table (100 frames -> 9 positions); not published models. Trained from
# scratch or from the embedded event corpus (not AudioSet), they get lighter regularisation than a fine-tuned ViT-B:
# 2 of 12 frequency rows patched out (not 6), masks of 16 mel bins and 10 frames (not 48 and 20). With the CP23
# values the tiny model collapsed to two classes (79 % of its test predictions `metro` or `park`).
_SMALL = {**_COMMON, "s_patchout_f": 2, "freqm": 16, "timem": 10}
register("passt_small", build_passt, embed_dim=192, depth=4, n_heads=3, max_frames=100, **_SMALL)
register("passt_tiny", build_passt, embed_dim=96, depth=2, n_heads=4, max_frames=100, **_SMALL)
