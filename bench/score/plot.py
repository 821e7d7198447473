"""Pareto plots: how much accuracy each submission buys with its MACs and parameter bytes, against the DCASE limits.

Uses matplotlib's object API (no pyplot), so plotting never touches global backend state or needs a display.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from bench.score.limits import MAX_MACS, MAX_PARAM_BYTES


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (lower-or-equal cost ``x`` and higher ``y``), by increasing x.

    Of points with equal x only the best y can be on the front; exact duplicates contribute one index.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    front, best = [], -np.inf
    for i in np.lexsort((-y, x)):  # by x ascending, then y descending
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.array(front, dtype=int)


def pareto_figure(df: pd.DataFrame) -> Figure:
    """Two panels: macro accuracy vs max MACs, and vs parameter bytes (deployed dtype and INT8).

    Fronts run over compliant submissions only; non-compliant rows are crosses, teachers hollow markers. Labels are
    placed where they overlap neither each other, the points nor the limit lines; a label that finds no free place
    is left out and the title counts it."""
    scored = df[(df["status"] == "ok") & df["macro_acc"].notna()]
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_macs, ax_size = fig.subplots(1, 2, sharey=True)
    series = [(ax_macs, "max_macs", "macro_acc", "deployed model", "o", "C0", True),
              (ax_size, "max_param_bytes", "macro_acc", "deployed dtype", "o", "C0", True),
              (ax_size, "int8_size_bytes", "int8_macro_acc", "INT8", "^", "C1", False)]
    labels = {ax_macs: [], ax_size: []}
    for ax, x_col, y_col, label, marker, color, annotate in series:
        labels[ax] += _series(ax, scored, x_col, y_col, label, marker, color, annotate)
    _limit(ax_macs, MAX_MACS, "30 M MACs limit", "max MACs per 1-s clip")
    _limit(ax_size, MAX_PARAM_BYTES, "128 kB limit", "parameter bytes")
    ax_macs.set_ylabel("macro accuracy (%)")
    fig.canvas.draw()  # settle the layout, so that label boxes are measured where they will be drawn
    omitted = sum(place_labels(ax, wanted) for ax, wanted in labels.items())
    skipped = len(df) - len(scored)
    fig.suptitle(f"{len(scored)} scored row(s)" + (f", {skipped} failed/unscored not shown" if skipped else "")
                 + " - x: non-compliant, hollow: teacher; lines: Pareto fronts of the compliant submissions"
                 + (f"; {omitted} label(s) left out for lack of room" if omitted else ""), fontsize=10)
    return fig


def plot_board(df: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write :func:`pareto_figure` of ``df`` as a PNG."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pareto_figure(df).savefig(out, format="png", dpi=120)
    return out


def _series(ax: Axes, df: pd.DataFrame, x_col: str, y_col: str, label: str, marker: str,
            color: str, annotate: bool = True) -> list[tuple[float, float, str, float]]:
    """Scatter one (cost, accuracy) pair of columns with the Pareto front of its compliant submissions; rows missing
    either are skipped. Returns the labels wanted (front points, non-compliant points and teachers) as
    ``(x, y, text, alpha)``; without ``annotate`` none."""
    x = pd.to_numeric(df[x_col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    y = 100 * pd.to_numeric(df[y_col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    if not keep.any():
        return []
    x, y = x[keep], y[keep]
    teacher = df["is_teacher"].fillna(False).to_numpy(dtype=bool)[keep]
    compliant = df["compliant"].fillna(False).to_numpy(dtype=bool)[keep] & ~teacher
    names = [_label(s, v) for s, v in zip(df["submission"].to_numpy()[keep], df["variant"].to_numpy()[keep])]
    ax.scatter(x[compliant], y[compliant], marker=marker, color=color, label=label, zorder=3)
    other = ~compliant & ~teacher
    ax.scatter(x[other], y[other], marker="x", color=color, alpha=0.7, zorder=3,
               label=f"{label}, non-compliant" if other.any() else None)
    ax.scatter(x[teacher], y[teacher], marker=marker, facecolors="none", edgecolors=color, zorder=3)
    rows = np.flatnonzero(compliant)
    front = rows[pareto_front(x[rows], y[rows])] if len(rows) else rows
    ax.step(x[front], y[front], where="post", color=color, alpha=0.6)
    ax.legend(loc="lower right", fontsize=8)
    if not annotate:
        return []
    return [(x[i], y[i], names[i], 1.0 if i in set(front) else 0.6)
            for i in [*front, *np.flatnonzero(other), *np.flatnonzero(teacher)]]


# offsets (points) tried in turn: right, above, left, below, then further out
_OFFSETS = [(5, 3, "left", "bottom"), (5, -3, "left", "top"), (-5, 3, "right", "bottom"), (-5, -3, "right", "top"),
            (0, 8, "center", "bottom"), (0, -8, "center", "top"), (12, 12, "left", "bottom"),
            (12, -12, "left", "top"), (-12, 12, "right", "bottom"), (-12, -12, "right", "top"),
            (0, 20, "center", "bottom"), (0, -20, "center", "top")]


def place_labels(ax: Axes, wanted: list[tuple[float, float, str, float]]) -> int:
    """Annotate each wanted point at the first offset whose box stays inside the axes and clear of the labels
    already placed, every marker, the legend and the limit line and its text. Returns how many found no place."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = [t.get_window_extent(renderer) for t in ax.texts]  # the limit's text
    if ax.get_legend() is not None:
        taken.append(ax.get_legend().get_window_extent(renderer))
    taken += [line.get_window_extent(renderer).padded(2) for line in ax.lines if line.get_gid() == "limit"]
    for collection in ax.collections:
        for px, py in collection.get_offset_transform().transform(collection.get_offsets()):
            taken.append(Bbox.from_extents(px - 3, py - 3, px + 3, py + 3))
    omitted = 0
    for x, y, text, alpha in wanted:
        point = ax.transData.transform((x, y))
        own = Bbox.from_extents(point[0] - 3, point[1] - 3, point[0] + 3, point[1] + 3)
        for dx, dy, ha, va in _OFFSETS:
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                                fontsize=7, alpha=alpha)
            label.set_in_layout(False)  # long labels must not squeeze the axes
            box = label.get_window_extent(renderer).padded(1)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(o) for o in taken if o.bounds != own.bounds):
                taken.append(box)
                break
            label.remove()
        else:
            omitted += 1
    return omitted


def _label(submission: object, variant: object) -> str:
    """The submission name, with the variant when it says more (teachers' variants repeat their name)."""
    if isinstance(variant, str) and variant and not variant.startswith("teacher"):
        return f"{submission} [{variant}]"
    return str(submission)


def _limit(ax: Axes, x: float, label: str, xlabel: str) -> None:
    ax.set_xscale("log")  # teachers sit orders of magnitude above the limits
    ax.axvline(x, color="red", linestyle="--", linewidth=1, gid="limit")
    ax.text(x, 1.0, f" {label}", color="red", fontsize=8, va="top", transform=ax.get_xaxis_transform())
    ax.set_xlabel(xlabel)
    ax.grid(True, which="both", alpha=0.3)
