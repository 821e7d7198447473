"""The training cache: one folder per result (a stage of a system, a shared teacher), reused only when valid.

An entry is named by the hash of its static inputs (:func:`bench.identity.digest_of`) and, once finished, holds
``artifacts.pt`` and ``done.json``: the static inputs, the harness files its code ran with their SHA-256
(:class:`bench.identity.Recorder`), and who trained it (commit, harness source hash, time). :meth:`CacheEntry.lookup`
says whether it can be reused and, if not, why ("bench/augment.py changed", "config lr: 0.004 → 0.002",
"not trained before"). Interrupted work (Lightning checkpoints of the fits inside) is resumed unless harness code it
ran has changed since it started. Two processes that need the same entry at once take turns (:meth:`CacheEntry.lock`):
the second waits, then finds the finished entry and reuses it — or, inside :func:`skipping_busy_entries`, raises
:class:`EntryBusy` and does other work first.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from bench import __version__
from bench.identity import (Recorder, digest_of, explain_change, harness_digest, harness_files, running_harness,
                            stale_dependencies)
from bench.provenance import git_state, utc_now


class EntryBusy(Exception):
    """Another process holds the entry, and this one was asked not to wait for it."""


_WAIT_FOR_BUSY = contextvars.ContextVar("wait_for_busy_entries", default=True)


@contextlib.contextmanager
def skipping_busy_entries() -> Iterator[None]:
    """Inside: taking an entry another process holds raises :class:`EntryBusy` instead of waiting for it (a process
    with other work to do does that first). Entries already held are kept and released as the exception unwinds."""
    token = _WAIT_FOR_BUSY.set(False)
    try:
        yield
    finally:
        _WAIT_FOR_BUSY.reset(token)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def trained_by() -> dict[str, Any]:
    """The code that produced a result: git commit (and whether the checkout differed from it), harness version
    and the hash of its source files (which identifies the code without git, e.g. a wheel install)."""
    commit, dirty = git_state()
    return {"git_commit": commit, "git_dirty": dirty, "harness_version": __version__,
            "harness_source": harness_digest(), "at": utc_now().isoformat()}


class CacheEntry:
    def __init__(self, root: Path, name: str, static: dict[str, Any], label: dict[str, Any] | None = None):
        self.root, self.name, self.static, self.label = Path(root), name, static, dict(label or {})
        self.key = digest_of(static)
        self.dir = self.root / f"{name}-{self.key[:16]}"
        self.info: dict[str, Any] | None = None

    @property
    def done_path(self) -> Path:
        return self.dir / "done.json"

    @property
    def artifacts_path(self) -> Path:
        return self.dir / "artifacts.pt"

    @property
    def resolved_key(self) -> str:
        """Static inputs plus the recorded harness dependencies: what later stages' keys build on."""
        assert self.info is not None, "resolved_key of an unfinished entry"
        return digest_of([self.key, self.info["dependencies"]])

    def lookup(self) -> tuple[bool, list[str]]:
        """(reusable, reasons it is not)."""
        if self.done_path.exists() and self.artifacts_path.exists():
            info = json.loads(self.done_path.read_text())
            stale = stale_dependencies(info["dependencies"])
            if not stale:
                self.info = info
                return True, []
            return False, stale
        previous = self._previous()
        if previous is None:
            return False, ["not trained before"]
        return False, explain_change(previous["static"], self.static) or ["inputs changed"]

    def _previous(self) -> dict[str, Any] | None:
        """The newest finished sibling entry, preferring one of the same profile, variant and seed."""
        found = []
        for done in self.root.glob(f"{self.name}-*/done.json"):
            try:
                info = json.loads(done.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if info.get("name") == self.name:
                found.append((info.get("label") == self.label, done.stat().st_mtime, info))
        return max(found, key=lambda f: f[:2])[2] if found else None

    @contextlib.contextmanager
    def lock(self, console: Console) -> Iterator[None]:
        """Hold this entry exclusively (an flock on a sibling file, released when the process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{self.dir.name}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not _WAIT_FOR_BUSY.get():
                    raise EntryBusy(self.name) from None
                console.print(f"  [yellow]{self.name}: another process is training it; waiting to reuse its "
                              "result[/]")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            except EntryBusy:  # an entry this one needs first is busy: nothing was done here yet
                if self.dir.is_dir() and [p.name for p in self.dir.iterdir()] == ["started.json"]:
                    shutil.rmtree(self.dir)
                raise

    def load_artifacts(self) -> dict[str, Any]:
        return torch.load(self.artifacts_path, map_location="cpu", weights_only=True)

    def prepare_work(self, console: Console) -> None:
        """Before training: drop a stale finished entry, and interrupted work whose harness code has changed."""
        started = self.dir / "started.json"
        if self.done_path.exists():
            shutil.rmtree(self.dir)
        elif started.exists():
            changed = self._changed_since_start(json.loads(started.read_text()))
            if changed:
                console.print(f"  [yellow]{self.dir}: discarding interrupted work ({', '.join(changed[:3])} changed "
                              "since it started)[/]")
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not started.exists():
            write_json(started, {"static": self.static, "harness_files": running_harness()})

    def _changed_since_start(self, started: dict[str, Any]) -> list[str]:
        current = harness_files()
        seen_path = self.dir / "interrupted.json"
        names = json.loads(seen_path.read_text())["seen"] if seen_path.exists() else started["harness_files"]
        return [n for n in sorted(names) if current.get(n) != started["harness_files"].get(n)]

    def note_interrupted(self, recorder: Recorder) -> None:
        """Which harness files the interrupted work had run so far (resume then depends on those only)."""
        write_json(self.dir / "interrupted.json", {"seen": sorted(recorder.dependencies())})

    def store(self, artifacts: dict[str, Any], recorder: Recorder, wall_s: float, **extra: Any) -> None:
        tmp = self.artifacts_path.with_suffix(".tmp")
        torch.save(artifacts, tmp)
        os.replace(tmp, self.artifacts_path)
        self.info = {"name": self.name, "key": self.key, "label": self.label, "static": self.static,
                     "dependencies": recorder.dependencies(), "traced": recorder.complete, "wall_s": wall_s,
                     "trained_by": trained_by(), **extra}
        write_json(self.done_path, self.info)
        (self.dir / "interrupted.json").unlink(missing_ok=True)
