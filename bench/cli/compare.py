"""``bench compare A B``: is A better than B, on the clips both scored? A paired, location-clustered bootstrap
(:mod:`bench.score.compare`) from the per-clip predictions every row keeps: no re-run."""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from bench.cli.app import app
from bench.cli.output import err, out, print_json
from bench.errors import BoardError
from bench.paths import board_path


@app.command("compare")
def compare_rows(
    row_a: Annotated[str, typer.Argument(help="row id (or a 6+ character prefix) or submission name; NAME@VARIANT "
                                              "picks a variant; a name picks the seed aggregate where there is one")],
    row_b: Annotated[str, typer.Argument(help="the row to compare against, same forms")],
    board: Annotated[str, typer.Option(help="board NAME or .parquet path")] = "local",
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples")] = 2000,
    seed: Annotated[int, typer.Option(help="seed of the resampling")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """A - B in macro accuracy and per device group, with a paired 95 % interval and p-value; exit 1 when the rows
    cannot be compared (different test clips, no per-clip predictions), saying why."""
    from bench.score.compare import ComparisonError, compare
    from bench.score.leaderboard import read_board, row_predictions, select_row

    path = board_path(board, reading=True)
    try:
        df = read_board(path)
        rows = [select_row(df, ref) for ref in (row_a, row_b)]
        if rows[0]["row_id"] == rows[1]["row_id"]:
            raise ComparisonError(f"{row_a} and {row_b} are the same row ({rows[0]['row_id'][:12]})")
        names = [_name(r) for r in rows]
        results = compare(row_predictions(df, rows[0]), row_predictions(df, rows[1]), names[0], names[1],
                          n_boot=n_boot, seed=seed)
    except (BoardError, ComparisonError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        print_json({"board": str(path), "a": _identity(rows[0]), "b": _identity(rows[1]),
                    "comparisons": {k: c.to_dict() for k, c in results.items()}})
        return
    first = next(iter(results.values()))
    table = Table(title=f"{names[0]}  vs  {names[1]}  ({first.n_clips} clips; {first.method})")
    for column in ("", "A %", "B %", "A - B (points)", "95 % CI", "p", ""):
        table.add_column(column, justify="left" if column == "" else "right")
    for metric, c in results.items():
        verdict = "[green]shown[/]" if c.shown else "not shown"
        table.add_row(metric, f"{100 * c.a_value:.2f}", f"{100 * c.b_value:.2f}", f"{100 * c.diff:+.2f}",
                      f"[{100 * c.ci[0]:+.2f}, {100 * c.ci[1]:+.2f}]", f"{c.p_value:.3f}", verdict)
    out.print(table)
    out.print(results["macro_acc"].sentence())


def _name(row) -> str:
    variant = row.get("variant")
    name = row["submission"] + (f"@{variant}" if isinstance(variant, str) and variant else "")
    seeds = row.get("n_seeds")
    return name + (f" ({int(seeds)} seeds)" if not pd.isna(seeds) and seeds > 1 else "")


def _identity(row) -> dict:
    return {k: (None if pd.isna(row.get(k)) else row.get(k))
            for k in ("row_id", "submission", "variant", "kind", "seed", "n_seeds", "seeds", "profile", "dataset",
                      "dataset_fingerprint", "split", "macro_acc")}


@app.command("claims")
def claims(
    file: Annotated[str, typer.Argument(help=r"a TOML file of \[\[claim]] tables: name, a, b, metric, paper")],
    board: Annotated[str, typer.Option(help="board NAME or .parquet path")] = "local",
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples")] = 2000,
    fmt: Annotated[str, typer.Option("--format", help="table | markdown | json")] = "table",
) -> None:
    """Test each claim of FILE ("A beats B") with a paired comparison; prints shown / not shown with the numbers."""
    from bench.score.claims import ClaimsError, evaluate_claims, load_claims, markdown

    if fmt not in ("table", "markdown", "json"):
        raise typer.BadParameter(f"--format is table, markdown or json, not {fmt!r}")
    try:
        wanted = load_claims(file)
        results = evaluate_claims(wanted, board_path(board, reading=True), n_boot=n_boot)
    except (ClaimsError, BoardError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    if fmt == "json":
        print_json(results)
    elif fmt == "markdown":
        print(markdown(results))
    else:
        table = Table(title=f"claims of {file}")
        for column in ("claim", "A - B (points)", "95 % CI", "p", "verdict", "paper"):
            table.add_column(column)
        for r in results:
            table.add_row(r["name"], f"{100 * r['diff']:+.2f}", f"[{100 * r['ci'][0]:+.2f}, {100 * r['ci'][1]:+.2f}]",
                          f"{r['p_value']:.3f}", r["verdict"], r["paper"])
        out.print(table)


@app.command("aggregate")
def aggregate(
    board: Annotated[str, typer.Argument(help="board NAME or .parquet path")] = "local",
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples")] = 1000,
) -> None:
    """Append a seed aggregate for every submission scored with several seeds that has none yet (seeds run
    separately, e.g. in parallel or on several machines); the latest row of each seed is used."""
    from bench.score.leaderboard import append_rows, read_board
    from bench.score.seeds import AggregateError, aggregate_rows, missing_aggregates

    path = board_path(board, reading=True)
    try:
        groups = missing_aggregates(read_board(path))
    except (BoardError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    rows = []
    for name, members in groups:
        try:
            rows.append(aggregate_rows(members, n_boot=n_boot))
            out.print(f"{name}: seeds {rows[-1]['seeds']}, macro accuracy {100 * rows[-1]['macro_acc']:.2f} ± "
                      f"{100 * rows[-1]['macro_acc_seed_std']:.2f}")
        except AggregateError as exc:
            err.print(f"[yellow]{name}:[/] {exc}")
    if rows:
        append_rows(path, rows)
    out.print(f"appended {len(rows)} aggregate row(s) to {path}")
