"""``bench report``: a board as one self-contained static HTML page (``DIR/index.html``).

Everything the page needs is inside that one file — figures as base64 ``data:`` URIs, CSS and JavaScript inline, no
external URL — so it opens from an archive, a mail attachment or an air-gapped machine exactly as it was written.
Rows are chosen as ``bench leaderboard`` chooses them; the per-row views (device bars, confusion matrices, paired
comparisons) are drawn for a few *chosen* rows, because a matrix of every pair of a long board is unreadable.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.cli.leaderboard import summary
from bench.errors import BoardError
from bench.score.compare import Comparison, ComparisonError, compare
from bench.score.leaderboard import (audit_board, collapse_reruns, comparable, rank_board, read_board,
                                     row_predictions, select_row)
from bench.score.plot import plot_board
from bench.score.predictions import ClipPredictions

REFERENCE_DEVICE = "a"  # the device the training data was recorded with; the shift view measures gaps from it
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# table columns sorted by the raw value rather than by their display text
SORT_KEYS = {"#": "rank", "seeds": "n_seeds", "macro acc %": "macro_acc", "val %": "val_macro_acc",
             "known %": "acc_known",
             "unseen %": "acc_unseen", "MACs": "max_macs", "params": "max_param_bytes", "INT8 size": "int8_size_bytes",
             "INT8 acc %": "int8_macro_acc", "energy J/clip": "energy_j_per_clip",
             "analytic µJ": "analytic_energy_uj_per_clip"}
NA = "—"


class ScreenshotError(RuntimeError):
    """The report was written but could not be rendered to a PNG (no browser, or the browser failed)."""


@dataclass
class Chosen:
    """A row drawn in the per-row views, with its per-clip predictions (one per seed) or why it has none."""

    row: dict
    name: str
    preds: list[ClipPredictions] = field(default_factory=list)
    missing: str | None = None


@dataclass
class Report:
    """What ``build_report`` wrote, for the command line to tell the user."""

    index: Path
    shown: int
    chosen: list[str]
    notes: list[str]


def build_report(board: Path, out_dir: Path, *, rows: Sequence[str] = (), top: int = 5, test_set: str | None = None,
                 all_rows: bool = False, n_boot: int = 1000, seed: int = 0) -> Report:
    """Write ``out_dir/index.html`` for ``board``; ``BoardError`` (or ``FileNotFoundError``) if it cannot be read or a
    ref in ``rows`` names no row."""
    full = read_board(board)
    audit = audit_board(board)
    notes = audit.lines(board)
    full = full.assign(integrity=[("edited outside ascbench: " + "; ".join(audit.edited[r])) if r in audit.edited
                                  else "ok" if isinstance(c, str) else "unverified (written before checksums)"
                                  for r, c in zip(full["row_id"], full["row_checksum"])])
    same, others = comparable(full, test_set)
    notes += [f"{o.rows} row(s) scored on another test set ({o.dataset}, profile {o.profile}, --test-set "
              f"{str(o.dataset_fingerprint)[:12]}) are not shown" for o in others.itertuples()]
    shown = rank_board(same if all_rows else collapse_reruns(same), unranked=audit.edited)
    chosen = _choose(full, same, shown, rows, top, set(audit.edited))
    sections = [
        _section("leaderboard", "Leaderboard", _table(shown)),
        _section("pareto", "Accuracy against complexity", _pareto(shown)),
        _section("devices", "Per-device accuracy", _device_bars(chosen)),
        _section("confusion", "Confusion per device", _confusions(chosen)),
        _section("shift", "Device shift", _shift(shown, chosen)),
        _section("comparisons", "Paired comparisons", _matrix(chosen, n_boot, seed)),
        _section("provenance", "Provenance", _provenance(shown)),
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    index.write_text(_page(board, same, shown, notes, sections), encoding="utf-8")
    return Report(index, len(shown), [c.name for c in chosen], notes)


def screenshot(index: Path, png: Path, width: int = 1400, height: int = 1800) -> Path:
    """Render ``index`` with headless Chromium into ``png`` (the top ``width`` x ``height`` pixels)."""
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        raise ScreenshotError("no Chromium to take the screenshot with; install it: apt-get install chromium")
    png = png.absolute()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ascbench-chromium-") as profile:  # never touch a user's profile
        command = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                   f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}",
                   index.absolute().as_uri()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise ScreenshotError(f"{browser} did not finish the screenshot within 120 s") from None
    if done.returncode != 0 or not png.is_file() or png.stat().st_size == 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ScreenshotError(f"{browser} wrote no screenshot (exit {done.returncode}): {last}")
    return png


# ------------------------------------------------------------------------------------------------- choosing rows


def _choose(full: pd.DataFrame, same: pd.DataFrame, shown: pd.DataFrame, refs: Sequence[str], top: int,
            edited: set[str]) -> list[Chosen]:
    """The rows named in ``refs``; without refs the best ``top`` shown rows that have predictions, or on a board
    without any the best ``top`` rows still (their device accuracies need none). Teachers and rows edited outside
    ascbench only when named: they do not compete."""
    if refs:
        picked = {}
        for ref in refs:
            row = select_row(same, ref).to_dict()
            picked.setdefault(row["row_id"], row)
        return _distinct([_with_predictions(full, row) for row in picked.values()])
    eligible = [_with_predictions(full, row) for row in shown.to_dict("records")
                if row["status"] == "ok" and not _true(row["is_teacher"]) and row["row_id"] not in edited]
    with_predictions = [c for c in eligible if c.preds]
    return _distinct((with_predictions or eligible)[:max(top, 0)])


def _distinct(chosen: list[Chosen]) -> list[Chosen]:
    """Rows that would read alike (the seeds of one submission, with --all) get their short id appended."""
    seen = Counter(c.name for c in chosen)
    for c in chosen:
        if seen[c.name] > 1:
            c.name += f" [{c.row['row_id'][:8]}]"
    return chosen


def _with_predictions(full: pd.DataFrame, row: dict) -> Chosen:
    try:
        return Chosen(row, _name(row), row_predictions(full, pd.Series(row)))
    except BoardError as exc:
        return Chosen(row, _name(row), missing=str(exc))


def _name(row: dict) -> str:
    variant = row.get("variant")
    name = row["submission"] + (f"@{variant}" if isinstance(variant, str) and variant else "")
    return name + (f" ({int(row['n_seeds'])} seeds)" if _present(row.get("n_seeds")) and row["n_seeds"] > 1 else "")


def _present(value) -> bool:
    return value is not None and not pd.isna(value)


def _true(value) -> bool:
    return _present(value) and bool(value)


def _json(value) -> dict | list:
    return json.loads(value) if isinstance(value, str) else {}


# ---------------------------------------------------------------------------------------------------- sections


def _e(value) -> str:
    return html.escape(str(value) if _present(value) else NA)


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _img(fig: Figure, alt: str) -> str:
    """The figure as an embedded PNG: the page must not depend on files beside it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return _img_bytes(buffer.getvalue(), alt)


