"""Intervals over recording locations, paired comparisons of rows, seed aggregates, and a board that ranks like with
like — on predictions built here with a known structure, then through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.score.compare import ComparisonError, compare
from bench.score.leaderboard import (append_rows, collapse_reruns, comparable, make_row, rank_board, read_board,
                                     row_predictions, select_row)
from bench.score.metrics import macro_accuracy, score_predictions
from bench.score.predictions import ClipPredictions, PredictionsError
from bench.score.seeds import AggregateError, aggregate_rows

runner = CliRunner()
CLASSES = [f"scene{k}" for k in range(10)]
DEVICES = ["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"]
ROLES = {"a": "real", "b": "real", "c": "real", "s1": "seen", "s2": "seen", "s3": "seen"}


def design(locations_per_scene: int = 6, segments: int = 4):
    """The TAU test design: locations per scene x segments x the 9 parallel device recordings."""
    labels, locations, devices, names = [], [], [], []
    for scene in range(10):
        for loc in range(locations_per_scene):
            for seg in range(segments):
                for dev in DEVICES:
                    labels.append(scene)
                    locations.append(f"city-{scene}-{loc}")
                    devices.append(dev)
                    names.append(f"audio/{scene}-{loc}-{seg}-{dev}.wav")
    return np.array(labels), np.array(locations), np.array(devices), names


def logits_for(labels: np.ndarray, correct: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Logits whose argmax is the label where ``correct`` and another class elsewhere."""
    out = rng.normal(0, 0.1, (len(labels), 10))
    wrong = (labels + 1 + rng.integers(0, 9, len(labels))) % 10
    out[np.arange(len(labels)), np.where(correct, labels, wrong)] += 5
    return out


def predictions(correct: np.ndarray, seed: int = 0, d=None) -> ClipPredictions:
    labels, locations, devices, names = d or design()
    return ClipPredictions.from_logits(logits_for(labels, correct, np.random.default_rng(seed)), labels, devices,
                                       locations, CLASSES, names, ROLES)


def by_location(p_location: np.ndarray, locations: np.ndarray, rng) -> np.ndarray:
    """Every clip of a location right, or every clip wrong: perfect intra-location correlation."""
    names = np.unique(locations)
    verdict = dict(zip(names, rng.random(len(names)) < p_location))
    return np.array([verdict[loc] for loc in locations])


def width(interval) -> float:
    return interval[1] - interval[0]


def test_the_location_interval_widens_when_clips_of_a_location_succeed_or_fail_together():
    labels, locations, devices, names = design()
    rng = np.random.default_rng(0)
    clustered = by_location(0.5, locations, rng)
    scores = score_predictions(labels, logits_for(labels, clustered, rng), devices, CLASSES, ROLES, n_boot=1000,
                               locations=locations)
    assert scores.ci_method.startswith("location bootstrap (60 recording locations, stratified by scene")
    ratio = width(scores.macro_accuracy_ci) / width(scores.intervals["macro_acc_clip_bootstrap"])
    assert ratio > 3  # design effect 36 for 36 clips per location: about sqrt(36) = 6 times wider
    independent = rng.random(len(labels)) < 0.5
    plain = score_predictions(labels, logits_for(labels, independent, rng), devices, CLASSES, ROLES, n_boot=1000,
                              locations=locations)
    assert 0.7 < width(plain.macro_accuracy_ci) / width(plain.intervals["macro_acc_clip_bootstrap"]) < 1.4
    for name in ("acc", "acc_known", "acc_unseen", "acc_dev_s4", "acc_class_scene3"):
        low, high = scores.intervals[name]
        assert low <= high and width(scores.intervals[name]) > 0
    without = score_predictions(labels, logits_for(labels, clustered, rng), devices, CLASSES, ROLES, n_boot=200)
    assert without.ci_method.startswith("clip bootstrap (the split has no recording locations)")


def test_predictions_round_trip_compactly():
    labels, locations, devices, names = design()
    p = predictions(np.random.default_rng(1).random(len(labels)) < 0.6)
    blob = p.to_bytes()
    assert len(blob) < 40_000  # 2,160 clips
    q = ClipPredictions.from_bytes(blob)
    assert np.array_equal(q.pred, p.pred) and np.array_equal(q.labels, labels) and q.digest == p.digest
    assert list(q.locations) == list(locations) and q.device_roles["s4"] == "unseen" and q.classes == tuple(CLASSES)
    assert q.confusion("a").sum() == (devices == "a").sum()
    with pytest.raises(PredictionsError, match="re-score the row"):
        ClipPredictions.from_bytes(b"not an npz")


