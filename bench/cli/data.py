"""``bench data synth | check | prepare``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bench.cli.app import data_app
from bench.cli.output import err, json_mode, out, print_json
from bench.data.manifest import ManifestError
from bench.errors import DatasetError, StoreError
from bench.paths import corpus_dir, synth_dir

MAX_LISTED = 200


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err.get(), transient=True)


CORPORA = ("scenes", "events")


def _clip_count(folder: Path) -> int:
    """Rows of the written meta.csv (both corpora have one): what was actually generated."""
    with open(folder / "meta.csv", "rb") as f:
        return sum(1 for _ in f) - 1


@data_app.command("synth")
def synth(profile: str = typer.Option("default", help="smoke (tiny, for tests) or default"),
          corpus: str = typer.Option("scenes", help="scenes: the device-shift benchmark (TAU 2022 layout); events: "
                                                    "the multi-label sound-event pre-training corpus"),
          seed: int = typer.Option(0, help="same seed -> byte-identical files"),
          out_dir: Optional[Path] = typer.Option(None, "--out", help="output folder (default: under $ASCBENCH_HOME)"),
          force: bool = typer.Option(False, help="regenerate even if a complete copy exists"),
          as_json: bool = typer.Option(False, "--json", help="print what was written as JSON")) -> None:
    """Generate an embedded corpus: the synthetic device-shift benchmark in the TAU 2022 development layout
    (``--corpus scenes``) or the multi-label sound-event corpus for pre-training (``--corpus events``)."""
    from bench.data.manifest import load_manifest
    from bench.data.synth import events
    from bench.data.synth.generate import generate, is_complete

    if corpus not in CORPORA:
        err.print(f"[red]error:[/] unknown corpus {corpus!r}; choose one of: {', '.join(CORPORA)}")
        raise typer.Exit(2)
    if corpus == "events":
        name, folder, run, complete = (f"events-{profile}", out_dir or corpus_dir("events", profile, seed),
                                       events.generate_events, events.is_complete)
    else:
        name, folder, run, complete = f"synth-{profile}", out_dir or synth_dir(profile, seed), generate, is_complete
    try:
        load_manifest(name)
    except ManifestError as exc:
        err.print(f"[red]error:[/] no profile {profile!r} for the {corpus} corpus: {exc}")
        raise typer.Exit(2)
    report = {"corpus": corpus, "dataset": name, "seed": seed, "folder": str(folder)}
    if not force and complete(folder, name, seed):
        if as_json:
            print_json({**report, "generated": False, "clips": _clip_count(folder)})
        else:
            out.print(f"{folder}: already generated ({name}, seed {seed}, {_clip_count(folder)} clips); use --force "
                      "to regenerate")
        return
    start = time.perf_counter()
    try:
        with progress_bar() as bar:
            task = bar.add_task(f"{corpus} {profile}", total=None)
            run(name, seed, folder, progress=lambda i, n: bar.update(task, completed=i, total=n))
    except Exception as exc:  # the manifest or the output folder is the usual culprit
        err.print(f"[red]error:[/] could not generate {name} into {folder}: {exc}")
        raise typer.Exit(1)
    seconds = time.perf_counter() - start
    clips = _clip_count(folder)
    if as_json:
        print_json({**report, "generated": True, "clips": clips, "seconds": seconds})
    else:
        out.print(f"wrote {name} (seed {seed}): {clips} clips to {folder} in {seconds:.1f} s")


@data_app.command("check")
def check(data: Path = typer.Argument(..., help="dataset folder (TAU 2022 dev, TAU 2025 eval, or synthetic)"),
          manifest: Optional[str] = typer.Option(None, help="manifest name (default: detected)"),
          splits_dir: Optional[Path] = typer.Option(None, help="folder holding split25.csv/test.csv"),
          as_json: bool = typer.Option(False, "--json", help="print every problem as JSON")) -> None:
    """Validate a dataset against its manifest; exit code 0 only when clean. Every problem is one line naming the
    file (greppable in a CI log)."""
    from bench.data.check import check_dataset

    ds, problems = check_dataset(data, manifest, splits_dir)
    if as_json:
        print_json({"folder": str(ds.root if ds else data), "dataset": ds.name if ds else None,
                    "files": len(ds.clips) if ds else None, "splits": ds.available_splits() if ds else [],
                    "problems": [{"kind": p.kind, "where": p.where, "problem": p.message} for p in problems]})
    else:
        if ds is not None:
            out.print(f"{ds.root}: {ds.name}, {len(ds.clips)} files, splits: {', '.join(ds.available_splits())}")
        if not problems:
            out.print("[green]clean[/]: no problems found")
        else:
            table = Table(title=f"{len(problems)} problem(s)")
            for col in ("kind", "where", "problem"):
                table.add_column(col)
            for p in problems[:MAX_LISTED]:
                table.add_row(p.kind, p.where, p.message)
            out.print(table)
            if len(problems) > MAX_LISTED:
                out.print(f"... and {len(problems) - MAX_LISTED} more (all of them: --json)")
    if problems:
        raise typer.Exit(1)


@data_app.command("prepare")
def prepare_cmd(data: Path = typer.Argument(..., help="dataset folder"),
                splits: Optional[str] = typer.Option(None, help="comma-separated splits (default: train and test)"),
                store: Optional[Path] = typer.Option(None, help="store folder (default: under $ASCBENCH_HOME)"),
                manifest: Optional[str] = typer.Option(None, help="manifest name (default: detected)"),
                splits_dir: Optional[Path] = typer.Option(None, help="folder holding the split files"),
                as_json: bool = typer.Option(False, "--json", help="print the store's state as JSON")) -> None:
    """Decode and resample a dataset once into the packed 32 kHz int16 store (resumable)."""
    from bench.data.store import prepare

    start = time.perf_counter()
    try:
        with json_mode(as_json), progress_bar() as bar:
            task = bar.add_task("prepare", total=None)
            report = prepare(data, splits.split(",") if splits else None, store, manifest, splits_dir,
                             progress=lambda i, n: bar.update(task, completed=i, total=n))
    except (DatasetError, StoreError, ManifestError, OSError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1)
    st = report.store
    if as_json:
        print_json({"store": str(st.root), "clips": st.info["n"], "reused": report.reused, "rebuilt": report.rebuilt,
                    "seconds": time.perf_counter() - start, "converted": report.converted,
                    "failed": [str(i) for i in report.failed], "fingerprint": st.fingerprint})
    elif report.reused and not report.failed:
        out.print(f"{st.root}: up to date ({st.info['n']} clips)")
    elif report.reused:  # an earlier prepare left clips it could not decode: say which, every time
        out.print(f"{st.root}: prepared earlier ({st.info['n']} clips), but {len(report.failed)} clip(s) are still "
                  "unusable:")
        for issue in report.failed[:20]:
            out.print(f"[red]unusable:[/] {issue}")
        out.print("Fix or re-download them; prepare notices the change and decodes them again.")
    else:
        if report.rebuilt:
            out.print(f"[yellow]rebuilt:[/] {report.rebuilt}")
        out.print(f"{st.root}: {st.info['n']} clips in {time.perf_counter() - start:.1f} s"
                  + (f" (resumed after {report.resumed_chunks} finished chunks)" if report.resumed_chunks else ""))
        for kind, count in sorted(report.converted.items()):
            out.print(f"[yellow]warning:[/] {count} clip(s) converted ({kind}); `bench data check` lists them")
        for issue in report.failed[:20]:
            out.print(f"[red]unusable:[/] {issue}")
        if report.failed:
            out.print(f"[red]{len(report.failed)} clip(s) could not be decoded[/]; they are flagged in the store and "
                      "skipped by loaders. Fix or re-download them and run prepare again.")
    if report.failed:
        raise typer.Exit(1)
