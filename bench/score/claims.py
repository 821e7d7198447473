"""Claims of the form "A beats B on metric M", kept in a TOML file and re-tested on a board by paired comparison
(``bench claims FILE``), so that every effect a document states comes from a command anyone can re-run.

```toml
[[claim]]
name = "RN beats BN (with DIR)"
a = "dsflexinet-sm2@rn_fms_dir"        # rows as `bench compare` takes them
b = "dsflexinet-sm2@bn_fms_dir"
metric = "macro_acc"                   # or acc_real, acc_seen, acc_unseen, acc_known, device:<id>
paper = "+0.9 (Table V)"               # what the published report found, for the reader
```
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pandas as pd

from bench.config import ConfigError, Key, Schema, check_table, with_defaults
from bench.score.compare import DEVICE_METRIC, METRICS, compare
from bench.score.leaderboard import read_board, row_predictions, select_row

CLAIM = Schema("claim", {"name": Key(str, None, "what the claim says"), "a": Key(str, None, "the better row"),
                         "b": Key(str, None, "the row it beats"),
                         "metric": Key(str, "macro_acc", "what is compared: one of the metrics of `bench compare`, "
                                       "or device:<id> (one device's clips)"),
                         "paper": Key(str, "", "the published effect, for comparison")})


class ClaimsError(ValueError):
    """A claims file that cannot be used; the message names the file and the claim."""


def load_claims(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ClaimsError(f"{path}: not valid TOML ({exc})") from None
    if set(data) - {"claim"} or not isinstance(data.get("claim"), list):
        raise ClaimsError(f"{path}: expected only [[claim]] tables, got {', '.join(sorted(data)) or 'nothing'}")
    out = []
    for i, table in enumerate(data["claim"], 1):
        try:
            check_table(str(path), f"claim {i}", table, CLAIM)
            claim = with_defaults(table, CLAIM, str(path), f"claim {i}")
        except ConfigError as exc:
            raise ClaimsError(str(exc)) from None
        for key in ("name", "a", "b"):
            if not claim[key]:
                raise ClaimsError(f"{path}: [claim {i}] needs {key}")
        metric = claim["metric"]
        if metric not in METRICS and not (metric.startswith(DEVICE_METRIC) and len(metric) > len(DEVICE_METRIC)):
            raise ClaimsError(f"{path}: [claim {i}] metric = {metric!r}: must be one of {', '.join(METRICS)} or "
                              f"{DEVICE_METRIC}<device id>")
        out.append(claim)
    return out


def evaluate_claims(claims: list[dict], board: Path, n_boot: int = 2000) -> list[dict]:
    """Each claim with its paired comparison (A - B, interval, p-value) and its verdict: "shown" when the interval
    lies above zero, "the opposite is shown" when below, "not shown" when it holds zero."""
    df = read_board(board)
    results = []
    for claim in claims:
        a, b = select_row(df, claim["a"]), select_row(df, claim["b"])
        seeds = f"{_seeds(a)} vs {_seeds(b)} seeds"
        compared = compare(row_predictions(df, a), row_predictions(df, b), claim["a"], claim["b"], [claim["metric"]],
                           n_boot=n_boot)
        if claim["metric"] not in compared:
            raise ClaimsError(f"claim {claim['name']!r}: the test clips have none for metric {claim['metric']!r}")
        c = compared[claim["metric"]]
        verdict = "shown" if c.ci[0] > 0 else "the opposite is shown" if c.ci[1] < 0 else "not shown"
        results.append({**claim, **c.to_dict(), "seeds": seeds, "verdict": verdict})
    return results


def _seeds(row) -> int:
    n = row.get("n_seeds")
    return 1 if n is None or n != n or n is pd.NA else int(n)


def markdown(results: list[dict]) -> str:
    """A pipe table: claim, A, B, difference in points with its interval and p-value, verdict, the paper's effect."""
    lines = ["| claim | A % | B % | A − B (points) | 95 % CI | p | seeds | verdict | paper |",
             "|---|---:|---:|---:|---|---:|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {100 * r['a_value']:.2f} | {100 * r['b_value']:.2f} | {100 * r['diff']:+.2f} | "
                     f"[{100 * r['ci'][0]:+.2f}, {100 * r['ci'][1]:+.2f}] | {r['p_value']:.3f} | {r['seeds']} | "
                     f"{'**shown**' if r['verdict'] == 'shown' else r['verdict']} | {r['paper']} |")
    return "\n".join(lines)
