"""The stage cache: reused only when everything that decides a stage's output is unchanged, and the user is told
why a stage runs again. Harness edits are made on a temporary copy of the package, run in a child process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.identity import Recorder, explain_change, harness_files, stale_dependencies
from bench.paths import MANIFEST_DIR, PACKAGE_ROOT
from bench.run import run_system
from conftest import FAST

TWO_STAGES_PY = '''
from bench.config import reads
from bench.models import MODEL
from bench.submission import ModelSubmission
from bench.train.recipes import AUGMENT, make_task
from bench.train.task import OPTIM, ClassifierTask, OptimConfig


@reads(MODEL, OPTIM)
def plain(ctx):
    """No augmentation: never runs bench/augment.py."""
    model = ctx.create_model()
    ctx.fit(ClassifierTask(model, OptimConfig.from_config(ctx.config)), ctx.clips("fit"), ctx.clips("val"))
    return {"model": model.state_dict()}


@reads(MODEL, OPTIM, AUGMENT)
def augmented(ctx):
    model = ctx.create_model(state=ctx.previous["plain"]["model"])
    ctx.fit(make_task(ctx, model, ctx.config), ctx.clips("fit"), ctx.clips("val"))
    return {"model": model.state_dict()}


@reads(MODEL)
def submission(ctx):
    return ModelSubmission.single("two", ctx.create_model(state=ctx.previous["augmented"]["model"]), ctx.classes)
'''

TWO_STAGES_TOML = '''
[system]
name = "two"
description = "a plain stage, then an augmented one"
citation = "none"
stages = ["plain", "augmented"]

[defaults]
model = "cpresnet_half"
model_options = { n_mels = 32 }

[profiles.smoke.plain]
epochs = 1
batch_size = 32
lr = 0.01

[profiles.smoke.augmented]
epochs = 1
batch_size = 32
lr = 0.01
fms_p = 1.0
'''

RUN = """
import json, sys
from bench.run import run_system
from bench.score.scorer import ScoreOptions
result = run_system(sys.argv[1], sys.argv[2], "smoke", board=None, progress=False,
                    score_options=ScoreOptions(int8=False, energy=False, n_boot=10))
print("STAGES=" + json.dumps(result.stages))
row = result.rows[0]
print("ROW=" + json.dumps({"stages": json.loads(row["stages"]), "run_dir": row["run_dir"],
                           "harness_source": row["harness_source"]}))
