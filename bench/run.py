"""``bench run``: from nothing to a leaderboard row — data, every stage of a system, scoring, the board."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.data.manifest import load_manifest
from bench.data.sources import resolve
from bench.data.splits import carve_validation
from bench.paths import DEFAULT_BOARD, data_home
from bench.score.leaderboard import append_rows, make_row
from bench.score.scorer import InputCache, ScoreOptions, ScoreResult, score_submission
from bench.submission import ModelSubmission, Submission, SubmissionError, save_submission
from bench.system import SystemSpec, config_hash, load_system
from bench.train.stages import RunEnv, StageContext, StageError, run_stage

VAL_FRACTION = 0.1


@dataclass
class RunResult:
    run_dir: Path
    stages: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, ScoreResult] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_system(system: str | Path, data: str | None = None, profile: str = "default", seed: int = 0,
               variant: str | None = None, board: Path | None = DEFAULT_BOARD, accelerator: str = "cpu",
               devices: int = 1, train_split: str | None = None, progress: bool = True, num_nodes: int = 1,
               console: Console | None = None, score_options: ScoreOptions | None = None,
               splits_dir: str | None = None) -> RunResult:
    console = console or Console()
    spec = load_system(system)
    resolved = spec.resolve(profile, variant)
    variant = variant or spec.default_variant
    started = datetime.now(timezone.utc)

    report = resolve(data, profile, splits_dir=splits_dir)
    store = report.store
    manifest = load_manifest(store.info["manifest"])
    notes = []
    split = train_split or manifest.train_split
    if split != manifest.train_split:
        notes.append(f"trained on {split} instead of the challenge's {manifest.train_split} (asked for explicitly)")
    train = store.split(split)
    fit, val = carve_validation(train, float(resolved.get("val_fraction", VAL_FRACTION)), seed=0)
    env = RunEnv(spec, profile, variant, seed, resolved, store, manifest, split, fit, val,
                 data_home() / "cache" / "stages", accelerator, devices, num_nodes, progress, console)
    run_dir = data_home() / "runs" / spec.name / f"{profile}{'-' + variant if variant else ''}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    chash = config_hash({"resolved": resolved, "source": spec.source_hash()})
    (run_dir / "config.json").write_text(json.dumps(
        {"system": spec.name, "profile": profile, "variant": variant, "seed": seed, "config": resolved,
         "config_hash": chash, "dataset": manifest.name, "dataset_fingerprint": store.fingerprint,
         "train_split": split, "validation_locations": sorted(val["identifier"].unique()),
         "stage_keys": {s: env.stage_key(s) for s in spec.stages}}, indent=2, default=str))
    console.print(f"[bold]{spec.name}[/] ({profile}{', ' + variant if variant else ''}, seed {seed}) on "
                  f"{manifest.name}: {len(fit)} training / {len(val)} validation clips")

    result = RunResult(run_dir)
    previous: dict[str, dict[str, Any]] = {}
    train_wall = 0.0
    for stage in spec.stages:
        artifacts, reused, wall = run_stage(env, stage, previous)
        previous[stage] = artifacts
        if reused:
            env.reused_stages.add(stage)
        train_wall += 0.0 if reused else wall
        result.stages.append({"stage": stage, "reused": reused, "wall_s": wall})
        console.print(f"  stage [bold]{stage}[/]: " + (f"[green]cached[/] (trained earlier in {wall:.0f} s)"
                                                       if reused else f"trained in {wall:.1f} s"))

    ctx = StageContext(env, "", run_dir, previous)
    try:
        submissions: dict[str, tuple[Submission, str]] = {"": (spec.module.submission(ctx), "system")}
        extra = getattr(spec.module, "extra_submissions", None)
        if extra:
            submissions.update(extra(ctx))
    except Exception as exc:  # plugin code: report it, the trained stages stay cached
        raise StageError(f"{spec.name}: building the submission raised {type(exc).__name__}: {exc}") from exc
    main = submissions[""][0]
    if isinstance(main, ModelSubmission) and main.arch:
        save_submission(main, run_dir / "submission", {"system": spec.name, "profile": profile, "seed": seed,
                                                       "variant": variant, "config_hash": chash})
    options = score_options or ScoreOptions(seed=seed)
    cache = InputCache()
    for key, (sub, kind) in submissions.items():
        start = time.perf_counter()
        # teachers show the ceiling: accuracy and complexity only (they are not deployed, so no INT8 or energy)
        opts = replace(options, int8=False, energy=False) if kind == "teacher" else options
        identity = dict(submission=sub.name, system=spec.name, variant="/".join(x for x in (variant, key) if x) or None,
                        kind=kind, seed=seed, profile=profile, dataset=manifest.name,
                        dataset_fingerprint=store.fingerprint, train_split=split, config_hash=chash,
                        notes="; ".join(notes) or None, started_at=started, wall_s_train=train_wall)
        try:
            scored = score_submission(sub, store, manifest, manifest.test_split, val, opts, cache=cache)
        except SubmissionError as exc:  # a failed row, and the other submissions are still scored
            result.rows.append(make_row(status="failed", error=str(exc), **identity))
            console.print(f"  [red]failed[/] {sub.name}: {exc}")
            continue
        result.results[key] = scored
        row_notes = "; ".join(n for n in (identity["notes"], scored.row.get("notes")) if n) or None
        result.rows.append(make_row(status="ok", **{**identity, **scored.row, "notes": row_notes}))
        console.print(f"  scored [bold]{sub.name}[/] in {time.perf_counter() - start:.1f} s")
    (run_dir / "scores.json").write_text(json.dumps(result.rows, indent=2, default=str))
    if board is not None:
        append_rows(board, result.rows)
    return result
