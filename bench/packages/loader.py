"""Finding an official package's modules (parent side, no package code runs) and importing one (child side).

A package is ``<Label>_task1`` with modules ``<Label>_task1_<k>`` (k = 1..4) and a ``resources/`` folder. It is
either installed or lives in a source folder (``--path``); source folders are imported through a ``sys.path``
entry instead of being installed, because many packages declare ``python_requires>=3.13``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

MAX_MODULES = 4
API = ("load_model", "load_inputs", "get_model_for_device", "predict")
# import name -> pip name, where they differ, for the missing-dependency message
PIP_NAMES = {"sklearn": "scikit-learn", "yaml": "pyyaml", "cv2": "opencv-python", "PIL": "pillow",
             "skimage": "scikit-image", "hydra": "hydra-core"}


class PackageError(RuntimeError):
    """A package that does not follow the official API; the message is the reason shown on the board."""


@dataclass(frozen=True)
class PackageSpec:
    """One module of a package: ``name`` is ``<Label>_task1``, ``index`` is k, ``path`` the folder put on
    ``sys.path`` and ``source`` the folder the user named (``--path``: the source folder, or the package folder
    itself) — what the sandbox lets the package read."""

    name: str
    index: int
    path: Path | None = None
    source: Path | None = None

    @property
    def submission(self) -> str:
        return f"{self.name}_{self.index}"

    @property
    def module(self) -> str:
        return f"{self.name}.{self.submission}"

    @property
    def label(self) -> str:
        return self.name.removesuffix("_task1")


def parse_package(arg: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:K`` -> (name, k or None)."""
    name, _, index = arg.partition(":")
    if not name.isidentifier():
        raise PackageError(f"{arg!r}: the package name must be a Python identifier such as Schmid_CPJKU_task1")
    if index and not (index.isdigit() and 1 <= int(index) <= MAX_MODULES):
        raise PackageError(f"{arg!r}: the module index must be 1..{MAX_MODULES}")
    return name, int(index) if index else None


def package_dir(name: str, path: Path | None) -> Path:
    """The package folder, located without executing it (``find_spec`` of a top-level name imports nothing)."""
    if path is not None:
        folder = source_root(name, path) / name
        if not folder.is_dir():
            raise PackageError(f"no package folder {name}/ in {path}")
        return folder
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PackageError(f"package {name} is not installed; pip install it, or pass --path with its source folder")
    return Path(list(spec.submodule_search_locations)[0])


def source_root(name: str, path: Path) -> Path:
    """The folder to put on ``sys.path``: ``path`` itself, or its parent when ``path`` is the package folder."""
    path = Path(path).expanduser().resolve()
    return path.parent if path.name == name and not (path / name).is_dir() else path


def discover(name: str, path: Path | None, index: int | None = None) -> list[PackageSpec]:
    """The modules to score: ``index`` alone, or every ``<name>_<k>.py`` the package holds."""
    folder = package_dir(name, path)
    root = source_root(name, path) if path is not None else None
    found = [k for k in range(1, MAX_MODULES + 1) if (folder / f"{name}_{k}.py").is_file()]
    wanted = [index] if index is not None else found
    missing = [k for k in wanted if k not in found]
    if missing or not wanted:
        raise PackageError(f"{folder}: no module {name}_{missing[0] if missing else 'k'}.py "
                           f"(found: {', '.join(f'{name}_{k}' for k in found) or 'none'})")
    source = Path(path).expanduser().resolve() if path is not None else None
    return [PackageSpec(name, k, root, source) for k in wanted]


def import_module(spec: PackageSpec) -> ModuleType:
    """Import one module (child process only); checks that it exposes the four official functions."""
    if spec.path is not None:
        sys.path.insert(0, str(spec.path))  # kept for the child's life: packages import lazily inside predict()
    module = importlib.import_module(spec.module)
    absent = [f for f in API if not callable(getattr(module, f, None))]
    if absent:
        raise PackageError(f"{spec.module} lacks the official function(s) {', '.join(absent)}")
    return module


def missing_dependency(exc: BaseException, package: str, folder: Path | None = None) -> str | None:
    """One line naming a third-party module the package imports but the environment lacks, with the pip command;
    or, when the "missing" module is one of the package's own sub-folders or modules (``folder``) imported as a
    top-level name, a hint about ``sys.path`` instead (installing anything would not help)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    if top == package:
        return None  # a module of the package itself is missing: a packaging error, not a dependency
    if folder is not None and ((folder / top).is_dir() or (folder / f"{top}.py").is_file()):
        return (f"the package imports {top!r} as a top-level module, but {top} is part of the package itself "
                f"({folder.name}/{top}); that only works when {folder} is on sys.path, which the official "
                f"evaluation does not do: import it as {package}.{top} (or relatively, from . import {top})")
    return (f"missing dependency: the package imports {top!r}, which is not installed; "
            f"pip install {PIP_NAMES.get(top, top.replace('_', '-'))}")
