"""Pareto plots: how much accuracy each submission buys with its MACs and parameter bytes, against the DCASE limits.

Uses matplotlib's object API (no pyplot), so plotting never touches global backend state or needs a display.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bench.score.complexity import MAX_MACS, MAX_PARAM_BYTES


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


def plot_board(df: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write a two-panel PNG: macro accuracy vs max MACs, and vs parameter bytes (deployed dtype and INT8)."""
    scored = df[(df["status"] == "ok") & df["macro_acc"].notna()]
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    ax_macs, ax_size = fig.subplots(1, 2, sharey=True)
    _series(ax_macs, scored, "max_macs", "macro_acc", "deployed model", "o", "C0")
    _series(ax_size, scored, "max_param_bytes", "macro_acc", "deployed dtype", "o", "C0")
    _series(ax_size, scored, "int8_size_bytes", "int8_macro_acc", "INT8", "^", "C1", annotate=False)
    _limit(ax_macs, MAX_MACS, "30 M MACs limit", "max MACs per 1-s clip")
    _limit(ax_size, MAX_PARAM_BYTES, "128 kB limit", "parameter bytes")
    ax_macs.set_ylabel("macro accuracy (%)")
    skipped = len(df) - len(scored)
    fig.suptitle(f"{len(scored)} scored row(s)" + (f", {skipped} failed/unscored not shown" if skipped else "")
                 + " - hollow markers are teachers; lines are the Pareto fronts of the submissions, labelled")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    return out


def _series(ax: Axes, df: pd.DataFrame, x_col: str, y_col: str, label: str, marker: str,
            color: str, annotate: bool = True) -> None:
    """Scatter one (cost, accuracy) pair of columns with its Pareto front; rows missing either are skipped.
    With ``annotate`` the teachers and the front's points are labelled."""
    x = pd.to_numeric(df[x_col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    y = 100 * pd.to_numeric(df[y_col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    if not keep.any():
        return
    x, y = x[keep], y[keep]
    teacher = df["is_teacher"].fillna(False).to_numpy(dtype=bool)[keep]
    names = [_label(s, v) for s, v in zip(df["submission"].to_numpy()[keep], df["variant"].to_numpy()[keep])]
    ax.scatter(x[~teacher], y[~teacher], marker=marker, color=color, label=label)
    ax.scatter(x[teacher], y[teacher], marker=marker, facecolors="none", edgecolors=color)
    # The front is over submissions only (teachers are not bound by the limits); only its points and the teachers
    # are labelled, so a board of many rows stays readable.
    rows = np.flatnonzero(~teacher)
    front = rows[pareto_front(x[rows], y[rows])] if len(rows) else rows
    ax.step(x[front], y[front], where="post", color=color, alpha=0.6)
    if annotate:
        for i in [*np.flatnonzero(teacher), *front]:
            text = ax.annotate(names[i], (x[i], y[i]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                               alpha=0.6 if teacher[i] else 1.0)
            text.set_in_layout(False)  # long labels must not squeeze the axes
    ax.legend(loc="lower right")


def _label(submission: object, variant: object) -> str:
    """The submission name, with the variant when it says more (teachers' variants repeat their name)."""
    if isinstance(variant, str) and variant and not variant.startswith("teacher"):
        return f"{submission} [{variant}]"
    return str(submission)


def _limit(ax: Axes, x: float, label: str, xlabel: str) -> None:
    ax.set_xscale("log")  # teachers sit orders of magnitude above the limits
    ax.axvline(x, color="red", linestyle="--", linewidth=1)
    ax.text(x, 1.0, f" {label}", color="red", fontsize=8, va="top", transform=ax.get_xaxis_transform())
    ax.set_xlabel(xlabel)
    ax.grid(True, which="both", alpha=0.3)
