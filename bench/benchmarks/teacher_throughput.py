"""Teacher training throughput on this machine (clips/s through front-end, forward, backward, optimiser step).

``python -m bench.benchmarks.teacher_throughput [--models passt_tiny cpresnet_128k ...]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from bench import allocator
from bench.models import create_model
from bench.models.base import declared_memory_format

DEFAULT_MODELS = ("passt_tiny", "passt_small", "cpresnet_half", "cpresnet_128k", "cpmobile_baseline",
                  "dsflexinet_sm2")


def training_step(name: str, batch_size: int) -> tuple[Callable[[], None], torch.nn.Module]:
    """(one Adam step on a fixed batch of random 1-s waveforms, the model), seeded, in the layout bench trains it
    in."""
    torch.manual_seed(0)
    model = create_model(name)
    model.net.to(memory_format=declared_memory_format(model.net))  # as bench trains it
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    wave = 0.05 * torch.randn(batch_size, 32_000)
    label = torch.randint(0, 10, (batch_size,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(wave), label)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, model


def train_rate(name: str, batch_size: int, steps: int) -> tuple[float, float]:
    """(training clips/s, inference clips/s) on random 1-s waveforms; the median step after one warm-up step."""
    step, model = training_step(name, batch_size)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    model.eval()
    with torch.inference_mode():
        start = time.perf_counter()
        model(0.05 * torch.randn(batch_size, 32_000))
        infer = time.perf_counter() - start
    return batch_size / sorted(times[1:])[len(times[1:]) // 2], batch_size / infer


def main() -> None:
    allocator.ensure()  # the allocator bench runs under (bench/allocator.py)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"batch {args.batch_size}, {torch.get_num_threads()} threads")
    for name in args.models:
        train, infer = train_rate(name, args.batch_size, args.steps)
        params = sum(p.numel() for p in create_model(name).net.parameters())
        print(f"{name:20s} {params:>11,} params  train {train:7.1f} clips/s  inference {infer:7.1f} clips/s")


if __name__ == "__main__":
    main()
