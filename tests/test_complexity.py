"""Official DCASE complexity count, limits and the hidden-compute guard."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.models import create_model
from bench.score.complexity import (MAX_MACS, MAX_PARAM_BYTES, ComplexityError, DeviceModel, count_complexity,
                                    count_devices, param_bytes)

BASELINE_SHAPE = (1, 1, 256, 65)
SMALL_SHAPE = (1, 1, 64, 32)


@pytest.fixture(scope="module")
def baseline_net():
    return create_model("cpmobile_baseline").net


@pytest.fixture(scope="module")
def baseline_report(baseline_net):
    return count_complexity(baseline_net, BASELINE_SHAPE, dtype="fp16")


def test_baseline_matches_official_numbers(baseline_report):
    r = baseline_report
    assert r.macs == 29_419_156
    assert r.params == 61_148
    assert r.param_bytes == 122_296
    assert r.dtype == "float16"
    assert r.compliant and r.reasons == [] and r.status == "compliant"


def test_baseline_second_opinions_recorded(baseline_report):
    r = baseline_report
    assert 32_500_000 < r.thop_macs < 33_100_000  # thop counts BN/pooling differently and is above the limit
    assert abs(r.dispatcher_macs - r.macs) < 0.01 * r.macs
    assert set(r.counters) >= {"torchinfo", "thop", "torch"}
    assert r.counters["torchinfo"] == "1.8.0"


def test_param_bytes_follow_deployed_dtype(baseline_net):
    assert param_bytes(baseline_net) == 61_148 * 4  # own dtype (float32), as the official helper
    assert param_bytes(baseline_net, torch.float16) == 122_296
    assert param_bytes(baseline_net, "int8") == 61_148


class SmallConv(nn.Module):
    """A honest 1x1 conv so that torchinfo sees a little compute."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)

    def forward(self, x):
        return self.conv(x)


class FunctionalConv(SmallConv):
    def __init__(self):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(64, 4, 3, 3))

    def forward(self, x):
        return F.conv2d(self.conv(x), self.kernel, padding=1).mean((2, 3))


class Einsum(SmallConv):
    def __init__(self):
        super().__init__()
        self.mix = nn.Parameter(torch.randn(32, 512))

    def forward(self, x):
        return torch.einsum("bcft,tk->bcfk", self.conv(x), self.mix).mean((2, 3))


class Sdpa4d(SmallConv):
    def forward(self, x):
        q = self.conv(x)  # (1, 4 heads, 64 tokens, 32 dims)
        return F.scaled_dot_product_attention(q, q, q).mean((2, 3))


class MatVec(SmallConv):
    def __init__(self):
        super().__init__()
        self.register_buffer("mix", torch.randn(256, 4 * 64 * 32))  # a buffer: not even in parameter memory

    def forward(self, x):
        return self.mix @ self.conv(x).flatten()  # aten.mv


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x):
        tokens = x[:, 0]
        return self.attn(tokens, tokens, tokens)[0].mean(1)


def test_count_leaves_the_model_untouched():
    net = SmallConv().half().requires_grad_(False)
    r = count_complexity(net, SMALL_SHAPE)
    assert r.dtype == "float16" and r.param_bytes == 8 * 2
    assert all(p.dtype == torch.float16 and not p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("model_cls", [FunctionalConv, Einsum, Sdpa4d, MatVec, Attention])
def test_hidden_compute_is_non_compliant(model_cls):
    r = count_complexity(model_cls(), SMALL_SHAPE)
    assert not r.compliant
    assert any(reason.startswith("hidden compute") for reason in r.reasons)
    assert r.status.startswith("non-compliant:")
    assert any(x.startswith("hidden parameters") for x in r.reasons) == (model_cls is MatVec)  # weights: a buffer
    assert r.dispatcher_macs > 10 * r.macs


def test_4d_sdpa_is_counted_with_its_own_formula():
    r = count_complexity(Sdpa4d(), SMALL_SHAPE)
    heads, tokens, dim = 4, 64, 32
    conv = 4 * 64 * 32  # 1x1 conv, 1 -> 4 channels, weight only
    attention = heads * tokens * tokens * (dim + dim)  # Q.K^T and A.V
    assert r.dispatcher_macs == conv + attention


def test_honest_small_model_is_compliant():
    r = count_complexity(SmallConv(), SMALL_SHAPE)
    assert r.compliant
    assert r.macs == (4 + 4) * 64 * 32  # torchinfo: (weight + bias) x output positions


def test_over_mac_limit():
    net = nn.Conv2d(1, 256, 3, padding=1, bias=False)  # 256*9*256*65 = 38.3 M MACs, 2,304 params
    r = count_complexity(net, BASELINE_SHAPE)
    assert r.macs > MAX_MACS
    assert r.reasons == [f"MACs {r.macs:,} > {MAX_MACS:,}"]


def test_over_parameter_limit():
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 40_000))  # 80,000 params
    r = count_complexity(net, SMALL_SHAPE, dtype="fp16")
    assert r.param_bytes == 160_000 > MAX_PARAM_BYTES
    assert r.reasons == [f"parameter memory 160,000 B > {MAX_PARAM_BYTES:,} B"]


