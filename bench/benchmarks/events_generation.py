"""Time generating the sound-event pre-training corpus from scratch: ``python -m bench.benchmarks.events_generation
[--profile default] [--prepare]``.

``--prepare`` also times packing it into a fresh store (what ``--data events`` does on first use). The load
average is printed before and after, because other work on the machine slows generation down.

Measured 2026-12-01 on the project's 2-core machine while other work shared it (docs/data.md has the table):
events-default 6,000 clips (5,400 train + 600 validation), 385 MB, in 88.0 s at load 2.2 and 152.6 s while other
training started (load 0.6 -> 4.0), packed into a store in 7.7-8.4 s; events-smoke 48 clips in 2.1 s, 3 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.data.manifest import load_manifest
from bench.data.synth.events import generate_events


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--prepare", action="store_true", help="also time packing it into a store")
    args = parser.parse_args()
    name = f"events-{args.profile}"
    g = load_manifest(name).generator
    n = g["train_clips"] + g["validation_clips"]
    cores = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp())
    try:
        load_before = _load()
        start = time.perf_counter()
        generate_events(name, args.seed, work / "events", workers=args.workers)
        wall = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (work / "events").rglob("*") if p.is_file())
        print(f"{name}: {n} clips in {wall:.1f} s ({n / wall:.0f} clips/s) on {cores} cores, {size / 1e6:.0f} MB; "
              f"load average (1/5/15 min) before {load_before}, after {_load()}")
        if args.prepare:
            from bench.data.store import prepare

            start = time.perf_counter()
            report = prepare(work / "events", store_dir=work / "store")
            wall = time.perf_counter() - start
            store_mb = (work / "store" / "audio.i16").stat().st_size / 1e6
            print(f"{name}: prepared {report.store.info['n']} clips into a store in {wall:.1f} s "
                  f"({report.store.info['n'] / wall:.0f} clips/s), {store_mb:.0f} MB; load average after {_load()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
