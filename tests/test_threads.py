"""How many threads a run computes with: asked for (argument, $ASCBENCH_THREADS, $OMP_NUM_THREADS) or measured."""

from __future__ import annotations

import pytest

from bench.config import ConfigError
from bench.threads import choose_threads, free_cores, usable_cores


def test_an_explicit_request_wins_then_the_environment(monkeypatch):
    monkeypatch.setenv("ASCBENCH_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads(2) == (2, "asked for (--threads)")
    assert choose_threads() == (3, "asked for ($ASCBENCH_THREADS)")
    monkeypatch.delenv("ASCBENCH_THREADS")
    assert choose_threads() == (1, "asked for ($OMP_NUM_THREADS)")


def test_bad_requests_are_one_line_config_errors(monkeypatch):
    monkeypatch.setenv("ASCBENCH_THREADS", "two")
    with pytest.raises(ConfigError, match=r"ASCBENCH_THREADS='two' is not a whole number of threads"):
        choose_threads()
    with pytest.raises(ConfigError, match="--threads 0: a run needs at least 1 thread"):
        choose_threads(0)


def test_without_a_request_the_free_cores_are_measured(monkeypatch):
    monkeypatch.delenv("ASCBENCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    n, why = choose_threads()
    assert 1 <= n <= usable_cores() and "cores" in why
    assert 1 <= free_cores(0.1) <= usable_cores()
