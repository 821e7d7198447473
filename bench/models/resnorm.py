"""Residual Normalization (Chen et al., arXiv 2412.20722; Kim et al., arXiv 2111.06531; yqcai888/easy_dcase_task1,
model/shared.py): ``RN(x) = lam * x + IN(x)`` with a trainable scalar ``lam``.

``IN`` is an affine-free instance normalisation; the axis option chooses whose statistics it takes, per sample:

* ``axis="channel"`` (the DS-FlexiNet paper's reading, default): one mean/variance per (sample, channel) over
  frequency and time -- classic ``InstanceNorm2d`` without affine; removes each feature map's level and scale.
* ``axis="frequency"`` (Kim et al., QTI DCASE21): one mean/variance per (sample, frequency bin) over channels and
  time; removes the per-band spectral colouring a recording device adds.

Both go through ``F.instance_norm`` (the frequency variant on a ``[B, F, C, T]`` view), which FX QAT lowers to one
``quantized.instance_norm`` op. Writing the statistics out by hand (mean, var, rsqrt) lets the x86 backend
quantize the variance to uint8 on its own, and ``rsqrt(0 + eps)`` of a rounded-down variance then yields NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

AXES = ("channel", "frequency")


class ResidualNorm(nn.Module):
    """``trainable=False`` fixes ``lam`` as a python float (the TF-SepNet recipe, yqcai888/easy_dcase_task1,
    model/shared.py ``ResNorm``): no parameter, no state-dict entry, 0 parameters and 0 MACs under torchinfo, and FX
    quantization sees a multiplication by a scalar constant."""

    def __init__(self, axis: str = "channel", lam: float = 0.1, eps: float = 1e-5, trainable: bool = True):
        super().__init__()
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
        self.axis = axis
        self.eps = eps
        self.trainable = trainable
        # Named ``lam`` (not ``weight``) so torchinfo counts it as one parameter and zero MACs.
        self.lam = nn.Parameter(torch.tensor(float(lam))) if trainable else float(lam)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis == "channel":
            normed = F.instance_norm(x, eps=self.eps)
        else:
            normed = F.instance_norm(x.transpose(1, 2), eps=self.eps).transpose(1, 2)
        return self.lam * x + normed

    def extra_repr(self) -> str:
        return f"axis={self.axis}, eps={self.eps}" + ("" if self.trainable else f", lam={self.lam} (fixed)")
