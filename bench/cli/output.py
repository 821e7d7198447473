"""Command output that survives CI logs.

On a terminal, rich formats for the terminal's width. Anywhere else (a pipe, a CI log, ``| cat``) lines are laid
out at their natural width: no path, file name or error is wrapped or cut, so ``grep`` finds it. ``--json`` prints
one JSON document on stdout and nothing else (progress and messages go to stderr).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console

UNWRAPPED_WIDTH = 100_000


class _StreamConsole:
    """A rich Console for ``sys.stdout`` / ``sys.stderr`` as they are *now* (tests and ``--json`` swap them)."""

    def __init__(self, stream: str):
        self.stream = stream
        self._bound: tuple[Any, Console] | None = None

    def get(self) -> Console:
        stream = getattr(sys, self.stream)
        if self._bound is None or self._bound[0] is not stream:
            terminal = hasattr(stream, "isatty") and stream.isatty()
            self._bound = (stream, Console(file=stream, soft_wrap=True, width=None if terminal else UNWRAPPED_WIDTH,
                                           highlight=False))
        return self._bound[1]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


out = _StreamConsole("stdout")
err = _StreamConsole("stderr")


def print_json(data: Any) -> None:
    """The one JSON document of a ``--json`` command, on the real stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def json_mode(enabled: bool) -> Iterator[None]:
    """While enabled, everything printed to stdout (progress, library chatter) goes to stderr instead, so stdout
    holds only what :func:`print_json` writes after the block."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield
