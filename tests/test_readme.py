"""The README's promises: one install/run/test command each, and the worked system example actually runs."""

from __future__ import annotations

import re

from bench.paths import REPO_ROOT
from bench.run import run_system

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


def test_worked_system_example_runs(tmp_path, smoke_dataset):
    folder = tmp_path / "mysys"
    folder.mkdir()
    (folder / "system.toml").write_text(block_after("# mysys/system.toml"))
    (folder / "system.py").write_text(block_after("# mysys/system.py"))
    result = run_system(folder, str(smoke_dataset), "smoke", board=tmp_path / "b.parquet", progress=False)
    row = result.rows[0]
    assert row["system"] == "mysys" and row["status"] == "ok" and row["deploy_dtype"] == "float16"
    assert row["compliant"] and row["max_macs"] > 0
