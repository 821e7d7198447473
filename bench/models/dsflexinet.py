"""DS-FlexiNet (Chen et al., arXiv 2412.20722). No public code exists: the layout below follows
the paper's text, and the per-variant widths were chosen to reproduce its published parameter and MAC counts
(docs/models.md lists the choices and the exact resulting numbers).

Layout: stem of two 3x3 stride-2 conv+BN+ReLU -> stages of inverted-residual depthwise-separable blocks with
ResNet-style shortcuts -> 1x1 conv + BN classifier -> global average pool. A normalisation layer (Residual
Normalization by default) sits at the input of every stage.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from bench.models import register
from bench.models.base import ASCModel
from bench.models.cpmobile import classifier_head, conv_bn, init_convs, make_divisible
from bench.models.frontends import CpMel
from bench.models.resnorm import ResidualNorm


class DSBlock(nn.Module):
    """1x1 expand -> 3x3 depthwise (strided) -> 1x1 project, plus a shortcut that adapts to the block: identity;
    3x3 average pool when strided (same output size as the depthwise conv); 1x1 conv+BN projection when the width
    changes. ReLU after the add (ResNet style), which FX fuses into a quantized add-relu."""

    def __init__(self, cin: int, cexp: int, cout: int, stride=(1, 1)):
        super().__init__()
        stride = tuple(stride)
        self.expand = conv_bn(cin, cexp, 1)
        self.depthwise = conv_bn(cexp, cexp, 3, stride, groups=cexp)
        self.project = conv_bn(cexp, cout, 1, relu=False)
        shortcut = []
        if stride != (1, 1):
            shortcut.append(nn.AvgPool2d(3, stride, 1))
        if cin != cout:
            shortcut.append(conv_bn(cin, cout, 1, relu=False))
        self.shortcut = nn.Sequential(*shortcut)  # empty = identity
        self.after = nn.ReLU()

    def forward(self, x):
        return self.after(self.project(self.depthwise(self.expand(x))) + self.shortcut(x))


def stage_norm(kind: str, channels: int, rn_axis: str, rn_lambda: float) -> nn.Module:
    """The paper's Table V ablates RN against BN and against no extra normalisation; all three are selectable."""
    if kind == "rn":
        return ResidualNorm(rn_axis, rn_lambda)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'rn', 'bn' or 'none', got {kind!r}")


class DSFlexiNet(nn.Module):
    """Defaults = sm2, the paper's headline variant."""

    def __init__(self, n_classes: int = 10, stem_channels=(6, 12), widths=(12, 36, 64), n_blocks=(2, 2, 1),
                 strides=((1, 1), (2, 2), (2, 2)), expansion: float = 3.0, norm: str = "rn",
                 rn_axis: str = "channel", rn_lambda: float = 0.1):
        super().__init__()
        if not len(widths) == len(n_blocks) == len(strides):
            raise ValueError("widths, n_blocks and strides need one entry per stage")
        c_mid, cin = stem_channels
        self.stem = nn.Sequential(conv_bn(1, c_mid, 3, 2), conv_bn(c_mid, cin, 3, 2))
        stages = []
        for s, (width, n, stride) in enumerate(zip(widths, n_blocks, strides), start=1):
            stage = nn.Sequential(OrderedDict(norm=stage_norm(norm, cin, rn_axis, rn_lambda)))
            for b in range(1, n + 1):
                stage.add_module(f"b{b}", DSBlock(cin, make_divisible(cin * expansion, 4), width,
                                                  stride if b == 1 else (1, 1)))
                cin = width
            stages.append((f"s{s}", stage))
        self.stages = nn.Sequential(OrderedDict(stages))
        self.head = classifier_head(cin, n_classes)
        init_convs(self)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def build_dsflexinet(n_classes: int, stem_channels: tuple, widths: tuple, n_blocks: tuple, strides: tuple,
                     expansion: float, norm: str, rn_axis: str, rn_lambda: float, freqm: int, timem: int,
                     fmax_aug_range: int) -> ASCModel:
    net = DSFlexiNet(n_classes, tuple(stem_channels), tuple(widths), tuple(n_blocks), tuple(strides), expansion,
                     norm, rn_axis, rn_lambda)
    # 256 mels, 64 frames per second at 32 kHz (paper §III-B) = the CPJKU front-end at hop 500.
    return ASCModel(CpMel(n_mels=256, n_fft=4096, win_length=3072, hop_length=500, freqm=freqm, timem=timem,
                          fmax_aug_range=fmax_aug_range), net)


# One family: 5 blocks (2, 2, 1), stage strides (1,1)/(2,2)/(2,2), expansion 3, stem (c/2, c); only widths differ.
# Widths were fitted to the paper's Table II (params / MACs at 1x1x256x64); see docs/models.md for the resulting counts.
_DSF_COMMON = dict(n_classes=10, n_blocks=(2, 2, 1), strides=((1, 1), (2, 2), (2, 2)), expansion=3.0, norm="rn",
                   rn_axis="channel", rn_lambda=0.1, freqm=48, timem=0, fmax_aug_range=1000)
for _name, _stem, _widths in (("dsflexinet_sm1", (4, 8), (8, 24, 32)),
                              ("dsflexinet_sm2", (6, 12), (12, 36, 64)),
                              ("dsflexinet_sm3", (8, 16), (16, 48, 100)),
                              ("dsflexinet_sm4", (8, 16), (16, 68, 236))):
    register(_name, build_dsflexinet, stem_channels=_stem, widths=_widths, **_DSF_COMMON)
