"""What recording a stage's harness dependencies costs: Lightning training steps with and without the
``sys.settrace`` hook of :class:`bench.identity.Recorder` (runs alternate, so drift hits both alike), and the
deterministic estimate behind it: Python calls per training step x the hook's cost per call.

``python -m bench.benchmarks.dependency_recorder [--model cpmobile_baseline] [--batch-size 32] [--steps 20]``
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import time

import lightning as L
import torch

from bench.identity import Recorder
from bench.models import create_model
from bench.provenance import cpu_model
from bench.train.task import OPTIM, ClassifierTask, OptimConfig


def _batches(batch_size: int, steps: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"wave": 0.05 * torch.randn(batch_size, 32_000, generator=g),
             "label": torch.randint(0, 10, (batch_size,), generator=g),
             "device": torch.zeros(batch_size, dtype=torch.long)} for _ in range(steps)]


class _StepTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter() - self.start)


def seconds_per_step(model_name: str, batches: list[dict], traced: bool) -> float:
    """Median time of a whole training step (loop, augmentation, forward, backward, optimizer), warm-up excluded."""
    torch.manual_seed(0)
    task = ClassifierTask(create_model(model_name), OptimConfig.from_config(OPTIM.defaults()))
    timer = _StepTimer()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[timer])
    with Recorder() if traced else contextlib.nullcontext():
        trainer.fit(task, torch.utils.data.DataLoader(batches, batch_size=None))
    return statistics.median(timer.times[2:])


def calls_per_step(model_name: str, batches: list[dict]) -> int:
    """Python function calls in one training step (what the hook is invoked for)."""
    count = [0]

    def counting(frame, event, arg):
        count[0] += 1

    class Counter(L.Callback):
        def on_train_batch_start(self, *args) -> None:
            self.first = count[0]

        def on_train_batch_end(self, *args) -> None:
            self.calls = count[0] - self.first

    counter = Counter()
    task = ClassifierTask(create_model(model_name), OptimConfig.from_config(OPTIM.defaults()))
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[counter])
    sys.settrace(counting)
    try:
        trainer.fit(task, torch.utils.data.DataLoader(batches[:3], batch_size=None))
    finally:
        sys.settrace(None)
    return counter.calls


def hook_cost(n: int = 200_000) -> float:
    """Seconds the hook adds to one Python function call."""
    def noop():
        pass

    start = time.perf_counter()
    for _ in range(n):
        noop()
    plain = time.perf_counter() - start
    with Recorder():
        start = time.perf_counter()
        for _ in range(n):
            noop()
        traced = time.perf_counter() - start
    return (traced - plain) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="cpmobile_baseline")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    batches = _batches(args.batch_size, args.steps)
    plain, traced = [], []
    for i in range(args.repeats):  # alternate which goes first
        for flag in ((False, True) if i % 2 == 0 else (True, False)):
            (traced if flag else plain).append(seconds_per_step(args.model, batches, traced=flag))
    p, t = statistics.median(plain), statistics.median(traced)
    calls, cost = calls_per_step(args.model, batches), hook_cost()
    print(f"{cpu_model()}, {torch.get_num_threads()} threads; {args.model}, batch {args.batch_size}, "
          f"{args.steps} steps x {args.repeats} runs")
    print(f"measured: without recorder {1000 * p:7.1f} ms/step, with recorder {1000 * t:7.1f} ms/step "
          f"({100 * (t / p - 1):+.1f} %, within run-to-run noise when small)")
    print(f"estimate: {calls:,} Python calls per step x {1e6 * cost:.2f} us per call = {1000 * calls * cost:.2f} "
          f"ms/step ({100 * calls * cost / p:.2f} % of a step)")


if __name__ == "__main__":
    main()
