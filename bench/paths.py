"""Where the harness finds what it ships (manifests, systems, the reference board) and keeps what it makes.

Shipped resources come from the installed package (``bench/resources/…`` in a wheel) or, in a source checkout,
from the checkout's top-level folders, so ``pip install .`` works from any working directory. Generated data,
stores, caches and run folders live under one data home (``$ASCBENCH_HOME``, default ``~/.cache/ascbench``).
Leaderboards named without a path live in the boards folder: ``./leaderboards/`` when the working directory has
one (a checkout or a project folder), else ``$ASCBENCH_HOME/leaderboards/``.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
BUNDLED = PACKAGE_ROOT / "resources"


def _resource(name: str) -> Path:
    bundled = BUNDLED / name
    return bundled if bundled.is_dir() else REPO_ROOT / name


MANIFEST_DIR = _resource("data_manifests")
SYSTEMS_DIR = _resource("systems")
REFERENCE_BOARDS = _resource("leaderboards")
DEFAULT_BOARD_NAME = "local"   # a user's runs; the committed reference board is "main"
REFERENCE_BOARD_NAME = "main"


def data_home() -> Path:
    """Root of the harness cache: ``$ASCBENCH_HOME`` or ``~/.cache/ascbench``."""
    env = os.environ.get("ASCBENCH_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ascbench"


def corpus_dir(corpus: str, profile: str, seed: int) -> Path:
    """Default location of a generated corpus (``synth`` scenes, ``events``): ``<corpus>-<profile>-seed<seed>``."""
    return data_home() / "datasets" / f"{corpus}-{profile}-seed{seed}"


def synth_dir(profile: str, seed: int) -> Path:
    """Default location of a generated synthetic dataset."""
    return corpus_dir("synth", profile, seed)


def runs_dir() -> Path:
    return data_home() / "runs"


def boards_dir() -> Path:
    local = Path.cwd() / "leaderboards"
    return local if local.is_dir() else data_home() / "leaderboards"


def _is_name(arg: str) -> bool:
    return "/" not in arg and os.sep not in arg and not arg.endswith(".parquet")


def board_path(arg: str | os.PathLike | None = None, reading: bool = False) -> Path:
    """A ``--board`` argument as a file: a bare NAME is ``<boards folder>/NAME.parquet`` (default ``local``), a
    path stays a path. When reading ``main`` and the boards folder has none, the shipped reference board."""
    arg = str(arg) if arg is not None else DEFAULT_BOARD_NAME
    if not _is_name(arg):
        return Path(arg).expanduser()
    path = boards_dir() / f"{arg}.parquet"
    reference = REFERENCE_BOARDS / f"{arg}.parquet"
    if reading and not path.exists() and arg == REFERENCE_BOARD_NAME and reference.exists():
        return reference
    return path


def system_search_roots() -> list[Path]:
    """Where ``bench systems`` looks: ``./systems`` (when the working directory has one) and the shipped systems."""
    roots = [Path.cwd() / "systems", SYSTEMS_DIR]
    out: list[Path] = []
    for root in roots:
        if root.is_dir() and root.resolve() not in [r.resolve() for r in out]:
            out.append(root)
    return out


def find_system(arg: str | os.PathLike) -> Path:
    """A system argument as a folder: a path (relative to the working directory), else a shipped system by name
    (``dsflexinet`` or ``systems/dsflexinet``)."""
    path = Path(arg).expanduser()
    if path.is_dir():
        return path
    name = Path(str(arg).removeprefix("systems/").removeprefix("systems" + os.sep))
    shipped = SYSTEMS_DIR / name
    return shipped if shipped.is_dir() else path
