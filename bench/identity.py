"""What decides a trained stage's output, so that a cached stage is reused only when all of it is unchanged.

A stage's **static inputs** are known before it runs: its resolved config (and every earlier stage's), every file of
the system folder, the dataset fingerprints, training split, validation locations, seed, profile, the process
layout (accelerator, devices, nodes) and the versions of torch, torchaudio, lightning, numpy and Python. Their hash
names the cache entry.

Its **harness dependencies** are found while it runs, like ccache's direct mode finds headers: :class:`Recorder`
notes every file of the harness package whose Python code executes during the stage (a ``sys.settrace`` hook that
sees function calls only, never lines). The finished entry stores those files' SHA-256; a later run reuses the entry
only if each still hashes the same, so editing ``bench/augment.py`` re-runs the stages that augment and leaves a
stage that never called it alone, and the user is told which file changed. Where the hook cannot see the code that
runs — a debugger or coverage tool already owns ``sys.settrace``, or training happens in DDP worker processes —
every harness file counts as a dependency (correct, only less precise).

Blind spot, documented in docs/systems.md: a module whose code never runs during the stage (a constants-only
module whose values are copied by ``from x import CONSTANT`` elsewhere) is not recorded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import bench

HARNESS_ROOT = Path(bench.__file__).resolve().parent
LIBRARIES = ("torch", "torchaudio", "lightning", "numpy")
_SKIP_PARTS = {"__pycache__", ".git", ".ipynb_checkpoints"}

_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (cached per path, size and modification time)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _digests[key]


def folder_files(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``folder`` (caches and VCS folders left out)."""
    folder = Path(folder)
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not _SKIP_PARTS & set(rel.parts) and path.suffix != ".pyc":
            out[rel.as_posix()] = file_digest(path)
    return out


def harness_name(filename: str) -> str | None:
    """``bench/augment.py`` for a file of the harness package, else None."""
    try:
        rel = Path(filename).resolve().relative_to(HARNESS_ROOT)
    except (ValueError, OSError):
        return None
    return (Path(HARNESS_ROOT.name) / rel).as_posix()


def harness_files() -> dict[str, str]:
    """Every source file of the installed harness package, as ``{bench/...: sha256}``."""
    return {f"{HARNESS_ROOT.name}/{rel}": digest for rel, digest in folder_files(HARNESS_ROOT).items()
            if rel.endswith(".py")}


_AT_START = harness_files()  # the code this process runs is the code as it was when it started


def running_harness() -> dict[str, str]:
    """The harness files as this process runs them: their digests when it started (later edits are not running)."""
    return {**harness_files(), **_AT_START}


def harness_digest() -> str:
    """One hash of the whole harness source as this process runs it: identifies the code when there is no git
    commit (a wheel install)."""
    return digest_of(running_harness())


def digest_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# ---- dependency recording ------------------------------------------------------------------------------------------

_active: list["Recorder"] = []
_OWN = f"{HARNESS_ROOT.name}/identity.py"  # the recorder's own bookkeeping decides nothing about an output
_lock = threading.Lock()


# The hook runs on every Python function call of a stage (FX quantization makes millions): it only adds the file
# to the current segment's set; a recorder starting, ending or asking for its dependencies closes the segment and
# gives its files to every recorder active during it. (One loop over the recorders per call made FX preparation
# 1.5x slower than untraced; this costs about 1.2x.)
_segment: set[str] = set()


def _trace(frame, event, arg):
    _segment.add(frame.f_code.co_filename)  # no line tracing (returns None): only function entries are seen


def _close_segment() -> None:
    """Give the files seen since the last boundary to the recorders active now (call with ``_lock`` held)."""
    global _segment
    done, _segment = _segment, set()
    for recorder in _active:
        recorder.seen |= done


class Recorder:
    """Context manager collecting the harness files whose code runs inside it (nested recorders all see them).

    ``complete`` is False when the hook could not be installed (another trace function is active) or the caller
    marks work it cannot see (``blind()``, e.g. DDP workers); :meth:`dependencies` then returns every harness file.
    """

    def __init__(self):
        self.seen: set[str] = set()
        self.extra: dict[str, str] = {}
        self.complete = True
        self._installed = False

    def __enter__(self) -> "Recorder":
        with _lock:
            _close_segment()  # what ran before this recorder started is not its dependency
            current = sys.gettrace()
            if current is not None and current is not _trace:
                self.complete = False  # a debugger or coverage owns the hook: depend on everything instead
            elif current is None:
                sys.settrace(_trace)
                threading.settrace(_trace)
                self._installed = True
            _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        with _lock:
            _close_segment()
            _active.remove(self)
            if self._installed:
                sys.settrace(None)
                threading.settrace(None)  # type: ignore[arg-type]

    def blind(self) -> None:
        """Code this process cannot watch produced part of the output: depend on the whole harness."""
        self.complete = False

    def dependencies(self) -> dict[str, str]:
        """``{bench/...: sha256}`` of the harness files that ran (all of them when incomplete), plus those noted.
        Digests are of the files as they were when this process started: that is the code that ran, even if a file
        is edited while a stage trains (the next run then sees the edit)."""
        files = running_harness()
        if self.complete:
            with _lock:
                _close_segment()
                seen = list(self.seen)  # a C-level copy: naming the files below runs Python code the hook records
            names = {n for n in map(harness_name, seen) if n is not None} - {_OWN}
            files = {n: d for n, d in files.items() if n in names}
        return {**files, **self.extra}


def note_dependencies(deps: Mapping[str, str]) -> None:
    """Fold a cached sub-result's dependencies (e.g. a teacher loaded from the shared cache) into every recorder
    running now, so the enclosing stage depends on them as if it had run their code."""
    for recorder in _active:
        recorder.extra.update(deps)


def blind_all() -> None:
    for recorder in _active:
        recorder.blind()


def stale_dependencies(deps: Mapping[str, str]) -> list[str]:
    """Which recorded harness files no longer hash the same ("bench/augment.py changed", "... was removed")."""
    current = harness_files()
    out = []
    for name, digest in sorted(deps.items()):
        if name not in current:
            out.append(f"{name} was removed")
        elif current[name] != digest:
            out.append(f"{name} changed")
    return out


def explain_change(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 6) -> list[str]:
    """Readable differences between the static inputs of two cache entries (which config key, which file)."""
    reasons: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        elif a != b:
            if path.startswith("system_files."):
                name = path.removeprefix("system_files.")
                reasons.append(f"system file {name} " + ("added" if a is None else "removed" if b is None
                                                           else "changed"))
            else:
                reasons.append(f"{path}: {_short(a)} → {_short(b)}")

    walk(dict(old), dict(new), "")
    return reasons[:limit] + ([f"and {len(reasons) - limit} more"] if len(reasons) > limit else [])


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def newest(records: Iterable[tuple[float, dict]]) -> dict | None:
    best = max(records, key=lambda r: r[0], default=None)
    return best[1] if best else None
