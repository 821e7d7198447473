"""Inference speed of the students in each deployed form: fp32 and fp16 in the default layout and channels-last, INT8
under each quantized engine (counted network only, features in).

``python -m bench.benchmarks.int8_inference [--models dsflexinet_sm2 ...]`` (TF-SepNet as AdapTF-SepNet deploys it:
128 mel bins, its PTQ recipe)

The quantized values are the same under every engine (x86 qconfig); only the kernels differ. The harness runs INT8
on oneDNN (``bench.score.quantize._select_engine``): this shows why. Float deployments infer in the layout their
network declares (``memory_format``, ``bench.submission.Deployment``): the channels-last columns show where it pays.
fp16 runs twice: natively (the CPU's fp16 kernels, or PyTorch's reference fallback where it has none) and with the
convolutions and matrix products on fp32 kernels (``f32k``, ``bench.score.fp16``), which the harness uses on CPUs
without fp16 arithmetic.

``--calibration N`` also times the scorer's post-training calibration (``observe_static`` on N clips in batches of
64, as ``bench score`` does with its defaults, FX preparation included) under the default HistogramObserver and
under MinMaxObserver, and the conversion of the observed model to INT8 that follows.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch

from bench.models import create_model
from bench.provenance import cpu_model
from bench.score.fp16 import Fp32Products, fp16_arithmetic
from bench.score.quantize import convert_prepared, observe_static, quantize_static

DEFAULT_MODELS = ("cpmobile_baseline", "cpmobile_passt_mel", "dsflexinet_sm1", "dsflexinet_sm2", "dsflexinet_sm3",
                  "dsflexinet_sm4", "tfsepnet_64")
# the deployed configuration where it is not the registry's: AdapTF-SepNet's default profile and PTQ recipe
DEPLOYED = {"tfsepnet_64": ({"n_mels": 128}, {"float_modules": ["ResidualNorm"], "activation_observer": "minmax",
                                             "reduce_range": False})}
ENGINES = ("onednn", "x86", "fbgemm")


def clips_per_s(net: torch.nn.Module, x: torch.Tensor, repeats: int, mode=contextlib.nullcontext) -> float:
    """Best of ``repeats`` timed batches after one warm-up batch, inside ``mode()``."""
    with torch.inference_mode(), mode():
        net(x)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            net(x)
            best = min(best, time.perf_counter() - start)
    return len(x) / best


def calibration_s(model, n_clips: int, recipe: dict | None) -> tuple[float, float]:
    """Seconds to observe ``n_clips`` clips in batches of 64 (FX preparation included), and then to convert."""
    x = model.features(0.05 * torch.randn(n_clips, model.sample_rate))
    start = time.perf_counter()
    observed = observe_static(model.net, list(torch.split(x, 64)), x[:1], recipe)
    observe = time.perf_counter() - start
    convert_prepared(observed, recipe)
    return observe, time.perf_counter() - start - observe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=0, metavar="N",
                        help="also time INT8 calibration on N clips (histogram and min-max observers)")
    args = parser.parse_args()
    engines = [e for e in ENGINES if e in torch.backends.quantized.supported_engines]
    print(f"{cpu_model()}; torch {torch.__version__}; batch {args.batch_size}, {torch.get_num_threads()} threads; "
          "clips/s of the counted network (cl: channels-last)")
    print(f"fp16 arithmetic: {fp16_arithmetic()} (the harness's fp16 path on this CPU); fp16 native: the CPU's own "
          "fp16 kernels or PyTorch's fallback; fp16 f32k: products on fp32 kernels (bench.score.fp16)")
    native, f32k = contextlib.nullcontext, Fp32Products
    floats = [(dtype, layout, mode) for dtype, mode in ((torch.float32, native), (torch.float16, native),
                                                        (torch.float16, f32k))
              for layout in (torch.contiguous_format, torch.channels_last)]
    print(f"{'model':20s} {'fp32':>9s} {'fp32 cl':>9s} {'fp16':>9s} {'fp16 cl':>9s} {'fp16 f32k':>9s} "
          f"{'f32k cl':>9s} " + " ".join(f"{'int8 ' + e:>12s}" for e in engines))
    for name in args.models:
        torch.manual_seed(0)
        options, recipe = DEPLOYED.get(name, ({}, None))
        model = create_model(name, **options).eval()
        x = model.features(0.05 * torch.randn(args.batch_size, model.sample_rate))
        rates = [clips_per_s(quantize_static(model.net, [x], x[:1], engine=e, recipe=recipe), x, args.repeats)
                 for e in engines]
        float_rates = [clips_per_s(copy.deepcopy(model.net).to(dtype, memory_format=layout),
                                   x.to(dtype).contiguous(memory_format=layout), args.repeats, mode)
                       for dtype, layout, mode in floats]
        print(f"{name:20s} " + " ".join(f"{r:9.1f}" for r in float_rates) + " "
              + " ".join(f"{r:12.1f}" for r in rates))
        if args.calibration:
            times = {obs: calibration_s(model, args.calibration, {**(recipe or {}), "activation_observer": obs})
                     for obs in ("histogram", "minmax")}
            print(f"{'':20s} calibration on {args.calibration} clips: " + ", ".join(
                f"{obs} {t:.2f} s (then converting {c:.2f} s)" for obs, (t, c) in times.items()))


if __name__ == "__main__":
    main()
