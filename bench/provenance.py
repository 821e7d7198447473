"""Run provenance: which code, packages and machine produced a result.

Scores move with counter versions, thread counts and uncommitted edits, so every leaderboard row carries enough of
this to explain (or reproduce) its numbers.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from bench import __version__
from bench.paths import REPO_ROOT

# provenance key -> installed distribution names to try (thop ships as ``ultralytics-thop``)
PACKAGES = {
    "torch": ("torch",),
    "torchaudio": ("torchaudio",),
    "torchinfo": ("torchinfo",),
    "thop": ("ultralytics-thop", "thop"),
    "codecarbon": ("codecarbon",),
    "lightning": ("lightning",),
}


def utc_now() -> datetime:
    """Timezone-aware UTC timestamp, the form the leaderboard stores."""
    return datetime.now(timezone.utc)


def package_version(*dists: str) -> str | None:
    """Version of the first installed distribution among alternative names, else None."""
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str | None:
    """Marketing name of the CPU: /proc/cpuinfo on Linux (x86 and ARM keys), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def _run_git(*args: str) -> str | None:
    """Output of a read-only git command in the harness checkout; None without git or on error.

    ``--no-optional-locks`` keeps ``git status`` from rewriting the index while someone else commits.
    """
    try:
        return subprocess.run(["git", "--no-optional-locks", "-C", str(REPO_ROOT), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def _own_checkout() -> bool:
    """Whether the harness runs from its own git checkout, not installed inside some unrelated repository."""
    top = _run_git("rev-parse", "--show-toplevel")
    return top is not None and Path(top).resolve() == REPO_ROOT.resolve()


def _git(*args: str) -> str | None:
    return _run_git(*args) if _own_checkout() else None


# What the harness itself writes into a checkout: never a reason to call the code dirty.
OWN_OUTPUTS = ("leaderboards",)


def git_state() -> tuple[str | None, bool | None]:
    """(HEAD commit, whether the checkout's code differs from it); (None, None) when not run from a git checkout.

    Untracked, non-ignored files count as dirty: a new system module changes results as much as an edit does.
    The harness's own outputs (the leaderboards a run appends to) do not.
    """
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git("status", "--porcelain", "--", ".", *(f":(exclude){p}" for p in OWN_OUTPUTS))
    return commit, None if status is None else bool(status)


@functools.lru_cache(maxsize=1)
def _static() -> dict:
    """The parts that cannot change while the process lives."""
    versions = {key: package_version(*dists) for key, dists in PACKAGES.items()}
    return {"harness_version": __version__, "python": platform.python_version(), **versions,
            "cpu_model": cpu_model(), "host": socket.gethostname()}


def _gpu_model() -> str | None:
    """The GPU this process used; None if it never touched CUDA (asking would initialise CUDA and break forking)."""
    import torch

    if not torch.cuda.is_initialized():
        return None
    return torch.cuda.get_device_name(torch.cuda.current_device())


def collect() -> dict:
    """Provenance fields of a leaderboard row, as they stand now in this process."""
    import torch

    from bench.identity import harness_digest

    commit, dirty = git_state()
    return {**_static(), "harness_source": harness_digest(), "git_commit": commit, "git_dirty": dirty,
            "gpu_model": _gpu_model(), "threads": torch.get_num_threads()}
