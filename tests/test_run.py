"""`bench run`: the plugin interface, stage caching and resume, the baseline on the smoke profile, DDP, bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.run import run_system
from bench.score.leaderboard import read_board
from bench.submission import load_submission
from bench.system import SystemError_, load_system
from bench.train.stages import Interrupted, StageError
from conftest import FAST

runner = CliRunner()

TINY_SYSTEM = '''
"""A system written outside the harness: its own network, registered under its namespace, one training stage."""
import os
import torch
from torch import nn
from bench.config import Key, reads
from bench.models import MODEL, register
from bench.models.base import ASCModel
from bench.models.frontends import TorchaudioLogMel
from bench.submission import ModelSubmission
from bench.train.task import OPTIM, ClassifierTask, OptimConfig

SWITCHES = {name: Key(bool, False) for name in ("explode", "nan", "nan_logits", "broken_submission")}


class TinyNet(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def build(n_classes):
    return ASCModel(TorchaudioLogMel(n_mels=32, n_fft=512, win_length=512, hop_length=1000), TinyNet(n_classes))


register("tiny/net", build, n_classes=10)


class Tripwire(ClassifierTask):
    """Raises Ctrl-C at a chosen step (tests resume) or poisons the loss (tests NaN handling)."""

    def on_train_epoch_start(self):
        with open(os.environ["TINY_LOG"], "a") as f:
            f.write(f"epoch {self.current_epoch}\\n")

    def training_step(self, batch, i):
        if self.global_step == int(os.environ.get("TINY_INTERRUPT_AT", -1)):
            raise KeyboardInterrupt
        return super().training_step(batch, i)


def nan_loss(logits, batch):
    return torch.nn.functional.cross_entropy(logits, batch["label"]) * float("nan")


@reads(MODEL, OPTIM, extra=SWITCHES)
def train(ctx):
    if ctx.config["explode"]:
        raise RuntimeError("exploded on purpose")
    model = ctx.create_model(seed=0)
    optim = OptimConfig.from_config(ctx.config)
    task = Tripwire(model, optim, loss=nan_loss) if ctx.config["nan"] else Tripwire(model, optim)
    ctx.fit(task, ctx.clips("fit"), ctx.clips("val"))
    return {"model": model.state_dict()}


@reads(MODEL, extra=SWITCHES)
def submission(ctx):
    if ctx.config["broken_submission"]:
        raise ValueError("no submission today")
    model = ctx.create_model(state=ctx.previous["train"]["model"])
    if ctx.config["nan_logits"]:
        with torch.no_grad():
            model.net.fc.bias.fill_(float("nan"))
    return ModelSubmission.single("tiny", model, ctx.classes)
'''

TINY_TOML = '''
[system]
name = "tiny"
description = "A tiny external system"
citation = "none"
stages = ["train"]

[defaults]
model = "tiny/net"

[profiles.smoke.train]
epochs = 3
batch_size = 16
lr = 0.01

[variants.explode.train]
explode = true

[variants.nan.train]
nan = true

[variants.nan_logits]
nan_logits = true

[variants.broken_submission]
broken_submission = true

[variants.best.train]
select = "best"
'''


@pytest.fixture
def tiny_system(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "system.toml").write_text(TINY_TOML)
    (folder / "system.py").write_text(TINY_SYSTEM)
    monkeypatch.setenv("TINY_LOG", str(tmp_path / "epochs.log"))
    return folder


@pytest.fixture
def fresh_home(tmp_path, monkeypatch, smoke_dataset) -> Path:
    """A data home of its own (nothing cached), still pointing at the session's smoke dataset."""
    home = tmp_path / "home"
    monkeypatch.setenv("ASCBENCH_HOME", str(home))
    return home


def run_tiny(system, smoke_dataset, board, **kw):
    return run_system(system, str(smoke_dataset), "smoke", board=board, progress=False, **kw)


# --- the baseline, end to end ------------------------------------------------------------------------------------

