"""How many CPU threads a run computes with: the number asked for, or the cores free, measured when it starts and
followed while it trains.

PyTorch starts one intra-op thread per core. On a shared machine that is a trap: with another process busy on one of
two cores, CP-ResNet trained 8x slower on 2 threads than quiet and 3.7x faster on 1 thread than on 2 (every step
waits for the thread that shares its core). So a run asks first: ``--threads N`` (``bench run``), then the
environment variables ``ASCBENCH_THREADS`` and ``OMP_NUM_THREADS``; otherwise it measures how busy the machine is
(its CPU time over half a second, in cores) and takes the free cores it may run on (``os.sched_getaffinity``), at
least one. The cores free at the start are no promise for the hours after it, so a run that measured them
follows them through every fit (:class:`ThreadGovernor`); a number asked for is kept.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import psutil
import torch

from bench.config import ConfigError

ENV = "ASCBENCH_THREADS"
SAMPLE_S = 0.5


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def free_cores(sample_s: float = SAMPLE_S) -> int:
    """Usable cores minus the cores' worth of CPU time other processes spent over ``sample_s`` seconds (rounded),
    at least 1."""
    return _free(psutil.cpu_percent(interval=sample_s) / 100 * (os.cpu_count() or 1))


def _free(others: float) -> int:
    """The usable cores left when other processes take ``others`` cores' worth of CPU time, rounded half up (a
    neighbour taking half a core or more takes a core), at least 1."""
    return max(1, min(usable_cores(), int((os.cpu_count() or 1) - others + 0.5)))


def requested_threads(requested: int | None = None) -> tuple[int, str] | None:
    """(threads, why) asked for: ``requested``, else ``$ASCBENCH_THREADS``, else ``$OMP_NUM_THREADS``; None if
    nothing was asked for."""
    source = "--threads"
    if requested is None:
        for var in (ENV, "OMP_NUM_THREADS"):
            if os.environ.get(var):
                try:
                    requested, source = int(os.environ[var]), f"${var}"
                except ValueError:
                    raise ConfigError(f"{var}={os.environ[var]!r} is not a whole number of threads; unset it or "
                                     f"write e.g. {var}=2") from None
                break
    if requested is None:
        return None
    if requested < 1:
        raise ConfigError(f"{source} {requested}: a run needs at least 1 thread")
    return requested, f"asked for ({source})"


def measured_threads() -> tuple[int, str]:
    """(threads, why): the free cores now."""
    cores, free = usable_cores(), free_cores()
    return free, (f"{free} of {cores} cores free when the run started" if free < cores else f"{cores} cores, all free")


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """(threads, why): what :func:`requested_threads` finds, else the free cores."""
    return requested_threads(requested) or measured_threads()


def busy_cpu_s() -> float:
    """CPU seconds the machine's cores have spent busy since boot, all processes together (as psutil reckons
    ``cpu_percent``: neither idle nor waiting for I/O)."""
    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - t.idle - getattr(t, "iowait", 0.0)


def machine_sample() -> tuple[float, float, float]:
    """(wall-clock s, :func:`busy_cpu_s`, this process's CPU s over all its threads)."""
    return time.monotonic(), busy_cpu_s(), time.process_time()


class ThreadGovernor:
    """Keeps the intra-op threads of a fit at the cores other processes leave free, for a run that measured them.

    A neighbour that starts after the run does not show in the cores counted at its start. On a 2-core machine a
    CP-ResNet step on 2 threads then fell from 313 to 94 clips/s, against 157 on 1 thread: every step waits for the
    thread that shares a core with the neighbour. A neighbour that stops leaves a core idle. Each ``poll`` (the
    fit calls it before every batch) looks at the last ``interval_s`` seconds: the CPU time other processes used is
    the machine's busy time minus this process's own, in cores. The free cores are the machine's cores minus that,
    rounded, between 1 and ``ceiling``. When ``confirm`` windows in a row call for a count other than the current
    one, the governor sets it and records the change in ``changes``. The teacher stage's helper processes count as
    other processes, so the run's own process keeps one thread beside a helper and takes both cores once the
    helper is done. A helper itself stays on one thread: it is forked, and a fork must not compute on more
    (``bench.train.teachers.start_helpers``). Results then depend on when the neighbour came (sums run in
    another order on another thread count); ``--threads N`` pins the count."""

    def __init__(self, ceiling: int, interval_s: float = 5.0, confirm: int = 2,
                 sample: Callable[[], tuple[float, float, float]] | None = None):
        self.ceiling, self.interval_s, self.confirm = ceiling, interval_s, confirm
        self.changes: list[dict[str, Any]] = []
        self._sample = sample or machine_sample  # (wall s, the machine's busy CPU s, this process's CPU s)
        self._mark = self._sample()
        self._start = self._mark[0]
        self._pending, self._streak = 0, 0

    def poll(self, step: int | None = None) -> None:
        """Re-measure when a window has passed; change the thread count when the last ``confirm`` windows agree."""
        (wall0, busy0, own0), (wall, busy, own) = self._mark, self._sample()
        if wall - wall0 < self.interval_s:
            return
        self._mark = (wall, busy, own)
        others = max(0.0, ((busy - busy0) - (own - own0)) / (wall - wall0))
        target = min(self.ceiling, _free(others))
        current = torch.get_num_threads()
        if target == current:
            self._streak = 0
            return
        self._streak = self._streak + 1 if target == self._pending else 1
        self._pending = target
        if self._streak >= self.confirm:
            torch.set_num_threads(target)
            self.changes.append({"after_s": round(wall - self._start, 1), "step": step, "from": current,
                                 "to": target, "others_cores": round(others, 2)})
            self._streak = 0
