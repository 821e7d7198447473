"""Training throughput on a shared machine: threads, parallel processes and a busy neighbour.

``python -m bench.benchmarks.shared_machine [--models passt_tiny cpresnet_128k] [--batch-size 32] [--steps 8]
[--arriving SECONDS]``

For each model, clips/s of the training step (front-end, forward, backward, Adam; random 1-s clips) measured in
fresh processes:

- quiet, with one thread per core (PyTorch's default), and with one thread;
- quiet, one process per core with one thread each, summed (how a run trains teachers in parallel);
- with a neighbour process spinning one core: one thread per core (the trap), and the threads
  ``bench.threads.choose_threads`` picks with the neighbour running;
- ``--arriving S``: a neighbour that comes after training has started, as in a run that counted its cores while the
  machine was quiet. One thread per core for S seconds quiet, S with the neighbour, S after it left; clips/s in the
  last two thirds of each phase (after the governor's two windows), with the thread count fixed and with
  ``bench.threads.ThreadGovernor`` polled before every step, as a fit does.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch

from bench import allocator
from bench.benchmarks.teacher_throughput import train_rate, training_step
from bench.provenance import cpu_model
from bench.threads import ThreadGovernor, choose_threads, usable_cores

FORK = mp.get_context("fork")


def _measure(name: str, batch_size: int, steps: int, threads: int, out) -> None:
    torch.set_num_threads(threads)
    out.put(train_rate(name, batch_size, steps)[0])


def rates(name: str, batch_size: int, steps: int, threads: int, processes: int = 1) -> list[float]:
    """Training clips/s of each of ``processes`` processes running at once with ``threads`` threads each."""
    out = FORK.Queue()
    workers = [FORK.Process(target=_measure, args=(name, batch_size, steps, threads, out)) for _ in range(processes)]
    for w in workers:
        w.start()
    got = [out.get() for _ in workers]
    for w in workers:
        w.join()
    return got


def _spin() -> None:
    while True:
        pass


def _arriving(name: str, batch_size: int, threads: int, phase_s: float, follow: bool, out) -> None:
    """Train for three phases of ``phase_s`` (quiet, a neighbour spinning one core, quiet again); put each phase's
    clips/s over its last two thirds, and the governor's changes."""
    torch.set_num_threads(threads)
    step_once, _ = training_step(name, batch_size)
    governor = ThreadGovernor(ceiling=threads, interval_s=min(5.0, phase_s / 6)) if follow else None
    rates, neighbour, step = [], None, 0
    try:
        for phase in range(3):
            if phase == 1:
                neighbour = FORK.Process(target=_spin, daemon=True)
                neighbour.start()
            elif phase == 2:
                neighbour.kill()
                neighbour.join()
            start = time.perf_counter()
            counted, clips = start + phase_s / 3, 0
            while (now := time.perf_counter()) < start + phase_s:
                if governor:
                    governor.poll(step)
                step_once()
                step += 1
                if now >= counted:
                    clips += batch_size
            rates.append(clips / (time.perf_counter() - counted))
    finally:
        if neighbour is not None and neighbour.is_alive():
            neighbour.kill()
    out.put((rates, governor.changes if governor else []))


def main() -> None:
    allocator.ensure()  # the allocator bench runs under (bench/allocator.py)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=["passt_tiny", "cpresnet_128k"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--arriving", type=float, default=0.0, metavar="SECONDS",
                        help="also: a neighbour that arrives during training (phases of SECONDS each)")
    args = parser.parse_args()
    cores = usable_cores()
    print(f"{cpu_model()}, {cores} usable cores, torch {torch.__version__}; batch {args.batch_size}, median of "
          f"{args.steps} steps; training clips/s")
    for name in args.models:
        def measure(threads: int, processes: int = 1) -> list[float]:
            return rates(name, args.batch_size, args.steps, threads, processes)

        all_threads, one = measure(cores)[0], measure(1)[0]
        parallel = measure(1, cores)
        print(f"{name}: quiet {cores} threads {all_threads:.1f} | 1 thread {one:.1f} | {cores} processes x 1 thread "
              f"{sum(parallel):.1f} in all ({' + '.join(f'{r:.1f}' for r in parallel)}): "
              f"{sum(parallel) / all_threads:.2f}x one process on {cores} threads")
        neighbour = FORK.Process(target=_spin, daemon=True)
        neighbour.start()
        try:
            time.sleep(1.0)
            busy = measure(cores)[0]
            picked, why = choose_threads()  # with the neighbour running, as a run starting now would
            chosen = measure(picked)[0]
        finally:
            neighbour.kill()
            neighbour.join()
        print(f"{name}: one core busy: {cores} threads {busy:.1f} ({busy / all_threads:.2f}x quiet) | the harness's "
              f"choice, {picked} thread{'s' * (picked > 1)} ({why}): {chosen:.1f} ({chosen / all_threads:.2f}x quiet)")
        if args.arriving:
            for follow in (False, True):
                out = FORK.Queue()
                worker = FORK.Process(target=_arriving, args=(name, args.batch_size, cores, args.arriving, follow,
                                                              out))
                worker.start()
                (quiet, busy, after), changes = out.get()
                worker.join()
                moves = ", ".join(f"{c['from']} -> {c['to']} at {c['after_s']:.0f} s" for c in changes) or "none"
                print(f"{name}: a neighbour arrives after {args.arriving:.0f} s, {cores} threads "
                      f"{'followed by the governor' if follow else 'kept'}: quiet {quiet:.1f} | neighbour {busy:.1f} "
                      f"({busy / quiet:.2f}x quiet) | after it left {after:.1f} ({after / quiet:.2f}x); changes: "
                      f"{moves}")


if __name__ == "__main__":
    main()
