"""Data layer: readers for both TAU layouts, manifests, the synthetic benchmark, the packed store, bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from bench.cli import app
from bench.data import store as store_mod
from bench.data.audio import read_clip
from bench.data.check import check_dataset
from bench.data.loaders import ClipDataset, make_loader
from bench.data.manifest import load_manifest
from bench.data.splits import carve_validation
from bench.data.store import Store, StoreError, prepare
from bench.data.synth.generate import expected_counts
from bench.data.tau import DatasetError, open_dataset
from bench.paths import MANIFEST_DIR

runner = CliRunner()
CLASSES = load_manifest("tau22-dev").classes


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def tone(freq: float, seconds: float = 1.0, sr: int = 44_100, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write_tau22(root: Path, rows: list[tuple[str, str, str, str]], sr: int = 44_100) -> Path:
    """A TAU 2022 development-layout folder written like the real files: 44.1 kHz, 24-bit PCM, mono."""
    (root / "audio").mkdir(parents=True)
    for i, (name, scene, ident, dev) in enumerate(rows):
        sf.write(root / name, tone(300 + 50 * i, sr=sr), sr, subtype="PCM_24")
    meta = pd.DataFrame(rows, columns=["filename", "scene_label", "identifier", "source_label"])
    meta.to_csv(root / "meta.csv", sep="\t", index=False)
    return root


@pytest.fixture
def tau22(tmp_path) -> Path:
    rows = [(f"audio/{s}-lisbon-{i}-0-{d}.wav", s, f"lisbon-{i}", d)
            for i, (s, d) in enumerate([("airport", "a"), ("bus", "b"), ("metro", "s1"), ("park", "a"),
                                        ("tram", "c"), ("park", "s4")])]
    root = write_tau22(tmp_path / "tau22", rows)
    pd.DataFrame({"filename": [r[0] for r in rows[:3]]}).to_csv(root / "split25.csv", sep="\t", index=False)
    pd.DataFrame({"filename": [r[0] for r in rows[3:]], "scene_label": [r[1] for r in rows[3:]]}).to_csv(
        root / "test.csv", sep="\t", index=False)
    return root


# --- manifests ---------------------------------------------------------------------------------------------------

def test_tau22_manifest_carries_the_official_counts():
    m = load_manifest("tau22-dev")
    assert m.meta_rows == 230_350
    assert m.splits["split25"].rows == 34_900
    assert m.splits["split25"].devices == {"a": 25_520, "b": 1_900, "c": 1_920, "s1": 1_840, "s2": 1_850, "s3": 1_870}
    assert m.splits["test"].rows == 29_680 == sum(m.splits["test"].devices.values())
    assert m.role("a") == "real" and m.role("s2") == "seen" and m.role("s5") == "unseen" and m.role("d") == "unseen"
    assert m.role("never-heard-of") == m.role("unknown") == "unseen"
    assert list(m.classes) == sorted(m.classes) and len(m.classes) == 10


def test_default_profile_proportions_match_split25():
    counts = expected_counts(load_manifest("synth-default"))["train"]
    total = sum(counts.values())
    assert counts["a"] / total == pytest.approx(25_520 / 34_900, abs=0.01)
    for dev in ("b", "c", "s1", "s2", "s3"):
        assert counts[dev] / total == pytest.approx(0.054, abs=0.006)
    test = expected_counts(load_manifest("synth-default"))["test"]
    assert set(test) == {"a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"} and len(set(test.values())) == 1


# --- synthetic benchmark -----------------------------------------------------------------------------------------

def test_smoke_synth_is_clean_small_and_split_by_location(smoke_dataset):
    ds, problems = check_dataset(smoke_dataset)
    assert problems == []
    assert len(ds.clips) <= 300
    train, test = ds.split("split25"), ds.split("test")
    assert not set(train["identifier"]) & set(test["identifier"])
    assert set(test["device"]) == {"a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"}
    assert not {"s4", "s5", "s6"} & set(train["device"])
    share = train["device"].value_counts(normalize=True)
    assert 0.70 <= share["a"] <= 0.78
    assert len(ds.clips["city"].unique()) >= 6
    info = sf.info(str(smoke_dataset / ds.clips["filename"][0]))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (44_100, 1, "PCM_24", 44_100)
    assert len(list((smoke_dataset / "micirp").glob("*.wav"))) == load_manifest("synth-smoke").irs["count"]


def test_same_seed_gives_identical_files_via_cli(smoke_dataset, tmp_path):
    out = tmp_path / "again"
    result = runner.invoke(app, ["data", "synth", "--profile", "smoke", "--seed", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert tree_hash(out) == tree_hash(smoke_dataset)
    result = runner.invoke(app, ["data", "check", str(out)])
    assert result.exit_code == 0 and "clean" in result.output


def test_a_fresh_test_draw_redraws_the_test_split_and_keeps_training_byte_identical(smoke_dataset, tmp_path):
    from bench.data.synth.generate import generate

    manifest = json.loads((MANIFEST_DIR / "synth-smoke.json").read_text())
    manifest["generator"]["test_draw"] = 1
    path = tmp_path / "synth-smoke-draw1.json"
    path.write_text(json.dumps({**manifest, "name": "synth-smoke-draw1"}))
    out = generate(str(path), 0, tmp_path / "draw1", workers=1)
    digest = lambda root, name: hashlib.sha256((root / name).read_bytes()).hexdigest()  # noqa: E731
    meta = pd.read_csv(smoke_dataset / "meta.csv", sep="\t")
    train = set(pd.read_csv(smoke_dataset / "split25.csv", sep="\t")["filename"])
    assert all(digest(out, f) == digest(smoke_dataset, f) for f in train)
    assert all(digest(out, f) != digest(smoke_dataset, f) for f in set(meta["filename"]) - train)


def test_scenes_differ_and_devices_shift_the_spectrum(smoke_dataset):
    """Not noise: the same segment through device a and an unseen device differs; scenes differ in spectrum."""
    ds = open_dataset(smoke_dataset)
    test = ds.split("test")
    seg = test[test["filename"].str.endswith("-a.wav")].iloc[0]["filename"]
    a, _ = read_clip(smoke_dataset / seg, 44_100)
    s5, _ = read_clip(smoke_dataset / seg.replace("-a.wav", "-s5.wav"), 44_100)
    spec = lambda x: 10 * np.log10(np.abs(np.fft.rfft(x)) ** 2 + 1e-12)  # noqa: E731
    assert np.abs(spec(a) - spec(s5)).mean() > 3.0  # dB: a real device shift
    assert np.corrcoef(a, s5)[0, 1] > 0.1  # ... of the same recording (parallel)


# --- TAU readers -------------------------------------------------------------------------------------------------

def test_tau22_reader_labels_devices_and_resamples(tau22):
    ds = open_dataset(tau22)
    assert ds.name == "tau22-dev"
    train = ds.split("split25")
    assert train["label"].tolist() == [CLASSES.index("airport"), CLASSES.index("bus"), CLASSES.index("metro")]
    assert ds.split("test")["role"].tolist() == ["real", "real", "unseen"]
    wave, issues = read_clip(tau22 / train["filename"][0], 44_100)
    assert issues == [] and wave.shape == (32_000,) and wave.dtype == np.float32
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * 32_000 / len(wave)
    assert abs(peak_hz - 300) <= 1.0  # resampled, not reinterpreted
    _, problems = check_dataset(tau22)
    assert problems and {p.kind for p in problems} == {"row count"}  # a tiny fixture is not the full dataset


def test_tau25_eval_layout(tmp_path):
    root = tmp_path / "tau25"
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    devices = ["a", "s2", "unknown", "unknown"]
    for i in range(len(devices)):
        sf.write(root / f"audio/{i}.wav", tone(200 + 100 * i), 44_100, subtype="PCM_24")
    pd.DataFrame({"filename": [f"audio/{i}.wav" for i in range(4)], "device_id": devices}).to_csv(
        root / "evaluation_setup/fold1_test.csv", sep="\t", index=False)
    ds = open_dataset(root)
    assert ds.name == "tau25-eval" and ds.problems == []
    ev = ds.split("eval")
    assert ev["label"].tolist() == [-1] * 4 and ev["role"].tolist() == ["real", "seen", "unseen", "unseen"]
    report = prepare(root, store_dir=tmp_path / "store")
    assert report.store.split("eval")["device"].tolist() == devices
    assert report.store.waveforms(np.array([3])).shape == (1, 32_000)


def test_missing_dataset_and_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset folder"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a TAU dataset folder"):
        open_dataset(tmp_path / "empty")


# --- bad input ---------------------------------------------------------------------------------------------------

def test_every_bad_input_is_reported_by_name(tau22, tmp_path):
    ds = open_dataset(tau22)
    names = ds.clips["filename"].tolist()
    raw = (tau22 / names[0]).read_bytes()
    (tau22 / names[0]).write_bytes(b"not a wave file" * 50)                     # corrupt
    (tau22 / names[1]).write_bytes(raw[: len(raw) // 2])                        # truncated
    sf.write(tau22 / names[2], tone(440, channels=2), 44_100, subtype="PCM_24")  # stereo
    sf.write(tau22 / names[3], tone(440, sr=48_000), 48_000, subtype="PCM_24")   # 48 kHz
    sf.write(tau22 / names[4], tone(440, seconds=0.5), 44_100, subtype="PCM_24")  # 0.5 s
    meta = pd.read_csv(tau22 / "meta.csv", sep="\t")
    meta.loc[5, "source_label"] = "zz"                                          # unknown device
    meta.to_csv(tau22 / "meta.csv", sep="\t", index=False)
    _, problems = check_dataset(tau22)
    by_kind = {p.kind: p for p in problems}
    assert names[0] in by_kind["unreadable"].where
    assert names[1] in by_kind["truncated"].where and "re-download" in by_kind["truncated"].message
    assert names[2] in by_kind["channels"].where and "mono" in by_kind["channels"].message
    assert names[3] in by_kind["sample_rate"].where and "48000" in by_kind["sample_rate"].message
    assert names[4] in by_kind["length"].where and "0.500 s" in by_kind["length"].message
    assert "zz" in by_kind["device"].message and "unknown" in by_kind["device"].message
    result = runner.invoke(app, ["data", "check", str(tau22)])
    assert result.exit_code == 1

    report = prepare(tau22, store_dir=tmp_path / "store")
    assert report.converted == {"channels": 1, "sample_rate": 1, "length": 1}
    assert sorted(i.kind for i in report.failed) == ["truncated", "unreadable"]
    st = report.store
    assert st.index.set_index("filename").loc[names[0], "ok"] == False  # noqa: E712
    assert names[0] not in st.split("split25")["filename"].tolist()      # loaders skip unusable clips
    assert st.index.set_index("filename").loc[names[5], "role"] == "unseen"
    result = runner.invoke(app, ["data", "prepare", str(tau22), "--store", str(tmp_path / "store2")])
    assert result.exit_code == 1 and names[0] in result.output and "converted" in result.output


def test_split_row_without_file_names_the_row(tau22):
    rows = pd.read_csv(tau22 / "split25.csv", sep="\t")
    pd.concat([rows, pd.DataFrame({"filename": ["audio/ghost.wav"]})]).to_csv(tau22 / "split25.csv", sep="\t",
                                                                               index=False)
    with pytest.raises(DatasetError, match="ghost.wav"):
        open_dataset(tau22).split("split25")
    _, problems = check_dataset(tau22)
    assert any(p.kind == "split" and "ghost.wav" in p.message for p in problems)


def test_missing_audio_file_is_reported(tau22):
    name = open_dataset(tau22).clips["filename"][2]
    (tau22 / name).unlink()
    _, problems = check_dataset(tau22)
    assert any(p.kind == "missing" and name in p.where for p in problems)


# --- store and loaders ---------------------------------------------------------------------------------------------

def test_store_round_trip_and_loader(smoke_dataset, smoke_store):
    st = smoke_store
    ds = open_dataset(smoke_dataset)
    assert st.info["n"] == len(ds.split("split25")) + len(ds.split("test"))
    row = st.split("test").iloc[7]
    direct, _ = read_clip(smoke_dataset / row["filename"], 44_100)
    assert np.abs(st.waveforms(np.array([row["row"]]))[0] - direct).max() <= 1.0 / 32_768 + 1e-6
    train = st.split("split25")
    loader = make_loader(ClipDataset(st, train, ["a", "b", "c", "s1", "s2", "s3"]), batch_size=16, shuffle=True)
    batches = list(loader)
    assert sum(len(b["wave"]) for b in batches) == len(train)
    b = batches[0]
    assert b["wave"].shape == (16, 32_000)
    assert b["label"].tolist() == train["label"].to_numpy()[b["index"].numpy()].tolist()
    assert prepare(smoke_dataset).reused


def test_interrupted_prepare_resumes(smoke_dataset, smoke_store, tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "CHUNK", 64)

    def interrupt(done, total):
        if done >= 128:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(smoke_dataset, store_dir=tmp_path / "st", progress=interrupt)
    with pytest.raises(StoreError, match="interrupted"):
        Store(tmp_path / "st")
    report = prepare(smoke_dataset, store_dir=tmp_path / "st")
    assert report.resumed_chunks == 2
    assert np.array_equal(np.asarray(report.store.audio), np.asarray(smoke_store.audio))


def test_validation_is_carved_by_location(smoke_store):
    train = smoke_store.split("split25")
    fit, val = carve_validation(train, 0.2, seed=3)
    assert len(fit) + len(val) == len(train)
    assert not set(fit["identifier"]) & set(val["identifier"])
    assert set(val["scene_label"]) == set(train["scene_label"])
    again, _ = carve_validation(train, 0.2, seed=3)
    assert again.index.equals(fit.index)


def test_problems_stay_whole_and_greppable_in_a_ci_log(tau22, tmp_path):
    """`bench data check DIR | cat`: stdout is a pipe, so nothing may be wrapped or cut."""
    meta = pd.read_csv(tau22 / "meta.csv", sep="\t")
    old = meta.loc[1, "filename"]
    new = "audio/" + "a-very-long-recording-name-" * 8 + "lisbon-1-0-b.wav"
    raw = (tau22 / old).read_bytes()
    (tau22 / new).write_bytes(raw[: len(raw) // 2])  # truncated
    (tau22 / old).unlink()
    meta.loc[1, "filename"] = new
    meta.to_csv(tau22 / "meta.csv", sep="\t", index=False)
    split = pd.read_csv(tau22 / "split25.csv", sep="\t").replace(old, new)
    split.to_csv(tau22 / "split25.csv", sep="\t", index=False)
    piped = subprocess.run([sys.executable, "-m", "bench", "data", "check", str(tau22)],
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 1
    line = next(line for line in piped.stdout.splitlines() if str(tau22 / new) in line)  # the whole path, one line
    assert "truncated" in line and "re-download" in line
    as_json = runner.invoke(app, ["data", "check", str(tau22), "--json"])
    assert as_json.exit_code == 1
    truncated = [p for p in json.loads(as_json.stdout)["problems"] if p["kind"] == "truncated"]
    assert [p["where"] for p in truncated] == [str(tau22 / new)]
    prepared = runner.invoke(app, ["data", "prepare", str(tau22), "--store", str(tmp_path / "s"), "--json"])
    assert prepared.exit_code == 1 and json.loads(prepared.stdout)["failed"][0].startswith(str(tau22 / new))


def test_non_finite_samples_and_a_wrong_bit_depth_are_reported_by_name(tau22, tmp_path):
    names = open_dataset(tau22).clips["filename"].tolist()
    bad = tone(440)
    bad[100] = np.nan
    sf.write(tau22 / names[0], bad.astype(np.float32), 44_100, subtype="FLOAT")   # NaN in a float WAV
    sf.write(tau22 / names[1], tone(440), 44_100, subtype="PCM_U8")             # 8-bit, manifest says 24-bit
    _, problems = check_dataset(tau22)
    by_kind = {p.kind: p for p in problems}
    assert names[0] in by_kind["non_finite"].where and "never turned into silence" in by_kind["non_finite"].message
    assert names[1] in by_kind["bit_depth"].where and "instead of the declared PCM_24" in by_kind["bit_depth"].message
    report = prepare(tau22, store_dir=tmp_path / "store")
    assert [i.kind for i in report.failed] == ["non_finite"]
    assert report.store.index.set_index("filename").loc[names[0], "ok"] == False  # noqa: E712  never silence
    assert report.converted.get("bit_depth") == 1


def test_a_second_prepare_still_names_the_clips_it_could_not_decode(tau22, tmp_path):
    names = open_dataset(tau22).clips["filename"].tolist()
    (tau22 / names[4]).write_bytes(b"garbage" * 100)
    first = runner.invoke(app, ["data", "prepare", str(tau22), "--store", str(tmp_path / "s")])
    second = runner.invoke(app, ["data", "prepare", str(tau22), "--store", str(tmp_path / "s")])
    assert first.exit_code == second.exit_code == 1
    assert "up to date" not in second.output and "still unusable" in second.output and names[4] in second.output


def test_a_full_disk_during_prepare_is_one_line_naming_the_space_needed(smoke_dataset, tmp_path):
    from bench.packages.sandbox import bwrap_version

    if bwrap_version() is None:
        pytest.skip("bubblewrap makes the small disk (a size-limited tmpfs); not available here")
    small = tmp_path / "small"
    small.mkdir()
    proc = subprocess.run(["bwrap", "--dev-bind", "/", "/", "--size", "2000000", "--tmpfs", str(small),
                           sys.executable, "-m", "bench", "data", "prepare",
                           str(smoke_dataset), "--store", str(small / "store")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Bus error" not in proc.stderr
    assert f"{small / 'store' / 'audio.i16'}: not enough disk space for the store: it needs 16,640,000 bytes" \
        in proc.stderr


def test_metadata_with_empty_required_values_is_a_clear_error(tau22):
    meta = pd.read_csv(tau22 / "meta.csv", sep="\t")
    meta.loc[2, "source_label"] = None
    meta.to_csv(tau22 / "meta.csv", sep="\t", index=False)
    with pytest.raises(DatasetError, match=r"meta.csv: column 'source_label' is empty in 1 row\(s\), first in line 4"):
        open_dataset(tau22)
