"""``bench run``, ``bench systems`` and ``bench runs``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from bench.cli.app import app
from bench.cli.output import err, json_mode, out, print_json
from bench.config import ConfigError
from bench.errors import BoardError, DatasetError, Interrupted, StageError, StoreError, SubmissionError
from bench.paths import board_path, system_search_roots
from bench.runs import list_runs
from bench.system import SystemError_, check_system, discover

RUN_ERRORS = (SystemError_, ConfigError, DatasetError, StoreError, StageError, SubmissionError, BoardError,
              Interrupted, OSError)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def summary_table(result) -> Table:
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

    line("macro acc (95% CI)", [_macro_cell(r) for r in rows])
    for d in devices:
        line(f"  device {d}", [_pct(p.get(d)) for p in per_dev])
    line("known / unseen", [f"{_pct(r['acc_known'])} / {_pct(r['acc_unseen'])}" for r in rows])
    line("MACs (max device)", [f"{r['max_macs']:,}" for r in rows])
    line("param bytes", [f"{r['max_param_bytes']:,} ({r['deploy_dtype']})" for r in rows])
    line("INT8 bytes / acc", [f"{r['int8_size_bytes']:,} / {_pct(r['int8_macro_acc'])}" if r.get("int8_size_bytes")
                              else (r.get("int8_error") or "-") for r in rows])
    line("energy J/clip", ["-" if r.get("energy_j_per_clip") is None else
                           f"{r['energy_j_per_clip']:.4f} ({r['energy_method']})" for r in rows])
    line("analytic µJ/clip", ["-" if r.get("analytic_energy_uj_per_clip") is None else
                              f"{r['analytic_energy_uj_per_clip']:.1f}" for r in rows])
    line("compliant", ["[green]✓[/]" if r["compliant"] else f"[red]✗[/] {r['compliance_reasons']}" for r in rows])
    return table


def _macro_cell(r: dict) -> str:
    """Mean ± sd over seeds for an aggregate row; then the interval over recording locations."""
    ci = f"({_pct(r['macro_acc_ci_low'])}–{_pct(r['macro_acc_ci_high'])})"
    if (r.get("n_seeds") or 1) > 1:
        return f"{_pct(r['macro_acc'])} ± {_pct(r['macro_acc_seed_std'])} ({r['n_seeds']} seeds) {ci}"
    return f"{_pct(r['macro_acc'])} {ci}"


def _row_summary(row: dict) -> dict:
    keys = ("row_id", "submission", "variant", "kind", "status", "error", "n_seeds", "seeds", "macro_acc",
            "macro_acc_seed_std", "macro_acc_ci_low",
            "macro_acc_ci_high", "acc_known", "acc_unseen", "max_macs", "max_param_bytes", "deploy_dtype",
            "compliant", "compliance_reasons", "int8_macro_acc", "int8_size_bytes", "notes")
    return {k: row[k] for k in keys}


@app.command("run")
def run(system: str = typer.Argument(..., help="system folder (e.g. systems/baseline) or the name of a shipped "
                                               "system"),
        data: Optional[str] = typer.Option(None, help="dataset folder, or 'synth' for the embedded benchmark "
                                                      "(default)"),
        profile: str = typer.Option("default", help="smoke | default | paper"),
        seed: int = typer.Option(0, help="training seed"),
        seeds: Optional[str] = typer.Option(None, help="several seeds, e.g. 0,1,2: one row per seed plus an "
                                                       "aggregate row (mean ± sd over seeds)"),
        variant: Optional[str] = typer.Option(
            None, help=r"a variant of the system: a \[variants.NAME] table of its system.toml (ablations)"),
        board: str = typer.Option("local", help="leaderboard: a NAME (leaderboards/NAME.parquet) or a .parquet "
                                                "path; 'none' appends nowhere"),
        accelerator: str = typer.Option("cpu", help="cpu | gpu"),
        devices: int = typer.Option(1, help="processes/GPUs per node for Lightning DDP"),
        num_nodes: int = typer.Option(1, help="nodes for multi-node DDP (launch on each node with MASTER_ADDR, "
                                              "MASTER_PORT, NODE_RANK set)"),
        train_split: Optional[str] = typer.Option(None, help="training split (default: the challenge's split25; "
                                                             "anything else is recorded with the results)"),
        splits_dir: Optional[str] = typer.Option(None, help="folder holding split25.csv/test.csv when they are not "
                                                            "next to the data"),
        until: Optional[str] = typer.Option(None, help="stop after this stage (e.g. teachers): nothing is built or "
                                                       "scored, for tuning on the validation split"),
        threads: Optional[int] = typer.Option(None, help="CPU threads to compute with, kept for the whole run "
                                                          "(default: $ASCBENCH_THREADS, $OMP_NUM_THREADS, or the cores "
                                                          "free, measured at the start and followed through every fit)"),
        progress: bool = typer.Option(True, help="show training progress bars"),
        int8: bool = typer.Option(True, help="also quantize float submissions to INT8 (static PTQ) and score that"),
        energy: bool = typer.Option(True, help="also measure inference energy per clip"),
        as_json: bool = typer.Option(False, "--json", help="print the run (folder, stages, rows) as JSON")) -> None:
    """Train every stage of a system, score it, and append the result to the leaderboard."""
    from bench.run import RunResult, run_seeds, run_system
    from bench.score.scorer import ScoreOptions

    target = None if board == "none" else board_path(board)
    seed_list = _parse_seeds(seeds) if seeds is not None else [seed]
    with json_mode(as_json):
        console = err.get() if as_json else out.get()
        kwargs = dict(data=data, profile=profile, variant=variant, accelerator=accelerator, devices=devices,
                      train_split=train_split, progress=progress and not as_json, num_nodes=num_nodes,
                      score_options=ScoreOptions(seed=seed_list[0], int8=int8, energy=energy), splits_dir=splits_dir,
                      until=until, threads=threads)
        try:
            if len(seed_list) == 1:
                results, aggregates = [run_system(system, seed=seed_list[0], board=target, console=console,
                                                  **kwargs)], []
            else:
                results, aggregates = run_seeds(system, seed_list, target, console, **kwargs)
        except RUN_ERRORS as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(130 if isinstance(exc, Interrupted) else 1)
        rows = [r for result in results for r in result.rows]
        ok = [r for r in rows if r["status"] == "ok"]
        if ok and not as_json:
            shown = aggregates or ok
            out.print(summary_table(RunResult(results[-1].run_dir, rows=shown)))
        where = f"appended {len(rows) + len(aggregates)} row(s) to {target}" if target else "no board (--board none)"
        folders = ", ".join(str(r.run_dir) for r in results)
        (err if as_json else out).print(f"{where}; run folder{'s' if len(results) > 1 else ''} {folders}")
    if as_json:
        record = {"board": str(target) if target else None,
                  "runs": [{"run_dir": str(r.run_dir), "stages": r.stages, "rows": [_row_summary(x) for x in r.rows]}
                           for r in results]}
        if len(results) == 1:
            record = {"run_dir": record["runs"][0]["run_dir"], "board": record["board"],
                      "stages": results[0].stages, "rows": record["runs"][0]["rows"]}
        else:
            record["aggregates"] = [_row_summary(r) for r in aggregates]
        print_json(record)
    if len(ok) < len(rows):
        raise typer.Exit(1)


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--seeds takes comma-separated integers such as 0,1,2, got {text!r}") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise typer.BadParameter(f"--seeds takes at least two distinct seeds, got {text!r}")
    return seeds


@app.command("systems")
def systems(root: Optional[Path] = typer.Option(None, help="folder to search for system folders (default: "
                                                           "./systems and the shipped systems)"),
            check: bool = typer.Option(False, "--check", help="import each system and validate every profile and "
                                                              "variant against the keys its stages declare"),
            as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the systems found (folders with a system.toml); with --check, validate them (exit 1 on an error)."""
    records = []
    for item in discover([root] if root else None):
        if isinstance(item, tuple):
            records.append({"name": item[0].name, "path": str(item[0]), "error": item[1]})
            continue
        record = {"name": item.name, "path": str(item.path), "stages": item.stages,
                  "profiles": list(item.profiles), "variants": sorted(item.variants),
                  "description": item.description, "error": None}
        if check:
            try:
                record["checked"] = check_system(item)
            except SystemError_ as exc:
                record["error"] = str(exc)
        records.append(record)
    failed = any(r["error"] for r in records)
    if as_json:
        print_json(records)
    else:
        roots = ", ".join(str(r) for r in ([root] if root else system_search_roots()))
        table = Table(title=f"systems in {roots}")
        for col in ("name", "stages", "profiles", "variants", "status"):
            table.add_column(col)
        for r in records:
            status = f"[red]{r['error']}[/]" if r["error"] else (
                f"[green]ok[/] ({r['checked']} profile/variant combinations)" if check else r["description"])
            table.add_row(r["name"], " → ".join(r.get("stages", [])), ", ".join(r.get("profiles", [])),
                          ", ".join(r.get("variants", [])), status)
        out.print(table)
    if failed and check:
        raise typer.Exit(1)


@app.command("runs")
def runs(system: Optional[str] = typer.Option(None, help="only runs of this system"),
         as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the runs made on this machine (newest first): system, profile, variant, seed, stages, rows."""
    records = list_runs(system)
    if as_json:
        print_json(records)
        return
    if not records:
        out.print("no runs yet; `bench run SYSTEM` makes one")
        return
    table = Table(title="runs")
    for col in ("started", "system", "profile", "variant", "seed", "stages (key, reused)", "rows", "folder"):
        table.add_column(col)
    for r in records:
        stages = ", ".join(f"{s['stage']} {s['key'][:8]}{' (cached)' if s['reused'] else ''}" for s in r["stages"])
        rows = ", ".join(f"{x['submission']} {_pct(x['macro_acc'])}" for x in r["rows"])
        table.add_row(r["started_at"][:19], r["system"], r["profile"], r["variant"] or "-", str(r["seed"]), stages,
                      rows, r["run_dir"])
    out.print(table)