def test_unknown_dtype_is_an_error():
    with pytest.raises(ValueError, match="float64"):
        count_complexity(SmallConv(), SMALL_SHAPE, dtype="float64")
    with pytest.raises(ValueError, match="float64"):
        count_complexity(SmallConv().double(), SMALL_SHAPE)


def test_counting_is_at_batch_one():
    with pytest.raises(ValueError, match="batch 1"):
        count_complexity(SmallConv(), (4, 1, 64, 32))


def test_forward_failure_names_shape_and_cause():
    with pytest.raises(ComplexityError, match=r"\(1, 1, 64, 32\).*RuntimeError"):
        count_complexity(nn.Conv2d(3, 4, 1), SMALL_SHAPE)


def test_devices_share_counts_and_write_official_layout():
    general, big = SmallConv(), nn.Conv2d(1, 16, 3, padding=1)
    result = count_devices({"a": DeviceModel(big, SMALL_SHAPE, "fp16"),
                            "b": DeviceModel(general, SMALL_SHAPE, "fp16"),
                            "s4": DeviceModel(general, SMALL_SHAPE, "fp16")})
    assert result.per_device["b"] is result.per_device["s4"]
    big_macs = (16 * 9 + 16) * 64 * 32
    assert result.official_json() == {
        "per_device": {"a": {"MACs": big_macs, "Params": 160 * 2}, "b": {"MACs": 8 * 64 * 32, "Params": 16},
                       "s4": {"MACs": 8 * 64 * 32, "Params": 16}},
        "max_MACs": big_macs, "max_Params": 320}
    assert result.compliant


def test_what_the_official_counter_cannot_see_is_never_compliant():
    """A converted INT8 model is counted from its quantized graph (labelled), a TorchScript module and a model whose
    compute no counter sees are uncountable, and weights held in buffers are hidden parameters."""
    import numpy as np

    from bench.models import create_model
    from bench.score.quantize import quantize_static

    torch.manual_seed(0)
    model = create_model("dsflexinet_sm1").eval()
    shape = model.input_shape()
    x = torch.randn(shape)
    float_report = count_complexity(model.net, shape, "int8")
    int8 = count_complexity(quantize_static(model.net, [torch.randn(4, *shape[1:])], x), shape, "int8")
    assert int8.countable and int8.counter.startswith("quantized graph")
    assert abs(int8.macs - float_report.macs) / float_report.macs < 0.001  # BN folded: a hair below torchinfo
    assert 0.95 * float_report.params < int8.params <= float_report.params

    scripted = count_complexity(torch.jit.script(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())), (1, 1, 16, 16))
    assert not scripted.countable and not scripted.compliant and "TorchScript" in scripted.reasons[0]

    class Numpy(nn.Module):  # the compute happens where neither counter looks
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return torch.from_numpy(np.tanh(x.detach().numpy())).mean(dim=(2, 3)) * self.scale

    blind = count_complexity(Numpy(), (1, 1, 8, 8))
    assert not blind.countable and "neither torchinfo nor the dispatcher" in blind.status

    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.randn(10, 9_000))  # 360 kB the official count leaves out
            self.fc = nn.Linear(9_000, 10, bias=False)

        def forward(self, x):
            flat = nn.functional.adaptive_avg_pool2d(x, (1, 9_000)).flatten(1)
            return flat @ self.w.T + self.fc(flat)

    hidden = count_complexity(Hidden(), (1, 1, 8, 8), "int8")
    assert hidden.hidden_params == 90_000 and not hidden.compliant and hidden.param_bytes == 90_000
    assert any("hidden parameters" in r for r in hidden.reasons)
