"""Command-line interface: ``bench <command>``. Each command lives in its own module below."""

from bench.cli.app import app
from bench.cli import check, data, leaderboard, run, score  # noqa: F401  (each registers its commands)


def main() -> None:
    app()
