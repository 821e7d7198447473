"""``bench run``: from nothing to a leaderboard row — data, every stage of a system, scoring, the board.

Every run gets a folder of its own (``$ASCBENCH_HOME/runs/<system>/<time>-<profile>[-<variant>]-seed<seed>``)
holding ``run.json`` (what ran, with which stage keys, reused or trained, and the rows it produced), the resolved
configuration and the saved submission; rows point back to it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
from rich.console import Console

from bench import allocator
from bench.data.manifest import load_manifest
from bench.data.sources import resolve
from bench.identity import digest_of
from bench.paths import data_home, runs_dir
from bench.score.leaderboard import append_rows, check_board
from bench.score.rows import submission_row
from bench.score.seeds import AggregateError, aggregate_rows
from bench.score.scorer import InputCache, ScoreOptions, ScoreResult, score_submission, unreadable_note
from bench.submission import ModelSubmission, Submission, SubmissionError, save_submission
from bench.system import RUN, SystemSpec, check_system, load_system
from bench.threads import free_cores, measured_threads, requested_threads
from bench.train.datasets import data_progress, external_loader, stage_data
from bench.train.stages import (RunEnv, StageContext, StageError, StageOutcome, budget_columns,
                                external_data, run_stage, thread_note)


IN_PROCESS = "in-process: trained by this run"


@dataclass
class RunResult:
    run_dir: Path
    stages: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, ScoreResult] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)


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
    asked = requested_threads(threads)
    n_threads, why_threads = asked or measured_threads()
    follow = asked is None  # measured, so followed through every fit (ThreadGovernor)
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

    env = RunEnv(spec, profile, variant, seed, resolved, run_data, data_home() / "cache" / "stages", accelerator,
                 devices, num_nodes, progress, console, board=board, threads=n_threads,
                 follow_free_cores=follow,
                 load_external=external_loader(console, progress, profile, val_fraction))
    run_dir = _run_folder(spec, profile, variant, seed, started)
    threads_said = f"{n_threads} thread{'s' * (n_threads > 1)} ({why_threads}{'; fits follow the free cores' * follow})"
    console.print(f"[bold]{spec.name}[/] ({profile}{', ' + variant if variant else ''}, seed {seed}) on "
                  f"{manifest.name}: {len(run_data.fit)} training / {len(run_data.val)} validation clips; "
                  f"{threads_said}; allocator {allocator.active()}; run folder {run_dir}")

    validation = {"split": split, "fraction": val_fraction,
                  "locations": sorted(run_data.val.frame["identifier"].dropna().unique().tolist())}
    record = {"system": spec.name, "system_folder": str(spec.path), "profile": profile, "variant": variant,
              "seed": seed, "dataset": manifest.name, "dataset_fingerprint": store.fingerprint, "train_split": split,
              "validation": validation, "started_at": started.isoformat(), "threads": n_threads,
              "threads_chosen": why_threads, "threads_follow_free_cores": follow, "allocator": allocator.active()}
    result = RunResult(run_dir)
    previous: dict[str, dict[str, Any]] = {}
    upstream: dict[str, str] = {}
    outcomes: dict[str, StageOutcome] = {}
    train_wall = 0.0
    last_walls = {stage: last_wall_s(env, stage) for stage in spec.stages}
    run_start = time.perf_counter()
    for i, stage in enumerate(spec.stages):
        position = f"{i + 1}/{len(spec.stages)} "
        outcome = run_stage(env, stage, previous, upstream, position)
        previous[stage], upstream[stage], outcomes[stage] = outcome.artifacts, outcome.key, outcome
        if outcome.reused:
            env.reused_stages.add(stage)
        train_wall += 0.0 if outcome.reused else outcome.wall_s
        result.stages.append(_stage_record(stage, outcome))
        console.print(f"  stage {position}[bold]{stage}[/]: "
                      + (f"[green]cached[/] (trained earlier in {outcome.wall_s:.0f} s by {_who(outcome)}; all inputs "
                         "unchanged)" if outcome.reused else f"trained in {outcome.wall_s:.1f} s")
                      + ("" if stage == until else "; " + time_left(time.perf_counter() - run_start,
                                                                    spec.stages[i + 1:], last_walls)))
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
    if follow:  # the last fit may have left fewer threads than the machine has free now (rows record the count)
        torch.set_num_threads(free_cores())
    cache = InputCache()
    stages_column = {s["stage"]: {k: v for k, v in s.items() if k != "stage"} for s in result.stages}
    notes += [n for outcome in outcomes.values() for n in outcome.notes]
    budget = [item for outcome in outcomes.values() for item in outcome.budget]
    note = thread_note([{**item, "stage": stage} for stage, outcome in outcomes.items() for item in outcome.budget])
    notes += [note] if note else []
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


def last_wall_s(env: RunEnv, stage: str) -> float | None:
    """Seconds the newest finished entry of ``stage`` of this system (any configuration) took on this machine."""
    found = []
    for done in (env.cache_root / env.spec.name).glob(f"{stage}-*/done.json"):
        try:
            found.append((done.stat().st_mtime, float(json.loads(done.read_text())["wall_s"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(found)[1] if found else None


def time_left(elapsed: float, stages_left: Sequence[str], last_walls: dict[str, float | None]) -> str:
    """``12 min so far, about 9 min of stages left (...)``: the estimate adds what each stage left took the last
    time this machine trained it (reused stages take seconds; scoring is not counted)."""
    so_far = f"{elapsed / 60:.0f} min so far"
    if not stages_left:
        return so_far + ", scoring next"
    known = [last_walls[s] for s in stages_left if last_walls[s] is not None]
    unknown = [s for s in stages_left if last_walls[s] is None]
    if not known:
        return so_far + f"; no estimate for {', '.join(stages_left)} (never trained on this machine)"
    left = f"about {sum(known) / 60:.0f} min of stages left, by this machine's last runs of them"
    return f"{so_far}, {left}" + (f" ({', '.join(unknown)} not counted: never trained here)" if unknown else "")


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
