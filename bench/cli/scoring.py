"""What ``bench score`` and ``bench export`` do (the command definitions in :mod:`bench.cli.score` import this only
when one of them runs: it pulls in torch)."""

from __future__ import annotations

import tempfile
from enum import Enum
from pathlib import Path

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from bench.cli.output import err
from bench.cli.output import out as console
from bench.data.manifest import load_manifest
from bench.data.sources import SYNTH, ensure_synth, resolve
from bench.data.store import prepare
from bench.data.tau import open_dataset
from bench.packages.export import export_package, submission_dir
from bench.packages.loader import discover, parse_package
from bench.packages.outputs import write_outputs
from bench.packages.runner import package_data, score_package
from bench.paths import data_home
from bench.score.rows import submission_row
from bench.score.scorer import align_classes, calibration_clips, official_complexity, predict_clips, \
    score_submission
from bench.errors import SubmissionError
from bench.submission import load_submission, read_info
from bench.trust import is_foreign

FOREIGN_LABEL = "Foreign"
TRUSTED = "in-process: a submission this machine made (sealed)"

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


def data_root(data: str, profile: Enum) -> Path:
    return ensure_synth(profile.value) if data in ("", SYNTH) else Path(data)


def score_packages(arg, path, data, profile, eval_data, out, options, isolation,
                   identity: dict | None = None) -> tuple[list[dict], bool]:
    """Every module of a package, in the sandbox; ``identity`` overrides the rows' identity fields (a foreign
    submission scored through this path keeps its own name and system)."""
    name, index = parse_package(arg)
    specs = discover(name, path, index)
    dataset = open_dataset(data_root(data, profile))
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
        result.identity.update(identity or {})
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


def score_submission_folder(run, data, profile, eval_data, out, options, isolation) -> tuple[list[dict], bool]:
    folder = submission_dir(run)
    info = read_info(folder)
    if is_foreign(folder):  # its own code, not made here: it runs in the sandbox, as an exported package
        with tempfile.TemporaryDirectory(prefix="ascbench-foreign-") as tmp:
            export_package(folder, Path(tmp), FOREIGN_LABEL)
            identity = {"submission": info["name"], "system": info.get("system", info["name"]), "kind": "system",
                        **{k: info.get(k) for k in ("seed", "variant", "profile", "config_hash")}}
            return score_packages(f"{FOREIGN_LABEL}_task1:1", Path(tmp), data, profile, eval_data, out, options,
                                  isolation, identity)
    sub = load_submission(folder)
    with _progress() as bar:
        store = resolve(data, profile.value, progress=_Bar(bar)).store
    manifest = load_manifest(store.info["manifest"])
    clips = store.split(manifest.test_split)
    identity = {"submission": sub.name, "system": info.get("system", sub.name), "kind": "system",
                "dataset": manifest.name, "run_dir": info.get("run_dir"), "isolation": TRUSTED,
                "stages": {s["stage"]: {k: v for k, v in s.items() if k != "stage"} for s in info.get("stages", [])},
                **{k: info.get(k) for k in ("seed", "variant", "profile", "config_hash")}}
    result, scores = None, None
    try:
        with _progress() as bar:
            tick = _Bar(bar)
            if (clips["label"] >= 0).all():
                calib = calibration_clips(store, manifest, info.get("validation"))  # INT8 calibration, val_macro_acc
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


def _predict(sub, store, clips, classes, options, progress):
    return align_classes(predict_clips(sub, store, clips, options.batch_size, progress), sub.class_order, classes,
                         sub.name)


def _write(out, name, filenames, logits, class_order, complexity, scores) -> None:
    folder = out or data_home() / "predictions" / name
    written = write_outputs(folder, filenames, logits, class_order, complexity, scores)
    err.print(f"{name}: wrote {', '.join(p.name for p in written)} to {folder}")


def print_summary(rows: list[dict]) -> None:
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


