"""Time generating the embedded benchmark from scratch: ``python -m bench.benchmarks.synth_generation``."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.data.manifest import load_manifest
from bench.data.synth.generate import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp()) / "synth"
    try:
        start = time.perf_counter()
        generate(f"synth-{args.profile}", args.seed, out)
        wall = time.perf_counter() - start
        n = load_manifest(f"synth-{args.profile}").meta_rows
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"synth-{args.profile}: {n} clips in {wall:.1f} s ({n / wall:.0f} clips/s) on {os.cpu_count()} cores, "
              f"{size / 1e6:.0f} MB")
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
