"""The DCASE 2025 baseline's official training recipe through the plugin interface, in training clips/s, beside
the official script's figure.

``python -m bench.benchmarks.official_recipe [--epochs 1 3] [--threads N]``

Trains the baseline's general stage (``systems/baseline``, paper profile: the official ``train_base.py`` settings —
batch 256, AdamW lr 5e-3 and weight decay 1e-4, 2,000 warm-up steps, Freq-MixStyle p 0.4 / alpha 0.3, time roll
0.1 s, frequency masking 48) on the embedded default data, once for each of ``--epochs`` epochs, each time from an
empty cache in a throwaway ``$ASCBENCH_HOME`` (``bench run ... --until general``). Clips/s = the extra training
clips of the longer run / its extra wall time, so start-up, data packing and validation cancel out.

Reference: the official ``train_base.py`` (CPJKU/dcase2025_task1_baseline; decodes and resamples every WAV every
epoch, 2 loader workers) trained **48.1 clips/s** on the same data, measured by the same method on the project's
reference machine (2 cores, Intel Sapphire Rapids, 2026-12-01). It is not run here: its code is not part of
ascbench. Compare on that machine; elsewhere the ratio is indicative only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.data.sources import resolve
from bench.provenance import cpu_model

OFFICIAL_CLIPS_PER_S = 48.1  # train_base.py on the reference machine (see the module docstring)
BATCH_SIZE = 256             # the paper profile's, as train_base.py's
BASELINE = Path(__file__).resolve().parents[2] / "systems" / "baseline"


def _system(folder: Path, epochs: int) -> Path:
    """The baseline with the paper profile's general-stage epochs set to ``epochs`` (``--until general`` stops there)."""
    folder.mkdir(parents=True)
    shutil.copy(BASELINE / "system.py", folder / "system.py")
    toml = (BASELINE / "system.toml").read_text()
    toml, n_epochs = re.subn(r'(?s)(\[profiles\.paper\.general\]\nepochs = )\d+', rf"\g<1>{epochs}", toml)
    if n_epochs != 1:
        raise RuntimeError(f"{BASELINE / 'system.toml'}: no [profiles.paper.general] epochs to set; update "
                           "bench/benchmarks/official_recipe.py")
    (folder / "system.toml").write_text(toml)
    return folder


def train_wall(epochs: int, data: Path, threads: int, work: Path) -> tuple[float, int]:
    """(wall seconds of ``bench run`` of the general stage for ``epochs`` epochs from an empty cache, the clips it
    trains on per epoch: full batches only, as the loader drops the last partial one)."""
    system = _system(work / f"baseline-{epochs}", epochs)
    env = {**os.environ, "ASCBENCH_HOME": str(work / f"home-{epochs}")}
    start = time.perf_counter()
    command = [sys.executable, "-m", "bench", "run", str(system), "--data", str(data),
               "--profile", "paper", "--until", "general", "--board", "none", "--no-progress", "--threads", str(threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench run {system} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    out = done.stdout
    wall = time.perf_counter() - start
    n_fit = int(re.search(r"(\d+) training / \d+ validation clips", " ".join(out.split())).group(1))
    return wall, n_fit // BATCH_SIZE * BATCH_SIZE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", nargs=2, type=int, default=[1, 3])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    data = Path(resolve(None).store.info["source"])  # the embedded default data, generated once if missing
    short, long = sorted(args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        (t_short, per_epoch), (t_long, _) = (train_wall(e, data, args.threads, Path(tmp)) for e in (short, long))
    rate = (long - short) * per_epoch / (t_long - t_short)
    print(f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores; torch {torch.__version__}; {args.threads} "
          f"thread{'s' * (args.threads > 1)}")
    print(f"baseline general stage, official recipe (batch {BATCH_SIZE}), {per_epoch} clips per epoch: {short} "
          f"epoch{'s' * (short > 1)} {t_short:.1f} s, {long} epochs {t_long:.1f} s -> {rate:.1f} clips/s; the official "
          f"train_base.py {OFFICIAL_CLIPS_PER_S} clips/s on the reference machine: {rate / OFFICIAL_CLIPS_PER_S:.2f}x")


if __name__ == "__main__":
    main()