@pytest.mark.heavy
def test_baseline_smoke_run(tmp_path, smoke_dataset):
    board = tmp_path / "board.parquet"
    args = ["run", "systems/baseline", "--profile", "smoke", "--board", str(board), "--no-progress",
            "--data", str(smoke_dataset), "--no-energy", "--no-int8"]  # energy: test_dsflexinet; INT8: tiny system
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    shown = " ".join(first.output.split())
    assert re.search(r"stage 1/2 general: trained in [\d.]+ s; \d+ min so far(, about \d+ min of stages left, by "
                     r"this machine's last runs of them|; no estimate for device_specific \(never trained on this "
                     r"machine\))", shown), shown  # other tests of this session may have trained it before
    assert re.search(r"stage 2/2 device_specific: trained in [\d.]+ s; \d+ min so far, scoring next", shown)
    rows = read_board(board)
    assert rows["submission"].tolist() == ["baseline", "baseline-general"]
    row = rows.iloc[0]
    assert row["max_macs"] == 29_419_156 and row["params"] == 61_148
    assert row["max_param_bytes"] == 122_296 and row["deploy_dtype"] == "float16" and row["compliant"]
    assert row["dataset"] == "synth-smoke" and row["train_split"] == "split25" and row["config_hash"]
    assert set(json.loads(row["acc_per_device"])) == {"a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"}
    per_device = json.loads(row["complexity_per_device"])
    assert set(per_device) >= {"a", "s1", "s10"}

    sub = load_submission(Path(rows.iloc[0]["run_dir"]) / "submission")
    assert set(sub.deployments) == {"unknown", "a", "b", "c", "s1", "s2", "s3"}
    general = sub.get_model_for_device("unknown")
    assert sub.get_model_for_device("s5") is general and sub.get_model_for_device("a") is not general


def test_same_seed_same_weights_and_metrics(tiny_system, smoke_dataset, tmp_path, monkeypatch):
    results = []
    for i in range(2):
        monkeypatch.setenv("ASCBENCH_HOME", str(tmp_path / f"home{i}"))
        results.append(run_tiny(tiny_system, smoke_dataset, None, score_options=FAST))
    assert not any(s["reused"] for r in results for s in r.stages)
    assert results[0].rows[0]["macro_acc"] == results[1].rows[0]["macro_acc"]
    assert results[0].rows[0]["log_loss"] == results[1].rows[0]["log_loss"]


def test_a_run_that_measured_its_threads_follows_the_free_cores_and_one_asked_for_keeps_them(tiny_system,
                                                                                            smoke_dataset, tmp_path,
                                                                                            monkeypatch):
    import torch

    records = {}
    before = torch.get_num_threads()
    monkeypatch.delenv("ASCBENCH_THREADS", raising=False)
    try:
        for asked in ("1", None):
            monkeypatch.setenv("ASCBENCH_HOME", str(tmp_path / f"home-{asked}"))
            if asked is None:
                monkeypatch.delenv("OMP_NUM_THREADS")
            else:
                monkeypatch.setenv("OMP_NUM_THREADS", asked)
            result = run_tiny(tiny_system, smoke_dataset, None, score_options=FAST)
            records[asked] = json.loads((result.run_dir / "run.json").read_text())
    finally:
        torch.set_num_threads(before)
    assert not records["1"]["threads_follow_free_cores"] and records[None]["threads_follow_free_cores"]
    for record in records.values():
        [fit] = record["stages"][0]["budget"]["fits"]
        assert fit["threads"] == record["threads"]  # the fit started on the run's threads ...
        assert isinstance(fit["thread_changes"], list)  # ... and says where it changed them (a few s: nowhere)
    assert records["1"]["stages"][0]["budget"]["fits"][0]["thread_changes"] == []


def test_external_system_folder_is_trained_and_scored(tiny_system, smoke_dataset, tmp_path):
    board = tmp_path / "b.parquet"
    result = run_tiny(tiny_system, smoke_dataset, board)
    row = read_board(board).iloc[0]
    assert row["system"] == "tiny" and row["status"] == "ok" and row["compliant"]
    assert row["max_macs"] > 0 and row["int8_size_bytes"] > 0
    assert (result.run_dir / "config.json").exists()
    logs = list((Path(os.environ["ASCBENCH_HOME"]) / "cache" / "stages" / "tiny").glob("train-*/fit/logs/version_0/metrics.csv"))
    assert logs and "train_loss" in logs[0].read_text()
    result = runner.invoke(app, ["systems", "--root", str(tiny_system.parent)])
    assert result.exit_code == 0 and "tiny" in result.output


