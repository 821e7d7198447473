"""fp16 inference on CPUs without fp16 arithmetic: the convolutions and matrix products on fp32 kernels.

PyTorch's fp16 convolutions and matrix products run on oneDNN's fp16 kernels only where the CPU has fp16
arithmetic (AVX512-FP16 or AMX-FP16, e.g. Intel Sapphire Rapids). Elsewhere (AMD EPYC, Intel CPUs before
Sapphire Rapids) they fall back to reference loops, one call per convolution group. On a 2-core AMD EPYC (AVX2,
2026-12-06; ``python -m bench.benchmarks.int8_inference``), CP-Mobile on the PaSST mel predicted 58.5 clips/s in
fp16 against 867.7 in fp32, channels-last; the fallback took 91 % of the forward pass.

There, :func:`fp16_inference` routes just those operations through their fp32 kernels. Their fp16 inputs and
weights are upcast exactly, the products are summed in fp32, and the result is rounded to fp16 once. That is the
arithmetic of the native kernels too: fp32 accumulators, one rounding of each output. Every other operation
(normalisation, activations, pooling, additions) still runs in fp16. Logits differ from the fallback's only in
summation order. For the trained DCASE 2025 baseline (default profile, 7 fp16 device models, 2,160 test clips),
log-probabilities moved by at most 0.0039, one clip of 2,160 changed its predicted class, and macro accuracy was
the same (45.19 %). The whole ``bench score`` took 47.2 s instead of 125.5 s. The row's ``fp16_arithmetic`` column
says which kernels ran.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

NATIVE, FP32_KERNELS = "native", "fp32-kernels"  # the values of the leaderboard's ``fp16_arithmetic``

# Both spellings reach the dispatcher: conv2d/linear under inference_mode, convolution/addmm under no_grad.
PRODUCTS = frozenset({
    aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution, aten._convolution,
    aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d,
    aten.linear, aten.matmul, aten.mm, aten.addmm, aten.bmm, aten.baddbmm,
})


@functools.lru_cache(maxsize=1)
def fp16_arithmetic() -> str:
    """``native`` where oneDNN has fp16 kernels on this CPU, else ``fp32-kernels``."""
    return NATIVE if torch.ops.mkldnn._is_mkldnn_fp16_supported() else FP32_KERNELS


class Fp32Products(TorchDispatchMode):
    """Run every convolution and matrix product whose floating inputs are all fp16 on the fp32 kernel, and round
    its output to fp16. An operation with mixed dtypes is left alone, so it fails as it would natively; so is
    one on a GPU, which has fp16 arithmetic."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in PRODUCTS:
            floats = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()]
            if floats and all(a.dtype == torch.float16 and a.device.type == "cpu" for a in floats):
                up = [_upcast(a) for a in args]
                return func(*up, **{k: _upcast(v) for k, v in kwargs.items()}).half()
        return func(*args, **kwargs)


def _upcast(value):
    return value.float() if isinstance(value, torch.Tensor) and value.dtype == torch.float16 else value


@contextlib.contextmanager
def fp16_inference(dtype: torch.dtype) -> Iterator[None]:
    """Around a forward pass of a model deployed in ``dtype``: fp32 products for fp16 models on CPUs without fp16
    arithmetic, nothing otherwise (fp32 models, CPUs with fp16 kernels)."""
    if dtype != torch.float16 or fp16_arithmetic() == NATIVE:
        yield
        return
    with Fp32Products():
        yield
