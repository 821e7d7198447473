"""What recording a stage's harness dependencies costs: Lightning training steps with and without the
``sys.settrace`` hook of :class:`bench.identity.Recorder` (runs alternate, so drift hits both alike).

``python -m bench.benchmarks.dependency_recorder [--model cpmobile_baseline] [--batch-size 32] [--steps 20]``
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
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


def seconds_per_step(model_name: str, batches: list[dict], traced: bool) -> float:
    torch.manual_seed(0)
    task = ClassifierTask(create_model(model_name), OptimConfig.from_config(OPTIM.defaults()))
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    start = time.perf_counter()
    with Recorder() if traced else contextlib.nullcontext():
        trainer.fit(task, torch.utils.data.DataLoader(batches, batch_size=None))
    return (time.perf_counter() - start) / len(batches)


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
    for _ in range(args.repeats):
        plain.append(seconds_per_step(args.model, batches, traced=False))
        traced.append(seconds_per_step(args.model, batches, traced=True))
    p, t = statistics.median(plain), statistics.median(traced)
    print(f"{cpu_model()}, {torch.get_num_threads()} threads; {args.model}, batch {args.batch_size}, "
          f"{args.steps} steps x {args.repeats} runs")
    print(f"without recorder {1000 * p:7.1f} ms/step   with recorder {1000 * t:7.1f} ms/step   "
          f"overhead {100 * (t / p - 1):+.1f} %")


if __name__ == "__main__":
    main()