def _img_bytes(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(shown: pd.DataFrame) -> str:
    if shown.empty:
        return "<p>No rows on this test set.</p>"
    cells = summary(shown)
    head = "".join(f"<th>{html.escape(col)}</th>" for col in cells[0]) + "<th>row</th>"
    lines = []
    for display, row in zip(cells, shown.to_dict("records")):
        classes = [name for name, flag in (("teacher", _true(row["is_teacher"])), ("failed", row["status"] == "failed"),
                                           ("edited", row["integrity"].startswith("edited")),
                                           ("unranked", not _present(row["rank"]))) if flag]
        tds = "".join(_cell(row, col, text) for col, text in display.items())
        rid = html.escape(row["row_id"])
        lines.append(f'<tr data-row-id="{rid}" class="{" ".join(classes)}">{tds}'
                     f'<td><a href="#prov-{rid}">{rid[:8]}</a></td></tr>')
    return (f'<p>{len(shown)} row(s), best first. Click a column header to sort by it (again to reverse). Rows '
            'without a rank do not compete: non-compliant, teachers (†, trained without the limits) or edited '
            'outside ascbench; failed rows last.</p>\n'
            f'<table class="sortable board"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(lines)
            + "\n</tbody></table>")


def _cell(row: dict, column: str, text: str) -> str:
    """A table cell; numeric columns carry their raw value in ``data-sort`` so sorting is by number."""
    key = SORT_KEYS.get(column)
    if key is None:
        return f"<td>{html.escape(text)}</td>"
    value = row.get(key)
    raw = repr(float(value)) if _present(value) else ""
    return f'<td class="num" data-sort="{raw}">{html.escape(text)}</td>'


def _pareto(shown: pd.DataFrame) -> str:
    """The Pareto plots of the shown rows, less those edited outside ascbench: they must not sit on a front."""
    trusted = shown[~shown["integrity"].str.startswith("edited")]
    with tempfile.TemporaryDirectory(prefix="ascbench-report-") as tmp:
        png = plot_board(trusted, Path(tmp) / "pareto.png").read_bytes()
    left_out = len(shown) - len(trusted)
    return ("<p>Macro accuracy against max MACs per 1-s clip and against parameter bytes (deployed dtype and INT8), "
            "with the DCASE limits and the Pareto fronts of the submissions"
            + (f"; {left_out} row(s) edited outside ascbench are not drawn" if left_out else "") + ".</p>\n"
            + _img_bytes(png, "Pareto plots: accuracy against MACs and parameter bytes"))


def _devices(chosen: Sequence[Chosen]) -> tuple[list[str], dict[str, str]]:
    """Every device the chosen rows report, and each device's role (real/seen/unseen) where predictions say it."""
    devices = sorted({d for c in chosen for d in _json(c.row.get("acc_per_device"))})
    roles = {d: r for c in chosen for p in c.preds[:1] for d, r in p.device_roles.items()}
    return devices, roles


def _grouped_bars(chosen: Sequence[Chosen], devices: list[str], roles: dict[str, str], values, ylabel: str,
                  alt: str) -> str:
    fig = Figure(figsize=(max(7.0, 0.9 * len(devices) + 3), 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(devices))
    width = 0.8 / max(1, len(chosen))
    for k, c in enumerate(chosen):
        ax.bar(x + (k - (len(chosen) - 1) / 2) * width, values(c), width, label=c.name)
    ax.set_xticks(x, [f"{d}\n{roles.get(d, '')}" for d in devices])
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _img(fig, alt)


def _device_bars(chosen: Sequence[Chosen]) -> str:
    reporting = [c for c in chosen if _json(c.row.get("acc_per_device"))]
    devices, roles = _devices(reporting)
    if not devices:
        return "<p>No chosen row reports per-device accuracy.</p>"

    def accuracy(c: Chosen) -> list[float]:
        acc = _json(c.row.get("acc_per_device"))
        return [100 * acc[d] if d in acc else math.nan for d in devices]

    silent = [c.name for c in chosen if c not in reporting]
    return (f"<p>Accuracy on each recording device for the chosen rows: {_e(', '.join(c.name for c in reporting))}"
            + (f" ({_e(', '.join(silent))}: no per-device accuracy)" if silent else "")
            + ". Under each device its role: real (in training), seen (simulated, in training) or unseen.</p>\n"
            + _grouped_bars(reporting, devices, roles, accuracy, "accuracy (%)",
                            "per-device accuracy of the chosen rows"))


def _confusions(chosen: Sequence[Chosen]) -> str:
    if not chosen:
        return "<p>No rows chosen.</p>"
    parts = ['<p>One matrix per device: rows are the true class, columns the predicted one; each cell holds the '
             "number of clips and is shaded by its share of the row (hover for the class names).</p>"]
    for c in chosen:
        if not c.preds:
            parts.append(f"<h3>{_e(c.name)}</h3><p class=\"why\">{_e(c.missing)}</p>")
            continue
        preds = c.preds[0] if len(c.preds) == 1 else ClipPredictions.average(c.preds)
        legend = ", ".join(f"{k} {name}" for k, name in enumerate(preds.classes))
        averaged = f" (the seed-averaged prediction of {len(c.preds)} seeds)" if len(c.preds) > 1 else ""
        grid = "".join(_confusion_table(preds, device) for device in sorted(set(preds.devices.tolist())))
        parts.append(f"<h3>{_e(c.name)}{_e(averaged)}</h3>\n<div class=\"cms\">{grid}</div>"
                     f"<p class=\"legend\">Classes: {_e(legend)}.</p>")
    return "\n".join(parts)


def _confusion_table(preds: ClipPredictions, device: str) -> str:
    """One device's confusion counts as a shaded HTML table: exact numbers, readable without an image."""
    counts = preds.confusion(device)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    acc = 100 * np.trace(counts) / max(counts.sum(), 1)
    head = "".join(f"<th>{k}</th>" for k in range(len(preds.classes)))
    lines = []
    for t, (line, shares) in enumerate(zip(counts, share)):
        cells = "".join(
            f'<td style="background: rgba(31, 119, 180, {s:.2f}){"; color: #fff" if s > 0.5 else ""}" '
            f'title="{html.escape(f"true {preds.classes[t]}, predicted {preds.classes[k]}: {n} clip(s)")}">{n}</td>'
            for k, (n, s) in enumerate(zip(line, shares)))
        lines.append(f"<tr><th>{t}</th>{cells}</tr>")
    role = preds.device_roles.get(device, "unseen")
    return (f'<table class="cm"><caption>{_e(device)} ({_e(role)}): {acc:.1f} %</caption>'
            f"<thead><tr><th></th>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>")


def _shift(shown: pd.DataFrame, chosen: Sequence[Chosen]) -> str:
    """Known vs unseen accuracy of every shown row, then each chosen row's per-device gap to the reference device."""
    scored = shown[(shown["status"] == "ok") & shown["acc_known"].notna() & shown["acc_unseen"].notna()]
    parts = []
    if scored.empty:
        parts.append("<p>No shown row reports known- and unseen-device accuracy.</p>")
    else:
        fig = Figure(figsize=(6.5, 5.0), layout="constrained")
        ax = fig.subplots()
        known = 100 * scored["acc_known"].to_numpy(dtype=float)
        unseen = 100 * scored["acc_unseen"].to_numpy(dtype=float)
        ax.scatter(known, unseen)
        for row, x, y in zip(scored.to_dict("records"), known, unseen):
            ax.annotate(_name(row), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        low, high = min(known.min(), unseen.min()) - 5, max(known.max(), unseen.max()) + 5
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="no shift")
        ax.set_xlabel("known devices accuracy (%)")
        ax.set_ylabel("unseen devices accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
        gaps = "".join(f"<tr><td>{_e(_name(r))}</td>"
                       f"<td class=\"num\">{100 * r['acc_known']:.2f}</td><td class=\"num\">{100 * r['acc_unseen']:.2f}"
                       f"</td><td class=\"num\">{100 * (r['acc_unseen'] - r['acc_known']):+.2f}</td></tr>"
                       for r in scored.to_dict("records"))
        parts.append("<p>Every shown row's accuracy on the devices seen in training against the unseen ones; below "
                     "the dashed line a model loses accuracy on new devices.</p>\n" + _img(fig, "known vs unseen")
                     + '\n<table class="sortable shift"><thead><tr><th>row</th><th>known %</th><th>unseen %</th>'
                       f"<th>unseen − known (points)</th></tr></thead><tbody>{gaps}</tbody></table>")
    with_ref = [c for c in chosen if REFERENCE_DEVICE in _json(c.row.get("acc_per_device"))]
    devices, roles = _devices(with_ref)
    devices = [d for d in devices if d != REFERENCE_DEVICE]
    if not devices:
        parts.append(f"<p>No chosen row reports accuracy on device {REFERENCE_DEVICE} and on another device.</p>")
        return "\n".join(parts)

    def gap(c: Chosen) -> list[float]:
        acc = _json(c.row.get("acc_per_device"))
        return [100 * (acc[d] - acc[REFERENCE_DEVICE]) if d in acc else math.nan for d in devices]

    parts.append(f"<p>Per device, accuracy minus the accuracy on device {REFERENCE_DEVICE} (the main training device), "
                 "in points, for the chosen rows.</p>\n"
                 + _grouped_bars(with_ref, devices, roles, gap, f"device − device {REFERENCE_DEVICE} (points)",
                                 "per-device gap to the reference device"))
    return "\n".join(parts)


def _matrix(chosen: Sequence[Chosen], n_boot: int, seed: int) -> str:
    """Macro accuracy A − B for every ordered pair of chosen rows (A: the row, B: the column). Each pair is
    bootstrapped once; the mirrored cell is its negation, so the matrix is antisymmetric."""
    if len(chosen) < 2:
        return "<p>Choose at least two rows (--rows, --top) to compare them.</p>"
    results: dict[tuple[int, int], Comparison | str] = {}
    method = ""
    for i, a in enumerate(chosen):
        for j in range(i + 1, len(chosen)):
            b = chosen[j]
            if not (a.preds and b.preds):
                results[i, j] = (a.missing or b.missing)
                continue
            try:
                c = compare(a.preds, b.preds, a.name, b.name, metrics=("macro_acc",), n_boot=n_boot, seed=seed)
                results[i, j] = c["macro_acc"]
                method = c["macro_acc"].method
            except ComparisonError as exc:
                results[i, j] = str(exc)
    head = "".join(f"<th>B: {_e(c.name)}</th>" for c in chosen)
    body = []
    for i, a in enumerate(chosen):
        cells = []
        for j, b in enumerate(chosen):
            if i == j:
                cells.append('<td class="cmp same">—</td>')
                continue
            result = results[min(i, j), max(i, j)]
            if isinstance(result, str):
                cells.append(f'<td class="cmp refused">not comparable: {_e(result)}</td>')
                continue
            sign = 1 if i < j else -1
            diff, (low, high) = sign * result.diff, sorted((sign * result.ci[0], sign * result.ci[1]))
            verdict = ("better" if diff > 0 else "worse") if result.shown else "not shown"
            css = f"shown {verdict}" if result.shown else "unclear"
            title = (f"{a.name} - {b.name} = {100 * diff:+.2f} points, {round(100 * result.level)} % CI "
                     f"[{100 * low:+.2f}, {100 * high:+.2f}], p = {result.p_value:.3f}")
            cells.append(f'<td class="cmp {css}" title="{html.escape(title)}">{100 * diff:+.1f}<br>'
                         f"<small>[{100 * low:+.1f}, {100 * high:+.1f}]<br>{verdict}</small></td>")
        body.append(f"<tr><th>A: {_e(a.name)}</th>{''.join(cells)}</tr>")
    return (f"<p>Macro accuracy of A (row) minus B (column), in points, with its 95 % interval from a paired bootstrap "
            f"on the clips both scored ({_e(method or 'none computed')}; {n_boot} resamples). A cell is coloured "
            "only when the interval excludes 0 (the difference is <em>shown</em>): green when A is better, red when "
            "worse.</p>\n"
            f'<table class="matrix"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _provenance(shown: pd.DataFrame) -> str:
    if shown.empty:
        return "<p>No rows.</p>"
    parts = []
    for r in shown.to_dict("records"):
        commit = _e(r["git_commit"]) + (" (dirty working tree)" if _true(r["git_dirty"]) else "")
        seeds = f"{int(r['n_seeds'])} seeds ({r['seeds']})" if _present(r["n_seeds"]) and r["n_seeds"] > 1 \
            else r["seed"]
        fields = [("row id", _e(r["row_id"])), ("kind / status", _e(f"{r['kind']} / {r['status']}")),
                  ("error", _e(r["error"])), ("integrity", _e(r["integrity"])),
                  ("harness", _e(r["harness_version"])), ("git commit", commit), ("torch", _e(r["torch"])),
                  ("cpu", _e(r["cpu_model"])), ("threads", _e(r["threads"])), ("dataset", _e(r["dataset"])),
                  ("dataset fingerprint", _e(r["dataset_fingerprint"])), ("split", _e(r["split"])),
                  ("profile", _e(r["profile"])), ("seeds", _e(seeds)), ("seed rows", _e(r["seed_rows"])),
                  ("interval", _e(r["ci_method"])), ("run dir", _e(r["run_dir"])),
                  ("stages", _e(", ".join(map(str, _json(r["stages"]))) or None)), ("notes", _e(r["notes"])),
                  ("started", _e(r["started_at"])), ("finished", _e(r["finished_at"]))]
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in fields)
        parts.append(f'<details id="prov-{html.escape(r["row_id"])}"><summary>{_e(_name(r))} '
                     f"<code>{html.escape(r['row_id'][:12])}</code></summary><table class=\"prov\">{rows}</table>"
                     "</details>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------- page


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
nav a { margin-right: 1em; } .meta { color: #555; } .notes li { color: #8a4b00; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; background: #f3f3f3; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " ▲"; }
table.sortable th[aria-sort="descending"]::after { content: " ▼"; }
tr.teacher { font-style: italic; color: #7a1f7a; } tr.failed { color: #999; } tr.edited { background: #fff0d0; }
td.cmp { text-align: center; min-width: 7em; } td.cmp.same { background: #eee; }
td.cmp.shown.better { background: #c8ecc8; } td.cmp.shown.worse { background: #f5c6c6; }
td.cmp.refused { color: #8a4b00; font-size: 0.85em; max-width: 18em; }
img { max-width: 100%; display: block; margin: 0.5em 0; } .why, .legend { color: #555; font-size: 0.9em; }
div.cms { display: grid; grid-template-columns: repeat(3, max-content); gap: 0.5em 1.5em; }
table.cm { font-size: 0.7em; } table.cm caption { font-weight: bold; }
table.cm td, table.cm th { width: 1.9em; height: 1.9em; padding: 0; text-align: center; border: 1px solid #eee; }
details { margin: 0.3em 0; } table.prov th { text-align: left; background: #f8f8f8; }
"""

# Click a header: sort ascending by that column, click again: descending. Cells with data-sort sort by that number;
# others by their text: as a number when it is one, else with the numbers inside it compared as numbers. Empty
# values stay last either way.
JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var headers = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(headers, function (th, column) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = sortKey(a.cells[column]), y = sortKey(b.cells[column]);
        if (x === null || y === null) { return (x === null) - (y === null); }
        var order = (typeof x === "number" && typeof y === "number") ? x - y
          : String(x).localeCompare(String(y), undefined, { numeric: true });
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
function sortKey(cell) {
  if (cell.hasAttribute("data-sort")) {
    var raw = cell.getAttribute("data-sort");
    return raw === "" ? null : parseFloat(raw);
  }
  var text = cell.textContent.trim();
  if (text === "" || text === "\\u2014") { return null; }
  return isNaN(Number(text)) ? text : Number(text);
}
"""


def _page(board: Path, same: pd.DataFrame, shown: pd.DataFrame, notes: list[str], sections: list[str]) -> str:
    ok = same[same["status"] == "ok"]
    test_set = (f"{ok['dataset'].iloc[0]}, profile {ok['profile'].iloc[0]}, split {ok['split'].iloc[0]}, "
                f"fingerprint {ok['dataset_fingerprint'].iloc[0]}") if not ok.empty else "none"
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("leaderboard", "leaderboard"), ("pareto", "Pareto"), ("devices", "devices"), ("confusion", "confusion"),
        ("shift", "device shift"), ("comparisons", "comparisons"), ("provenance", "provenance")))
    note_list = ("<ul class=\"notes\">" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>") if notes \
        else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<title>ascbench report: {html.escape(board.stem)}</title>\n<style>{CSS}</style></head>\n<body>\n"
            f"<h1>ascbench report: {html.escape(board.stem)}</h1>\n"
            f"<p class=\"meta\">Board {html.escape(os.fspath(board))}; test set {html.escape(test_set)}; "
            f"{len(shown)} row(s) shown; written {written}.</p>\n{note_list}\n<nav>{nav}</nav>\n"
            + "\n".join(sections) + f"\n<script>{JS}</script>\n</body></html>\n")
