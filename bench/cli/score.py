"""``bench score``: score an official inference package (isolated) or one of our saved submissions (in-process),
write the official output files and append to the leaderboard. ``bench export``: one of our submissions as an
official package."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from bench.cli.app import app
from bench.cli.output import err, json_mode, print_json
from bench.cli.output import out as console
from bench.config import ConfigError
from bench.data.manifest import ManifestError, load_manifest
from bench.data.sources import SYNTH, ensure_synth, resolve
from bench.data.splits import carve_validation
from bench.data.store import Store, StoreError, prepare
from bench.data.tau import DatasetError, open_dataset
from bench.packages.export import export_package, submission_dir
from bench.packages.loader import PackageError, discover, parse_package
from bench.packages.outputs import write_outputs
from bench.packages.runner import Isolation, package_data, score_package
from bench.paths import board_path, data_home
from bench.runs import find_run
from bench.score.leaderboard import BoardError, append_rows, check_board
from bench.score.rows import submission_row
from bench.score.scorer import ScoreOptions, align_classes, official_complexity, predict_clips, score_submission
from bench.submission import SubmissionError, load_submission, read_info
from bench.system import SystemError_

Profile = Enum("Profile", {name: name for name in ("default", "smoke")}, type=str)
USER_ERRORS = (PackageError, DatasetError, StoreError, SubmissionError, ManifestError, BoardError, SystemError_,
               ConfigError, FileNotFoundError)
NA = "—"


class ClipRate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} clips/s" if task.speed else "")


class _Bar:
    """A progress callback ``(label, done, total)``: one rich task per label, so clips/s is per stage."""

    def __init__(self, bar: Progress):
        self.bar, self.label, self.task = bar, None, None

    def __call__(self, label: str, done: int, total: int) -> None:
        if label != self.label:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.label, self.task = label, self.bar.add_task(label, total=total or None)
        self.bar.update(self.task, completed=done, total=total or None)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), ClipRate(),
                    TimeRemainingColumn(), console=err.get(), transient=True)


def _data_root(data: str, profile: Profile) -> Path:
    return ensure_synth(profile.value) if data in ("", SYNTH) else Path(data)


@app.command("score")
def score(
    package: Annotated[Optional[str], typer.Option(
        help="Official package NAME[:K] (e.g. Schmid_CPJKU_task1:1); without :K every module it holds.")] = None,
    path: Annotated[Optional[Path], typer.Option(
        help="Source folder holding the package folder; imported from there, not installed.")] = None,
    submission: Annotated[Optional[str], typer.Option(
        help="One of our saved submissions (folder with submission.json, a run folder, or 'latest'), scored "
             "in-process.")] = None,
    data: Annotated[str, typer.Option(help="'synth' (the embedded benchmark) or a dataset folder.")] = SYNTH,
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
    int8: Annotated[bool, typer.Option(help="Also quantize to INT8 (static PTQ) and score that.")] = True,
    energy: Annotated[bool, typer.Option(help="Also measure inference energy per clip.")] = True,
    energy_clips: Annotated[int, typer.Option(help="Clips in the energy measurement.")] = 256,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the confidence intervals.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Score an official DCASE 2025 Task 1 inference package, unchanged and isolated, or one of our submissions."""
    if (package is None) == (submission is None):
        err.print("[red]error:[/] pass exactly one of --package NAME[:K] or --submission DIR")
        raise typer.Exit(2)
    options = ScoreOptions(batch_size=batch_size, n_boot=n_boot, int8=int8, energy=energy, energy_clips=energy_clips)
    target = board_path(board)
    with json_mode(as_json):
        try:
            check_board(target)
            if package is not None:
                rows, failed = _score_packages(package, path, data, profile, eval_data, out, options,
                                               Isolation(timeout, memory_gb))
            else:
                rows, failed = _score_submission(find_run(submission), data, profile, eval_data, out, options)
            total = append_rows(target, rows) if rows else None
        except USER_ERRORS as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1)
        if rows and not as_json:
            console.print(f"appended {len(rows)} row(s) to {target} ({total} rows)")
            _print_summary(rows)
    if as_json:
        print_json({"board": str(target), "rows": rows})
    if failed:
        raise typer.Exit(1)


