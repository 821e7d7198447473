"""Where the harness keeps generated data, prepared stores and run artefacts.

Everything lives under one data home so a fresh machine needs no configuration and a user can move it with
``ASCBENCH_HOME``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST_DIR = REPO_ROOT / "data_manifests"
SYSTEMS_DIR = REPO_ROOT / "systems"
DEFAULT_BOARD = REPO_ROOT / "leaderboards" / "main.parquet"


def data_home() -> Path:
    """Root of the harness cache: ``$ASCBENCH_HOME`` or ``~/.cache/ascbench``."""
    env = os.environ.get("ASCBENCH_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ascbench"


def synth_dir(profile: str, seed: int) -> Path:
    """Default location of a generated synthetic dataset."""
    return data_home() / "datasets" / f"synth-{profile}-seed{seed}"


def runs_dir() -> Path:
    return data_home() / "runs"
