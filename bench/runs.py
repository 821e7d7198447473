"""The runs made on this machine: one folder each under ``$ASCBENCH_HOME/runs/<system>/``, described by its
``run.json`` (``bench runs`` lists them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.paths import runs_dir


def list_runs(system: str | None = None) -> list[dict[str, Any]]:
    """Every finished run (newest first), with its folder; runs that did not finish have no run.json."""
    root = runs_dir()
    pattern = f"{system}/*/run.json" if system else "*/*/run.json"
    out = []
    for path in root.glob(pattern):
        try:
            info = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        out.append({"run_dir": str(path.parent), **info})
    return sorted(out, key=lambda r: r.get("started_at", ""), reverse=True)


def find_run(arg: str | Path) -> Path:
    """A run folder from a path, or ``latest`` / ``latest:<system>`` for the newest run that built a submission
    (a ``--until`` run stops before that)."""
    text = str(arg)
    if text == "latest" or text.startswith("latest:"):
        runs = [r for r in list_runs(text.partition(":")[2] or None) if not r.get("until")]
        if not runs:
            raise FileNotFoundError(f"{text}: no finished runs with a submission under {runs_dir()}")
        return Path(runs[0]["run_dir"])
    return Path(arg)
