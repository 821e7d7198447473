"""``bench leaderboard``: rank scored submissions, export them, and plot accuracy against complexity.

Table and Markdown show a formatted summary (percent, M MACs, decimal kB); CSV and JSON carry every schema column
unformatted, for scripts.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from bench.cli.app import app
from bench.cli.output import out
from bench.paths import board_path
from bench.score.leaderboard import (JSON_COLUMNS, KINDS, BoardError, audit_board, collapse_reruns, comparable,
                                     filter_board, rank_board, read_board)

Format = Enum("Format", {name: name for name in ("table", "csv", "markdown", "json")}, type=str)
Kind = Enum("Kind", {name: name for name in KINDS}, type=str)

TEACHER_MARK = "†"
TEACHER_NOTE = f"{TEACHER_MARK} teacher: trained without the complexity limits for distillation, not a submission."
NA = "—"
TEXT_COLUMNS = ("submission / system", "variant", "kind", "compliant")  # left-aligned; the rest are numbers


@app.command("leaderboard")
def leaderboard(
    board: Annotated[str, typer.Argument(help="A board NAME (leaderboards/NAME.parquet; 'main' is the reference "
                                              "board shipped with ascbench) or a .parquet path.")] = "local",
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    system: Annotated[str | None, typer.Option(help="Only rows of this system.")] = None,
    profile: Annotated[str | None, typer.Option(help="Only rows scored on this dataset profile.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Only rows scored on this dataset.")] = None,
    kind: Annotated[Kind | None, typer.Option(help="Only rows of this kind.")] = None,
    test_set: Annotated[str | None, typer.Option(help="Rows scored on this test set (dataset fingerprint or a "
                                                       "prefix); default: the one most rows were scored on.")] = None,
    all_rows: Annotated[bool, typer.Option("--all", help="Every row of the test set: re-runs and each seed of an "
                                                         "aggregate too (default: one line per run identity).")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also write a Pareto plot (PNG) of the shown rows here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
) -> None:
    """Rank scored submissions by macro accuracy, with complexity, INT8, energy and compliance."""
    fmt = Format.json if as_json else fmt
    path = board_path(board, reading=True)
    df = _load(path, board)
    audit = audit_board(path)
    for line in audit.lines(path):  # edits made outside ascbench: reported, never ranked
        typer.echo(f"warning: {line}", err=True)
    df = df.assign(integrity=[("edited outside ascbench: " + "; ".join(audit.edited[r])) if r in audit.edited
                              else "ok" if c is not None and not pd.isna(c) else "unverified (written before checksums)"
                              for r, c in zip(df["row_id"], df["row_checksum"])])
    df = filter_board(df, system=system, profile=profile, dataset=dataset, kind=kind.value if kind else None)
    try:
        df, others = comparable(df, test_set)
    except BoardError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    for other in others.itertuples():  # rows on other test clips are never ranked beside these
        typer.echo(f"note: {other.rows} row(s) scored on another test set ({other.dataset}, profile {other.profile}, "
                   f"--test-set {str(other.dataset_fingerprint)[:12]}) are not shown", err=True)
    df = rank_board(df if all_rows else collapse_reruns(df), unranked=audit.edited)
    if plot is not None:
        from bench.score.plot import plot_board  # matplotlib is slow to import; only pay for it when plotting

        typer.echo(f"wrote {plot_board(df, plot)}", err=True)
    if df.empty and fmt in (Format.table, Format.markdown):
        typer.echo(f"No rows in {board} match the filters.")
        return
    if fmt is Format.table:
        _print_table(df)
    else:
        typer.echo({Format.markdown: markdown, Format.csv: csv, Format.json: records_json}[fmt](df))


def _load(board: Path, arg: str) -> pd.DataFrame:
    """The board, or a one-line explanation and exit code 1."""
    if not board.is_file():
        hint = " (the reference results: `bench leaderboard main`)" if arg == "local" else ""
        typer.echo(f"No leaderboard at {board}; create one by scoring a system: `bench run <system>` appends to it"
                   f"{hint}.", err=True)
        raise typer.Exit(1)
    try:
        return read_board(board)
    except BoardError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


# ------------------------------------------------------------------------------------------------ summary cells


def summary(df: pd.DataFrame) -> list[dict[str, str]]:
    """One dict of display strings per ranked row, shared by the table and Markdown outputs."""
    return [_summary_row(row) for row in df.to_dict("records")]


def _summary_row(r: dict) -> dict[str, str]:
    teacher = _present(r["is_teacher"]) and bool(r["is_teacher"])
    name = r["submission"] if r["submission"] == r["system"] else f"{r['submission']} / {r['system']}"
    return {
        "#": _text(r["rank"]),
        "submission / system": name + (f" {TEACHER_MARK}" if teacher else "") +
        (" [edited outside ascbench: not ranked]" if str(r.get("integrity", "")).startswith("edited") else ""),
        "variant": _text(r["variant"]),
        "kind": r["kind"],
        "seeds": _seeds(r),
        "profile": _text(r["profile"]),
        "macro acc %": _macro(r),
        "val %": _validation(r),
        "known %": _num(r["acc_known"], 100),
        "unseen %": _num(r["acc_unseen"], 100),
        "MACs": _num(r["max_macs"], 1e-6, " M"),
        "params": _num(r["max_param_bytes"], 1e-3, " kB"),
        "INT8 size": _num(r["int8_size_bytes"], 1e-3, " kB"),
        "INT8 acc %": _num(r["int8_macro_acc"], 100) if _present(r["int8_macro_acc"]) else _int8_failure(r),
        "energy J/clip": _energy(r),
        "analytic µJ": _num(r["analytic_energy_uj_per_clip"], spec=".1f"),
        "compliant": _compliance(r),
    }


def _present(value) -> bool:
    return not pd.isna(value)


def _text(value) -> str:
    return str(value) if _present(value) else NA


def _num(value, scale: float = 1.0, suffix: str = "", spec: str = ".2f") -> str:
    return f"{value * scale:{spec}}{suffix}" if _present(value) else NA


def _validation(r: dict) -> str:
    """Validation macro accuracy (the split tuning and the teacher gate use), with a teacher's gate verdict."""
    shown = _num(r.get("val_macro_acc"), 100)
    gate = r.get("teacher_gate")
    return shown + (f" ({gate})" if isinstance(gate, str) and gate != "pass" else "")


