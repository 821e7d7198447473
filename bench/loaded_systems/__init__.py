"""The namespace system folders are imported under: ``bench.loaded_systems.<slug>`` is a system folder as a package.

A system folder (``system.toml`` + ``system.py`` + any sibling modules) is a package, so its modules import each
other with relative imports (``from .nets import Net``) and its classes pickle by a stable module name. The folders
are found through the ``ASCBENCH_SYSTEM_FOLDERS`` environment variable (JSON ``{slug: folder}``): processes that
Lightning spawns for DDP inherit it and import the same modules when they unpickle a task.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

ENV = "ASCBENCH_SYSTEM_FOLDERS"
PREFIX = __name__ + "."


def folders() -> dict[str, str]:
    try:
        return json.loads(os.environ.get(ENV, "{}"))
    except json.JSONDecodeError:
        return {}


def slug_for(folder: Path) -> str:
    """A package name for a folder: its name (as an identifier) and a hash of its absolute path."""
    folder = Path(folder).resolve()
    name = re.sub(r"\W", "_", folder.name) or "system"
    return f"{name}_{hashlib.sha1(str(folder).encode()).hexdigest()[:10]}"


def register_folder(folder: Path) -> str:
    """Make ``folder`` importable as ``bench.loaded_systems.<slug>`` (here and in spawned children); returns the
    package name. Modules of an earlier import of the same folder are dropped, so edits are picked up."""
    folder = Path(folder).resolve()
    slug = slug_for(folder)
    mapping = folders()
    mapping[slug] = str(folder)
    os.environ[ENV] = json.dumps(mapping)
    package = PREFIX + slug
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    return package


def folder_of(module_name: str) -> Path | None:
    """The system folder a module of this namespace comes from."""
    if not module_name.startswith(PREFIX):
        return None
    folder = folders().get(module_name[len(PREFIX):].split(".")[0])
    return Path(folder) if folder else None


class _SystemFolderFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith(PREFIX) or "." in fullname[len(PREFIX):]:
            return None
        folder = folders().get(fullname[len(PREFIX):])
        if folder is None:
            return None
        init = Path(folder) / "__init__.py"
        if init.is_file():
            return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[folder])
        spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [folder]  # no __init__.py: a namespace package over the folder
        return spec


if not any(isinstance(f, _SystemFolderFinder) for f in sys.meta_path):
    sys.meta_path.append(_SystemFolderFinder())
