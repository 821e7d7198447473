"""Command-line interface: ``bench <command>``. Each command lives in its own module below."""

from bench import allocator
from bench.cli.app import app
from bench.cli import check, compare, data, leaderboard, report, run, score  # noqa: F401  (each registers its commands)


def main() -> None:
    allocator.ensure()  # prefer ``python -m bench``, which chooses the allocator before importing torch
    app()
