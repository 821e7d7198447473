"""Hostile and broken packages, written by these tests, scored as any user would (``bench score --package``): none
can see labels, damage the board or the store, outlive the scorer, or pass the complexity gate by hiding weights;
a crash costs only its own row. Needs bubblewrap (CI installs it); the refusal without it is tested too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.data.store import Store, StoreIntegrityError, prepare
from bench.packages.sandbox import bwrap_version, python_paths
from bench.score.leaderboard import read_board

runner = CliRunner()
needs_bwrap = pytest.mark.skipif(bwrap_version() is None, reason="bubblewrap (bwrap) is not available here")

BASE = '''
"""A working package: a tiny seeded network on log-mels; the hostile modules override what they abuse."""
import torch
import torchaudio

CLASSES = ["airport", "bus", "metro", "metro_station", "park", "public_square", "shopping_mall",
           "street_pedestrian", "street_traffic", "tram"]


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, 2, 1)
        self.fc = torch.nn.Linear(4, len(CLASSES))

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def load_model(model_file_path=None):
    return Net().eval()


def load_inputs(file_paths, device_ids, model):
    mel = torchaudio.transforms.MelSpectrogram(32000, n_fft=1024, hop_length=500, n_mels=32)
    out = []
    for path in file_paths:
        wave, sr = torchaudio.load(path)
        wave = torchaudio.functional.resample(wave.mean(0), sr, 32000)[:32000]
        out.append((mel(wave) + 1e-5).log()[None, None])
    return out


def get_model_for_device(model, device_id):
    return model


def predict(file_paths, device_ids, model_file_path=None, **kwargs):
    model = load_model()
    with torch.no_grad():
        return [model(x)[0] for x in load_inputs(file_paths, device_ids, model)], list(CLASSES)


def one_hot(label):
    z = torch.full((len(CLASSES),), -10.0)
    z[CLASSES.index(label)] = 10.0
    return z
'''

CHEAT = '''
"""Predicts the true scene: from the file name, or from any metadata it can find next to, or above, the audio."""
import csv, glob, os
from Hostile_task1._base import CLASSES, get_model_for_device, load_inputs, load_model, one_hot  # noqa: F401

DATASET = {dataset!r}


def labels_near(path):
    found = {{}}
    folders = [os.path.dirname(path)]
    for _ in range(4):
        folders.append(os.path.dirname(folders[-1]))
    candidates = [f for d in folders for f in glob.glob(os.path.join(d, "*.csv"))]
    candidates += glob.glob(os.path.join(DATASET, "*.csv")) + glob.glob(os.path.expanduser("~/.cache/ascbench/**/meta.csv"),
                                                                       recursive=True)
    for name in candidates:
        try:
            with open(name) as f:
                for row in csv.DictReader(f, delimiter="\\t"):
                    if row.get("scene_label"):
                        found[os.path.basename(row["filename"])] = row["scene_label"]
        except OSError:
            pass
    return found


def predict(file_paths, device_ids, model_file_path=None, **kwargs):
    out = []
    for path in file_paths:
        table = labels_near(path)
        name = os.path.basename(path)
        label = table.get(name) or next((c for c in sorted(CLASSES, key=len, reverse=True) if c in name), "airport")
        out.append(one_hot(label))
    return out, list(CLASSES)
'''

VANDAL = '''
"""Tries to destroy the leaderboard (its path from the parent's command line, or known) and poison the store."""
import glob, os
from Hostile_task1._base import get_model_for_device, load_inputs, load_model, predict as honest  # noqa: F401

TARGETS = {targets!r}


def predict(file_paths, device_ids, model_file_path=None, **kwargs):
    paths = list(TARGETS)
    for cmdline in glob.glob("/proc/*/cmdline"):
        try:
            args = open(cmdline, "rb").read().split(b"\\0")
        except OSError:
            continue
        paths += [a.decode() for a in args if a.endswith(b".parquet")]
    for path in paths:
        for target in [path, *glob.glob(os.path.join(path, "*"))]:
            try:
                with open(target, "r+b") as f:
                    f.truncate(0)
            except OSError:
                pass
    return honest(file_paths, device_ids, model_file_path)
'''

ESCAPE = '''
"""Leaves a grandchild behind (its own session) and tries the network, then answers honestly."""
import socket, subprocess, sys
from Hostile_task1._base import get_model_for_device, load_inputs, load_model, predict as honest  # noqa: F401


def predict(file_paths, device_ids, model_file_path=None, **kwargs):
    subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep({marker})"],
                     start_new_session=True)
    try:
        socket.create_connection(("8.8.8.8", 53), timeout=2).close()
        raise RuntimeError("network reachable")
    except OSError:
        pass
    return honest(file_paths, device_ids, model_file_path)
