"""Scoring throughput of ``bench score --submission``: test clips per second of wall time, every column on (INT8
and energy included), beside the official package path's figure.

``python -m bench.benchmarks.scoring_throughput [--submission DIR] [--threads N] [--phases]``

Scores, on the embedded default data's test split, a saved submission (``--submission``: e.g. a run folder's
``submission/``), by default one shaped like the adaptive-KD system's: CP-Mobile on the PaSST-style mel, an fp16
model per training device and one for unknown devices, untrained (throughput does not depend on the weights). The
wall time is the whole command — start-up, predictions, the official complexity count, INT8 quantization and its
predictions, energy measurement, the row — so clips/s = test clips / wall.

``--phases`` then scores the submission once more, in this process, as the command does, and prints the wall
seconds of each phase (the scorer's own timings) and the start-up (the command's wall minus its row's
``wall_s_score``): which costs are per clip and which are per device model.

Reference: Jeong & Kim's official inference package (DCASE 2025 Task 1, run through its own ``predict``: decodes
each WAV, computes the features, infers) scored **90 clips/s** on the project's reference machine (2 cores, Intel
Sapphire Rapids, 2026-12-01); it is not run here (its code is not part of ascbench).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.data.manifest import load_manifest
from bench.data.sources import resolve
from bench.models import create_model
from bench.provenance import cpu_model
from bench.score.scorer import ScoreOptions, calibration_clips, score_submission
from bench.submission import ModelSubmission, load_submission, read_info, save_submission

OFFICIAL_PACKAGE_CLIPS_PER_S = 90.0  # Jeong & Kim's package on the reference machine (see the module docstring)
TRAINING_DEVICES = ("a", "b", "c", "s1", "s2", "s3")


def adaptive_kd_shaped(folder: Path, classes: list[str]) -> Path:
    """An untrained submission with the adaptive-KD system's deployments (fp16 CP-Mobile per training device)."""
    torch.manual_seed(0)
    models = {d: create_model("cpmobile_passt_mel") for d in TRAINING_DEVICES}
    sub = ModelSubmission.per_device("scoring-benchmark", classes, create_model("cpmobile_passt_mel"), models,
                                     "float16")
    return save_submission(sub, folder, {"system": "bench.benchmarks.scoring_throughput"})


def scoring_phases(submission: Path, store) -> dict[str, float]:
    """Wall seconds of each phase of scoring ``submission`` on the test split, every column on, in this process."""
    manifest = load_manifest(store.info["manifest"])
    sub = load_submission(submission)
    calib = calibration_clips(store, manifest, read_info(submission).get("validation"))
    return score_submission(sub, store, manifest, manifest.test_split, calib, ScoreOptions()).phase_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submission", type=Path)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--phases", action="store_true", help="then time each scoring phase (in this process)")
    args = parser.parse_args()
    store = resolve(None).store  # the embedded default data, generated once if missing
    n_test = len(store.split("test"))
    with tempfile.TemporaryDirectory() as tmp:
        submission = args.submission or adaptive_kd_shaped(Path(tmp) / "submission",
                                                           load_manifest(store.info["manifest"]).classes)
        env = {**os.environ, "ASCBENCH_THREADS": str(args.threads)}
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "bench", "score", "--submission",
                              str(submission), "--board", "none", "--json"], env=env, check=True,
                             capture_output=True, text=True).stdout
        wall = time.perf_counter() - start
        if args.phases:
            torch.set_num_threads(args.threads)
            phases = scoring_phases(submission, store)
    rows = json.loads(out)["rows"]
    print(f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores; torch {torch.__version__}; {args.threads} "
          f"thread{'s' * (args.threads > 1)}")
    print(f"bench score --submission ({submission if args.submission else 'adaptive-KD-shaped, fp16 x 7'}): "
          f"{n_test} test clips in {wall:.1f} s (INT8 and energy on) -> {n_test / wall:.1f} clips/s; the official "
          f"package path {OFFICIAL_PACKAGE_CLIPS_PER_S:.0f} clips/s on the reference machine: "
          f"{n_test / wall / OFFICIAL_PACKAGE_CLIPS_PER_S:.2f}x")
    for row in rows:
        shown = [k for k in ("clips_per_s", "wall_s_score") if isinstance(row.get(k), (int, float))]
        print(f"  row {row.get('submission')}: " + ", ".join(f"{k} {row[k]:.1f}" for k in shown)
              + (f"; fp16 arithmetic {row['fp16_arithmetic']}" if row.get("fp16_arithmetic") else ""))

    if args.phases:
        scored = rows[0]["wall_s_score"]
        print(f"phases (scored once more in this process, {sum(phases.values()):.1f} s; the command's start-up: "
              f"imports, loading the submission and data, {wall - scored:.1f} s):")
        for name, seconds in phases.items():
            print(f"  {name:<60} {seconds:6.1f} s")


if __name__ == "__main__":
    main()
