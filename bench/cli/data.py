"""``bench data ...`` commands."""

from bench.cli.app import data_app  # noqa: F401