'''

EXIT = '''
"""Exits the interpreter abruptly in the middle of predict."""
import os
from Hostile_task1._base import get_model_for_device, load_inputs, load_model  # noqa: F401


def predict(file_paths, device_ids, model_file_path=None, **kwargs):
    os._exit(0)
'''

SNOOP = '''
"""Reports, as its error, what it can see of the machine."""
import json, os
from Sneaky_task1._base import get_model_for_device, load_inputs, load_model  # noqa: F401

PLACES = {places!r}
HOME = {home!r}


def predict(file_paths, device_ids, model_file_path=None, **kwargs):
    seen = {{"root": sorted(os.listdir("/")), "clips": sorted(os.listdir(os.path.dirname(file_paths[0])))[:3],
             "env": sorted(k for k in os.environ if "ASCBENCH" in k),
             "visible": [p for p in PLACES if os.path.exists(p)], "first": file_paths[0],
             "home": sorted(os.listdir(HOME)) if os.path.isdir(HOME) else None}}
    raise RuntimeError("SEEN" + json.dumps(seen))
'''

BUFFERS = '''
"""360 kB of weights held in a buffer: the official parameter count sees 0 bytes of them."""
import torch
from Sneaky_task1._base import CLASSES, load_inputs, predict  # noqa: F401


class Hidden(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.randn(len(CLASSES), 9_000))  # 90,000 float32 values
        self.fc = torch.nn.Linear(1, 1)

    def forward(self, x):
        flat = torch.nn.functional.adaptive_avg_pool2d(x, (1, self.weight.shape[1])).flatten(1)
        return flat @ self.weight.T + 0 * self.fc.weight.sum()


def load_model(model_file_path=None):
    return Hidden().eval()


def get_model_for_device(model, device_id):
    return model
