"""How many CPU threads a run computes with: the number asked for, or the cores free when it starts.

PyTorch starts one intra-op thread per core. On a shared machine that is a trap: with another process busy on one of
two cores, CP-ResNet trained 8x slower on 2 threads than quiet and 3.7x faster on 1 thread than on 2 (every step
waits for the thread that shares its core). So a run asks first: ``--threads N`` (``bench run``), then the
environment variables ``ASCBENCH_THREADS`` and ``OMP_NUM_THREADS``; otherwise it measures how busy the machine is
(its CPU time over half a second, in cores) and takes the free cores it may run on (``os.sched_getaffinity``), at
least one.
"""

from __future__ import annotations

import os

import psutil

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
    busy = psutil.cpu_percent(interval=sample_s) / 100 * (os.cpu_count() or 1)
    return max(1, min(usable_cores(), round((os.cpu_count() or 1) - busy)))


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """(threads, why): ``requested``, else ``$ASCBENCH_THREADS``, else ``$OMP_NUM_THREADS``, else the free cores."""
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
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"{source} {requested}: a run needs at least 1 thread")
        return requested, f"asked for ({source})"
    cores, free = usable_cores(), free_cores()
    return free, (f"{free} of {cores} cores free when the run started" if free < cores else f"{cores} cores, all free")