def _score_packages(arg, path, data, profile, eval_data, out, options, isolation) -> tuple[list[dict], bool]:
    name, index = parse_package(arg)
    specs = discover(name, path, index)
    dataset = open_dataset(_data_root(data, profile))
    store = None
    if (dataset.clips["label"] >= 0).all():  # labelled: scored against the prepared store's clips and fingerprint
        with _progress() as bar:
            tick = _Bar(bar)
            store = prepare(dataset.root, progress=lambda i, n: tick("prepare", i, n)).store
    pdata = package_data(dataset, store, open_dataset(eval_data) if eval_data else None, options.seed)
    rows, failed = [], False
    for spec in specs:
        with _progress() as bar:
            result = score_package(spec, pdata, options, isolation, _Bar(bar))
        if result.ok:
            split = "eval" if "eval" in result.logits else "test"
            folder = out / spec.submission if out and len(specs) > 1 else out
            _write(folder, spec.submission, pdata.splits()[split]["filename"], result.logits[split],
                   result.class_order, result.complexity, result.scores)
        else:
            failed = True
            err.print(f"[red]{spec.submission} failed:[/] {result.error}")
        if pdata.labelled:
            rows.append(result.row())
    if not pdata.labelled:
        err.print(f"{pdata.manifest.name} has no labels: predictions written, no leaderboard row")
    return rows, failed


def _score_submission(run, data, profile, eval_data, out, options) -> tuple[list[dict], bool]:
    folder = submission_dir(run)
    info = read_info(folder)
    sub = load_submission(folder)
    with _progress() as bar:
        store = resolve(data, profile.value, progress=_Bar(bar)).store
    manifest = load_manifest(store.info["manifest"])
    clips = store.split(manifest.test_split)
    identity = {"submission": sub.name, "system": info.get("system", sub.name), "kind": "system",
                "dataset": manifest.name, "run_dir": info.get("run_dir"),
                "stages": {s["stage"]: {k: v for k, v in s.items() if k != "stage"} for s in info.get("stages", [])},
                **{k: info.get(k) for k in ("seed", "variant", "profile", "config_hash")}}
    result, scores = None, None
    try:
        with _progress() as bar:
            tick = _Bar(bar)
            if (clips["label"] >= 0).all():
                calib = _calibration(store, manifest, info.get("validation")) if options.int8 else None
                result = score_submission(sub, store, manifest, manifest.test_split, calib, options, tick)
                logits, complexity, scores = result.logits, result.complexity, result.scores
            else:
                logits = _predict(sub, store, clips, manifest.classes, options, tick)
                complexity = official_complexity(sub)
            if eval_data is not None:
                estore = resolve(str(eval_data), progress=tick).store
                clips = estore.split(load_manifest(estore.info["manifest"]).test_split)
                logits = _predict(sub, estore, clips, manifest.classes, options, tick)
    except SubmissionError as exc:
        err.print(f"[red]{sub.name} failed:[/] {exc}")
        return [submission_row(identity, error=str(exc))], True
    _write(out, sub.name, clips["filename"], logits, list(manifest.classes), complexity, scores)
    return ([submission_row(identity, result)] if result else []), False


def _calibration(store: Store, manifest, validation: dict | None):
    """The validation clips the run itself used (its recorded split and locations), so a re-score calibrates INT8
    exactly as the run did; for a submission without that record, the default carve."""
    split = (validation or {}).get("split", manifest.train_split)
    if split not in store.info["splits"]:
        return None
    train = store.split(split)
    if validation and validation.get("locations"):
        return train[train["identifier"].isin(validation["locations"])]
    return carve_validation(train, (validation or {}).get("fraction", 0.1))[1]


def _predict(sub, store, clips, classes, options, progress):
    return align_classes(predict_clips(sub, store, clips, options.batch_size, progress), sub.class_order, classes,
                         sub.name)


def _write(out, name, filenames, logits, class_order, complexity, scores) -> None:
    folder = out or data_home() / "predictions" / name
    written = write_outputs(folder, filenames, logits, class_order, complexity, scores)
    err.print(f"{name}: wrote {', '.join(p.name for p in written)} to {folder}")


def _print_summary(rows: list[dict]) -> None:
    table = Table(title="bench score")
    columns = ("submission", "status", "macro acc %", "acc %", "unseen %", "max MACs", "params", "compliant",
               "INT8 acc %", "energy J/clip", "clips/s", "error")
    for column in columns:
        table.add_column(column, justify="left" if column in ("submission", "status", "error") else "right",
                         overflow="fold")
    for r in rows:
        table.add_row(r["submission"], r["status"], _num(r["macro_acc"], 100), _num(r["overall_acc"], 100),
                      _num(r["acc_unseen"], 100), _num(r["max_macs"], 1e-6, " M"),
                      _num(r["max_param_bytes"], 1e-3, " kB"), _text(r["compliant"]),
                      _num(r["int8_macro_acc"], 100) if r["int8_macro_acc"] is not None else _text(r["int8_error"]),
                      _num(r["energy_j_per_clip"], spec=".3g"), _num(r["clips_per_s"], spec=".0f"),
                      _text(r["error"]))
    console.print(table)


def _num(value, scale: float = 1.0, suffix: str = "", spec: str = ".2f") -> str:
    return NA if value is None else f"{value * scale:{spec}}{suffix}"


def _text(value) -> str:
    return NA if value is None else str(value)


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
    try:
        dataset = open_dataset(_data_root(data, profile)) if data is not None else None
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
