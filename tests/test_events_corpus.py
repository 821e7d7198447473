"""The embedded sound-event pre-training corpus (smoke profile only: the file runs in a few seconds)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from bench.cli import app
from bench.data.clips import ClipSet
from bench.data.manifest import load_manifest
from bench.data.store import prepare
from bench.data.synth import devices as devmod
from bench.data.synth import events
from bench.data.synth.generate import is_complete as scenes_complete

SMOKE = "events-smoke"
BENCHMARK_DEVICES = ["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"]


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The smoke corpus, seed 0, written by ``bench data synth --corpus events`` (its default worker count)."""
    out = tmp_path_factory.mktemp("events") / "seed0"
    result = CliRunner().invoke(app, ["data", "synth", "--corpus", "events", "--profile", "smoke", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote events-smoke (seed 0): 48 clips" in result.output
    return out


def test_same_seed_identical_however_split_other_seed_differs(corpus, tmp_path):
    workers = 1 if min(len(os.sched_getaffinity(0)), 4) > 1 else 2  # the other split than the CLI's
    again = events.generate_events(SMOKE, 0, tmp_path / "again", workers=workers)
    assert tree_hash(again) == tree_hash(corpus)
    assert events.is_complete(corpus, SMOKE, 0) and not events.is_complete(corpus, SMOKE, 1)
    assert not scenes_complete(corpus, SMOKE, 0)  # the two generators' markers never pass for each other
    assert not (tmp_path / "again.partial").exists()
    manifest = load_manifest(SMOKE)
    (w0, labels0, _), (w1, labels1, _) = (events.render_clip(manifest, seed, 0) for seed in (0, 1))
    assert np.array_equal(sf.read(str(corpus / "audio" / "train-00000.wav"), dtype="int16")[0],
                          np.clip(np.round(w0 * 32768), -32768, 32767).astype(np.int16))
    assert labels0 != labels1 or w0.shape != w1.shape or not np.allclose(w0, w1)


def test_labels_splits_and_format(corpus):
    manifest = load_manifest(SMOKE)
    assert len(manifest.classes) >= 30 and set(events.EVENT_SYNTH) >= set(manifest.classes)
    assert not set(manifest.classes) & set(load_manifest("synth-default").classes)
    assert tuple(load_manifest("events-default").classes) == manifest.classes
    meta = pd.read_csv(corpus / "meta.csv", sep="\t")
    assert "device" not in meta.columns and len(meta) == manifest.meta_rows
    for labels in meta["labels"]:
        names = labels.split(";")
        assert 1 <= len(names) <= 3 and len(set(names)) == len(names) and set(names) <= set(manifest.classes)
    counts = meta["split"].value_counts().to_dict()
    assert counts == {"train": manifest.splits["train"].rows, "validation": manifest.splits["validation"].rows}
    assert set(meta["chain"]) <= set(events.chain_pool(SMOKE, 0)) | {events.CLEAN}
    assert meta["chain"].nunique() >= 4
    info = sf.info(str(corpus / meta["filename"][0]))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (32_000, 1, "PCM_16", 32_000)
    waves = np.stack([sf.read(str(corpus / f))[0] for f in meta["filename"][:12]])
    assert np.isfinite(waves).all() and (np.abs(waves).max(axis=1) > 1e-3).all()


def test_every_class_synthesizes_varied_finite_unit_peak_audio():
    for name in events.EVENT_CLASSES:
        a, b = (events.synthesize(name, np.random.default_rng([s, 3])) for s in (0, 1))
        assert np.isfinite(a).all() and abs(np.abs(a).max() - 1) < 1e-6, name
        assert len(a) != len(b) or not np.allclose(a, b), name  # each draw differs


@pytest.mark.parametrize("seed", [0, 1])
def test_pool_never_holds_a_benchmark_chain(seed):
    pool = events.chain_pool(SMOKE, seed)
    bench = devmod.all_devices(seed, BENCHMARK_DEVICES)
    scene_chains = events.benchmark_chains(load_manifest(SMOKE), seed)  # what the scene generator records with
    assert set(scene_chains) == set(BENCHMARK_DEVICES)
    bench = {**{f"{k}-spec": v for k, v in bench.items()}, **scene_chains}
    assert set(pool) == {f"r{i:02d}" for i in range(load_manifest(SMOKE).generator["chain_pool"])}
    worst = max(events.response_similarity(c, b) for c in pool.values() for b in bench.values())
    assert worst < 0.99
    assert events.response_similarity(bench["s1-spec"], bench["s1"]) > 0.999  # the measure does see a copy


def test_pool_redraws_a_chain_like_the_benchmark(monkeypatch):
    """A candidate that matches a benchmark chain is drawn again: plant the first candidate among the references."""
    manifest = load_manifest(SMOKE)
    manifest.generator["chain_pool"] = 1
    first = devmod.simulated_device("r00", np.random.default_rng([5, 20, 0, 0]), 1.0)
    monkeypatch.setattr(events, "load_manifest", lambda name: manifest)
    monkeypatch.setattr(events, "benchmark_chains", lambda m, seed: {"planted": first})
    monkeypatch.setattr(events, "_POOL_CACHE", {})
    pool = events.chain_pool(SMOKE, 5)
    assert events.response_similarity(pool["r00"], first) < manifest.generator["max_similarity"]


def test_prepare_opens_it_as_a_multilabel_corpus(corpus, tmp_path):
    store = prepare(corpus, store_dir=tmp_path / "store").store
    manifest = load_manifest(store.info["manifest"])
    assert manifest.name == SMOKE and manifest.multilabel and store.info["splits"] == ["train", "validation"]
    fit, val = (ClipSet(store, store.split(s), manifest.classes, tuple(manifest.devices), True)
                for s in (manifest.train_split, manifest.validation_split))
    meta = pd.read_csv(corpus / "meta.csv", sep="\t").set_index("filename")
    for clips in (fit, val):
        y = clips.targets()
        assert y.shape == (len(clips), len(manifest.classes)) and set(np.unique(y)) <= {0.0, 1.0}
        assert ((y.sum(axis=1) >= 1) & (y.sum(axis=1) <= 3)).all()
        assert (y.sum(axis=1) == meta.loc[clips.frame["filename"], "labels"].str.count(";").to_numpy() + 1).all()
    assert set(fit.frame["device"]) == {"unknown"} and (len(fit), len(val)) == (40, 8)
    x = store.waveforms(val.rows[:2])
    ref = sf.read(str(corpus / val.frame["filename"].iloc[0]), dtype="float32")[0]
    assert np.array_equal(x[0], ref)  # 16-bit at 32 kHz: packed without resampling or loss


def test_cli_refuses_an_unknown_corpus_and_reuses_a_complete_one(corpus):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "synth", "--corpus", "birds", "--profile", "smoke"])
    assert result.exit_code == 2 and "unknown corpus 'birds'" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["data", "synth", "--corpus", "events", "--profile", "smoke", "--out", str(corpus)])
    assert result.exit_code == 0 and "already generated" in result.output and "48 clips" in result.output
