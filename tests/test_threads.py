"""How many threads a run computes with: asked for (argument, $ASCBENCH_THREADS, $OMP_NUM_THREADS) or measured, and
then followed through every fit."""

from __future__ import annotations

import os

import pytest
import torch

from bench.config import ConfigError
from bench.threads import ThreadGovernor, choose_threads, free_cores, usable_cores
from bench.train.stages import thread_note


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


class Machine:
    """What the governor reads, window by window: each ``window(others)`` is ``interval`` seconds in which other
    processes used ``others`` cores and this one used as many cores as it has threads."""

    def __init__(self, interval: float = 5.0):
        self.wall = self.busy = self.own = 0.0
        self.interval = interval

    def sample(self) -> tuple[float, float, float]:
        return self.wall, self.busy, self.own

    def window(self, others: float, seconds: float | None = None) -> None:
        seconds = self.interval if seconds is None else seconds
        own = torch.get_num_threads() * seconds
        self.wall, self.busy, self.own = self.wall + seconds, self.busy + own + others * seconds, self.own + own


@pytest.fixture
def two_threads():
    if usable_cores() < 2:
        pytest.skip("needs 2 usable cores")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_governor_follows_a_neighbour_that_comes_and_goes(two_threads):
    cores = os.cpu_count()
    machine = Machine()
    governor = ThreadGovernor(ceiling=2, sample=machine.sample)
    neighbour = cores - 2 + 0.72  # one more core taken: measured beside a CP-ResNet step on 2 of 2 cores
    machine.window(neighbour)
    governor.poll(step=10)
    assert torch.get_num_threads() == 2  # one window is not enough
    machine.window(neighbour)
    governor.poll(step=20)
    assert torch.get_num_threads() == 1
    assert governor.changes == [{"after_s": 10.0, "step": 20, "from": 2, "to": 1, "others_cores": neighbour}]
    machine.window(cores - 2 + 1.02)  # the neighbour keeps its core: one thread stays
    governor.poll(step=30)
    machine.window(cores - 2 + 1.02)
    governor.poll(step=40)
    assert torch.get_num_threads() == 1
    for step in (50, 60):  # it left
        machine.window(max(0.0, cores - 2 + 0.04))
        governor.poll(step=step)
    assert torch.get_num_threads() == 2 and [c["to"] for c in governor.changes] == [1, 2]


def test_the_governor_ignores_a_blip_short_windows_and_its_ceiling(two_threads):
    cores = os.cpu_count()
    machine = Machine()
    governor = ThreadGovernor(ceiling=2, sample=machine.sample)
    for others in (cores - 1, cores - 2, cores - 1, cores - 2):  # a neighbour for one window at a time
        machine.window(others)
        governor.poll()
    machine.window(cores - 1, seconds=1.0)  # shorter than a window: not measured yet
    governor.poll()
    machine.window(cores - 1, seconds=1.0)
    governor.poll()
    assert torch.get_num_threads() == 2 and governor.changes == []
    pinned = ThreadGovernor(ceiling=1, sample=machine.sample)
    torch.set_num_threads(1)
    for _ in range(3):  # the machine is quiet, but this process may have one thread only
        machine.window(0.0)
        pinned.poll()
    assert torch.get_num_threads() == 1 and pinned.changes == []


def test_a_row_says_which_fits_followed_the_free_cores():
    fits = [{"stage": "teachers", "fit": "teacher-a", "key": "k1", "threads": 2,
             "thread_changes": [{"to": 1}, {"to": 2}]},
            {"stage": "teachers", "fit": "teacher-a", "key": "k1", "threads": 2,
             "thread_changes": [{"to": 1}, {"to": 2}]},  # a fit two stages report is one fit
            {"stage": "distill", "fit": "student", "threads": 2, "thread_changes": []},
            {"stage": "general", "fit": "fit", "threads": 2, "thread_changes": [{"to": 1}]}]
    assert thread_note(fits) == ("threads followed the free cores in 2 fits: teachers/teacher-a 2 -> 1 -> 2, "
                                 "general/fit 2 -> 1")
    assert thread_note(fits[2:3]) is None


def test_bench_score_takes_its_threads_like_a_run(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, ["score", "--submission", str(tmp_path), "--threads", "0"])
    assert result.exit_code == 1 and "--threads 0: a run needs at least 1 thread" in result.output
