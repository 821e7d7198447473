"""``pip install .`` (a wheel, not editable) works from any working directory: the shipped systems, manifests and
reference board come with the package, and a run never touches the committed board."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from bench.paths import REPO_ROOT
from test_run import TINY_SYSTEM, TINY_TOML


@pytest.mark.heavy
def test_wheel_in_a_fresh_environment_lists_systems_and_runs_from_tmp(tmp_path, smoke_dataset):
    source, wheels = tmp_path / "source", tmp_path / "wheels"  # built from a copy: the build writes build/ dirs
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", ".ci-venv", "build", "runs",
                                                                     "__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(source)], check=True, capture_output=True, timeout=600)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; "
                                   "print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True,
                                  check=True).stdout.strip())
    # the heavy dependencies (torch, ...) come from this environment; ascbench itself only from the wheel
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    str(next(wheels.glob("ascbench-*.whl")))], check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "ASCBENCH_HOME": str(tmp_path / "home")}
    env.pop("PYTHONPATH", None)
    bench = str(venv / "bin" / "bench")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([bench, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)

    listed = run("systems", "--check", "--json")  # the shipped systems are found, import and resolve
    assert listed.returncode == 0, listed.stdout + listed.stderr
    systems = {r["name"]: r for r in json.loads(listed.stdout)}
    assert {"baseline", "dsflexinet"} <= set(systems) and all(r["error"] is None for r in systems.values())
    assert systems["baseline"]["path"].startswith(str(purelib))  # the installed copy, not this checkout

    board = REPO_ROOT / "leaderboards" / "main.parquet"
    before = board.stat().st_mtime_ns
    tiny = elsewhere / "tiny"  # training and scoring with the installed harness (the shipped systems train the
    tiny.mkdir()               # same way from source in test_run and test_dsflexinet)
    (tiny / "system.toml").write_text(TINY_TOML)
    (tiny / "system.py").write_text(TINY_SYSTEM)
    env["TINY_LOG"] = str(tmp_path / "epochs.log")
    smoke = run("run", "./tiny", "--profile", "smoke", "--data", str(smoke_dataset), "--no-progress", "--no-int8",
                "--no-energy", "--json")
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    result = json.loads(smoke.stdout)
    assert [r["status"] for r in result["rows"]] == ["ok"]
    assert result["board"] == str(tmp_path / "home" / "leaderboards" / "local.parquet")  # no ./leaderboards here
    assert board.stat().st_mtime_ns == before
    reference = run("leaderboard", "main", "--json")
    assert reference.returncode == 0 and len(json.loads(reference.stdout)) > 0  # the shipped reference board
