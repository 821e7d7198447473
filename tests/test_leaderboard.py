"""Leaderboard: row validation, atomic concurrent appends, schema evolution, the CLI and the Pareto plot."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench import provenance
from bench.cli import app
from bench.paths import REPO_ROOT
from bench.score import leaderboard as lb
from bench.score.plot import pareto_front, plot_board

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(**fields) -> dict:
    """A valid ok row; tests override what they look at."""
    base = dict(submission="cpmobile", system="cpmobile", kind="system", status="ok", macro_acc=0.5, seed=1,
                profile="tiny", dataset="synth")
    return lb.make_row(**(base | fields))


def temp_files(board: Path) -> list[Path]:
    return sorted(board.parent.glob(f".{board.name}.*.tmp"))


@pytest.fixture
def board(tmp_path) -> Path:
    """A board with a system, a teacher, an ablation on another dataset and a failed package."""
    path = tmp_path / "leaderboards" / "main.parquet"
    lb.append_rows(path, [
        row(submission="cpmobile", variant="base", macro_acc=0.52, macro_acc_ci_low=0.51, macro_acc_ci_high=0.53,
            acc_known=0.55, acc_unseen=0.47, max_macs=29_419_156, max_param_bytes=122_296, int8_size_bytes=61_148,
            int8_macro_acc=0.515, energy_j_per_clip=0.012, energy_method="cpu-load-estimate",
            analytic_energy_uj_per_clip=44.1, compliant=True, acc_per_device={"a": 0.6, "s4": 0.4}),
        row(submission="passt-teacher", system="passt", kind="teacher", macro_acc=0.61, max_macs=2_000_000_000,
            max_param_bytes=80_000_000, compliant=False, compliance_reasons="MACs > 30 M"),
        row(submission="narrow", variant="narrow", kind="ablation", dataset="other", profile="full", seed=2,
            macro_acc=0.45, max_macs=5_000_000, max_param_bytes=40_000, compliant=True),
        row(submission="broken", system="thirdparty", kind="package", status="failed", macro_acc=None,
            error="load_model raised KeyError"),
    ])
    return path


# -------------------------------------------------------------------------------------------------------- rows


def test_make_row_rejects_unknown_and_missing_keys():
    with pytest.raises(ValueError, match="macro_accuracy"):
        row(macro_accuracy=0.5)
    with pytest.raises(ValueError, match="status"):
        lb.make_row(submission="x", system="x", kind="system")


@pytest.mark.parametrize("fields, message", [
    ({"seed": "one"}, "seed"),
    ({"n_clips": 3.5}, "n_clips"),
    ({"acc_per_class": {"park": object()}}, "acc_per_class"),
    ({"kind": "baseline"}, "kind"),
    ({"macro_acc": 52.3}, "fraction"),
    ({"status": "failed", "macro_acc": None}, "error"),
    ({"macro_acc": None}, "macro_acc"),
    ({"confusion": "[[1, 2]"}, "confusion"),
])
def test_make_row_validates_values(fields, message):
    with pytest.raises(ValueError, match=message):
        row(**fields)


def test_make_row_fills_identity_and_provenance():
    a, b = row(kind="teacher", counters={"torchinfo": "1.8.0"}, acc_per_device={"a": np.float32(0.25)}), row()
    assert a["row_id"] != b["row_id"]
    assert a["is_teacher"] and not b["is_teacher"]
    assert a["schema_version"] == lb.SCHEMA_VERSION
    assert json.loads(a["counters"]) == {"torchinfo": "1.8.0"}
    assert json.loads(a["acc_per_device"]) == {"a": 0.25}  # numpy scalars from metric code are fine
    assert a["python"] and a["torch"] and a["harness_version"] and a["host"]
    assert isinstance(a["threads"], int) and a["threads"] >= 1
    assert a["finished_at"].tzinfo is not None
    assert row(threads=7, host="elsewhere")["threads"] == 7  # explicit fields win over collected ones


def test_validate_row_rejects_hand_made_dicts(tmp_path):
    with pytest.raises(ValueError, match="make_row"):
        lb.append_rows(tmp_path / "b.parquet", [{"submission": "x"}])


def test_provenance_collects_every_provenance_column():
    collected = provenance.collect()
    assert set(collected) <= set(lb.COLUMNS)
    assert collected["git_commit"] is None or len(collected["git_commit"]) == 40
    assert collected["gpu_model"] is None  # these tests never touch CUDA
    assert provenance.package_version("no-such-distribution", "torch") == collected["torch"]
    assert provenance.package_version("no-such-distribution") is None


# ------------------------------------------------------------------------------------------------ round trip


def test_round_trip_keeps_values_and_types(tmp_path):
    started = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
    written = row(acc_per_class={"park": 0.7}, max_macs=29_419_156, compliant=True, started_at=started)
    path = tmp_path / "b.parquet"
    assert lb.append_rows(path, [written]) == 1
    assert lb.append_rows(path, [row(submission="second")]) == 2
    df = lb.read_board(path)
    assert list(df.columns) == list(lb.COLUMNS)
    first = df.iloc[0]
    assert first["row_id"] == written["row_id"]
    assert first["max_macs"] == 29_419_156 and str(df["max_macs"].dtype) == "Int64"
    assert bool(first["compliant"]) and pd.isna(df.iloc[1]["compliant"])
    assert json.loads(first["acc_per_class"]) == {"park": 0.7}
    assert first["started_at"] == pd.Timestamp(started)
    assert pq.read_metadata(path).schema.to_arrow_schema().metadata[lb.VERSION_KEY] == str(lb.SCHEMA_VERSION).encode()


def test_append_nothing_is_a_no_op(tmp_path):
    assert lb.append_rows(tmp_path / "b.parquet", []) == 0
    assert not (tmp_path / "b.parquet").exists()


# ------------------------------------------------------------------------------------------------ concurrency


def _append_repeatedly(path: str, rows: list[dict], barrier) -> None:
    barrier.wait()
    for r in rows:
        lb.append_rows(path, [r])


def test_concurrent_writers_all_land(tmp_path):
    path = tmp_path / "b.parquet"
    writers, per_writer = 4, 3
    rows = [[row(submission=f"w{w}-{i}") for i in range(per_writer)] for w in range(writers)]
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(writers)
    procs = [ctx.Process(target=_append_repeatedly, args=(str(path), rs, barrier)) for rs in rows]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    df = lb.read_board(path)
    assert sorted(df["row_id"]) == sorted(r["row_id"] for rs in rows for r in rs)
    assert temp_files(path) == []


def test_writer_failing_before_publish_leaves_board_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "b.parquet"
    lb.append_rows(path, [row()])
    before = path.read_bytes()

    def crash(*_):
        raise OSError("disk pulled")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk pulled"):
        lb.append_rows(path, [row(submission="lost")])
    assert path.read_bytes() == before
    assert temp_files(path) == []
    assert list(lb.read_board(path)["submission"]) == ["cpmobile"]


def _die_before_publish(path: str, new_row: dict) -> None:
    os.replace = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
    lb.append_rows(path, [new_row])


def test_killed_writer_leaves_board_readable_and_next_writer_cleans_up(tmp_path):
    path = tmp_path / "b.parquet"
    lb.append_rows(path, [row()])
    before = path.read_bytes()
    proc = multiprocessing.get_context("fork").Process(target=_die_before_publish,
                                                       args=(str(path), row(submission="lost")))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    assert path.read_bytes() == before and len(temp_files(path)) == 1  # the dead writer's temp file
    assert list(lb.read_board(path)["submission"]) == ["cpmobile"]
    assert lb.append_rows(path, [row(submission="next")]) == 2  # the lock died with the writer
    assert temp_files(path) == []


# --------------------------------------------------------------------------------------------- schema versions


def _write_raw(path: Path, table: pa.Table, version: int) -> bytes:
    pq.write_table(table.replace_schema_metadata({lb.VERSION_KEY: str(version).encode()}), path)
    return path.read_bytes()


def test_older_schema_is_read_with_nulls_and_upgraded_on_append(tmp_path):
    path = tmp_path / "b.parquet"
    old = pa.table({"row_id": ["r0"], "submission": ["old"], "system": ["cpmobile"], "kind": ["system"],
                    "status": ["ok"], "macro_acc": [0.4], "seed": pa.array([3], pa.int32()), "retired": ["x"]})
    _write_raw(path, old, version=0)
    df = lb.read_board(path)
    assert list(df.columns) == list(lb.COLUMNS)
    assert df.loc[0, "seed"] == 3 and df.loc[0, "schema_version"] == 0
    assert pd.isna(df.loc[0, "max_macs"]) and pd.isna(df.loc[0, "energy_method"])
    lb.append_rows(path, [row()])
    assert list(lb.read_board(path)["schema_version"]) == [0, lb.SCHEMA_VERSION]


def test_newer_schema_is_refused_and_kept(tmp_path):
    path = tmp_path / "b.parquet"
    before = _write_raw(path, pa.table({"submission": ["future"]}), version=lb.SCHEMA_VERSION + 1)
    with pytest.raises(lb.BoardError, match="upgrade"):
        lb.read_board(path)
    with pytest.raises(lb.BoardError):
        lb.append_rows(path, [row()])
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", [b"not parquet at all", b""])
def test_corrupt_board_is_refused_and_kept(tmp_path, content):
    path = tmp_path / "b.parquet"
    path.write_bytes(content)
    with pytest.raises(lb.BoardError, match="Restore") as err:
        lb.read_board(path)
    assert str(path) in str(err.value)
    with pytest.raises(lb.BoardError):
        lb.append_rows(path, [row()])
    assert path.read_bytes() == content


def test_foreign_parquet_is_refused(tmp_path):
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    with pytest.raises(lb.BoardError, match="schema version"):
        lb.read_board(path)


# ----------------------------------------------------------------------------------------------- query + CLI


def test_rank_board_ranks_compliant_submissions_and_lists_teachers_and_failures_below(board):
    ranked = lb.rank_board(lb.read_board(board))
    assert list(ranked["submission"]) == ["cpmobile", "narrow", "passt-teacher", "broken"]
    assert ranked["rank"].tolist() == [1, 2, pd.NA, pd.NA]


def invoke(*args: str):
    return CliRunner().invoke(app, ["leaderboard", *args])


def test_cli_table(board):
    result = invoke(str(board))
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("cpmobile", "passt-teacher / passt †", "52.00 [51.0, 53.0]", "29.42 M", "122.30 kB", "61.15 kB",
                 "0.012 (est.)", "44.1", "✓", "✗ MACs > 30 M", "failed: load_model raised KeyError", "teacher:"):
        assert text in out, text
    assert out.index("cpmobile") < out.index("passt-teacher") < out.index("broken") and "narrow" not in out
    assert "1 row(s) scored on another test set (other, profile full" in result.stderr


def test_cli_markdown(board):
    lines = invoke(str(board), "--format", "markdown").stdout.splitlines()
    assert lines[0].startswith("| # | submission / system |")
    assert set(lines[1]) <= set("|-: ")
    assert len([line for line in lines if line.startswith("|")]) == 2 + 3
    assert lines[-1].startswith("†")


def test_cli_csv_has_every_column(board):
    df = pd.read_csv(io.StringIO(invoke(str(board), "--format", "csv").stdout))
    assert list(df.columns) == ["rank", *(c for c in lb.COLUMNS if c != "clip_predictions"), "integrity"]
    assert list(df["submission"]) == ["cpmobile", "passt-teacher", "broken"]


def test_cli_json_decodes_json_columns(board):
    records = json.loads(invoke(str(board), "--format", "json").stdout)
    assert len(records) == 3
    assert records[0]["acc_per_device"] == {"a": 0.6, "s4": 0.4}
    assert records[0]["rank"] == 1 and records[1]["rank"] is None
    assert records[0]["finished_at"].startswith(str(datetime.now(timezone.utc).year))


@pytest.mark.parametrize("option, value, expected", [
    ("--system", "passt", ["passt-teacher"]),
    ("--profile", "full", ["narrow"]),
    ("--dataset", "synth", ["cpmobile", "passt-teacher", "broken"]),
    ("--kind", "package", ["broken"]),
])
def test_cli_filters(board, option, value, expected):
    records = json.loads(invoke(str(board), "--format", "json", option, value).stdout)
    assert [r["submission"] for r in records] == expected


def test_cli_filter_matching_nothing(board):
    result = invoke(str(board), "--system", "nobody")
    assert result.exit_code == 0 and "match" in result.stdout


def test_cli_rejects_unknown_kind(board):
    assert invoke(str(board), "--kind", "baseline").exit_code != 0


def test_cli_missing_board(tmp_path):
    result = invoke(str(tmp_path / "none.parquet"))
    assert result.exit_code == 1
    assert str(tmp_path / "none.parquet") in result.stderr and "bench run" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_corrupt_board(tmp_path):
    path = tmp_path / "b.parquet"
    path.write_bytes(b"garbage")
    result = invoke(str(path))
    assert result.exit_code == 1 and "Restore" in result.stderr
    assert path.read_bytes() == b"garbage"


# -------------------------------------------------------------------------------------------------------- plot


def test_pareto_front_hand_made():
    #             0    1    2    3    4    5
    x = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 0.5])
    y = np.array([0.5, 0.4, 0.7, 0.6, 0.9, 0.1])
    # 1 is beaten by 0 (cheaper, better); 3 by 2; 2 beats 1 at equal cost
    assert pareto_front(x, y).tolist() == [5, 0, 2, 4]
    assert pareto_front(np.array([1.0]), np.array([0.3])).tolist() == [0]


def test_cli_plot_writes_png(board, tmp_path):
    out = tmp_path / "plots" / "pareto.png"
    result = invoke(str(board), "--plot", str(out), "--format", "csv")
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert str(out) in result.stderr


def test_pareto_front_runs_over_compliant_submissions_and_labels_never_collide(tmp_path):
    """A cheap teacher or a non-compliant ablation must not start or join the front; labels keep clear of each
    other, of every marker and of the limit lines."""
    from bench.score.plot import pareto_figure

    path = tmp_path / "b.parquet"
    crowd = [row(submission=f"crowd-{i}", macro_acc=0.30 + 0.004 * i, max_macs=5_000_000 + 50_000 * i,
                 max_param_bytes=60_000 + 1_000 * i, compliant=True) for i in range(12)]
    lb.append_rows(path, [
        row(submission="small-teacher", kind="teacher", macro_acc=0.30, max_macs=1_000_000, compliant=False),
        row(submission="a", variant="v1", macro_acc=0.40, max_macs=2_000_000, max_param_bytes=50_000, compliant=True),
        row(submission="b", macro_acc=0.35, max_macs=3_000_000, max_param_bytes=60_000, compliant=True),  # beaten by a
        row(submission="cheap-but-too-big", macro_acc=0.60, max_macs=1_500_000, max_param_bytes=400_000,
            compliant=False, compliance_reasons="parameter memory"),
        row(submission="c", macro_acc=0.50, max_macs=29_000_000, max_param_bytes=127_000, compliant=True),
        *crowd])
    fig = pareto_figure(lb.read_board(path))
    ax_macs, ax_size = fig.axes[:2]
    front = next(line for line in ax_macs.lines if line.get_gid() != "limit").get_xdata().tolist()
    assert front == [2_000_000, 29_000_000]  # neither the teacher nor the non-compliant ablation
    texts = {t.get_text() for t in ax_macs.texts}
    assert {"a [v1]", "c", "small-teacher", "cheap-but-too-big"} <= texts and "b" not in texts
    renderer = fig.canvas.get_renderer()
    for ax in (ax_macs, ax_size):
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        limit = next(line for line in ax.lines if line.get_gid() == "limit").get_window_extent(renderer)
        legend = ax.get_legend().get_window_extent(renderer)
        assert not any(box.overlaps(legend) for box in boxes)
        for i, box in enumerate(boxes):
            assert not any(box.overlaps(other) for other in boxes[i + 1:])
            label_of_limit = ax.texts[i].get_text().endswith("limit")
            assert label_of_limit or not box.overlaps(limit)


@pytest.mark.parametrize("rows", [
    lambda: [row(max_macs=1_000_000, max_param_bytes=1_000)],
    lambda: [row(status="failed", macro_acc=None, error="boom")],
])
def test_plot_handles_single_and_failed_rows(tmp_path, rows):
    path = tmp_path / "b.parquet"
    lb.append_rows(path, rows())
    out = plot_board(lb.read_board(path), tmp_path / "p.png")
    assert out.read_bytes().startswith(PNG_MAGIC)


# -------------------------------------------------------------------------------------------------------- docs


def test_every_column_is_documented():
    doc = (REPO_ROOT / "docs" / "leaderboard.md").read_text()
    assert f"Schema version: {lb.SCHEMA_VERSION}" in doc
    undocumented = [c for c in lb.COLUMNS if f"| `{c}` |" not in doc]
    assert undocumented == []
