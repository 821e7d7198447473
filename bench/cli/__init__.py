"""Command-line interface: ``bench <command>`` (started by ``bench/__main__.py``). Each command lives in its own
module below."""

from bench.cli.app import app
from bench.cli import check, compare, data, leaderboard, report, run, score  # noqa: F401  (each registers its commands)

__all__ = ["app"]