'''


def write_package(root: Path, name: str, modules: dict[int, str]) -> None:
    folder = root / name
    (folder / "resources").mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "resources" / "__init__.py").write_text("")
    (folder / "_base.py").write_text(BASE)
    from bench.packages.export import write_dummy_wav

    write_dummy_wav(folder / "resources" / "dummy.wav")
    for k, source in modules.items():
        (folder / f"{name}_{k}.py").write_text(textwrap.dedent(source))


def score(root: Path, package: str, data: Path, board: Path, *extra: str, env: dict | None = None):
    args = ["score", "--package", package, "--path", str(root), "--data", str(data), "--board", str(board),
            "--no-int8", "--no-energy", "--n-boot", "10", "--out", str(root / "out" / package.replace(":", "-")),
            "--timeout", "300", *extra]
    if env is None:
        return runner.invoke(app, args)
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, smoke_dataset, smoke_store):
    root = tmp_path_factory.mktemp("hostile")
    board = tmp_path_factory.mktemp("boards") / "board.parquet"  # not inside the package's own (visible) folder
    marker = 4242424242
    write_package(root, "Hostile_task1", {
        1: CHEAT.format(dataset=str(smoke_dataset)),
        2: VANDAL.format(targets=[str(board), str(smoke_store.root), str(smoke_dataset)]),
        3: ESCAPE.format(marker=marker),
        4: EXIT})
    write_package(root, "Sneaky_task1", {
        1: SNOOP.format(places=[str(smoke_dataset), str(smoke_store.root), os.environ["ASCBENCH_HOME"], str(board)],
                        home=str(Path.home())),
        2: BUFFERS})
    (root / "Sneaky_task1" / "_base.py").write_text(BASE)
    return root, board, marker


@needs_bwrap
@pytest.mark.heavy
def test_hostile_packages_neither_cheat_nor_damage_and_a_crash_costs_only_its_row(hostile, smoke_dataset,
                                                                                  smoke_store):
    root, board, marker = hostile
    before = {p.name: p.read_bytes() for p in smoke_store.root.iterdir() if p.is_file()}
    result = score(root, "Hostile_task1", smoke_dataset, board)
    assert result.exit_code == 1  # module 4 failed
    rows = read_board(board).set_index("submission")
    assert list(rows.index) == ["Hostile_task1_1", "Hostile_task1_2", "Hostile_task1_3", "Hostile_task1_4"]
    assert rows.loc["Hostile_task1_1", "macro_acc"] <= 0.2  # no labels to read: chance, not 100 %
    assert rows.loc["Hostile_task1_2", "status"] == "ok" and rows.loc["Hostile_task1_3", "status"] == "ok"
    assert rows.loc["Hostile_task1_4", "status"] == "failed"
    assert "without returning a result" in rows.loc["Hostile_task1_4", "error"]
    assert rows["isolation"].str.startswith("bubblewrap").all()
    assert {p.name: p.read_bytes() for p in smoke_store.root.iterdir() if p.is_file()} == before
    Store(smoke_store.root)  # still verifies
    leftovers = subprocess.run(["pgrep", "-f", f"sleep\\({marker}\\)"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "a grandchild outlived the sandbox"


@needs_bwrap
def test_the_package_sees_only_its_clips_under_neutral_names(hostile, smoke_dataset, tmp_path):
    root, _, _ = hostile
    result = score(root, "Sneaky_task1:1", smoke_dataset, tmp_path / "b.parquet")
    error = read_board(tmp_path / "b.parquet").iloc[0]["error"]
    seen = json.loads(error[error.index("SEEN") + 4:])
    assert result.exit_code == 1 and seen["visible"] == [] and seen["env"] == []
    assert seen["first"].startswith("/data/clips/") and seen["clips"] == ["000000.wav", "000001.wav", "000002.wav"]
    assert {"data", "proc", "tmp", "usr"} <= set(seen["root"]) and "home" not in seen["root"]
    environment = {p.relative_to(Path.home()).parts[0] for p in python_paths() if Path.home() in p.parents}
    assert seen["home"] is None or set(seen["home"]) <= environment  # of ~, only the Python environment in it


@needs_bwrap
@pytest.mark.heavy
def test_weights_in_buffers_are_hidden_parameters_and_not_compliant(hostile, smoke_dataset, tmp_path):
    root, _, _ = hostile
    result = score(root, "Sneaky_task1:2", smoke_dataset, tmp_path / "b.parquet")
    row = read_board(tmp_path / "b.parquet").iloc[0]
    assert result.exit_code == 0, result.output
    assert row["max_param_bytes"] < 100 and not row["compliant"]
    assert "hidden parameters" in row["compliance_reasons"]
    gate = runner.invoke(app, ["check", "Sneaky_task1:2", "--path", str(root), "--json"])
    assert gate.exit_code == 1 and "hidden parameters" in json.dumps(json.loads(gate.stdout)["reasons"])


@pytest.mark.heavy
def test_without_bubblewrap_untrusted_code_is_refused_unless_asked(hostile, smoke_dataset, tmp_path):
    root, _, _ = hostile
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no /usr/bin: no bwrap
    refused = score(root, "Sneaky_task1:2", smoke_dataset, tmp_path / "b.parquet", env=env)
    assert refused.returncode == 1 and "bubblewrap (bwrap) is not installed" in refused.stderr
    assert not (tmp_path / "b.parquet").exists()
    allowed = score(root, "Sneaky_task1:2", smoke_dataset, tmp_path / "b.parquet", "--no-sandbox")  # needs no bwrap
    assert allowed.exit_code == 0, allowed.output
    assert read_board(tmp_path / "b.parquet").iloc[0]["isolation"].startswith("none (--no-sandbox)")


def test_a_tampered_store_is_never_used(smoke_dataset, tmp_path):
    report = prepare(smoke_dataset, store_dir=tmp_path / "store")
    index = pd.read_parquet(tmp_path / "store" / "index.parquet")
    index["label"] = 0  # every label poisoned
    index.to_parquet(tmp_path / "store" / "index.parquet", index=False)
    with pytest.raises(StoreIntegrityError, match="clip list or labels changed"):
        Store(tmp_path / "store")
    again = prepare(smoke_dataset, store_dir=tmp_path / "store")
    assert again.rebuilt and not again.reused and again.store.fingerprint == report.store.fingerprint
    audio = tmp_path / "store" / "audio.i16"
    with open(audio, "r+b") as f:
        f.seek(1000)
        f.write(b"\x7f\x7f" * 100)
    with pytest.raises(StoreIntegrityError, match="audio chunks changed"):
        Store(tmp_path / "store")
    assert prepare(smoke_dataset, store_dir=tmp_path / "store").rebuilt
    Store(tmp_path / "store")


def test_a_board_edited_outside_ascbench_is_reported_and_not_ranked(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from bench.score.leaderboard import append_rows, make_row

    monkeypatch.chdir(tmp_path)
    board = tmp_path / "b.parquet"
    append_rows(board, [make_row(submission=n, system=n, kind="system", status="ok", macro_acc=a, compliant=True)
                        for n, a in (("honest", 0.41), ("other", 0.38), ("gone", 0.30))])
    table = pq.read_table(board)
    records = [r for r in table.to_pylist() if r["submission"] != "gone"]
    for record in records:
        if record["submission"] == "other":
            record["macro_acc"] = 0.99  # rewritten as valid Parquet
    pq.write_table(type(table).from_pylist(records, schema=table.schema), board)
    shown = runner.invoke(app, ["leaderboard", str(board), "--json"])
    assert shown.exit_code == 0
    records = {r["submission"]: r for r in json.loads(shown.stdout)}
    assert records["honest"]["rank"] == 1 and records["other"]["rank"] is None
    assert "macro_acc 0.38 → 0.99" in records["other"]["integrity"]
    assert "edited outside ascbench" in shown.stderr and "(gone) was removed outside ascbench" in shown.stderr
