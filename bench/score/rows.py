"""The one way a scored (or failed) submission becomes a leaderboard row: ``bench run``, ``bench score
--submission`` and ``bench score --package`` all call :func:`submission_row`, so their rows mean the same thing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bench.score.leaderboard import make_row

if TYPE_CHECKING:
    from bench.score.scorer import ScoreResult

REASON_CHARS = 400


def one_line(text: str, limit: int = REASON_CHARS) -> str:
    """A reason as one line of at most ``limit`` characters (the board's ``error`` and notes)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def submission_row(identity: Mapping[str, Any], result: "ScoreResult | None" = None, *, error: str | None = None,
                   notes: Sequence[str] = ()) -> dict[str, Any]:
    """Identity (submission, system, kind, run, provenance of training) + what was measured + every note.

    A row without a result, or with an ``error``, is a failed row saying why."""
    all_notes = [n for n in (identity.get("notes"), *notes, *(result.notes if result else ())) if n]
    fields = {**identity, "notes": "; ".join(dict.fromkeys(all_notes)) or None}
    if error is not None or result is None:
        return make_row(**fields, status="failed", error=one_line(error or "no result"))
    return make_row(**{**fields, **result.row, "notes": fields["notes"]}, status="ok")
