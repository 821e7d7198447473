"""TF-SepNet (Cai et al., ICASSP 2024; DCASE 2024 technical report Cai_61_t1), the backbone of Zhou et al.'s
AdapTF-SepNet (DCASE 2025 Task 1). Layout after the public framework yqcai888/easy_dcase_task1: model/backbones.py
(``TFSepNet``), model/shared.py (``TimeFreqSepConvolutions``, ``ShuffleLayer``, ``ResNorm``) and
model/classifiers.py (``ConvClassifier``); this module is written anew for the registry.

Input: CPJKU mel front-end with 512 bins (n_fft 4096, window 3072, hop 500, 0-16 kHz): 1 s at 32 kHz -> 512 x 64.

* Stem: 3x3 stride-2 conv+BN+ReLU, 1 -> base/2; 3x3 stride-2 conv+BN+ReLU, base/2 -> 2*base in base/2 groups.
* Layers (depth 17): N 1 1 N M 1.5 1.5 N M 2 2 N M 2.5 2.5 2.5 N; depth 16 drops the third M. N = Residual
  Normalization over frequency with a fixed lambda of 0.1, M = 2x2 max pooling, a number k = one TF-SepConvs block
  with k * base output channels.
* TF-SepConvs block (C_in -> C): 1x1 conv+BN+ReLU transition when C_in != C -> channel shuffle interleaving the two
  halves -> split into halves x1, x2; x1 + pw(mean_F(dw_{3x1}(x1))) and x2 + pw(mean_T(dw_{1x3}(x2))), each conv
  with BN+ReLU and dropout after the pointwise conv; the two halves are concatenated, with no activation after.
* Classifier ``head``: 1x1 conv (with bias) to the class scores, mean over frequency and time.

TF-SepNet-64 at 1x1x512x64: 126,858 parameters and 29,419,648 MACs under the torchinfo count (65 frames would give
30,740,608, over the 30 M limit); 4 B per parameter exceeds 128 kB, so it fits the challenge only as INT8.

Differences from the reference code: ResNorm's variance is the biased one of ``F.instance_norm`` (the reference
divides by n - 1, n = channels x frames: a relative difference below 0.03 % at n >= 2048), for FX quantization (see
:mod:`bench.models.resnorm`); the shuffle and split use view/transpose/reshape and ``torch.narrow``, which FX
quantization runs on int8 tensors without a dequantize/requantize round trip.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from bench.models import register
from bench.models.base import ASCModel
from bench.models.cpmobile import conv_bn, init_convs
from bench.models.frontends import CpMel
from bench.models.resnorm import ResidualNorm

LAYERS = {
    16: ("N", 1, 1, "N", "M", 1.5, 1.5, "N", "M", 2, 2, "N", 2.5, 2.5, 2.5, "N"),
    17: ("N", 1, 1, "N", "M", 1.5, 1.5, "N", "M", 2, 2, "N", "M", 2.5, 2.5, 2.5, "N"),
}


def conv_bn_relu(cin: int, cout: int, kernel, padding=0, groups: int = 1) -> nn.Sequential:
    """Bias-free conv + BN + ReLU with an explicit (possibly rectangular) padding, stride 1."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, 1, padding, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class ChannelShuffle(nn.Module):
    """Interleave the two channel halves: [a0..a(h-1), b0..b(h-1)] -> [a0, b0, a1, b1, ...] (the reference's
    ``ShuffleLayer`` with C/2 groups). Written as view -> transpose -> reshape, which FX quantization passes
    through on quantized tensors (``unflatten``/``flatten`` methods would be dequantized and requantized)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.size()
        return x.view(b, 2, c // 2, f, t).transpose(1, 2).reshape(b, c, f, t)


class TFSepConvs(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3, dropout: float = 0.1):
        super().__init__()
        if cout % 2:
            raise ValueError(f"TF-SepConvs needs an even number of output channels, got {cout}")
        half, pad = cout // 2, (kernel_size - 1) // 2
        self.half = half
        self.transition = conv_bn(cin, cout, 1) if cin != cout else None
        self.shuffle = ChannelShuffle()
        self.freq_dw = conv_bn_relu(half, half, (kernel_size, 1), (pad, 0), groups=half)
        self.freq_pw = conv_bn_relu(half, half, 1)
        self.time_dw = conv_bn_relu(half, half, (1, kernel_size), (0, pad), groups=half)
        self.time_pw = conv_bn_relu(half, half, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transition is not None:
            x = self.transition(x)
        x = self.shuffle(x)
        x1, x2 = torch.narrow(x, 1, 0, self.half), torch.narrow(x, 1, self.half, self.half)  # FX keeps these int8
        freq = self.dropout(self.freq_pw(self.freq_dw(x1).mean(2, keepdim=True)))  # [B, C/2, 1, T]
        time = self.dropout(self.time_pw(self.time_dw(x2).mean(3, keepdim=True)))  # [B, C/2, F, 1]
        return torch.cat((x1 + freq, x2 + time), dim=1)


class ConvHead(nn.Module):
    """1x1 conv with bias to the class scores, then the mean over frequency and time."""

    def __init__(self, cin: int, n_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, n_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


class TFSepNet(nn.Module):
    def __init__(self, n_classes: int = 10, base_channels: int = 64, depth: int = 17, kernel_size: int = 3,
                 dropout: float = 0.1, rn_lambda: float = 0.1):
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"depth must be one of {sorted(LAYERS)}, got {depth}")
        if base_channels < 2 or base_channels % 2:
            raise ValueError(f"base_channels must be even, got {base_channels}")
        half = base_channels // 2
        cin = 2 * base_channels
        self.stem = nn.Sequential(conv_bn(1, half, 3, 2), conv_bn(half, cin, 3, 2, groups=half))
        layers, counts = [], {"norm": 0, "pool": 0, "block": 0}
        for entry in LAYERS[depth]:
            if entry == "N":
                kind, layer = "norm", ResidualNorm("frequency", rn_lambda, trainable=False)
            elif entry == "M":
                kind, layer = "pool", nn.MaxPool2d(2, 2)
            else:
                cout = int(round(entry * base_channels))
                kind, layer = "block", TFSepConvs(cin, cout, kernel_size, dropout)
                cin = cout
            counts[kind] += 1
            layers.append((f"{kind}{counts[kind]}", layer))
        self.layers = nn.Sequential(OrderedDict(layers))
        self.head = ConvHead(cin, n_classes)
        init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def build_tfsepnet(n_classes: int, base_channels: int, depth: int, n_mels: int, dropout: float) -> ASCModel:
    net = TFSepNet(n_classes, base_channels, depth, dropout=dropout)
    return ASCModel(CpMel(n_mels=n_mels, n_fft=4096, win_length=3072, hop_length=500, fmin=0.0, fmax=None), net)


register("tfsepnet_64", build_tfsepnet, n_classes=10, base_channels=64, depth=17, n_mels=512, dropout=0.1)
# The same code path at a test-friendly size (10,122 parameters, 748,672 MACs at 1x1x128x64); not a published model.
register("tfsepnet_smoke", build_tfsepnet, n_classes=10, base_channels=16, depth=17, n_mels=128, dropout=0.1)