def test_a_real_difference_is_shown_and_noise_is_not():
    d = design()
    labels, locations = d[0], d[1]
    rng = np.random.default_rng(2)
    base = by_location(0.5, locations, rng)
    better = base | (rng.random(len(labels)) < 0.15)  # B's hits, plus 15 % more of the clips
    shown = compare([predictions(better, 1, d)], [predictions(base, 2, d)], "A", "B", n_boot=1000)
    macro = shown["macro_acc"]
    assert macro.diff > 0.05 and macro.shown and macro.ci[0] > 0 and macro.p_value < 0.01
    assert "points of macro accuracy" in macro.sentence() and macro.sentence().endswith(": shown")
    assert set(shown) == {"macro_acc", "acc_real", "acc_seen", "acc_unseen", "acc_known"}
    other = by_location(0.5, locations, rng)
    noise = compare([predictions(other, 3, d)], [predictions(base, 4, d)], "A", "B", n_boot=1000)["macro_acc"]
    assert noise.ci[0] < 0 < noise.ci[1] and not noise.shown and noise.sentence().endswith(": not shown")
    seeds = compare([predictions(better, s, d) for s in range(3)], [predictions(base, 5, d)], "A", "B", n_boot=500)
    assert seeds["macro_acc"].seeds_a == 3 and "seeds resampled (3 vs 1)" in seeds["macro_acc"].method


def test_rows_on_different_clips_are_refused():
    d = design()
    other = design(locations_per_scene=5)
    a = predictions(np.ones(len(d[0]), bool), 0, d)
    b = predictions(np.ones(len(other[0]), bool), 0, other)
    with pytest.raises(ComparisonError, match="different test clips"):
        compare([a], [b], "A", "B")


def seed_rows(correct_by_seed, d, **identity):
    rows = []
    for seed, correct in enumerate(correct_by_seed):
        p = predictions(correct, seed, d)
        macro = macro_accuracy(p.labels, p.correct, 10)
        rows.append(make_row(submission=identity.get("submission", "sys"), system="sys", kind="system",
                             status="ok", seed=seed, profile="default", dataset="synth", dataset_fingerprint="fp1",
                             split="test", macro_acc=macro, overall_acc=float(p.correct.mean()), compliant=True,
                             acc_per_device={"a": 0.5}, acc_per_class={"scene0": 0.5}, n_seeds=1, config_hash="c",
                             clips_digest=p.digest, clip_predictions=p.to_bytes(),
                             **{k: v for k, v in identity.items() if k != "submission"}))
    return rows


def strong_and_weak(d, seed: int) -> tuple[list[dict], list[dict]]:
    """Three seeds each of a strong (70 % of clips right) and a weak (45 %) submission."""
    rng = np.random.default_rng(seed)
    return tuple(seed_rows([rng.random(len(d[0])) < p for _ in range(3)], d, submission=name)
                 for name, p in (("strong", 0.7), ("weak", 0.45)))


def test_seed_aggregate_is_the_mean_with_an_interval_around_it():
    d = design()
    rng = np.random.default_rng(3)
    rows = seed_rows([rng.random(len(d[0])) < p for p in (0.4, 0.5, 0.6)], d)
    agg = aggregate_rows(rows, n_boot=500)
    macros = [r["macro_acc"] for r in rows]
    assert agg["n_seeds"] == 3 and agg["seeds"] == "0,1,2" and agg["seed"] is None
    assert agg["macro_acc"] == pytest.approx(np.mean(macros))
    assert agg["macro_acc_seed_std"] == pytest.approx(np.std(macros, ddof=1))
    assert agg["macro_acc_ci_low"] < agg["macro_acc"] < agg["macro_acc_ci_high"]
    ensemble = json.loads(agg["intervals"])["ensemble_macro_acc"]
    assert ensemble[1] <= ensemble[0] <= ensemble[2]
    assert json.loads(agg["seed_rows"]) == [r["row_id"] for r in rows]
    with pytest.raises(AggregateError, match="at least two"):
        aggregate_rows(rows[:1])
    with pytest.raises(AggregateError, match="differ in submission"):
        aggregate_rows([rows[0], seed_rows([np.ones(len(d[0]), bool)], d, submission="other")[0]])


