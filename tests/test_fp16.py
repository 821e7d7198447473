"""fp16 inference on CPUs without fp16 arithmetic: convolutions and matrix products on fp32 kernels, rounded once,
and everything else left as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from bench.models import create_model
from bench.score import leaderboard as lb
from bench.score.fp16 import FP32_KERNELS, NATIVE, PRODUCTS, Fp32Products, fp16_arithmetic, fp16_inference
from bench.submission import UNKNOWN, Deployment, ModelSubmission


def _half(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).half()


class _KernelInputs(TorchDispatchMode):
    """Below the harness's own mode: the dtypes each convolution and matrix product reaches its kernel with."""

    def __init__(self):
        super().__init__()
        self.conv_dtypes: set[torch.dtype] = set()
        self.product_dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in PRODUCTS:
            self.product_dtypes.add(args[0].dtype)
            if func.overloadpacket in (torch.ops.aten.conv2d, torch.ops.aten.convolution):
                self.conv_dtypes.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


def test_products_run_in_fp32_and_round_once_to_fp16():
    x, w, b = _half(2, 8, 16, 16, seed=0), _half(8, 1, 3, 3, seed=1), _half(8, seed=2)
    cases = [
        (lambda: F.conv2d(x, w, b, padding=1, groups=8), lambda: F.conv2d(x.float(), w.float(), b.float(), padding=1,
                                                                          groups=8)),
        (lambda: F.linear(x.flatten(1)[:, :64], w.flatten()[None, :64].repeat(5, 1)),
         lambda: F.linear(x.flatten(1)[:, :64].float(), w.flatten()[None, :64].repeat(5, 1).float())),
        (lambda: torch.bmm(x[:, 0], x[:, 1]), lambda: torch.bmm(x[:, 0].float(), x[:, 1].float())),
    ]
    for grad_mode in (torch.inference_mode, torch.no_grad):  # the two spellings the dispatcher shows
        for product, in_fp32 in cases:
            with grad_mode(), _KernelInputs() as seen, Fp32Products():
                out = product()
            with grad_mode():
                expected = in_fp32().half()
            assert seen.product_dtypes == {torch.float32}          # the kernel got fp32 inputs
            assert out.dtype == torch.float16 and torch.equal(out, expected)
    with torch.inference_mode(), Fp32Products():
        assert F.relu(x).dtype == torch.float16                    # everything else stays fp16
        with pytest.raises(RuntimeError):                          # mixed dtypes fail as they do natively
            F.conv2d(x, w.float(), padding=1, groups=8)


def test_only_fp16_models_on_cpus_without_fp16_arithmetic_use_them():
    assert set(lb.ENUMS["fp16_arithmetic"]) == {NATIVE, FP32_KERNELS} and fp16_arithmetic() in (NATIVE, FP32_KERNELS)
    with fp16_inference(torch.float32):
        assert not _dispatch_mode_active()
    with fp16_inference(torch.float16):
        assert _dispatch_mode_active() == (fp16_arithmetic() == FP32_KERNELS)


def _dispatch_mode_active() -> bool:
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return isinstance(_get_current_dispatch_mode(), Fp32Products)


@pytest.mark.skipif(fp16_arithmetic() != FP32_KERNELS, reason="this CPU has fp16 arithmetic: the native kernels run")
def test_an_fp16_deployment_convolves_on_fp32_kernels_with_the_native_models_logits():
    """PyTorch's fallback for fp16 convolutions without oneDNN kernels (one call per group) took 91 % of CP-Mobile's
    forward pass; the deployment's logits stay those of the native fp16 model up to summation order."""
    torch.manual_seed(0)
    model = create_model("cpmobile_baseline").eval()
    sub = ModelSubmission("half", [f"c{i}" for i in range(10)], {UNKNOWN: Deployment.float(model, "float16")})
    waves = 0.1 * torch.randn(4, 32_000, generator=torch.Generator().manual_seed(3))
    with _KernelInputs() as seen:
        logits = sub.predict(waves, ["a"] * 4)
    assert seen.conv_dtypes == {torch.float32}
    native = model.net.half()
    with torch.inference_mode(), _KernelInputs() as seen:
        expected = native(model.frontend(waves).half()).float()
    assert seen.conv_dtypes == {torch.float16}                  # the same model outside the deployment
    torch.testing.assert_close(logits, expected, atol=2e-2, rtol=0)
    assert torch.equal(logits.argmax(1), expected.argmax(1))
