"""``bench report``: the board as a self-contained static HTML page (:mod:`bench.report`), optionally screenshotted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bench.cli.app import app
from bench.errors import BoardError
from bench.paths import board_path


@app.command("report")
def report(
    board: Annotated[str, typer.Argument(help="A board NAME (leaderboards/NAME.parquet) or a .parquet "
                                              "path.")] = "local",
    out: Annotated[Path, typer.Option("--out", help="Folder to write index.html into (created if missing).")] = ...,
    rows: Annotated[str | None, typer.Option(help="Comma-separated rows for the per-row views (ids, 6+ character "
                                                  "id prefixes, NAME or NAME@VARIANT); default: the top --top "
                                                  "rows.")] = None,
    top: Annotated[int, typer.Option(help="Without --rows: how many of the best rows with predictions to draw "
                                          "and compare.")] = 5,
    test_set: Annotated[str | None, typer.Option(help="Rows scored on this test set (dataset fingerprint or a "
                                                       "prefix); default: the one most rows were scored on.")] = None,
    all_rows: Annotated[bool, typer.Option("--all", help="Every row of the test set: re-runs and each seed of an "
                                                         "aggregate too (default: one line per run "
                                                         "identity).")] = False,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples per paired comparison.")] = 1000,
    screenshot: Annotated[Path | None, typer.Option(help="Also render the page's top to this PNG with headless "
                                                         "Chromium.")] = None,
) -> None:
    """Write a static HTML report of a board: sortable table, Pareto plots, per-device accuracy and confusion,
    device shift, paired comparisons of the top rows, and each row's provenance. Opens with no network."""
    from bench import report as builder  # matplotlib and the statistics load only when a report is made

    path = board_path(board, reading=True)
    if not path.is_file():
        typer.echo(f"No leaderboard at {path}; create one by scoring a system: `bench run <system>` appends to it.",
                   err=True)
        raise typer.Exit(1)
    refs = [r.strip() for r in rows.split(",") if r.strip()] if rows else []
    try:
        made = builder.build_report(path, out, rows=refs, top=top, test_set=test_set, all_rows=all_rows,
                                    n_boot=n_boot)
    except BoardError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    for note in made.notes:
        typer.echo(f"note: {note}", err=True)
    chosen = ", ".join(made.chosen) or "none"
    typer.echo(f"wrote {made.index}: {made.shown} row(s); per-row views and comparisons of {chosen}")
    if screenshot is not None:
        try:
            typer.echo(f"wrote {builder.screenshot(made.index, screenshot)}")
        except builder.ScreenshotError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