def test_the_board_ranks_like_with_like_and_compares_aggregates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = design()
    strong, weak = strong_and_weak(d, 4)
    rerun = seed_rows([np.random.default_rng(40).random(len(d[0])) < 0.45], d, submission="weak")  # seed 0 again: a re-run
    big = make_row(submission="huge", system="huge", kind="ablation", status="ok", macro_acc=0.9, compliant=False,
                   compliance_reasons="parameter memory 500,000 B > 128,000 B", dataset_fingerprint="fp1",
                   split="test", dataset="synth", profile="default")
    smoke = make_row(submission="smoky", system="smoky", kind="system", status="ok", macro_acc=0.1, compliant=True,
                     dataset_fingerprint="fp-smoke", split="test", dataset="synth-smoke", profile="smoke")
    board = tmp_path / "b.parquet"
    append_rows(board, [*strong, *weak, aggregate_rows(strong, n_boot=300), aggregate_rows(weak, n_boot=300),
                        *rerun, big, smoke])
    df = read_board(board)
    same, others = comparable(df)
    assert "smoky" not in set(same["submission"]) and list(others["dataset"]) == ["synth-smoke"]
    shown = rank_board(collapse_reruns(same))
    assert list(shown["submission"]) == ["strong", "weak", "huge"]  # the aggregates; non-compliant unranked below
    assert list(shown["rank"].astype("object").where(shown["rank"].notna(), None)) == [1, 2, None]
    assert (shown["n_seeds"].iloc[:2] == 3).all()
    assert len(row_predictions(df, select_row(df, "strong"))) == 3

    listed = runner.invoke(app, ["leaderboard", str(board), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["submission"] for r in json.loads(listed.stdout)] == ["strong", "weak", "huge"]
    everything = runner.invoke(app, ["leaderboard", str(board), "--all", "--json"])
    assert len(json.loads(everything.stdout)) == 10  # every row of the largest test set, re-runs included

    result = runner.invoke(app, ["compare", "strong", "weak", "--board", str(board), "--n-boot", "500", "--json"])
    assert result.exit_code == 0, result.output
    macro = json.loads(result.stdout)["comparisons"]["macro_acc"]
    assert macro["shown"] and macro["seeds_a"] == 3 and macro["diff"] > 0.15
    plain = runner.invoke(app, ["compare", "strong", "weak", "--board", str(board), "--n-boot", "300"])
    assert "strong (3 seeds) - weak (3 seeds) = +" in plain.output and ": shown" in plain.output
    refused = runner.invoke(app, ["compare", "strong", "huge", "--board", str(board)])
    assert refused.exit_code == 1 and "no per-clip predictions" in refused.output
    assert runner.invoke(app, ["compare", "strong", "nobody", "--board", str(board)]).exit_code == 1


def test_claims_are_re_tested_from_a_file_and_typos_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    strong, weak = strong_and_weak(design(), 5)
    board = tmp_path / "b.parquet"
    append_rows(board, [*strong, *weak, aggregate_rows(strong, n_boot=200), aggregate_rows(weak, n_boot=200)])
    claims = tmp_path / "claims.toml"
    claims.write_text('[[claim]]\nname = "strong beats weak"\na = "strong"\nb = "weak"\npaper = "+5"\n'
                      '[[claim]]\nname = "weak beats strong on unseen"\na = "weak"\nb = "strong"\n'
                      'metric = "acc_unseen"\n'
                      '[[claim]]\nname = "strong beats weak on device b"\na = "strong"\nb = "weak"\n'
                      'metric = "device:b"\n')
    result = runner.invoke(app, ["claims", str(claims), "--board", str(board), "--n-boot", "300", "--format",
                                 "markdown"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5 and "| strong beats weak |" in lines[2] and "**shown**" in lines[2]
    assert "3 vs 3 seeds" in lines[2] and "the opposite is shown" in lines[3]
    assert "| strong beats weak on device b |" in lines[4] and "**shown**" in lines[4]
    claims.write_text('[[claim]]\nname = "x"\na = "strong"\nb = "weak"\nmetric = "device:"\n')
    bad = runner.invoke(app, ["claims", str(claims), "--board", str(board)])
    assert bad.exit_code == 1 and "device:<device id>" in bad.output
    wrong = runner.invoke(app, ["claims", str(claims), "--board", str(board), "--format", "markdwon"])
    assert wrong.exit_code != 0 and "markdwon" in wrong.output
    claims.write_text('[[claim]]\nname = "x"\na = "strong"\nb = "weak"\nmetrc = "acc_unseen"\n')
    typo = runner.invoke(app, ["claims", str(claims), "--board", str(board)])
    assert typo.exit_code == 1 and "metrc" in typo.output and "metric" in typo.output


def test_seeds_scored_separately_are_aggregated_once(tmp_path):
    d = design()
    rng = np.random.default_rng(6)
    board = tmp_path / "b.parquet"
    first = seed_rows([rng.random(len(d[0])) < p for p in (0.5, 0.55)], d, submission="sep")
    append_rows(board, first)
    append_rows(board, seed_rows([rng.random(len(d[0])) < 0.6 for _ in range(3)], d, submission="sep")[2:])
    result = runner.invoke(app, ["aggregate", str(board), "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    assert "sep: seeds 0,1,2" in result.output and "appended 1 aggregate" in result.output
    rows = read_board(board)
    assert rows.iloc[-1]["n_seeds"] == 3
    assert "appended 0 aggregate" in runner.invoke(app, ["aggregate", str(board)]).output


def test_the_documented_claims_are_what_the_reference_board_gives():
    """docs/results.md's claims table is the output of `bench claims docs/claims.toml --board main`, digit for
    digit: the documented verdicts cannot drift from the board."""
    from bench.paths import REPO_ROOT, board_path
    from bench.score.claims import evaluate_claims, load_claims, markdown

    results = evaluate_claims(load_claims(REPO_ROOT / "docs" / "claims.toml"), board_path("main", reading=True))
    assert markdown(results) in (REPO_ROOT / "docs" / "results.md").read_text()
