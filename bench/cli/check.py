"""``bench check``: the complexity compliance gate for CI (exit 0 only if every device model complies)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from bench.cli.app import app
from bench.cli.output import err, out, print_json
from bench.errors import ComplexityError, SubmissionError
from bench.packages.loader import PackageError
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


def _load(target: str, input_shape: Optional[str], dtype: str):
    """The per-device complexity of a run/submission folder or a module:callable."""
    from bench.packages.export import submission_dir
    from bench.score.scorer import official_complexity
    from bench.submission import load_submission

    path = find_run(target)
    if path.is_dir():
        return official_complexity(load_submission(submission_dir(path)))
    if ":" in target:
        if not input_shape:
            raise SubmissionError(f"{target}: a module:callable target needs --input-shape, e.g. 1,1,256,65")
        return _from_callable(target, input_shape, dtype)
    raise SubmissionError(f"{target}: not a submission/run folder and not module:callable")


@app.command("check")
def check(target: str = typer.Argument(..., help="a trained submission or run folder, or module:callable "
                                                 "returning an nn.Module"),
          input_shape: Optional[str] = typer.Option(None, help="for module:callable: input shape, e.g. 1,1,256,65"),
          dtype: str = typer.Option("float32", help="for module:callable: deployed parameter dtype"),
          as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Count MACs and parameter bytes per device model exactly like the DCASE 2025 check; exit 1 on a violation."""
    from bench.score.complexity import MAX_MACS, MAX_PARAM_BYTES

    try:
        result = _load(target, input_shape, dtype)
    except (SubmissionError, ComplexityError, SystemError_, PackageError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/] cannot count: {exc}")
        raise typer.Exit(2)
    if as_json:
        print_json({**result.official_json(), "compliant": result.compliant,
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
        out.print(table)
        out.print("[green]compliant[/]" if result.compliant else "[red]not compliant[/]")
    if not result.compliant:
        raise typer.Exit(1)
