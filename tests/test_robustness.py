"""Nothing lost, nothing skipped silently, errors that name their cause: concurrent runs of one configuration, a
test split with an unreadable clip, a broken board, a target that fails to import."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.score.leaderboard import read_board

runner = CliRunner()

SYSTEM_TOML = '''
[system]
name = "twice"
description = "one small stage"
citation = "none"
stages = ["train"]

[defaults]
model = "cpresnet_half"
model_options = { n_mels = 32 }

[profiles.smoke.train]
epochs = 2
batch_size = 32
'''

SYSTEM_PY = '''
from bench.config import reads
from bench.models import MODEL
from bench.submission import ModelSubmission
from bench.train.task import OPTIM, ClassifierTask, OptimConfig


@reads(MODEL, OPTIM)
def train(ctx):
    model = ctx.create_model()
    ctx.fit(ClassifierTask(model, OptimConfig.from_config(ctx.config)), ctx.clips("fit"), ctx.clips("val"))
    return {"model": model.state_dict()}


@reads(MODEL)
def submission(ctx):
    return ModelSubmission.single("twice", ctx.create_model(state=ctx.previous["train"]["model"]), ctx.classes)
'''


def _system(tmp_path: Path) -> Path:
    folder = tmp_path / "twice"
    folder.mkdir()
    (folder / "system.toml").write_text(SYSTEM_TOML)
    (folder / "system.py").write_text(SYSTEM_PY)
    return folder


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    """The folder is claimed by mkdir itself: 16 threads racing for one timestamp all get one (CI once lost a run to
    an exists-then-mkdir race)."""
    import threading
    from datetime import datetime, timezone

    from bench.run import _run_folder
    from bench.system import load_system

    monkeypatch.setenv("ASCBENCH_HOME", str(tmp_path / "home"))
    spec, started = load_system(_system(tmp_path)), datetime(2026, 12, 1, tzinfo=timezone.utc)
    barrier, folders, errors = threading.Barrier(16), [], []

    def claim():
        barrier.wait()
        try:
            folders.append(_run_folder(spec, "smoke", None, 0, started))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(folders)) == 16 and all(f.is_dir() for f in folders)


@pytest.mark.heavy
def test_two_runs_of_one_uncached_configuration_at_once_share_the_work_and_both_rows_land(tmp_path,
                                                                                         smoke_dataset):
    folder, board = _system(tmp_path), tmp_path / "board.parquet"
    env = {**os.environ, "ASCBENCH_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "bench", "run", str(folder), "--data",
               str(smoke_dataset), "--profile", "smoke", "--board", str(board), "--no-progress", "--no-int8",
               "--no-energy", "--json"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(r["stages"][0]["reused"] for r in results) == [False, True]  # trained once, reused once
    rows = read_board(board)
    assert len(rows) == 2 and rows["macro_acc"].nunique() == 1 and rows["run_dir"].nunique() == 2


def test_a_test_split_with_an_unreadable_clip_says_so_in_the_row_and_in_red(tmp_path, smoke_dataset):
    data = tmp_path / "data"
    shutil.copytree(smoke_dataset, data)
    test = (data / "test.csv").read_text().splitlines()
    broken = test[1].split("\t")[0]
    raw = (data / broken).read_bytes()
    (data / broken).write_bytes(raw[: len(raw) // 3])  # truncated
    result = runner.invoke(app, ["run", str(_system(tmp_path)), "--data", str(data), "--profile", "smoke",
                                 "--board", str(tmp_path / "b.parquet"), "--no-progress", "--no-int8",
                                 "--no-energy"])
    assert result.exit_code == 0, result.output
    note = f"179 of 180 test clips scored; 1 unreadable: {broken}"
    assert note in result.output
    assert note in read_board(tmp_path / "b.parquet").iloc[0]["notes"]


def test_board_and_import_problems_are_one_line_errors(tmp_path, smoke_dataset, monkeypatch):
    board = tmp_path / "broken.parquet"
    board.write_bytes(b"not parquet at all")
    scored = runner.invoke(app, ["score", "--submission", str(tmp_path), "--board", str(board)])
    assert scored.exit_code == 1 and "Traceback" not in scored.output
    assert f"{board} is not a usable ascbench leaderboard" in scored.output
    (tmp_path / "badmod.py").write_text("raise ValueError('cannot build on import')\n")
    monkeypatch.chdir(tmp_path)  # bench check imports module:callable targets from the working directory
    gate = runner.invoke(app, ["check", "badmod:build", "--input-shape", "1,1,32,32"], catch_exceptions=False)
    assert gate.exit_code == 2 and "cannot count" in gate.output and "cannot build on import" in gate.output
