"""The README's promises: one install/run/test command each, and the worked system example actually runs."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.paths import REPO_ROOT
from bench.run import run_system
from bench.score.scorer import ScoreOptions

runner = CliRunner()

README = (REPO_ROOT / "README.md").read_text()


def block_after(marker: str) -> str:
    """The fenced code block that starts with ``marker`` (its first line)."""
    match = re.search(r"```(?:\w+)\n(" + re.escape(marker) + r"\n.*?)```", README, re.S)
    assert match, f"no code block starting with {marker!r} in README.md"
    return match.group(1)


def test_one_install_run_and_test_command():
    for marker in ("install", "run", "test"):
        assert README.count(f"<!-- {marker} -->") == 1
        block = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", README, re.S).group(1)
        assert len(block.strip().splitlines()) == 1
    assert re.search(r"<!-- run -->\n```bash\nbench run systems/dsflexinet\n", README)


@pytest.mark.heavy
def test_worked_system_example_runs_and_its_submission_is_usable(tmp_path, smoke_dataset):
    """The example's network lives in its system.py; its saved submission is re-scored, checked and exported,
    and the exported package (carrying the system's code) scores the same logits."""
    folder = tmp_path / "mysys"
    folder.mkdir()
    (folder / "system.toml").write_text(block_after("# mysys/system.toml"))
    (folder / "system.py").write_text(block_after("# mysys/system.py"))
    checked = runner.invoke(app, ["systems", "--check", "--root", str(tmp_path), "--json"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)[0]["checked"] == 2  # profiles smoke and default, no variants
    result = run_system(folder, str(smoke_dataset), "smoke", board=tmp_path / "b.parquet", progress=False,
                        score_options=ScoreOptions(int8=False, energy=False, n_boot=20))
    row = result.rows[0]
    assert row["system"] == "mysys" and row["status"] == "ok" and row["deploy_dtype"] == "float16"
    assert row["compliant"] and row["max_macs"] > 0 and row["run_dir"] == str(result.run_dir)
    shutil.rmtree(folder)  # from here on only the run folder (with its copy of the system) is used

    common = ["--data", str(smoke_dataset), "--no-int8", "--no-energy", "--n-boot", "20"]
    rescored = runner.invoke(app, ["score", "--submission", str(result.run_dir), "--board",
                                   str(tmp_path / "re.parquet"), "--out", str(tmp_path / "ours"), *common])
    assert rescored.exit_code == 0, rescored.output
    gate = runner.invoke(app, ["check", str(result.run_dir), "--json"])
    assert gate.exit_code == 0, gate.output
    assert json.loads(gate.stdout)["max_MACs"] == row["max_macs"]
    exported = runner.invoke(app, ["export", str(result.run_dir), "--package", str(tmp_path / "pkg"), "--label",
                                   "Mysys", "--data", str(smoke_dataset)])
    assert exported.exit_code == 0, exported.output
    package = runner.invoke(app, ["score", "--package", "Mysys_task1:1", "--path", str(tmp_path / "pkg"),
                                  "--board", str(tmp_path / "pkg.parquet"), "--out", str(tmp_path / "theirs"),
                                  *common])
    assert package.exit_code == 0, package.output
    assert (tmp_path / "ours" / "output.csv").read_bytes() == (tmp_path / "theirs" / "output.csv").read_bytes()
