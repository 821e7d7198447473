"""Command-line interface: ``bench <command>``. Each command lives in its own module below."""

from bench.cli.app import app
from bench.cli import data, run  # noqa: F401  (registers commands)
from bench.cli import leaderboard  # noqa: F401
from bench.cli import score  # noqa: F401


def main() -> None:
    app()