def test_interrupted_stage_resumes_from_its_checkpoint(tiny_system, smoke_dataset, fresh_home, monkeypatch):
    monkeypatch.setenv("TINY_INTERRUPT_AT", "5")  # 4 steps per epoch: interrupted in the second epoch
    with pytest.raises(Interrupted, match="run the same command again"):
        run_tiny(tiny_system, smoke_dataset, None)
    monkeypatch.delenv("TINY_INTERRUPT_AT")
    result = run_tiny(tiny_system, smoke_dataset, None, score_options=FAST)
    assert result.rows[0]["status"] == "ok"
    epochs = Path(os.environ["TINY_LOG"]).read_text().split()
    assert epochs == ["epoch", "0", "epoch", "1", "epoch", "1", "epoch", "2"]  # epoch 1 redone, epoch 0 not


def test_checkpoint_from_another_config_restarts_cleanly(tiny_system, smoke_dataset, fresh_home, monkeypatch):
    monkeypatch.setenv("TINY_INTERRUPT_AT", "5")
    with pytest.raises(Interrupted):
        run_tiny(tiny_system, smoke_dataset, None)
    monkeypatch.delenv("TINY_INTERRUPT_AT")
    key_file = next((fresh_home / "cache" / "stages" / "tiny").glob("train-*/fit/key.json"))
    key_file.write_text(json.dumps({"stage_key": "something else"}))
    result = run_tiny(tiny_system, smoke_dataset, None, score_options=FAST)
    assert result.rows[0]["status"] == "ok"
    assert Path(os.environ["TINY_LOG"]).read_text().split()[-6:] == ["epoch", "0", "epoch", "1", "epoch", "2"]


