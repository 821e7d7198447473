"""One aggregate board row over the rows of several seeds of the same submission.

Its accuracy columns are the **mean over seeds** (``macro_acc_seed_std`` holds the sample standard deviation); its
interval resamples recording locations and averages the seeds' macro accuracies on each resample, so it is centred
on the mean it reports. The seed-averaged prediction (mean of the seeds' probabilities per clip) is what the row keeps
as its per-clip predictions and confusion matrix; its own macro accuracy and interval are in
``intervals["ensemble_macro_acc"]`` as ``[value, low, high]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bench.score.leaderboard import make_row
from bench.score.metrics import Resampler, aggregate_seeds, macro_accuracy, percentile_interval
from bench.score.predictions import ClipPredictions, PredictionsError

MEAN_COLUMNS = ("macro_acc", "overall_acc", "log_loss", "acc_known", "acc_unseen", "acc_real", "acc_seen",
                "int8_macro_acc", "val_macro_acc", "energy_j_per_clip", "clips_per_s", "wall_s_train", "wall_s_score")
SAME_COLUMNS = ("submission", "system", "variant", "kind", "profile", "dataset", "dataset_fingerprint", "split",
                "train_split", "clips_digest", "n_clips", "deploy_dtype", "int8_size_bytes", "max_macs",
                "max_param_bytes", "params", "thop_macs", "dispatcher_macs", "complexity_per_device", "compliant",
                "compliance_reasons", "counters", "energy_method", "analytic_energy_uj_per_clip", "isolation",
                "batch_size", "train_steps", "train_samples", "external_data", "teacher_gate")


class AggregateError(ValueError):
    """Rows that cannot be aggregated (different submissions or clips, fewer than two scored seeds)."""


def _json(value) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _mean_dict(dicts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([d[k] for d in dicts])) for k in dicts[0] if all(k in d for d in dicts)}


def aggregate_rows(rows: Sequence[Mapping[str, Any]], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """The aggregate row (built with ``make_row``) of ``rows``: one scored row per seed of one submission."""
    rows = [dict(r) for r in rows if r.get("status") == "ok"]
    if len(rows) < 2:
        raise AggregateError(f"an aggregate needs at least two scored seeds, got {len(rows)}")
    first = rows[0]
    for column in ("submission", "variant", "clips_digest", "dataset_fingerprint", "split"):
        values = {str(r.get(column)) for r in rows}
        if len(values) > 1:
            raise AggregateError(f"rows differ in {column} ({', '.join(sorted(values))}); aggregate one submission "
                                 "scored on one test set")
    seeds = [int(r["seed"]) for r in rows]
    if len(set(seeds)) < len(seeds):
        raise AggregateError(f"seeds repeat ({seeds}): aggregate distinct seeds")
    try:
        members = [ClipPredictions.from_bytes(r["clip_predictions"]) for r in rows if r.get("clip_predictions")]
    except PredictionsError as exc:
        raise AggregateError(str(exc)) from None
    stats = aggregate_seeds([{k: r[k] for k in MEAN_COLUMNS if isinstance(r.get(k), (int, float))} for r in rows])
    out: dict[str, Any] = {k: first.get(k) for k in SAME_COLUMNS}
    out.update({k: stats[f"{k}_mean"] for k in MEAN_COLUMNS if f"{k}_mean" in stats})
    out.update(n_seeds=len(rows), seeds=",".join(map(str, seeds)), seed_rows=[r["row_id"] for r in rows],
               macro_acc_seed_std=stats["macro_acc_std"], seed=None,
               acc_per_device=_mean_dict([_json(r["acc_per_device"]) for r in rows]),
               acc_per_class=_mean_dict([_json(r["acc_per_class"]) for r in rows]),
               harness_version=first.get("harness_version"), git_commit=first.get("git_commit"),
               git_dirty=any(bool(r.get("git_dirty")) for r in rows), started_at=min((r["started_at"] for r in rows if r.get("started_at") is not None), default=None),
               config_hash=first.get("config_hash"))
    notes = [f"aggregate of seeds {out['seeds']}: accuracies are the mean over seeds"]
    notes += [n for r in rows for n in str(r.get("notes") or "").split("; ") if n]
    out["notes"] = "; ".join(dict.fromkeys(notes))
    if len(members) == len(rows):
        out.update(_interval_columns(members, n_boot, seed, level))
    else:
        out["ci_method"] = "no interval: some seeds have no per-clip predictions"
    return make_row(**out, status="ok")


def _interval_columns(members: Sequence[ClipPredictions], n_boot: int, seed: int, level: float) -> dict:
    first = members[0]
    n_classes = len(first.classes)
    resampler = Resampler.locations(first.labels, first.locations if first.has_locations else None, n_boot, seed)
    mean_macro = np.mean([resampler.macro(m.labels, m.correct, n_classes) for m in members], axis=0)
    mean_acc = np.mean([resampler.accuracy(m.labels, m.correct, n_classes) for m in members], axis=0)
    ensemble = ClipPredictions.average(members)
    ens_macro = resampler.macro(ensemble.labels, ensemble.correct, n_classes)
    ens_value = macro_accuracy(ensemble.labels, ensemble.correct, n_classes)
    low, high = percentile_interval(mean_macro, level)
    intervals = {"macro_acc": [low, high], "acc": percentile_interval(mean_acc, level),
                 "ensemble_macro_acc": [ens_value, *percentile_interval(ens_macro, level)]}
    for name, keep in first.role_masks().items():
        if keep.any():
            intervals[name] = percentile_interval(
                np.mean([resampler.accuracy(m.labels, m.correct, n_classes, keep) for m in members], axis=0), level)
    return {"macro_acc_ci_low": low, "macro_acc_ci_high": high, "intervals": intervals,
            "ci_method": f"{resampler.method}, seed mean on each resample",
            "clip_predictions": ensemble.to_bytes(), "confusion": ensemble.confusion().tolist()}


def missing_aggregates(df) -> list[tuple[str, list[dict]]]:
    """Groups of single-seed rows (one run identity, the latest row of each seed, at least two seeds) that no
    aggregate row on the board covers yet."""
    from bench.score.leaderboard import RUN_IDENTITY

    single = df[(df["status"] == "ok") & (df["n_seeds"].fillna(1) == 1) & df["seed"].notna()]
    covered = {frozenset(json.loads(r)) for r in df["seed_rows"].dropna()}
    out = []
    for key, group in single.sort_values("finished_at").groupby(list(RUN_IDENTITY), dropna=False):
        latest = group.groupby("seed").tail(1).sort_values("seed")
        if len(latest) >= 2 and frozenset(latest["row_id"]) not in covered:
            name = f"{key[1]}@{key[2]}" if isinstance(key[2], str) else key[1]
            records = [{k: None if v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v) else v
                        for k, v in r.items()}
                       for r in latest.to_dict("records")]
            out.append((name, records))
    return out