"""


@pytest.fixture
def two_stages(tmp_path) -> Path:
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "system.py").write_text(TWO_STAGES_PY)
    (folder / "system.toml").write_text(TWO_STAGES_TOML)
    return folder


def run_copy(package_parent: Path, home: Path, system: Path, data: Path) -> tuple[dict, dict, str]:
    """A run in a child process that imports the harness from ``package_parent`` (a copy)."""
    env = {**os.environ, "PYTHONPATH": str(package_parent), "ASCBENCH_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", RUN, str(system), str(data)], capture_output=True, text=True,
                          env=env, cwd=package_parent, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    stages = json.loads(next(line for line in lines if line.startswith("STAGES="))[7:])
    row = json.loads(next(line for line in lines if line.startswith("ROW="))[4:])
    return {s["stage"]: s for s in stages}, row, proc.stdout


@pytest.mark.heavy
def test_harness_edit_invalidates_exactly_the_stages_that_ran_it(tmp_path, two_stages, smoke_dataset):
    copy = tmp_path / "copy"  # laid out as a wheel installs it: shipped manifests under bench/resources
    shutil.copytree(PACKAGE_ROOT, copy / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(MANIFEST_DIR, copy / "bench" / "resources" / "data_manifests")
    home = tmp_path / "home"
    first, row, _ = run_copy(copy, home, two_stages, smoke_dataset)
    assert not first["plain"]["reused"] and not first["augmented"]["reused"]
    assert row["stages"]["plain"]["key"] == first["plain"]["key"] and Path(row["run_dir"]).is_dir()
    assert row["stages"]["plain"]["trained_by"]["harness_source"] == row["harness_source"]
    deps = json.loads((Path(first["augmented"]["cache_dir"]) / "done.json").read_text())["dependencies"]
    plain_deps = json.loads((Path(first["plain"]["cache_dir"]) / "done.json").read_text())["dependencies"]
    assert "bench/augment.py" in deps and "bench/augment.py" not in plain_deps
    assert "bench/models/cpresnet.py" in plain_deps and "bench/score/plot.py" not in deps

    # One re-run checks both edits: code no stage ran (plot.py) re-trains nothing, code only the augmented stage
    # ran (augment.py) re-trains exactly that stage, and the reasons name augment.py alone.
    for edited in ("score/plot.py", "augment.py"):
        with open(copy / "bench" / edited, "a") as f:
            f.write("\n# an edit\n")
    third, _, output = run_copy(copy, home, two_stages, smoke_dataset)
    assert third["plain"]["reused"] and not third["augmented"]["reused"]
    assert third["augmented"]["reasons"] == ["bench/augment.py changed"]
    assert "stage 2/2 augmented: training (bench/augment.py changed)" in output
    assert third["plain"]["key"] == first["plain"]["key"] != third["augmented"]["key"]


def test_config_and_system_file_changes_say_what_changed(two_stages, smoke_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("ASCBENCH_HOME", str(tmp_path / "home"))
    run_system(two_stages, str(smoke_dataset), "smoke", board=None, progress=False, score_options=FAST)
    toml = two_stages / "system.toml"
    toml.write_text(TWO_STAGES_TOML.replace("fms_p = 1.0", "fms_p = 0.5"))
    changed = run_system(two_stages, str(smoke_dataset), "smoke", board=None, progress=False, score_options=FAST)
    plain, augmented = changed.stages
    assert not plain["reused"] and plain["reasons"] == ["system file system.toml changed"]
    assert {"config.fms_p: 1.0 → 0.5", "system file system.toml changed"} <= set(augmented["reasons"])
    (two_stages / "notes.txt").write_text("every file of the folder is the system's identity\n")
    added = run_system(two_stages, str(smoke_dataset), "smoke", board=None, progress=False, score_options=FAST)
    assert added.stages[0]["reasons"] == ["system file notes.txt added"]
    again = run_system(two_stages, str(smoke_dataset), "smoke", board=None, progress=False, score_options=FAST)
    assert all(s["reused"] for s in again.stages) and again.run_dir != added.run_dir  # a folder per run


def test_nested_recorders_see_what_ran_while_each_was_active():
    from bench.augment import TimeRoll
    from bench.score.metrics import macro_accuracy

    labels = np.array([0, 1])
    with Recorder() as outer:
        TimeRoll(3)
        with Recorder() as inner:
            macro_accuracy(labels, np.array([1.0, 0.0]), 2)
            assert "bench/score/metrics.py" in inner.dependencies()  # asked while it is still recording
        TimeRoll(3)
    assert "bench/augment.py" not in inner.dependencies()  # ran before and after it, not inside
    assert {"bench/augment.py", "bench/score/metrics.py"} <= set(outer.dependencies())
    with Recorder() as later:
        pass
    assert "bench/augment.py" not in later.dependencies()  # what ran before a recorder is not its dependency


def test_recorder_sees_only_code_that_ran_and_degrades_to_everything_when_blind():
    from bench.augment import TimeRoll

    with Recorder() as rec:
        TimeRoll(3)
    assert "bench/augment.py" in rec.dependencies() and "bench/score/plot.py" not in rec.dependencies()
    with Recorder() as blind:
        blind.blind()
    assert set(blind.dependencies()) == set(harness_files())
    digest = harness_files()["bench/augment.py"]
    assert stale_dependencies({"bench/augment.py": digest}) == []
    assert stale_dependencies({"bench/augment.py": "0" * 64, "bench/gone.py": digest}) == [
        "bench/augment.py changed", "bench/gone.py was removed"]
    assert explain_change({"seed": 0, "config": {"lr": 0.1}}, {"seed": 1, "config": {"lr": 0.1}}) == ["seed: 0 → 1"]
