"""BEATs (Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers", ICML 2023, arXiv 2212.09058), the
audio transformer several DCASE 2025 Task 1 teachers fine-tune.

Written from the published code (microsoft/unilm, ``beats/BEATs.py``, ``beats/backbone.py``, ``beats/modules.py``),
whose facts this module relies on:

- Input (``BEATs.preprocess``): a 16 kHz waveform times 2**15 -> ``torchaudio.compliance.kaldi.fbank`` per clip,
  128 bins, 25 ms frames, 10 ms shift -> ``(x - 15.41663) / (2 * 6.55582)``; 1 s gives 98 frames x 128 bins. Our
  harness feeds 32 kHz, so :class:`KaldiFbank` resamples to 16 kHz first. It emits ``[B, 1, 128 (F), T]`` like every
  harness front-end; :class:`BEATs` transposes to the published ``(T, F)`` order itself.
- Patch embedding (``BEATs.extract_features``): ``Conv2d(1, 512, 16, stride 16, bias=conv_bias=False)`` over the
  ``[B, 1, T, F]`` fbank, flattened time-major (token ``t * F' + f``), ``LayerNorm(512)``, ``post_extract_proj``
  Linear 512 -> 768 (only when the two widths differ), ``dropout_input``.
- Encoder (``backbone.TransformerEncoder``): ``x + pos_conv(x)`` where ``pos_conv`` = Sequential(weight-normed
  ``Conv1d(D, D, conv_pos=128, padding 64, groups 16)`` with ``weight_norm(name="weight", dim=2)``, so the keys are
  ``pos_conv.0.weight_g`` of shape ``(1, 1, 128)``, ``pos_conv.0.weight_v`` ``(D, D / 16, 128)`` and
  ``pos_conv.0.bias``; ``SamePad`` dropping the last frame for an even kernel; GELU). Then ``encoder.layer_norm``
  *before* the layers when ``layer_norm_first`` is False (the released configs), after them otherwise; dropout; the
  layers. Post-LN layers with deep norm: ``x = LN(alpha * x + sublayer(x))``, ``alpha = (2 * layers) ** 0.25``;
  deep-norm init: xavier_normal with gain ``beta = (8 * layers) ** -0.25`` for v_proj, out_proj, fc1, fc2 (gain 1
  for q_proj, k_proj) after the BERT init (normal 0.02 for Linear and Embedding, zero biases).
- Attention (``backbone.MultiheadAttention``): separate q/k/v/out projections with biases; relative position bias
  ``relative_attention_bias = Embedding(num_buckets=320, heads)`` over T5-style bidirectional log buckets of the
  1-D token distance (``max_distance``), computed once (by layer 0) and passed to every layer. Every layer holds the
  key ``self_attn.relative_attention_bias.weight``: the encoder creates the embedding in each layer, then replaces
  layers 1.. by layer 0's module, so one shared tensor is stored under all layer names (and
  :func:`load_beats_checkpoint` checks the copies agree). Gated relative position (``gru_rel_pos``): ``grep_linear = Linear(head_dim, 8)`` on each
  head's unscaled query, viewed ``(2, 4)`` and summed to two sigmoid gates ``a, b``; the bias is multiplied by
  ``a * (b * grep_a - 1) + 2`` with ``grep_a`` of shape ``(1, heads, 1, 1)`` (init ones). The published softmax works
  on ``(q k / 32 - max) * 32`` (fp16 headroom); that equals the plain scaled product, written here as explicit
  matmuls so ``FlopCounterMode`` counts it.
- Released iter3+ AS2M pre-trained config (``cfg`` in the ``.pt``, as reproduced by third-party copies; the file
  itself was not available here): 12 layers, 768, FFN 3072, 12 heads, gelu, embed_dim 512, input_patch_size 16,
  conv_pos 128 / 16 groups, relative_position_embedding, num_buckets 320, max_distance 800, gru_rel_pos, deep_norm,
  layer_norm_first False, dropouts 0.0, encoder_layerdrop 0.05, layer_wise_gradient_decay_ratio 0.6. Fine-tuned
  checkpoints add ``predictor`` = Linear(768, 527) applied per token and averaged over the tokens.

Our classifier is that predictor, named ``head`` (so :func:`bench.models.pretrained.load_pretrained` drops
``net.head.*`` for a new label space). Not implemented: padding masks, layer-wise gradient decay, GLU FFNs.

Checked once by hand (not in the test suite, which must not depend on the unilm sources) by running the published
modules: their ``state_dict`` for the iter3+ config has exactly ``beats_paper``'s keys and shapes (252 keys,
90,717,055 parameters with the 527-class predictor), and with the weights copied across the outputs agree within
3e-6 (encoder) and 3e-7 (probabilities) for 1-s, 3-s and 10-s clips (10 s reaches the logarithmic buckets).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import nn
from torch.nn import functional as F

from bench.models import register
from bench.models.base import ASCModel

log = logging.getLogger(__name__)

FBANK_MEAN, FBANK_STD = 15.41663, 6.55582


class KaldiFbank(nn.Module):
    """BEATs' front-end: resample to 16 kHz -> x 2**15 -> Kaldi fbank (128 bins, 25/10 ms) per clip -> normalise.

    Returns ``[B, 1, n_bins, T]`` (1 s -> ``[B, 1, 128, 98]``). In training only, optional frequency/time masks
    (``freqm``/``timem`` bins/frames, zero = the normalised mean) are applied after normalisation.
    """

    def __init__(self, sample_rate: int = 32_000, target_rate: int = 16_000, n_bins: int = 128,
                 frame_length: float = 25.0, frame_shift: float = 10.0, freqm: int = 0, timem: int = 0):
        super().__init__()
        self.sample_rate, self.target_rate, self.n_bins = sample_rate, target_rate, n_bins
        self.frame_length, self.frame_shift = frame_length, frame_shift
        self.freq_mask = torchaudio.transforms.FrequencyMasking(freqm, iid_masks=True) if freqm > 0 else None
        self.time_mask = torchaudio.transforms.TimeMasking(timem, iid_masks=True) if timem > 0 else None

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wave.device.type, enabled=False):
            x = wave.float()
            if self.sample_rate != self.target_rate:
                x = torchaudio.functional.resample(x, self.sample_rate, self.target_rate)
            x = x * 2 ** 15
            fbank = torch.stack([
                torchaudio.compliance.kaldi.fbank(clip.unsqueeze(0), num_mel_bins=self.n_bins,
                                                  sample_frequency=float(self.target_rate),
                                                  frame_length=self.frame_length, frame_shift=self.frame_shift)
                for clip in x])  # [B, T, F]
            x = ((fbank - FBANK_MEAN) / (2 * FBANK_STD)).transpose(1, 2).unsqueeze(1)  # [B, 1, F, T]
        if self.training:
            if self.freq_mask is not None:
                x = self.freq_mask(x)
            if self.time_mask is not None:
                x = self.time_mask(x)
        return x


class WeightNormConv1d(nn.Module):
    """``nn.utils.weight_norm(Conv1d, dim=2)`` written out: ``weight = g * v / ||v||``, the norm taken over the
    output and input channels for each kernel tap. Parameters ``weight_g`` ``(1, 1, k)``, ``weight_v``, ``bias``
    as in the published checkpoints (the deprecated hook's names, not the ``parametrizations`` ones)."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        if dim % groups:
            raise ValueError(f"positional conv: {dim} channels are not divisible by {groups} groups")
        self.padding, self.groups = kernel // 2, groups
        std = math.sqrt(4.0 / (kernel * dim))
        v = torch.empty(dim, dim // groups, kernel)
        nn.init.normal_(v, mean=0.0, std=std)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(v)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the last frame of an even-kernel conv padded by ``kernel // 2`` (its output is one frame longer)."""

    def __init__(self, kernel: int):
        super().__init__()
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :-self.remove] if self.remove else x


def relative_buckets(n: int, num_buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """``[n, n]`` bucket index of the distance ``j - i`` (T5-style, bidirectional): half the buckets per sign, exact
    below ``num_buckets // 4``, logarithmic up to ``max_distance``, the last bucket beyond."""
    pos = torch.arange(n, device=device)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    dist = rel.abs()
    exact = half // 2
    large = exact + (torch.log(dist.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                     * (half - exact)).long()
    large = large.clamp(max=half - 1)
    return buckets + torch.where(dist < exact, dist, large)


class SelfAttention(nn.Module):
    """Multi-head self-attention with (gated) relative position bias; parameter names as the published ones."""

    def __init__(self, dim: int, n_heads: int, attn_drop: float = 0.0, rel_pos: bool = True,
                 num_buckets: int = 320, gru_rel_pos: bool = True):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {n_heads} heads")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.scale = self.head_dim ** -0.5
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        if rel_pos:
            self.relative_attention_bias = nn.Embedding(num_buckets, n_heads)
        self.gru_rel_pos = gru_rel_pos
        if gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, n_heads, 1, 1))

    def forward(self, x: torch.Tensor, pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, N, D]``; ``pos_bias`` ``[H, N, N]`` (ungated) or None."""
        b, n, d = x.shape
        q = self.q_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, N, hd]
        k = self.k_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        scores = (q * self.scale) @ k.transpose(-2, -1)  # [B, H, N, N]
        if pos_bias is not None:
            if self.gru_rel_pos:
                gates = torch.sigmoid(self.grep_linear(q).view(b, self.n_heads, n, 2, 4).sum(-1))
                gate_a, gate_b = gates[..., :1], gates[..., 1:]
                pos_bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * pos_bias
            scores = scores + pos_bias
        weights = self.attn_drop(scores.softmax(dim=-1))
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """fairseq ``TransformerSentenceEncoderLayer``: post-LN (deep norm) or pre-LN (``layer_norm_first``)."""

    def __init__(self, dim: int, ffn_dim: int, n_heads: int, drop: float, attn_drop: float, act_drop: float,
                 layer_norm_first: bool, deep_norm_alpha: float, rel_pos: bool, num_buckets: int,
                 gru_rel_pos: bool):
        super().__init__()
        self.self_attn = SelfAttention(dim, n_heads, attn_drop, rel_pos, num_buckets, gru_rel_pos)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(drop), nn.Dropout(act_drop), nn.Dropout(drop)
        self.layer_norm_first, self.alpha = layer_norm_first, deep_norm_alpha
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout3(self.fc2(self.dropout2(F.gelu(self.fc1(x)))))

    def forward(self, x: torch.Tensor, pos_bias: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), pos_bias))
            return x + self.ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.alpha + self.dropout1(self.self_attn(x, pos_bias)))
        return self.final_layer_norm(x * self.alpha + self.ffn(x))


class TransformerEncoder(nn.Module):
    def __init__(self, dim: int, depth: int, ffn_dim: int, n_heads: int, conv_pos: int, conv_pos_groups: int,
                 rel_pos: bool, num_buckets: int, max_distance: int, gru_rel_pos: bool, deep_norm: bool,
                 layer_norm_first: bool, drop: float, attn_drop: float, act_drop: float, layerdrop: float):
        super().__init__()
        if deep_norm and layer_norm_first:
            raise ValueError("deep_norm and layer_norm_first exclude each other (as in the published encoder)")
        self.pos_conv = nn.Sequential(WeightNormConv1d(dim, conv_pos, conv_pos_groups), SamePad(conv_pos), nn.GELU())
        alpha = (2 * depth) ** 0.25 if deep_norm else 1.0
        self.layers = nn.ModuleList(
            EncoderLayer(dim, ffn_dim, n_heads, drop, attn_drop, act_drop, layer_norm_first, alpha, rel_pos,
                         num_buckets, gru_rel_pos) for _ in range(depth))
        self.rel_pos, self.num_buckets, self.max_distance = rel_pos, num_buckets, max_distance
        if rel_pos:  # one table, stored under every layer's name (as the published encoder does)
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = self.layers[0].self_attn.relative_attention_bias
        self.layer_norm_first = layer_norm_first
        self.layer_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(drop)
        self.layerdrop = layerdrop
        self._init_weights(depth, deep_norm)

    def _init_weights(self, depth: int, deep_norm: bool) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        if deep_norm:
            beta = (8 * depth) ** -0.25
            for layer in self.layers:
                attn = layer.self_attn
                for lin, gain in ((attn.k_proj, 1.0), (attn.v_proj, beta), (attn.q_proj, 1.0),
                                  (attn.out_proj, beta), (layer.fc1, beta), (layer.fc2, beta)):
                    nn.init.xavier_normal_(lin.weight, gain=gain)

    def position_bias(self, n: int, device) -> torch.Tensor | None:
        """``[H, N, N]`` relative position bias from the shared table (None without relative positions)."""
        if not self.rel_pos:
            return None
        table = self.layers[0].self_attn.relative_attention_bias
        return table(relative_buckets(n, self.num_buckets, self.max_distance, device)).permute(2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        pos_bias = self.position_bias(x.shape[1], x.device)
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and torch.rand(()).item() < self.layerdrop:
                continue
            x = layer(x, pos_bias)
        return self.layer_norm(x) if self.layer_norm_first else x


# BEATsConfig defaults (beats/BEATs.py): what a checkpoint's cfg means for a key it does not set.
BEATS_DEFAULTS: dict[str, Any] = {
    "input_patch_size": -1, "embed_dim": 512, "conv_bias": False, "encoder_layers": 12, "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_norm_first": False,
    "deep_norm": False, "conv_pos": 128, "conv_pos_groups": 16, "relative_position_embedding": False,
    "num_buckets": 320, "max_distance": 1280, "gru_rel_pos": False,
}


class BEATs(nn.Module):
    """BEATs over ``[B, 1, F, T]`` fbank features: ``head(encode(embed(x))).mean(tokens)`` -> ``[B, n_classes]``."""

    def __init__(self, n_classes: int = 10, patch_dim: int = 512, dim: int = 768, depth: int = 12,
                 n_heads: int = 12, ffn_dim: int = 3072, patch_size: int = 16, conv_pos: int = 128,
                 conv_pos_groups: int = 16, rel_pos: bool = True, num_buckets: int = 320, max_distance: int = 800,
                 gru_rel_pos: bool = True, deep_norm: bool = True, layer_norm_first: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0, act_drop: float = 0.0, input_drop: float = 0.0,
                 layerdrop: float = 0.0, head_drop: float = 0.0):
        super().__init__()
        self.patch_size, self.dim = patch_size, dim
        self.patch_embedding = nn.Conv2d(1, patch_dim, patch_size, stride=patch_size, bias=False)
        self.layer_norm = nn.LayerNorm(patch_dim)
        self.post_extract_proj = nn.Linear(patch_dim, dim) if patch_dim != dim else None
        self.dropout_input = nn.Dropout(input_drop)
        self.encoder = TransformerEncoder(dim, depth, ffn_dim, n_heads, conv_pos, conv_pos_groups, rel_pos,
                                          num_buckets, max_distance, gru_rel_pos, deep_norm, layer_norm_first,
                                          drop, attn_drop, act_drop, layerdrop)
        self.head_drop = nn.Dropout(head_drop)
        self.head = nn.Linear(dim, n_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.cfg = {  # the published BEATsConfig names of everything that shapes the network or its function
            "input_patch_size": patch_size, "embed_dim": patch_dim, "conv_bias": False, "encoder_layers": depth,
            "encoder_embed_dim": dim, "encoder_ffn_embed_dim": ffn_dim, "encoder_attention_heads": n_heads,
            "activation_fn": "gelu", "layer_norm_first": layer_norm_first, "deep_norm": deep_norm,
            "conv_pos": conv_pos, "conv_pos_groups": conv_pos_groups, "relative_position_embedding": rel_pos,
            "num_buckets": num_buckets, "max_distance": max_distance, "gru_rel_pos": gru_rel_pos,
        }

    def grid(self, features: torch.Tensor) -> tuple[int, int]:
        """(time, frequency) patches of ``[B, 1, F, T]`` features (a remainder under one patch is dropped)."""
        return features.shape[3] // self.patch_size, features.shape[2] // self.patch_size

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, 1, F, T]`` -> ``[B, N, D]`` patch tokens, time-major (token ``t * F' + f``), before the encoder."""
        x = self.patch_embedding(features.transpose(2, 3))  # [B, C, T', F'] over the published (T, F) order
        x = self.layer_norm(x.flatten(2).transpose(1, 2))
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.dropout_input(x)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, D]`` tokens -> ``[B, N, D]``: positional conv, (layer norm), transformer layers."""
        return self.encoder(tokens)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.encode(self.embed(features)))).mean(dim=1)


HEAD_KEYS = ("head.weight", "head.bias")
_CLASSIFIER = {"predictor.weight": "head.weight", "predictor.bias": "head.bias",
               "head.weight": "head.weight", "head.bias": "head.bias"}


def _net(model: ASCModel | BEATs) -> BEATs:
    net = model.net if isinstance(model, ASCModel) else model
    if not isinstance(net, BEATs):
        raise TypeError(f"not a BEATs model: {type(net).__name__}")
    return net


def save_beats_checkpoint(model: ASCModel | BEATs, path: str | Path) -> Path:
    """Write the released layout: ``{"cfg": BEATsConfig entries, "model": state dict}``, the head as
    ``predictor.*`` with ``finetuned_model``/``predictor_class`` in the cfg (as the fine-tuned checkpoints)."""
    net = _net(model)
    state = {("predictor." + k[len("head."):] if k in HEAD_KEYS else k): v.detach().cpu().clone()
             for k, v in net.state_dict().items()}
    cfg = {**net.cfg, "finetuned_model": True, "predictor_class": net.head.out_features}
    path = Path(path)
    torch.save({"cfg": cfg, "model": state}, path)
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported with the file
        raise ValueError(f"{path}: not a loadable BEATs checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state, cfg = obj["model"], obj.get("cfg")
        if cfg is not None and not isinstance(cfg, dict):
            raise ValueError(f"{path}: 'cfg' is a {type(cfg).__name__}, not a dict")
    elif isinstance(obj, dict):
        state, cfg = obj, None
    else:
        raise ValueError(f"{path}: a {type(obj).__name__}, not a BEATs checkpoint (a dict with 'cfg' and 'model', "
                         "or a state dict)")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: state dict entry {bad[0]!r} is not a tensor")
    return dict(state), cfg


def load_beats_checkpoint(model: ASCModel | BEATs, path: str | Path) -> dict:
    """Load a released BEATs ``.pt`` (``{"cfg", "model"}``, or a bare state dict) into ``model`` strictly.

    The checkpoint's cfg (BEATsConfig defaults for keys it lacks) must equal the model's in every entry that shapes
    the network; every encoder key must exist on both sides with the same shape (else a ValueError naming the key
    and the file). A classifier (``predictor.*``, or our ``head.*``) loads into ``head`` when its class count
    matches; for another class count the model keeps its fresh head and the report lists what was dropped. The
    report: ``path``, ``config_checked``, ``loaded`` (keys), ``head`` (``"loaded"``, ``"kept"``: dropped for another
    class count, or ``"absent"``), ``dropped`` (checkpoint key -> (checkpoint shape, model shape)).
    """
    path = Path(path)
    net = _net(model)
    state, cfg = _read(path)
    if cfg is not None:
        wrong = [f"{key}: checkpoint {cfg.get(key, default)!r}, model {net.cfg[key]!r}"
                 for key, default in BEATS_DEFAULTS.items() if cfg.get(key, default) != net.cfg[key]]
        if wrong:
            raise ValueError(f"{path}: BEATs config does not match the model: " + "; ".join(wrong))
    own = net.state_dict()
    classifier = {k: v for k, v in state.items() if k in _CLASSIFIER}
    encoder = {k: v for k, v in state.items() if k not in _CLASSIFIER}
    mine = {k: v for k, v in own.items() if k not in HEAD_KEYS}
    missing, unexpected = sorted(mine.keys() - encoder.keys()), sorted(encoder.keys() - mine.keys())
    if missing or unexpected:
        raise ValueError(f"{path}: encoder keys do not match the model: missing {missing}, unexpected {unexpected}")
    wrong_shape = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(mine[k].shape)}"
                   for k, v in encoder.items() if v.shape != mine[k].shape]
    if wrong_shape:
        raise ValueError(f"{path}: encoder shapes do not match the model: " + "; ".join(wrong_shape))
    shared = [k for k in encoder if k.endswith("self_attn.relative_attention_bias.weight")]
    for key in shared[1:]:
        if not torch.equal(encoder[key], encoder[shared[0]]):
            raise ValueError(f"{path}: {key} differs from {shared[0]}: the relative position table is shared by "
                             "all layers")
    targets = {_CLASSIFIER[k]: k for k in classifier}
    if len(targets) != len(classifier) or (classifier and set(targets) != set(HEAD_KEYS)):
        raise ValueError(f"{path}: classifier keys {sorted(classifier)}: expected predictor.weight and "
                         "predictor.bias (or head.weight and head.bias)")
    load = dict(encoder)
    dropped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    if not classifier:
        head = "absent"
    elif all(classifier[targets[k]].shape == own[k].shape for k in HEAD_KEYS):
        load.update({k: classifier[targets[k]] for k in HEAD_KEYS})
        head = "loaded"
    elif classifier[targets["head.weight"]].shape[1:] == own["head.weight"].shape[1:]:
        dropped = {targets[k]: (tuple(classifier[targets[k]].shape), tuple(own[k].shape)) for k in HEAD_KEYS}
        head = "kept"
    else:
        raise ValueError(f"{path}: {targets['head.weight']}: checkpoint "
                         f"{tuple(classifier[targets['head.weight']].shape)}, model {tuple(own['head.weight'].shape)}")
    for key in HEAD_KEYS:
        load.setdefault(key, own[key])
    net.load_state_dict(load, strict=True)
    if shared:  # the table is one tensor: make it the layer-0 copy whatever order the keys were loaded in
        with torch.no_grad():
            net.encoder.layers[0].self_attn.relative_attention_bias.weight.copy_(encoder[shared[0]])
    if dropped:
        log.warning("BEATs checkpoint %s: classifier for another class count dropped (checkpoint -> model "
                    "shape): %s", path, dropped)
    return {"path": str(path), "config_checked": cfg is not None, "loaded": len(encoder) + (head == "loaded") * 2,
            "head": head, "dropped": dropped}


def build_beats(n_classes: int, patch_dim: int, dim: int, depth: int, n_heads: int, ffn_dim: int, conv_pos: int,
                conv_pos_groups: int, num_buckets: int, max_distance: int, rel_pos: bool, gru_rel_pos: bool,
                deep_norm: bool, layer_norm_first: bool, drop: float, attn_drop: float, act_drop: float,
                layerdrop: float, head_drop: float, freqm: int, timem: int) -> ASCModel:
    net = BEATs(n_classes, patch_dim, dim, depth, n_heads, ffn_dim, 16, conv_pos, conv_pos_groups, rel_pos,
                num_buckets, max_distance, gru_rel_pos, deep_norm, layer_norm_first, drop, attn_drop, act_drop,
                0.0, layerdrop, head_drop)
    # 1 s at 32 kHz -> 16 kHz -> 128 x 98 fbank -> a 6 (time) x 8 (frequency) patch grid, 48 tokens.
    return ASCModel(KaldiFbank(freqm=freqm, timem=timem), net)


_COMMON = dict(n_classes=10, rel_pos=True, num_buckets=320, max_distance=800, gru_rel_pos=True, deep_norm=True,
               layer_norm_first=False, drop=0.0, attn_drop=0.0, act_drop=0.0, head_drop=0.0, freqm=0, timem=0)
# BEATs iter3+ (AS2M) as released: 90.3 M parameters with a 10-class head, 4.38 G MACs per 1-s clip. Its pre-training
# cfg has encoder_layerdrop 0.05; the default here is 0 (a skipped layer leaves parameters without gradients, which
# DDP rejects unless find_unused_parameters): set ``layerdrop`` to use it.
register("beats_paper", build_beats, patch_dim=512, dim=768, depth=12, n_heads=12, ffn_dim=3072, conv_pos=128,
         conv_pos_groups=16, layerdrop=0.0, **_COMMON)
# CPU-trainable sizes, same code path; not published models (1.99 M / 98.8 M MACs and 0.40 M / 20.3 M MACs).
register("beats_small", build_beats, patch_dim=128, dim=192, depth=4, n_heads=3, ffn_dim=768, conv_pos=32,
         conv_pos_groups=8, layerdrop=0.0, **_COMMON)
register("beats_tiny", build_beats, patch_dim=64, dim=96, depth=3, n_heads=4, ffn_dim=384, conv_pos=16,
         conv_pos_groups=4, layerdrop=0.0, **_COMMON)
