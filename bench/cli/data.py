"""``bench data synth | check | prepare``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bench.cli.app import data_app
from bench.data.check import check_dataset
from bench.data.store import StoreError, prepare
from bench.data.synth.generate import generate, is_complete
from bench.data.tau import DatasetError
from bench.paths import synth_dir

console = Console(soft_wrap=True)  # long paths stay on one line (and greppable)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


@data_app.command("synth")
def synth(profile: str = typer.Option("default", help="smoke (<= 300 clips, for tests) or default"),
          seed: int = typer.Option(0, help="same seed -> byte-identical files"),
          out: Optional[Path] = typer.Option(None, help="output folder (default: under $ASCBENCH_HOME)"),
          force: bool = typer.Option(False, help="regenerate even if a complete copy exists")) -> None:
    """Generate the embedded synthetic device-shift benchmark in the TAU 2022 development layout."""
    out = out or synth_dir(profile, seed)
    name = f"synth-{profile}"
    if not force and is_complete(out, name, seed):
        console.print(f"{out}: already generated ({name}, seed {seed}); use --force to regenerate")
        return
    start = time.perf_counter()
    try:
        with progress_bar() as bar:
            task = bar.add_task(f"synth {profile}", total=None)
            generate(name, seed, out, progress=lambda i, n: bar.update(task, completed=i, total=n))
    except Exception as exc:  # the manifest or the output folder is the usual culprit
        console.print(f"[red]error:[/] could not generate {name} into {out}: {exc}")
        raise typer.Exit(1)
    console.print(f"wrote {name} (seed {seed}) to {out} in {time.perf_counter() - start:.1f} s")


@data_app.command("check")
def check(data: Path = typer.Argument(..., help="dataset folder (TAU 2022 dev, TAU 2025 eval, or synthetic)"),
          manifest: Optional[str] = typer.Option(None, help="manifest name (default: detected)"),
          splits_dir: Optional[Path] = typer.Option(None, help="folder holding split25.csv/test.csv")) -> None:
    """Validate a dataset against its manifest; exit code 0 only when clean."""
    ds, problems = check_dataset(data, manifest, splits_dir)
    if ds is not None:
        console.print(f"{ds.root}: {ds.name}, {len(ds.clips)} files, splits: {', '.join(ds.available_splits())}")
    if not problems:
        console.print("[green]clean[/]: no problems found")
        return
    table = Table(title=f"{len(problems)} problem(s)")
    for col in ("kind", "where", "problem"):
        table.add_column(col, overflow="fold")
    for p in problems[:200]:
        table.add_row(p.kind, p.where, p.message)
    console.print(table)
    if len(problems) > 200:
        console.print(f"... and {len(problems) - 200} more")
    raise typer.Exit(1)


@data_app.command("prepare")
def prepare_cmd(data: Path = typer.Argument(..., help="dataset folder"),
                splits: Optional[str] = typer.Option(None, help="comma-separated splits (default: train and test)"),
                store: Optional[Path] = typer.Option(None, help="store folder (default: under $ASCBENCH_HOME)"),
                manifest: Optional[str] = typer.Option(None, help="manifest name (default: detected)"),
                splits_dir: Optional[Path] = typer.Option(None, help="folder holding the split files")) -> None:
    """Decode and resample a dataset once into the packed 32 kHz int16 store (resumable)."""
    start = time.perf_counter()
    try:
        with progress_bar() as bar:
            task = bar.add_task("prepare", total=None)
            report = prepare(data, splits.split(",") if splits else None, store, manifest, splits_dir,
                             progress=lambda i, n: bar.update(task, completed=i, total=n))
    except (DatasetError, StoreError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1)
    st = report.store
    if report.reused:
        console.print(f"{st.root}: up to date ({st.info['n']} clips)")
        return
    console.print(f"{st.root}: {st.info['n']} clips in {time.perf_counter() - start:.1f} s"
                  + (f" (resumed after {report.resumed_chunks} finished chunks)" if report.resumed_chunks else ""))
    for kind, count in sorted(report.converted.items()):
        console.print(f"[yellow]warning:[/] {count} clip(s) converted ({kind}); `bench data check` lists them")
    for issue in report.failed[:20]:
        console.print(f"[red]unusable:[/] {issue}")
    if report.failed:
        console.print(f"[red]{len(report.failed)} clip(s) could not be decoded[/]; they are flagged in the store and "
                      "skipped by loaders. Fix or re-download them and run prepare again.")
        raise typer.Exit(1)
