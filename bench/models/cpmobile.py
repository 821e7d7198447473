"""CP-Mobile as simplified for the DCASE 2025 baseline (CPJKU/dcase2025_task1_baseline, models/net.py, README.md):
61,148 parameters and 29,419,156 MACs at 1x1x256x65 under the official torchinfo count."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from bench.models import register
from bench.models.base import ASCModel
from bench.models.frontends import CpMel, TorchaudioLogMel


def make_divisible(v: float, divisor: int = 8) -> int:
    """MobileNet channel rounding: nearest multiple of ``divisor``, never below 90 % of ``v``."""
    n = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if n < 0.9 * v:
        n += divisor
    return n


def conv_bn(cin: int, cout: int, kernel: int, stride=1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def classifier_head(cin: int, n_classes: int) -> nn.Sequential:
    """1x1 conv to class scores, BN, global average pooling (the CP-Mobile head, reused by DS-FlexiNet)."""
    return nn.Sequential(nn.Conv2d(cin, n_classes, 1, bias=False), nn.BatchNorm2d(n_classes),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def init_convs(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) initialisation of every convolution."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise (strided) -> 1x1 project; identity or avg-pool shortcut when widths match;
    ReLU after the residual add."""

    def __init__(self, cin: int, cexp: int, cout: int, stride=1):
        super().__init__()
        self.expand = conv_bn(cin, cexp, 1)
        self.depthwise = conv_bn(cexp, cexp, 3, stride, groups=cexp)
        self.project = conv_bn(cexp, cout, 1, relu=False)
        strided = stride not in (1, (1, 1))
        if cin != cout:
            self.shortcut = None
        else:
            self.shortcut = nn.AvgPool2d(3, stride, 1) if strided else nn.Identity()
        self.after = nn.ReLU()

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.after(y)


class CPMobileNet(nn.Module):
    # channels-last on CPU (oneDNN): trains 1.1-1.4x and infers 1.5-2x faster; validation accuracy within the seed
    # spread (docs/performance.md)
    memory_format = torch.channels_last

    def __init__(self, n_classes: int = 10, base_channels: int = 32, channels_multiplier: float = 1.8,
                 expansion_rate: float = 2.1, n_blocks=(3, 2, 1), strides=None):
        super().__init__()
        strides = dict(strides or {"b2": (1, 1), "b3": (1, 2), "b4": (2, 1)})
        widths = [make_divisible(base_channels * channels_multiplier ** i) for i in range(len(n_blocks))]
        self.stem = nn.Sequential(conv_bn(1, base_channels // 4, 3, 2), conv_bn(base_channels // 4, base_channels, 3, 2))
        stages, cin, k = [], base_channels, 0
        for s, (n, width) in enumerate(zip(n_blocks, widths), start=1):
            blocks = nn.Sequential()
            for _ in range(n):
                k += 1
                blocks.add_module(f"b{k}", InvertedResidual(cin, make_divisible(cin * expansion_rate), width,
                                                            tuple(strides.get(f"b{k}", (1, 1)))))
                cin = width
            stages.append((f"s{s}", blocks))
        self.stages = nn.Sequential(OrderedDict(stages))
        self.head = classifier_head(cin, n_classes)
        init_convs(self)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def build_cpmobile(n_classes: int, base_channels: int, channels_multiplier: float, expansion_rate: float,
                   n_blocks: tuple, strides: dict, freqm: int, n_mels: int, hop_length: int) -> ASCModel:
    net = CPMobileNet(n_classes, base_channels, channels_multiplier, expansion_rate, tuple(n_blocks), strides)
    return ASCModel(TorchaudioLogMel(n_mels=n_mels, hop_length=hop_length, freqm=freqm), net)


def build_cpmobile_passt_mel(n_classes: int, base_channels: int, channels_multiplier: float, expansion_rate: float,
                             n_blocks: tuple, strides: dict, n_mels: int, n_fft: int, win_length: int,
                             hop_length: int, freqm: int, timem: int) -> ASCModel:
    """The same network on the PaSST-style front-end of Jeong & Kim's DCASE 2025 package
    (wa976/dcase2025_task1_inference, models/processor.py = kkoutini/PaSST models/preprocess.py)."""
    net = CPMobileNet(n_classes, base_channels, channels_multiplier, expansion_rate, tuple(n_blocks), strides)
    return ASCModel(CpMel(n_mels=n_mels, n_fft=n_fft, win_length=win_length, hop_length=hop_length, freqm=freqm,
                          timem=timem), net)


_BASELINE_NET = dict(n_classes=10, base_channels=32, channels_multiplier=1.8, expansion_rate=2.1, n_blocks=(3, 2, 1),
                     strides={"b2": (1, 1), "b3": (1, 2), "b4": (2, 1)})
register("cpmobile_baseline", build_cpmobile, **_BASELINE_NET, freqm=0, n_mels=256, hop_length=500)
# Jeong & Kim's student: pre-emphasis, n_fft = window = 2048 (symmetric Hann), hop 744, 256 Kaldi mel bins up to
# 16 kHz, (log + 4.5) / 5. At 32 kHz a 1-s clip gives 256 x 44 (their package feeds 44.1 kHz audio, un-resampled,
# into this 32 kHz filterbank: 256 x 60). Masking (after the log) is off, as in their fine-tuning config.
register("cpmobile_passt_mel", build_cpmobile_passt_mel, **_BASELINE_NET, n_mels=256, n_fft=2048, win_length=2048,
         hop_length=744, freqm=0, timem=0)
