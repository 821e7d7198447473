"""Teachers that teach: pre-training on the embedded event corpus (shared, head dropped), the quality gate, and the
training budget every row records."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from bench.run import run_system
from bench.train.cache import CacheEntry
from bench.train.stages import StageError
from bench.train.teachers import gate_failures, gate_verdict, longest_first, validation_quality, work_through
from conftest import FAST


TOML = '''
[system]
name = "gate"
description = "teachers only: pre-training, the quality gate, budgets"
citation = "none"
stages = ["teachers"]

[profiles.smoke.teachers]
floor = FLOOR
gate = "GATE"
pretrain = { data = "events", epochs = 3, batch_size = 8, lr = 3e-3 }
teachers = [
  { name = "half-a", model = "cpresnet_half", seed = 1, epochs = 0, model_options = { n_mels = 32 } },
  { name = "half-b", model = "cpresnet_half", seed = 2, epochs = 1, batch_size = 16, model_options = { n_mels = 32 } },
]
'''

PY = '''
from bench.submission import ModelSubmission
from bench.train.teachers import teacher_stage, teacher_submissions

teachers = teacher_stage


def submission(ctx):
    return ModelSubmission.single("gate", ctx.create_model("cpresnet_half", n_mels=32).eval(), ctx.classes)


def extra_submissions(ctx):
    return teacher_submissions(ctx)
'''


def write(folder: Path, floor: float, gate: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "system.toml").write_text(TOML.replace("FLOOR", str(floor)).replace("GATE", gate))
    (folder / "system.py").write_text(PY)
    return folder


def epoch_losses(fit_dir: Path) -> list[float]:
    log = pd.read_csv(fit_dir / "logs" / "version_0" / "metrics.csv")
    return log["train_loss_epoch"].dropna().tolist()


def test_pretraining_is_shared_drops_the_head_and_every_row_counts_its_budget(tmp_path, smoke_dataset,
                                                                              isolated_data_home):
    """On 3 threads a forked helper process (on one thread: a fork must not compute on more) trains the second
    teacher while the run trains the first on the other two (both wait for the one shared pre-training): every row
    and budget is what one process would have produced."""
    log = io.StringIO()
    folder = write(tmp_path / "gate", 0.0, "flag")
    toml = (folder / "system.toml").read_text()  # teachers of their own: other tests train the seed-1/2 ones
    (folder / "system.toml").write_text(toml.replace("seed = 1,", "seed = 11,").replace("seed = 2,", "seed = 12,"))
    result = run_system(folder, str(smoke_dataset), "smoke", board=None,
                        progress=False, score_options=FAST, threads=3, console=Console(file=log, width=300))
    assert "2 teachers to train: 2 processes, this one on 2 threads, the other on 1 each" in log.getvalue()
    assert torch.get_num_threads() == 3  # the run's threads are back after the teachers
    entries = [p for p in (isolated_data_home / "cache" / "pretrained").glob("cpresnet_half-*/done.json")
               if json.loads(p.read_text())["static"]["model_options"] == {"n_mels": 32}]  # other tests pre-train too
    assert len(entries) == 1  # one checkpoint per (architecture, corpus, recipe), shared by both teachers
    pre_dir = entries[0].parent
    deps = json.loads((Path(result.stages[0]["cache_dir"]) / "done.json").read_text())["dependencies"]
    assert "bench/train/datasets.py" in deps and "bench/run.py" not in deps  # the run command's edits keep it valid
    losses = epoch_losses(pre_dir / "fit")
    assert len(losses) == 3 and losses[-1] < losses[0]  # the multi-label loss falls on the smoke corpus
    pre = torch.load(pre_dir / "artifacts.pt", weights_only=True)
    n_events = len(pre["classes"])
    assert pre["weights"]["net.head.0.weight"].shape[0] == n_events != 10

    teachers = sorted((isolated_data_home / "cache" / "teachers").glob("half-a-*/artifacts.pt"))
    a = torch.load(teachers[-1], weights_only=True)["weights"]  # epochs = 0: the pre-trained network, new head
    assert a["net.head.0.weight"].shape[0] == 10
    assert all(torch.equal(a[k], v) for k, v in pre["weights"].items() if not k.startswith("net.head."))

    rows = {r["submission"]: r for r in result.rows}
    pre_fit = json.loads((pre_dir / "fit" / "metrics.json").read_text())
    b_fit = json.loads(next((isolated_data_home / "cache" / "teachers").glob("half-b-*/fit/metrics.json"))
                       .read_text())
    assert rows["teacher:half-a"]["train_steps"] == pre_fit["steps"]
    assert rows["teacher:half-b"]["train_steps"] == pre_fit["steps"] + b_fit["steps"]
    assert rows["teacher:half-b"]["train_samples"] == pre_fit["samples"] + b_fit["samples"]
    assert rows["gate"]["train_steps"] == pre_fit["steps"] + b_fit["steps"]  # the shared pre-training once
    external = json.loads(rows["gate"]["external_data"])
    assert [(e["dataset"], e["seed"], e["used_by"]) for e in external] == [("events-smoke", 0,
                                                                           ["pretrain-cpresnet_half"])]
    assert len(external[0]["fingerprint"]) >= 16
    stage = json.loads(rows["gate"]["stages"])["teachers"]["budget"]
    assert stage["train_steps"] == rows["gate"]["train_steps"]
    for name in ("teacher:half-a", "teacher:half-b"):
        assert rows[name]["teacher_gate"] == "pass" and 0 <= rows[name]["val_macro_acc"] <= 1
    report = json.loads((result.run_dir / "reports" / "teachers-teachers.json").read_text())
    assert set(report["quality"]) == {"half-a", "half-b"}


def test_the_gate_flags_or_excludes_teachers_below_the_floor(tmp_path, smoke_dataset):
    system = write(tmp_path / "flag", 0.99, "flag")
    tuning = run_system(system, str(smoke_dataset), "smoke", board=None, progress=False, until="teachers")
    assert tuning.rows == [] and not (tuning.run_dir / "submission").exists()  # nothing scored on test
    assert json.loads((tuning.run_dir / "run.json").read_text())["until"] == "teachers"
    report = json.loads((tuning.run_dir / "reports" / "teachers-teachers.json").read_text())
    assert {q["gate"] for q in report["quality"].values()} == {"flagged"}
    with pytest.raises(StageError, match="--until 'distill' is not one of its stages \\(teachers\\)"):
        run_system(system, str(smoke_dataset), "smoke", board=None, progress=False, until="distill")
    board = tmp_path / "b.parquet"
    flagged = run_system(system, str(smoke_dataset), "smoke", board=board, progress=False, score_options=FAST)
    assert flagged.stages[0]["reused"]
    # the teachers trained by the --until run get their rows now, once: a second run finds them on the board
    assert sorted(r["submission"] for r in flagged.rows if r["kind"] == "teacher") == ["teacher:half-a", "teacher:half-b"]
    again = run_system(system, str(smoke_dataset), "smoke", board=board, progress=False, score_options=FAST)
    assert [r["kind"] for r in again.rows] == ["system"]
    quality = torch.load(Path(flagged.stages[0]["cache_dir"]) / "artifacts.pt", weights_only=True)["quality"]
    assert {q["gate"] for q in quality.values()} == {"flagged"}
    assert "half-a fails the quality gate (validation macro accuracy" in flagged.rows[0]["notes"]
    with pytest.raises(StageError, match="every teacher fails the quality gate .*< floor 99.0 %"):
        run_system(write(tmp_path / "exclude", 0.99, "exclude"), str(smoke_dataset), "smoke", board=None,
                   progress=False, score_options=FAST)
    assert [gate_verdict([], "exclude"), gate_verdict(["low"], "exclude"), gate_verdict(["low"], "flag")] == \
        ["pass", "excluded", "flagged"]


def test_the_gate_catches_a_collapsed_teacher():
    """A teacher that sends most validation clips to one class fails ``max_class_share`` even when its accuracy
    clears the floor; a balanced one passes; without validation clips nothing is judged."""
    classes = [f"c{i}" for i in range(10)]
    labels = np.repeat(np.arange(10), 10)
    balanced = torch.nn.functional.one_hot(torch.from_numpy(labels), 10).float()
    collapsed = balanced.clone()
    collapsed[:60] = torch.nn.functional.one_hot(torch.tensor(3), 10).float()  # classes 0-5 all predicted as c3
    good, bad = validation_quality(balanced, labels, classes), validation_quality(collapsed, labels, classes)
    assert good["val_macro_acc"] == 1.0 and good["top_class_share"] == pytest.approx(0.1)
    assert bad["top_class"] == "c3" and bad["top_class_share"] == pytest.approx(0.6)
    assert gate_failures(good, 0.3, 0.3) == []
    assert gate_failures(bad, 0.3, 0.3) == ["collapsed: 60 % of validation predictions are c3 (> 30 %)"]
    assert gate_failures(bad, 0.3, None) == []  # accuracy 0.5 clears the floor; no share limit set
    assert gate_failures(validation_quality(collapsed[:0], labels[:0], classes), 0.9, 0.3) == []


def test_a_later_seed_of_seed_shared_teachers_finds_their_rows_and_cache(tmp_path, smoke_dataset):
    """Teachers trained once (seed 0) for every run seed: a seed-1 run reuses them, and its board already holds
    their rows (once it failed: the submission looked the teachers up under the run's seed)."""
    folder = write(tmp_path / "shared", 0.0, "flag")
    toml = (folder / "system.toml").read_text()
    (folder / "system.toml").write_text(toml.replace("[profiles.smoke.teachers]",
                                                     "[defaults]\nseed_shared_stages = [\"teachers\"]\n\n"
                                                     "[profiles.smoke.teachers]"))
    board = tmp_path / "board.parquet"
    first = run_system(folder, str(smoke_dataset), "smoke", seed=0, board=board, progress=False, score_options=FAST)
    second = run_system(folder, str(smoke_dataset), "smoke", seed=1, board=board, progress=False, score_options=FAST)
    assert {r["submission"] for r in first.rows} == {"gate", "teacher:half-a", "teacher:half-b"}
    assert [r["submission"] for r in second.rows] == ["gate"]
    assert second.stages[0]["reused"] is True  # one teachers stage (seed 0) for both runs


def _hold(entry: CacheEntry, held, release) -> None:
    with entry.lock(Console(file=io.StringIO())):
        held.set()
        release.wait(30)


def test_a_process_does_free_work_first_and_comes_back_to_what_another_process_holds(tmp_path):
    """The teacher stage's processes skip a job whose cache entry another process holds (the shared pre-training
    the other teachers start from) and do it last, once that entry is free, instead of idling meanwhile; an entry
    left because one it needs first was busy keeps no half-started state."""
    console = Console(file=io.StringIO())
    shared, teacher, other_job = (CacheEntry(tmp_path, name, {"job": name}) for name in ("shared", "teacher", "other"))
    fork = mp.get_context("fork")
    held, release = fork.Event(), fork.Event()
    holder = fork.Process(target=_hold, args=(shared, held, release))
    holder.start()
    assert held.wait(30)
    done = []

    def train_shared():
        with shared.lock(console):
            done.append("shared")

    def train_teacher():  # needs the shared entry first, like a teacher that starts from a shared pre-training
        with teacher.lock(console):
            teacher.prepare_work(console)
            with shared.lock(console):
                done.append("teacher")

    def train_other():
        assert not teacher.dir.exists()  # skipped before any work: nothing half-started stays behind
        with other_job.lock(console):
            done.append("other")
        release.set()  # the other process finishes the shared entry meanwhile

    work_through([train_shared, train_teacher, train_other])
    holder.join(30)
    assert done == ["other", "shared", "teacher"]


def test_the_longest_teachers_are_started_first():
    """DS-FlexiNet's default teachers: the 24-epoch PaSST goes first, so neither process is left training it alone
    after both CP-ResNets (12 epochs each); equals keep the system's order."""
    cfgs = [{"name": "cpresnet-fms-dir", "epochs": 12, "pretrain": None},
            {"name": "cpresnet-fms", "epochs": 12, "pretrain": None},
            {"name": "passt-tiny-fms", "epochs": 24, "pretrain": None},
            {"name": "pretrained", "epochs": 12, "pretrain": {"data": "events", "epochs": 3}}]
    assert [c["name"] for c in longest_first(cfgs)] == ["passt-tiny-fms", "pretrained", "cpresnet-fms-dir",
                                                         "cpresnet-fms"]
