"""INT8 quantization of the baseline network and the size of the quantized artefact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.models import create_model
from bench.models.cpmobile import InvertedResidual
from bench.score.quantize import (QuantizationError, convert_prepared, int8_size, int8_size_bytes, prepare_qat,
                                  quantize_static)

SHAPE = (2, 1, 256, 65)
QAT_SHAPE = (2, 1, 64, 32)  # the net is fully convolutional; a smaller input keeps the QAT steps cheap


@pytest.fixture(scope="module")
def float_net():
    torch.manual_seed(0)
    return create_model("cpmobile_baseline").net.eval()


@pytest.fixture(scope="module")
def calibration():
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(SHAPE, generator=gen) for _ in range(2)]


@pytest.fixture(scope="module")
def int8_net(float_net, calibration):
    return quantize_static(float_net, calibration, calibration[0])


def expected_baseline_int8_bytes(net: nn.Module) -> int:
    """Derived from the float network's structure: BN is folded into every conv, so each conv stores int8 weights,
    a float32 bias, per-channel float64 scales and int64 zero points, and an output float32 scale + int64 zero
    point; the input quantizer and each residual add store one scale + zero point more."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    adds = [m for m in net.modules() if isinstance(m, InvertedResidual) and m.shortcut is not None]
    channels = sum(c.out_channels for c in convs)
    weights = sum(c.weight.numel() for c in convs)
    return weights * 1 + channels * (8 + 8) + channels * 4 + len(convs) * (4 + 8) + (1 + len(adds)) * (4 + 8)


def test_static_int8_size_matches_independent_count(float_net, int8_net):
    size = int8_size(int8_net)
    assert size.total == int8_size_bytes(int8_net) == expected_baseline_int8_bytes(float_net)
    assert size.n_quantized_tensors == sum(isinstance(m, nn.Conv2d) for m in float_net.modules())
    assert list(int8_net.parameters()) == []  # what the official parameters()-based helper would see


def test_static_int8_stays_close_to_float(float_net, int8_net, calibration):
    with torch.no_grad():
        for batch in calibration:
            ref, out = float_net(batch), int8_net(batch)
            assert out.shape == ref.shape
            assert (out - ref).abs().max() <= 0.2 * ref.abs().max()


def test_quantizing_leaves_float_net_untouched(float_net, int8_net):
    assert all(p.dtype == torch.float32 for p in float_net.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in float_net.modules())


def test_qat_gives_smaller_artefact_than_fp32(float_net):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(QAT_SHAPE, generator=gen)
    y = torch.randint(0, 10, (QAT_SHAPE[0],), generator=gen)
    prepared = prepare_qat(float_net, x)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(prepared(x), y).backward()
        opt.step()
    int8 = convert_prepared(prepared)
    fp32_bytes = sum(p.numel() * 4 for p in float_net.parameters())
    assert 0 < int8_size_bytes(int8) < fp32_bytes
    assert int8(x).shape == (QAT_SHAPE[0], 10)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor value: not symbolically traceable
            return self.conv(x)
        return self.conv(-x)


def test_untraceable_model_raises_with_reason():
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(QuantizationError, match="tracing.*TraceError"):
        quantize_static(DataDependent(), [x], x)


def test_nothing_quantizable_raises():
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(QuantizationError, match="no layer was quantized"):
        quantize_static(nn.Flatten(), [x], x)


@pytest.mark.skipif("x86" not in torch.backends.quantized.supported_engines, reason="needs the x86 engine")
def test_onednn_kernels_compute_what_the_x86_engine_computes():
    """The x86 qconfig decides the values; running them on oneDNN (instead of the x86 engine's mix, which sends
    depthwise convs with > 100 groups to fbgemm) may round a requantized value differently, never by more than one
    output step, and leaves almost every output bit-identical."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 108, 1), nn.BatchNorm2d(108), nn.ReLU(),
                        nn.Conv2d(108, 108, 3, 2, 1, groups=108), nn.BatchNorm2d(108), nn.ReLU(),
                        nn.Conv2d(108, 10, 1)).eval()
    x = torch.randn(4, 4, 16, 8)
    reference = quantize_static(net, [x], x[:1], engine="x86")
    with torch.no_grad():
        expected = reference(x)
    ours = quantize_static(net, [x], x[:1])
    assert torch.backends.quantized.engine == "onednn"
    step = [m.scale for m in ours.modules() if isinstance(getattr(m, "scale", None), float)][-1]
    with torch.no_grad():
        out = ours(x)
    assert (out - expected).abs().max() <= step + 1e-6
    assert (out == expected).float().mean() >= 0.99
