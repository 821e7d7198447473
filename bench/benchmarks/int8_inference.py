"""INT8 inference speed of the students under each quantized engine, beside fp32 (counted network only, features in).

``python -m bench.benchmarks.int8_inference [--models dsflexinet_sm2 ...]`` (TF-SepNet as AdapTF-SepNet deploys it:
128 mel bins, its PTQ recipe)

The quantized values are the same under every engine (x86 qconfig); only the kernels differ. The harness runs INT8
on oneDNN (``bench.score.quantize._select_engine``): this shows why.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.models import create_model
from bench.score.quantize import quantize_static

DEFAULT_MODELS = ("cpmobile_baseline", "dsflexinet_sm1", "dsflexinet_sm2", "dsflexinet_sm3", "dsflexinet_sm4",
                  "tfsepnet_64")
# the deployed configuration where it is not the registry's: AdapTF-SepNet's default profile and PTQ recipe
DEPLOYED = {"tfsepnet_64": ({"n_mels": 128}, {"float_modules": ["ResidualNorm"], "activation_observer": "minmax",
                                             "reduce_range": False})}
ENGINES = ("onednn", "x86", "fbgemm")


def clips_per_s(net: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Best of ``repeats`` timed batches after one warm-up batch."""
    with torch.inference_mode():
        net(x)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            net(x)
            best = min(best, time.perf_counter() - start)
    return len(x) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    engines = [e for e in ENGINES if e in torch.backends.quantized.supported_engines]
    print(f"batch {args.batch_size}, {torch.get_num_threads()} threads; clips/s of the counted network")
    print(f"{'model':20s} {'fp32':>9s} " + " ".join(f"{'int8 ' + e:>12s}" for e in engines))
    for name in args.models:
        torch.manual_seed(0)
        options, recipe = DEPLOYED.get(name, ({}, None))
        model = create_model(name, **options).eval()
        x = model.features(0.05 * torch.randn(args.batch_size, model.sample_rate))
        rates = [clips_per_s(quantize_static(model.net, [x], x[:1], engine=e, recipe=recipe), x, args.repeats)
                 for e in engines]
        print(f"{name:20s} {clips_per_s(model.net, x, args.repeats):9.1f} " + " ".join(f"{r:12.1f}" for r in rates))


if __name__ == "__main__":
    main()
