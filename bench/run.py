"""``bench run``: from nothing to a leaderboard row — data, every stage of a system, scoring, the board.

Every run gets a folder of its own (``$ASCBENCH_HOME/runs/<system>/<time>-<profile>[-<variant>]-seed<seed>``)
holding ``run.json`` (what ran, with which stage keys, reused or trained, and the rows it produced), the resolved
configuration and the saved submission; rows point back to it.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bench.data.clips import ClipSet
from bench.data.manifest import Manifest, load_manifest
from bench.data.sources import resolve
from bench.data.splits import carve_validation
from bench.data.store import Store
from bench.identity import digest_of
from bench.paths import data_home, runs_dir
from bench.score.leaderboard import append_rows, check_board
from bench.score.rows import submission_row
from bench.score.seeds import AggregateError, aggregate_rows
from bench.score.scorer import InputCache, ScoreOptions, ScoreResult, score_submission, unreadable_note
from bench.submission import ModelSubmission, Submission, SubmissionError, save_submission
from bench.system import RUN, SystemSpec, check_system, load_system
from bench.threads import choose_threads
from bench.train.stages import (RunEnv, StageContext, StageData, StageError, StageOutcome, budget_columns,
                                external_data, run_stage)


IN_PROCESS = "in-process: trained by this run"


@dataclass
class RunResult:
    run_dir: Path
    stages: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, ScoreResult] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)


def stage_data(store: Store, manifest: Manifest, split: str, val_fraction: float) -> StageData:
    """A dataset's training part and its validation part: the manifest's own ``validation`` split when it has one,
    else locations (or, without locations, clips) carved from ``split`` — never the test split."""
    classes = tuple(manifest.classes)
    devices = tuple(manifest.devices)
    multilabel = manifest.multilabel

    def clips(frame: pd.DataFrame) -> ClipSet:
        return ClipSet(store, frame, classes, devices, multilabel)

    train = store.split(split)
    if manifest.validation_split and manifest.validation_split in store.info["splits"]:
        return StageData(store, manifest, clips(train), clips(store.split(manifest.validation_split)), split)
    fit, val = carve_validation(train, val_fraction, seed=0)
    return StageData(store, manifest, clips(fit), clips(val), split)


def _run_folder(spec: SystemSpec, profile: str, variant: str | None, seed: int, started: datetime) -> Path:
    stem = f"{started:%Y%m%dT%H%M%SZ}-{profile}{'-' + variant if variant else ''}-seed{seed}"
    (runs_dir() / spec.name).mkdir(parents=True, exist_ok=True)
    n = 1
    while True:  # mkdir is the claim: two runs started in the same second never share a folder
        folder = runs_dir() / spec.name / (stem if n == 1 else f"{stem}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1


PHASES = {"generate": "generating the data", "prepare": "packing the store"}


@contextlib.contextmanager
def data_progress(console: Console, bar: bool) -> Iterator[Callable[[str, int, int], None]]:
    """What generating or packing a dataset inside a run shows: a bar per phase, or (``bar=False``) a line when a
    phase starts and one when it ends, instead of a minute of silence."""
    started: dict[str, float] = {}
    ended: set[str] = set()
    with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=not bar) as shown:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            what = PHASES.get(phase, phase)
            if phase not in started:
                started[phase] = time.perf_counter()
                tasks[phase] = shown.add_task(what, total=total)
                if not bar:
                    console.print(f"  {what} …")
            shown.update(tasks[phase], completed=done, total=total)
            if not bar and done >= total and phase not in ended:
                ended.add(phase)
                console.print(f"  {what}: done in {time.perf_counter() - started[phase]:.0f} s")

        yield update


def run_system(system: str | Path, data: str | None = None, profile: str = "default", seed: int = 0,
               variant: str | None = None, board: Path | None = None, accelerator: str = "cpu",
               devices: int = 1, train_split: str | None = None, progress: bool = True, num_nodes: int = 1,
               console: Console | None = None, score_options: ScoreOptions | None = None,
               splits_dir: str | None = None, until: str | None = None, threads: int | None = None) -> RunResult:
    """Train every stage of a system (cached ones reused), build its submissions, score them on the test split and
    append the rows to ``board``. ``until`` stops after that stage: nothing is built or scored, so a recipe can be
    tuned on what the stages report on the validation split (e.g. the teachers' accuracy) without a test number.
    ``threads``: CPU threads (default: :func:`bench.threads.choose_threads`)."""
    console = console or Console()
    n_threads, why_threads = choose_threads(threads)
    torch.set_num_threads(n_threads)
    spec = load_system(system)
    check_system(spec)  # every profile and variant, before anything trains
    if until is not None and until not in spec.stages:
        raise StageError(f"{spec.name}: --until {until!r} is not one of its stages ({', '.join(spec.stages)})")
    if board is not None:
        check_board(board)  # a board that cannot take the rows is refused now, not after training
    resolved = spec.resolve(profile, variant)
    variant = variant or spec.default_variant
    started = datetime.now(timezone.utc)
    val_fraction = float(resolved.get("val_fraction", RUN.keys["val_fraction"].default))

    with data_progress(console, progress) as show:
        report = resolve(data, profile, splits_dir=splits_dir, progress=show)
    store = report.store
    manifest = load_manifest(store.info["manifest"])
    notes = []
    split = train_split or manifest.train_split
    if split != manifest.train_split:
        notes.append(f"trained on {split} instead of the challenge's {manifest.train_split} (asked for explicitly)")
    run_data = stage_data(store, manifest, split, val_fraction)

    def external(arg: str) -> StageData:
        with data_progress(console, progress) as show:
            other = resolve(arg, profile, progress=show).store  # "events": the profile's pre-training corpus
        other_manifest = load_manifest(other.info["manifest"])
        return stage_data(other, other_manifest, other_manifest.train_split, val_fraction)

    env = RunEnv(spec, profile, variant, seed, resolved, run_data, data_home() / "cache" / "stages", accelerator,
                 devices, num_nodes, progress, console, load_external=external, board=board, threads=n_threads)
    run_dir = _run_folder(spec, profile, variant, seed, started)
    console.print(f"[bold]{spec.name}[/] ({profile}{', ' + variant if variant else ''}, seed {seed}) on "
                  f"{manifest.name}: {len(run_data.fit)} training / {len(run_data.val)} validation clips; "
                  f"{n_threads} thread{'s' if n_threads > 1 else ''} ({why_threads}); run folder {run_dir}")

    validation = {"split": split, "fraction": val_fraction,
                  "locations": sorted(run_data.val.frame["identifier"].dropna().unique().tolist())}
    record = {"system": spec.name, "system_folder": str(spec.path), "profile": profile, "variant": variant,
              "seed": seed, "dataset": manifest.name, "dataset_fingerprint": store.fingerprint, "train_split": split,
              "validation": validation, "started_at": started.isoformat(), "threads": n_threads,
              "threads_chosen": why_threads}
    result = RunResult(run_dir)
    previous: dict[str, dict[str, Any]] = {}
    upstream: dict[str, str] = {}
    outcomes: dict[str, StageOutcome] = {}
    train_wall = 0.0
    for stage in spec.stages:
        outcome = run_stage(env, stage, previous, upstream)
        previous[stage], upstream[stage], outcomes[stage] = outcome.artifacts, outcome.key, outcome
        if outcome.reused:
            env.reused_stages.add(stage)
        train_wall += 0.0 if outcome.reused else outcome.wall_s
        result.stages.append(_stage_record(stage, outcome))
        console.print(f"  stage [bold]{stage}[/]: " + (f"[green]cached[/] (trained earlier in {outcome.wall_s:.0f} s "
                                                       f"by {_who(outcome)}; all inputs unchanged)"
                                                       if outcome.reused else f"trained in {outcome.wall_s:.1f} s"))
        if stage == until:
            _copy_reports(outcomes, run_dir)
            _write_record(run_dir, record, result, None, until=until)
            console.print(f"  stopped after stage [bold]{until}[/] (--until): nothing built or scored on the test "
                          f"split; the stages' validation reports are in {run_dir / 'reports'}")
            return result

    ctx = StageContext(env, "", run_dir, previous)
    try:
        submissions: dict[str, tuple[Submission, str]] = {"": (spec.module.submission(ctx), "system")}
        extra = getattr(spec.module, "extra_submissions", None)
        if extra:
            submissions.update(extra(ctx))
    except Exception as exc:  # plugin code: report it, the trained stages stay cached
        raise StageError(f"{spec.name}: building the submission raised {type(exc).__name__}: {exc}") from exc
    chash = digest_of({"resolved": resolved, "system_files": spec.files()})
    main = submissions[""][0]
    if isinstance(main, ModelSubmission):
        save_submission(main, run_dir / "submission",
                        {"system": spec.name, "profile": profile, "seed": seed, "variant": variant,
                         "config_hash": chash, "validation": validation, "run_dir": str(run_dir),
                         "stages": result.stages},
                        system_folder=spec.path)
    options = score_options or ScoreOptions(seed=seed)
    cache = InputCache()
    stages_column = {s["stage"]: {k: v for k, v in s.items() if k != "stage"} for s in result.stages}
    notes += [n for outcome in outcomes.values() for n in outcome.notes]
    budget = [item for outcome in outcomes.values() for item in outcome.budget]
    _copy_reports(outcomes, run_dir)
    for key, (sub, kind) in submissions.items():
        start = time.perf_counter()
        # teachers show the ceiling: accuracy and complexity only (they are not deployed, so no INT8 or energy)
        opts = replace(options, int8=False, energy=False) if kind == "teacher" else options
        identity = dict(submission=sub.name, system=spec.name, variant="/".join(x for x in (variant, key) if x) or None,
                        kind=kind, seed=seed, profile=profile, dataset=manifest.name,
                        dataset_fingerprint=store.fingerprint, train_split=split, config_hash=chash,
                        notes="; ".join(notes) or None, started_at=started, wall_s_train=train_wall,
                        run_dir=str(run_dir), stages=stages_column, isolation=IN_PROCESS,
                        external_data=external_data(budget, store.fingerprint), **budget_columns(budget))
        identity.update(sub.row_fields)  # e.g. a teacher's own budget and gate verdict
        try:
            scored = score_submission(sub, store, manifest, manifest.test_split, run_data.val.frame, opts, cache=cache)
        except SubmissionError as exc:  # a failed row, and the other submissions are still scored
            result.rows.append(submission_row(identity, error=str(exc)))
            console.print(f"  [red]failed[/] {sub.name}: {exc}")
            continue
        result.results[key] = scored
        result.rows.append(submission_row(identity, scored))
        console.print(f"  scored [bold]{sub.name}[/] in {time.perf_counter() - start:.1f} s")
        if scored.extra.get("unreadable"):  # a test split with holes: the row says so, and so does the run
            console.print(f"  [red]{unreadable_note(scored.row['n_clips'], manifest.test_split, scored.extra['unreadable'])}"
                          "[/]")
    (run_dir / "config.json").write_text(json.dumps({"config": resolved, "config_hash": chash}, indent=2,
                                                    default=str))
    if board is not None:
        append_rows(board, result.rows)
    _write_record(run_dir, record, result, board)
    return result


def run_seeds(system: str | Path, seeds: Sequence[int], board: Path | None = None, console: Console | None = None,
              **kwargs) -> tuple[list[RunResult], list[dict]]:
    """``run_system`` once per seed (each seed's rows land as it finishes; stages a system shares across seeds are
    trained once), then one aggregate row per submission over the seeds that scored (:mod:`bench.score.seeds`)."""
    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        raise ValueError(f"--seeds needs at least two distinct seeds, got {list(seeds)}")
    console = console or Console()
    results = [run_system(system, seed=s, board=board, console=console,
                          score_options=replace(kwargs.pop("score_options", None) or ScoreOptions(), seed=s),
                          **kwargs) for s in seeds]
    by_submission: dict[tuple, list[dict]] = {}
    for result in results:
        for row in result.rows:
            by_submission.setdefault((row["submission"], row["variant"]), []).append(row)
    aggregates = []
    for (name, _), rows in by_submission.items():
        try:
            aggregates.append(aggregate_rows(rows))
        except AggregateError as exc:
            console.print(f"  [yellow]no aggregate for {name}:[/] {exc}")
    if board is not None and aggregates:
        append_rows(board, aggregates)
    return results, aggregates


def _stage_record(stage: str, outcome: StageOutcome) -> dict[str, Any]:
    info = outcome.entry.info or {}
    return {"stage": stage, "key": outcome.key, "reused": outcome.reused, "wall_s": outcome.wall_s,
            "trained_by": info.get("trained_by"), "cache_dir": str(outcome.entry.dir),
            "reasons": outcome.reasons, "notes": outcome.notes,
            "budget": {**budget_columns(outcome.budget), "fits": outcome.budget}}


def _write_record(run_dir: Path, record: dict[str, Any], result: RunResult, board: Path | None, **extra) -> None:
    """``<run>/run.json``: what ran, on what, which stages (and why they ran), and the rows it wrote."""
    (run_dir / "run.json").write_text(json.dumps({
        **record, **extra, "finished_at": datetime.now(timezone.utc).isoformat(), "stages": result.stages,
        "board": str(board) if board is not None else None,
        "rows": [{"row_id": r["row_id"], "submission": r["submission"], "status": r["status"],
                  "macro_acc": r["macro_acc"]} for r in result.rows]}, indent=2, default=str))


def _copy_reports(outcomes: dict[str, StageOutcome], run_dir: Path) -> None:
    """Each stage's reports (e.g. the fitted teacher fusion), cached or not, into ``<run>/reports/``."""
    for stage, outcome in outcomes.items():
        for report in sorted((outcome.entry.dir / "reports").glob("*.json")):
            (run_dir / "reports").mkdir(exist_ok=True)
            (run_dir / "reports" / f"{stage}-{report.name}").write_bytes(report.read_bytes())


def _who(outcome: StageOutcome) -> str:
    by = (outcome.entry.info or {}).get("trained_by") or {}
    commit = (by.get("git_commit") or "")[:10]
    return (f"commit {commit}" + (" + local changes" if by.get("git_dirty") else "")) if commit else \
        f"harness {by.get('harness_source', '?')[:10]}"
