"""``bench check``: the complexity compliance gate for CI (exit 0 only if every device model complies)."""

from __future__ import annotations

import importlib
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from bench.cli.app import app
from bench.cli.output import err, out, print_json
from bench.errors import ComplexityError, SubmissionError
from bench.packages.loader import PackageError
from bench.packages.sandbox import SandboxUnavailable
from bench.runs import find_run
from bench.system import SystemError_


def _from_callable(target: str, input_shape: str, dtype: str):
    from bench.score.complexity import DeviceModel, count_devices

    module_name, _, attr = target.partition(":")
    sys.path.insert(0, str(Path.cwd()))
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # whatever importing the user's module raises: cannot count
        raise SubmissionError(f"{target}: cannot import ({type(exc).__name__}: {exc})") from exc
    try:
        model = factory()
    except Exception as exc:
        raise SubmissionError(f"{target}: calling it raised {type(exc).__name__}: {exc}") from exc
    shape = tuple(int(x) for x in input_shape.split(","))
    return count_devices({"all": DeviceModel(model, shape, dtype)})


def _sandboxed(name: str, index: int | None, path: Optional[Path], sandbox: bool):
    """An official package module's check, run in the sandbox."""
    from bench.packages.loader import discover
    from bench.packages.runner import check_package
    from bench.packages.sandbox import Isolation

    return check_package(discover(name, path, index)[0], Isolation(sandbox=sandbox))


def _load(target: str, input_shape: Optional[str], dtype: str, path: Optional[Path], sandbox: bool):
    """The per-device complexity of a run/submission folder, an official package module, or a module:callable."""
    from bench.packages.export import export_package, submission_dir
    from bench.packages.loader import parse_package
    from bench.score.scorer import official_complexity
    from bench.submission import load_submission
    from bench.trust import is_foreign

    if path is not None or re.fullmatch(r"\w+_task1(:\d)?", target):  # an official package: sandboxed
        return _sandboxed(*parse_package(target), path, sandbox)

    folder = find_run(target)
    if folder.is_dir():
        folder = submission_dir(folder)
        if is_foreign(folder):  # its own code, not made here: checked in the sandbox, as an exported package
            with tempfile.TemporaryDirectory(prefix="ascbench-foreign-") as tmp:
                export_package(folder, Path(tmp), "Foreign")
                return _sandboxed("Foreign_task1", 1, Path(tmp), sandbox)
        return official_complexity(load_submission(folder))
    if ":" in target:
        if not input_shape:
            raise SubmissionError(f"{target}: a module:callable target needs --input-shape, e.g. 1,1,256,65")
        return _from_callable(target, input_shape, dtype)
    raise SubmissionError(f"{target}: not a submission/run folder and not module:callable")


@app.command("check")
def check(target: str = typer.Argument(..., help="a run or submission folder (or latest[:system]), an official "
                                                 "package NAME_task1[:K], or module:callable returning an "
                                                 "nn.Module"),
          input_shape: Optional[str] = typer.Option(None, help="for module:callable: input shape, e.g. 1,1,256,65"),
          dtype: str = typer.Option("float32", help="for module:callable: deployed parameter dtype"),
          path: Optional[Path] = typer.Option(None, help="TARGET is an official package NAME[:K] in this source "
                                                        "folder; its code runs in the sandbox"),
          sandbox: bool = typer.Option(True, help="--no-sandbox: run a package's or foreign submission's code "
                                                  "unisolated"),
          as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Count MACs and parameter bytes per device model exactly like the DCASE 2025 check; exit 1 on a violation."""
    from bench.score.complexity import MAX_MACS, MAX_PARAM_BYTES

    try:
        result = _load(target, input_shape, dtype, path, sandbox)
    except (SubmissionError, ComplexityError, SystemError_, PackageError, SandboxUnavailable, OSError) as exc:
        err.print(f"[red]error:[/] cannot count: {exc}")
        raise typer.Exit(2)
    if as_json:
        print_json({**result.official_json(), "compliant": result.compliant, "countable": result.countable,
                    "counters": {d: r.counter for d, r in result.per_device.items()},
                    "limits": {"MACs": MAX_MACS, "Params": MAX_PARAM_BYTES},
                    "dtypes": {d: r.dtype for d, r in result.per_device.items()},
                    "reasons": {d: r.reasons for d, r in result.per_device.items() if r.reasons}})
    else:
        table = Table(title=f"{target}: limits {MAX_MACS:,} MACs and {MAX_PARAM_BYTES:,} B per device model")
        for col in ("device", "MACs", "param bytes", "dtype", "second opinions", "ok"):
            table.add_column(col, justify="left" if col in ("device", "dtype") else "right")
        for dev, r in result.per_device.items():
            table.add_row(dev, f"{r.macs:,}", f"{r.param_bytes:,}", r.dtype,
                          f"thop {r.thop_macs or 0:,} / dispatcher {r.dispatcher_macs:,}",
                          "[green]✓[/]" if r.compliant else f"[red]✗[/] {'; '.join(r.reasons)}")
            for note in r.notes:
                table.add_row("", "", "", "", "", f"[yellow]{note}[/]")
        out.print(table)
        out.print("[green]compliant[/]" if result.compliant else
                  "[red]cannot count[/]" if not result.countable else "[red]not compliant[/]")
    if not result.countable:
        raise typer.Exit(2)
    if not result.compliant:
        raise typer.Exit(1)
