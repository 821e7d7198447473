"""CP-ResNet 128K, the CPJKU DCASE23 CNN teacher (fschmid56/cpjku_dcase23, models/cp_resnet.py): rho 8, widths
32/64/92, blocks (2, 1, 1), grouped stage-2 convs. 127,684 parameters and 28,840,396 MACs at 1x1x256x43 under the
torchinfo count.

With rho 8 the receptive-field rule leaves this fixed layout (kernel sizes per block written out below rather than
derived from rho): every conv pads ``k // 3`` (= ``k // 2`` for k in {1, 3}), max-pools follow the stem and each
stage-1 block, and stages 2-3 keep the 15 x 10 resolution.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from bench.models import register
from bench.models.base import ASCModel
from bench.models.cpmobile import conv_bn
from bench.models.frontends import CpMel


class BasicBlock(nn.Module):
    """conv(k1)+BN+ReLU -> conv(k2)+BN, plus a 1x1 conv+BN shortcut (grouped like the block) when the width
    changes; ReLU after the add."""

    def __init__(self, cin: int, cout: int, k1: int, k2: int, groups: int = 1):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, k1, groups=groups)
        self.conv2 = conv_bn(cout, cout, k2, groups=groups, relu=False)
        self.shortcut = conv_bn(cin, cout, 1, groups=groups, relu=False) if cin != cout else nn.Identity()
        self.after = nn.ReLU()

    def forward(self, x):
        return self.after(self.conv2(self.conv1(x)) + self.shortcut(x))


class CPResNet(nn.Module):
    # channels-last on CPU (oneDNN): trains 1.1x faster at batch 32, infers 1.4-1.8x faster (docs/performance.md)
    memory_format = torch.channels_last

    def __init__(self, n_classes: int = 10, widths=(32, 64, 92), groups_s2: int = 2):
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(nn.Conv2d(1, w1, 5, 2, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.stages = nn.Sequential(OrderedDict(
            s1=nn.Sequential(OrderedDict(b1=BasicBlock(w1, w1, 3, 1), p1=nn.MaxPool2d((2, 1)),
                                         b2=BasicBlock(w1, w1, 3, 3), p2=nn.MaxPool2d((2, 1)))),
            s2=nn.Sequential(OrderedDict(b1=BasicBlock(w1, w2, 3, 3, groups=groups_s2))),
            s3=nn.Sequential(OrderedDict(b1=BasicBlock(w2, w3, 3, 1))),
        ))
        self.head = nn.Sequential(nn.Conv2d(w3, n_classes, 1, bias=False), nn.BatchNorm2d(n_classes),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        # Kaiming fan_in as in CP23, but no Fixup-style zero-init of the residual branch: PyTorch's QAT conv-BN
        # folding divides by the BN scale, so a zero scale gives NaN gradients under QAT (docs/models.md).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def build_cpresnet(n_classes: int, widths: tuple, groups_s2: int, n_mels: int, hop_length: int, freqm: int,
                   timem: int, fmax_aug_range: int) -> ASCModel:
    net = CPResNet(n_classes, tuple(widths), groups_s2)
    return ASCModel(CpMel(n_mels=n_mels, n_fft=4096, win_length=3072, hop_length=hop_length, freqm=freqm,
                          timem=timem, fmax_aug_range=fmax_aug_range), net)


_COMMON = dict(n_classes=10, groups_s2=2, n_mels=256, hop_length=750, freqm=48, timem=0, fmax_aug_range=1000)
register("cpresnet_128k", build_cpresnet, widths=(32, 64, 92), **_COMMON)
# Half width: a quick teacher for CPU smoke runs and KD plumbing tests, not a published model.
register("cpresnet_half", build_cpresnet, widths=(16, 32, 46), **_COMMON)
