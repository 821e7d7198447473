"""``bench run`` and ``bench systems``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from bench.cli.app import app
from bench.data.store import StoreError
from bench.data.tau import DatasetError
from bench.paths import DEFAULT_BOARD, SYSTEMS_DIR
from bench.run import RunResult, run_system
from bench.score.leaderboard import BoardError
from bench.submission import SubmissionError
from bench.system import SystemError_, discover
from bench.train.stages import Interrupted, StageError

console = Console(soft_wrap=True)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def summary_table(result: RunResult) -> Table:
    """One column per scored submission, one row per figure (devices vary by dataset, so they run down)."""
    rows = result.rows
    per_dev = [json.loads(r["acc_per_device"] or "{}") for r in rows]
    devices = sorted({d for p in per_dev for d in p}, key=lambda d: (len(d), d))
    table = Table(title=f"results ({result.run_dir})")
    table.add_column("")
    for r in rows:
        table.add_column(r["submission"], justify="right")

    def line(label, values):
        table.add_row(label, *values)

    line("macro acc (95% CI)", [f"{_pct(r['macro_acc'])} ({_pct(r['macro_acc_ci_low'])}–{_pct(r['macro_acc_ci_high'])})"
                                for r in rows])
    for d in devices:
        line(f"  device {d}", [_pct(p.get(d)) for p in per_dev])
    line("known / unseen", [f"{_pct(r['acc_known'])} / {_pct(r['acc_unseen'])}" for r in rows])
    line("MACs (max device)", [f"{r['max_macs']:,}" for r in rows])
    line("param bytes", [f"{r['max_param_bytes']:,} ({r['deploy_dtype']})" for r in rows])
    line("INT8 bytes / acc", [f"{r['int8_size_bytes']:,} / {_pct(r['int8_macro_acc'])}" if r.get("int8_size_bytes")
                              else (r.get("int8_error") or "-") for r in rows])
    line("energy J/clip", ["-" if r.get("energy_j_per_clip") is None else
                           f"{r['energy_j_per_clip']:.4f} ({r['energy_method']})" for r in rows])
    line("analytic µJ/clip", [f"{r['analytic_energy_uj_per_clip']:.1f}" for r in rows])
    line("compliant", ["[green]✓[/]" if r["compliant"] else f"[red]✗[/] {r['compliance_reasons']}" for r in rows])
    return table


@app.command("run")
def run(system: str = typer.Argument(..., help="system folder (e.g. systems/baseline) or a name under systems/"),
        data: Optional[str] = typer.Option(None, help="dataset folder, or 'synth' for the embedded benchmark "
                                                      "(default)"),
        profile: str = typer.Option("default", help="smoke | default | paper"),
        seed: int = typer.Option(0, help="training seed"),
        variant: Optional[str] = typer.Option(None, help="a [variants.NAME] of the system (ablations)"),
        board: Path = typer.Option(DEFAULT_BOARD, help="leaderboard Parquet file to append to"),
        accelerator: str = typer.Option("cpu", help="cpu | gpu"),
        devices: int = typer.Option(1, help="processes/GPUs per node for Lightning DDP"),
        num_nodes: int = typer.Option(1, help="nodes for multi-node DDP (launch on each node with MASTER_ADDR, "
                                              "MASTER_PORT, NODE_RANK set)"),
        train_split: Optional[str] = typer.Option(None, help="training split (default: the challenge's split25; "
                                                             "anything else is recorded with the results)"),
        splits_dir: Optional[str] = typer.Option(None, help="folder holding split25.csv/test.csv when they are not "
                                                            "next to the data"),
        progress: bool = typer.Option(True, help="show training progress bars")) -> None:
    """Train every stage of a system, score it, and append the result to the leaderboard."""
    try:
        result = run_system(system, data, profile, seed, variant, board, accelerator, devices, train_split,
                            progress, num_nodes, console, splits_dir=splits_dir)
    except (SystemError_, DatasetError, StoreError, StageError, SubmissionError, BoardError, Interrupted) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(130 if isinstance(exc, Interrupted) else 1)
    ok = [r for r in result.rows if r["status"] == "ok"]
    if ok:
        console.print(summary_table(RunResult(result.run_dir, rows=ok)))
    console.print(f"appended {len(result.rows)} row(s) to {board}; run folder {result.run_dir}")
    if len(ok) < len(result.rows):
        raise typer.Exit(1)


@app.command("systems")
def systems(root: Path = typer.Option(SYSTEMS_DIR, help="folder to search for system folders")) -> None:
    """List the systems found (folders with a system.toml)."""
    table = Table(title=f"systems in {root}")
    for col in ("name", "stages", "profiles", "variants", "description"):
        table.add_column(col, overflow="fold")
    for item in discover(root):
        if isinstance(item, tuple):
            table.add_row(item[0].name, "", "", "", f"[red]does not load:[/] {item[1]}")
        else:
            table.add_row(item.name, " → ".join(item.stages), ", ".join(item.profiles),
                          ", ".join(sorted(item.variants)), item.description)
    console.print(table)