@pytest.mark.heavy
def test_ddp_two_processes_on_cpu_learns(tiny_system, smoke_dataset, fresh_home, tmp_path):
    """`bench run --devices 2` in a real process (pytest's captured stdio cannot be handed to spawned workers),
    keeping the best epoch (whose checkpoint callback lives in the spawned workers)."""
    board = tmp_path / "b.parquet"
    cmd = [sys.executable, "-m", "bench", "run", str(tiny_system), "--data",
           str(smoke_dataset), "--profile", "smoke", "--devices", "2", "--board", str(board), "--no-progress",
           "--variant", "best", "--no-int8", "--no-energy"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ddp_spawn" in proc.stderr or "distributed" in (proc.stdout + proc.stderr).lower()
    metrics = json.loads(next((fresh_home / "cache" / "stages" / "tiny").glob("train-*/fit/metrics.json")).read_text())
    log = pd.read_csv(next((fresh_home / "cache" / "stages" / "tiny").glob("train-*/fit/logs/version_0/metrics.csv")))
    losses = log["train_loss_epoch"].dropna().tolist()
    assert len(losses) == 3 and losses[-1] < losses[0]  # it learns
    scores = log["val_score"].dropna().tolist()
    assert metrics["best_epoch"] == int(np.argmax(scores)) and metrics["best_val_score"] == pytest.approx(max(scores))
    assert read_board(board).iloc[0]["status"] == "ok" and metrics["wall_s"] > 0


GLOO_WORKERS = """
import atexit, os, sys
import torch.distributed as dist
import torch.multiprocessing as mp
from bench.train.process_group import destroy_gloo_group_at_exit

def worker(rank, out, port):
    # registered first, so it runs last (atexit is last in, first out): is the group still alive at the very end?
    atexit.register(lambda: open(os.path.join(out, str(rank)), "w").write(str(dist.is_initialized())))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    destroy_gloo_group_at_exit()  # what each DDP worker of a fit calls once its group exists

if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2)
"""


def test_ddp_workers_destroy_their_gloo_group_before_exit(tmp_path):
    """Lightning destroys only NCCL groups at exit; a gloo group left to the C++ destructors aborted a finished
    DDP fit now and then (SIGABRT, "terminate called without an active exception"). The fit itself is
    `test_ddp_two_processes_on_cpu_learns`."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    script = tmp_path / "workers.py"
    script.write_text(GLOO_WORKERS)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), port], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(tmp_path / str(rank)).read_text() for rank in (0, 1)] == ["False", "False"]


# --- bad input -----------------------------------------------------------------------------------------------------

def test_system_folder_errors(tmp_path, tiny_system):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemError_, match="no system.toml"):
        load_system(tmp_path / "empty")
    toml = tiny_system / "system.toml"
    toml.write_text(TINY_TOML.replace('citation = "none"', 'citation = "none"\ncolour = "red"'))
    with pytest.raises(SystemError_, match=r"\[system\] colour: unknown key"):
        load_system(tiny_system)
    toml.write_text(TINY_TOML.replace('stages = ["train"]', 'stages = "train"'))
    with pytest.raises(SystemError_, match="system.stages must be a list"):
        load_system(tiny_system)
    toml.write_text(TINY_TOML.replace('stages = ["train"]', 'stages = ["train", "distill"]'))
    with pytest.raises(SystemError_, match=r"missing function\(s\) \['distill'\]"):
        load_system(tiny_system).module
    toml.write_text(TINY_TOML)
    (tiny_system / "system.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(SystemError_, match="failed to import.*not_a_module_anywhere"):
        load_system(tiny_system).module
    result = runner.invoke(app, ["run", str(tmp_path / "empty"), "--profile", "smoke"])
    assert result.exit_code == 1 and "no system.toml" in result.output


def test_stage_that_raises_and_nan_loss(tiny_system, smoke_dataset, fresh_home, tmp_path):
    board = tmp_path / "b.parquet"
    with pytest.raises(StageError, match="stage 'train' raised RuntimeError: exploded on purpose"):
        run_tiny(tiny_system, smoke_dataset, board, variant="explode")
    with pytest.raises(StageError, match="loss became nan"):
        run_tiny(tiny_system, smoke_dataset, board, variant="nan")
    assert not board.exists()
    result = run_tiny(tiny_system, smoke_dataset, board, score_options=FAST)  # a later good run is unaffected
    assert len(read_board(board)) == 1 and result.rows[0]["status"] == "ok"


def test_submission_that_raises_or_predicts_nan(tiny_system, smoke_dataset, fresh_home, tmp_path):
    board = tmp_path / "b.parquet"
    with pytest.raises(StageError, match="building the submission raised ValueError: no submission today"):
        run_tiny(tiny_system, smoke_dataset, board, variant="broken_submission")
    result = runner.invoke(app, ["run", str(tiny_system), "--data", str(smoke_dataset), "--profile", "smoke",
                                 "--variant", "nan_logits", "--board", str(board), "--no-progress"])
    assert result.exit_code == 1
    row = read_board(board).iloc[0]
    assert row["status"] == "failed" and "NaN" in row["error"] and pd.isna(row["macro_acc"])


def test_seeds_reuse_the_shared_stages_and_add_one_aggregate_row(tmp_path, smoke_dataset, fresh_home, monkeypatch):
    folder = tmp_path / "twostage"
    folder.mkdir()
    (folder / "system.py").write_text(TINY_SYSTEM.replace('"tiny/net"', '"twostage/net"') + '''

@reads(MODEL)
def warm(ctx):
    return {"seed": ctx.seed}
''')
    toml = TINY_TOML.replace('name = "tiny"', 'name = "twostage"').replace(
        'stages = ["train"]', 'stages = ["warm", "train"]').replace('model = "tiny/net"', 'model = "twostage/net"')
    (folder / "system.toml").write_text(toml.replace('model = "twostage/net"', 'model = "twostage/net"\n'
                                                     'seed_shared_stages = ["warm"]'))
    monkeypatch.setenv("TINY_LOG", str(tmp_path / "epochs.log"))
    board = tmp_path / "b.parquet"
    result = runner.invoke(app, ["run", str(folder), "--profile", "smoke", "--seeds", "0,1", "--data",
                                 str(smoke_dataset), "--board", str(board), "--no-progress", "--no-int8",
                                 "--no-energy", "--json"])
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert [[s["reused"] for s in r["stages"]] for r in runs] == [[False, False], [True, False]]  # warm: seed 0 once
    rows = read_board(board)
    assert rows["seed"].tolist()[:2] == [0, 1] and rows["n_seeds"].tolist() == [1, 1, 2]
    aggregate = rows.iloc[2]
    assert aggregate["seeds"] == "0,1" and json.loads(aggregate["seed_rows"]) == rows["row_id"].tolist()[:2]
    assert aggregate["macro_acc"] == pytest.approx(rows["macro_acc"].iloc[:2].mean())
    shown = json.loads(runner.invoke(app, ["leaderboard", str(board), "--json"]).stdout)
    assert len(shown) == 1 and shown[0]["n_seeds"] == 2  # the aggregate stands for its seeds
    assert runner.invoke(app, ["run", str(folder), "--seeds", "0,0"]).exit_code != 0
    (folder / "system.toml").write_text(toml.replace('model = "twostage/net"', 'model = "twostage/net"\n'
                                                     'seed_shared_stages = ["wram"]'))
    with pytest.raises(SystemError_, match="seed_shared_stages names wram, which is not a stage"):
        load_system(folder).resolve("smoke")


def test_help_texts_keep_their_bracketed_words():
    """Rich markup swallows ``[variants.NAME]`` unless escaped: every option's help must print what it says."""
    import re

    import click
    import typer.main

    group = typer.main.get_command(app)
    commands = [(name, cmd) for name, cmd in group.commands.items()]
    commands += [(f"{name} {sub}", c) for name, cmd in group.commands.items()
                 if isinstance(cmd, click.Group) for sub, c in cmd.commands.items()]
    checked = 0
    for name, cmd in commands:
        for param in cmd.params:
            for raw in re.findall(r"\\?\[\\?\[?[A-Za-z_.]+\]\]?", getattr(param, "help", None) or ""):
                shown = raw.replace("\\", "")
                out = runner.invoke(app, name.split() + ["--help"], env={"COLUMNS": "400"}).output
                assert shown in " ".join(out.split()), f"bench {name} --help lost {shown!r}"
                checked += 1
    assert checked >= 2


def test_generating_data_inside_a_run_says_so():
    """Without a bar (--no-progress) a phase prints one line when it starts and one when it ends, once each."""
    import io

    from rich.console import Console

    from bench.train.datasets import data_progress

    log = io.StringIO()
    with data_progress(Console(file=log, width=200), bar=False) as show:
        for done in (100, 2000, 5365, 5365):
            show("generate", done, 5365)
        show("prepare", 5365, 5365)
    lines = log.getvalue().splitlines()
    assert lines[0] == "  generating the data …" and re.fullmatch(r"  generating the data: done in \d+ s", lines[1])
    assert lines[2] == "  packing the store …" and re.fullmatch(r"  packing the store: done in \d+ s", lines[3])
    assert len(lines) == 4


def test_the_time_left_adds_this_machines_last_stage_times_and_names_what_it_cannot_estimate():
    from bench.run import time_left

    walls = {"teachers": 600.0, "distill": 240.0, "quantize": None}
    assert time_left(90, ["teachers", "distill"], walls) == ("2 min so far, about 14 min of stages left, by this "
                                                            "machine's last runs of them")
    assert time_left(90, ["distill", "quantize"], walls) == ("2 min so far, about 4 min of stages left, by this "
                                                            "machine's last runs of them (quantize not counted: never "
                                                            "trained here)")
    assert time_left(90, ["quantize"], walls) == "2 min so far; no estimate for quantize (never trained on this machine)"
    assert time_left(90, [], walls) == "2 min so far, scoring next"