def _seeds(r: dict) -> str:
    """The seed of a single row; ``n (a,b,c)`` for a seed aggregate."""
    if _present(r.get("n_seeds")) and r["n_seeds"] > 1:
        return f"{r['n_seeds']} ({r['seeds']})"
    return _text(r["seed"])


def _macro(r: dict) -> str:
    """Macro accuracy [95 % interval over recording locations]; for a seed aggregate the mean ± sd over seeds
    first. Exact bounds and the method are in CSV/JSON."""
    low, high = r["macro_acc_ci_low"], r["macro_acc_ci_high"]
    ci = f" [{100 * low:.1f}, {100 * high:.1f}]" if _present(low) and _present(high) else ""
    sd = f" ± {100 * r['macro_acc_seed_std']:.2f}" if _present(r.get("macro_acc_seed_std")) else ""
    return _num(r["macro_acc"], 100) + sd + ci


def _int8_failure(r: dict) -> str:
    return f"n/a: {r['int8_error']}" if _present(r["int8_error"]) else NA


def _energy(r: dict) -> str:
    method = {"cpu-load-estimate": "est."}.get(r["energy_method"], r["energy_method"])
    return f"{r['energy_j_per_clip']:.4g} ({method})" if _present(r["energy_j_per_clip"]) else NA


def _compliance(r: dict) -> str:
    if r["status"] == "failed":
        return f"failed: {r['error']}"
    if not _present(r["compliant"]):
        return "?"
    return "✓" if r["compliant"] else f"✗ {_text(r['compliance_reasons'])}"


# ------------------------------------------------------------------------------------------------------ outputs


def _print_table(df: pd.DataFrame) -> None:
    rows = summary(df)
    table = Table(caption=TEACHER_NOTE if _has_teacher(df) else None)
    for column in rows[0]:
        table.add_column(column, justify="left" if column in TEXT_COLUMNS else "right")
    for row, teacher in zip(rows, df["is_teacher"].fillna(False)):
        table.add_row(*row.values(), style="italic magenta" if teacher else None)
    out.print(table)


def markdown(df: pd.DataFrame) -> str:
    """A GitHub pipe table (plus the teacher footnote when needed), ready to paste into the README."""
    rows = summary(df)
    align = ("---" if column in TEXT_COLUMNS else "---:" for column in rows[0])
    lines = [_md_line(rows[0]), _md_line(align), *(_md_line(r.values()) for r in rows)]
    if _has_teacher(df):
        lines += ["", TEACHER_NOTE]
    return "\n".join(lines)


def _md_line(values) -> str:
    return "| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in values) + " |"


def _has_teacher(df: pd.DataFrame) -> bool:
    return bool(df["is_teacher"].fillna(False).any())


def _text_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Every column but the binary per-clip predictions (read them from the Parquet file: bench compare / report)."""
    return df.drop(columns=["clip_predictions"], errors="ignore")


def csv(df: pd.DataFrame) -> str:
    return _text_columns(df).to_csv(index=False).rstrip("\n")


def records_json(df: pd.DataFrame) -> str:
    """Records with every column; JSON columns are decoded so consumers get nested objects, not strings."""
    records = json.loads(_text_columns(df).to_json(orient="records", date_format="iso"))
    for record in records:
        for column in JSON_COLUMNS:
            if record[column] is not None:
                record[column] = json.loads(record[column])
    return json.dumps(records, indent=2, ensure_ascii=False)
