"""``bench score``: score an official inference package (isolated) or one of our saved submissions (in-process),
write the official output files and append to the leaderboard. ``bench export``: one of our submissions as an
official package. (The work is in :mod:`bench.cli.scoring`, imported when a command runs.)"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from bench.cli.app import app
from bench.cli.output import err, json_mode, print_json
from bench.cli.output import out as console
from bench.config import ConfigError
from bench.data.manifest import ManifestError
from bench.errors import BoardError, DatasetError, StoreError, SubmissionError
from bench.packages.loader import PackageError
from bench.paths import board_path
from bench.runs import find_run
from bench.system import SystemError_

Profile = Enum("Profile", {name: name for name in ("default", "smoke")}, type=str)
USER_ERRORS = (PackageError, DatasetError, StoreError, SubmissionError, ManifestError, BoardError, SystemError_,
               ConfigError, OSError)  # OSError: a full disk, a missing or unreadable file, named by the error


@app.command("score")
def score(
    package: Annotated[Optional[str], typer.Option(
        help="Official package NAME[:K] (e.g. Schmid_CPJKU_task1:1); without :K every module it holds.")] = None,
    path: Annotated[Optional[Path], typer.Option(
        help="Source folder holding the package folder; imported from there, not installed.")] = None,
    submission: Annotated[Optional[str], typer.Option(
        help="One of our saved submissions (folder with submission.json, a run folder, or 'latest'), scored "
             "in-process.")] = None,
    data: Annotated[str, typer.Option(help="'synth' (the embedded benchmark) or a dataset folder.")] = "synth",
    profile: Annotated[Profile, typer.Option(help="Synthetic benchmark profile when --data synth.")] = Profile.default,
    eval_data: Annotated[Optional[Path], typer.Option(
        help="TAU 2025 evaluation set folder: its predictions go to output.csv, as in the official script.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Folder for output.csv, complexity.json, test_accuracy.json (default: "
             "$ASCBENCH_HOME/predictions/<submission>; one subfolder per module when scoring several).")] = None,
    board: Annotated[str, typer.Option(help="Leaderboard to append to: a NAME (leaderboards/NAME.parquet) or a "
                                            ".parquet path.")] = "local",
    batch_size: Annotated[int, typer.Option(help="Clips per predict() call (packages) or per batch.")] = 64,
    timeout: Annotated[float, typer.Option(help="Wall-clock seconds a package may run in total.")] = 3600.0,
    memory_gb: Annotated[float, typer.Option(help="Address-space limit of the package process (GB; 0: none).")] = 8.0,
    sandbox: Annotated[bool, typer.Option(help="Run package code in the bubblewrap sandbox (--no-sandbox: run it "
                                               "unisolated; the row says so).")] = True,
    int8: Annotated[bool, typer.Option(help="Also quantize to INT8 (static PTQ) and score that.")] = True,
    energy: Annotated[bool, typer.Option(help="Also measure inference energy per clip.")] = True,
    energy_clips: Annotated[int, typer.Option(help="Clips in the energy measurement.")] = 256,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the confidence intervals.")] = 1000,
    threads: Annotated[Optional[int], typer.Option(
        help="CPU threads to score with, the package's process too (default: $ASCBENCH_THREADS, $OMP_NUM_THREADS, "
             "or the cores free when scoring starts).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Score an official DCASE 2025 Task 1 inference package, unchanged and isolated, or one of our submissions."""
    if (package is None) == (submission is None):
        err.print("[red]error:[/] pass exactly one of --package NAME[:K] or --submission DIR")
        raise typer.Exit(2)
    import torch

    from bench.score.scorer import ScoreOptions
    from bench.threads import choose_threads

    try:
        n_threads, why = choose_threads(threads)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1)
    torch.set_num_threads(n_threads)  # the rows' `threads` column and the package worker take it from here
    err.print(f"scoring on {n_threads} thread{'s' * (n_threads > 1)} ({why})")

    options = ScoreOptions(batch_size=batch_size, n_boot=n_boot, int8=int8, energy=energy, energy_clips=energy_clips)
    from bench.cli import scoring
    from bench.packages.sandbox import Isolation, SandboxUnavailable, require_sandbox
    from bench.score.leaderboard import append_rows, check_board

    target = board_path(board)
    isolation = Isolation(timeout, memory_gb, sandbox)
    with json_mode(as_json):
        try:
            check_board(target)
            if package is not None:
                if sandbox:
                    require_sandbox()
                rows, failed = scoring.score_packages(package, path, data, profile, eval_data, out, options,
                                                      isolation)
            else:
                rows, failed = scoring.score_submission_folder(find_run(submission), data, profile, eval_data, out,
                                                               options, isolation)
            total = append_rows(target, rows) if rows else None
        except (*USER_ERRORS, SandboxUnavailable) as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1)
        if rows and not as_json:
            console.print(f"appended {len(rows)} row(s) to {target} ({total} rows)")
            scoring.print_summary(rows)
    if as_json:
        print_json({"board": str(target), "rows": rows})
    if failed:
        raise typer.Exit(1)


@app.command("export")
def export(
    run: Annotated[str, typer.Argument(help="Saved submission folder (submission.json), run folder, or 'latest'.")],
    package: Annotated[Path, typer.Option("--package", help="Destination: the package's source folder.")],
    label: Annotated[Optional[str], typer.Option(
        help="Package label: the package is <label>_task1 (default: from the submission name).")] = None,
    index: Annotated[int, typer.Option(help="Module number k of <label>_task1_<k> (1-4).")] = 1,
    data: Annotated[Optional[str], typer.Option(
        help="'synth' or a dataset folder whose test split goes to resources/test.csv.")] = None,
    profile: Annotated[Profile, typer.Option(help="Synthetic benchmark profile when --data synth.")] = Profile.default,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written as JSON.")] = False,
) -> None:
    """Write one of our trained submissions as an official DCASE 2025 Task 1 inference package."""
    from bench.cli.scoring import data_root
    from bench.data.tau import open_dataset
    from bench.packages.export import export_package

    try:
        dataset = open_dataset(data_root(data, profile)) if data is not None else None
        module = export_package(find_run(run), package, label, index, dataset)
    except USER_ERRORS as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1)
    name = module.parent.name
    if as_json:
        print_json({"module": str(module), "package": name, "index": index, "source": str(package),
                    "score_with": f"bench score --package {name}:{index} --path {package}"})
        return
    console.print(f"wrote {module}\nscore it with: bench score --package {name}:{index} --path {package}")
