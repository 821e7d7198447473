"""Inference energy per clip: measured with CodeCarbon, and a deterministic analytic estimate.

Measured (:func:`measure_energy`): CodeCarbon's ``OfflineEmissionsTracker`` (no geo-IP or cloud look-ups) in
``process`` mode around the inference workload. The method label says what the number is:

- ``rapl``: CPU package energy read from RAPL counters (``/sys/class/powercap``), a measurement;
- ``cpu-load-estimate``: no readable RAPL (VMs, containers, non-root), so CodeCarbon estimates CPU power as
  TDP x this process's share of CPU time (4 W per thread for an unknown CPU): wall/CPU time x assumed watts,
  an estimate, not a measurement;
- ``codecarbon-<mode>`` for any other CodeCarbon CPU mode.

RAM energy is CodeCarbon's fixed per-DIMM power model x wall time; it is reported separately, and the main figure
is CPU-only energy per clip. Stray settings must not change a result: the tracker is built with every setting
passed explicitly, with ``CODECARBON_*`` environment variables cleared and ``HOME`` and the working directory
pointed at an empty temporary directory, because CodeCarbon reads ``~/.codecarbon.config``,
``./.codecarbon.config`` and the environment while it is constructed (and only then).

``measure_power_secs`` defaults to an hour: CodeCarbon 3.3 then integrates the whole workload as one interval
(process CPU time, RAPL counter or RAM power x time between ``start`` and ``stop``). With short intervals its
sampling threads overlap and over-count (1 s of busy CPU read as 35-90 J instead of ~4 J on a 2-core VM).

Analytic (:func:`analytic_energy`): Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm, 0.9 V:
E = MACs x e_MAC(dtype) + parameter bytes x e_mem, with e_MAC = 0.23 pJ (int8: 0.2 mult + 0.03 add), 1.5 pJ
(fp16: 1.1 + 0.4), 3.2 pJ (int32: 3.1 + 0.1), 4.6 pJ (fp32: 3.7 + 0.9), and e_mem = 1.25 pJ/byte (10 pJ per 64-bit
read from an 8 KB SRAM), every parameter byte read once per clip. It ignores control, leakage, instruction
overheads and the movement of activations, so it is a lower bound for comparing models, not a device figure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from codecarbon import OfflineEmissionsTracker
from torch import nn

from bench.score.complexity import dtype_name, resolve_dtype

JOULES_PER_KWH = 3.6e6
PICO = 1e-12

MAC_PJ = {torch.int8: 0.23, torch.uint8: 0.23, torch.qint8: 0.23, torch.quint8: 0.23, torch.float16: 1.5,
          torch.int32: 3.2, torch.float32: 4.6}
MEM_PJ_PER_BYTE = 10.0 / 8
ANALYTIC_MODEL = "horowitz-isscc2014-45nm"


# ---- analytic ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnalyticEnergy:
    joules: float
    mac_joules: float
    memory_joules: float
    dtype: str
    model: str = ANALYTIC_MODEL


def analytic_energy(macs: int, param_bytes: int, dtype: torch.dtype | str) -> AnalyticEnergy:
    """Energy per clip of ``macs`` MACs in ``dtype`` plus reading ``param_bytes`` once from SRAM."""
    resolved = resolve_dtype(dtype)
    if resolved not in MAC_PJ:
        raise ValueError(f"no Horowitz 45 nm MAC energy for {dtype_name(resolved)}; "
                         f"known: {', '.join(sorted({dtype_name(d) for d in MAC_PJ}))}")
    mac_j = macs * MAC_PJ[resolved] * PICO
    mem_j = param_bytes * MEM_PJ_PER_BYTE * PICO
    return AnalyticEnergy(mac_j + mem_j, mac_j, mem_j, dtype_name(resolved))


# ---- measured ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MeasuredEnergy:
    """Energy of one measured workload; ``joules_per_clip`` is CPU-only, ``total_joules_per_clip`` adds RAM/GPU."""

    joules_per_clip: float
    total_joules_per_clip: float
    method: str
    n_clips: int                # clips per workload run
    repeats: int                # workload runs inside the measured interval (until ``min_seconds`` had passed)
    wall_s: float
    cpu_joules: float
    ram_joules: float
    gpu_joules: float
    cpu_power_w: float
    ram_power_w: float
    cpu_model: str
    tracking_mode: str
    codecarbon_version: str


@contextlib.contextmanager
def _isolated_from_user_config() -> Iterator[None]:
    """Hide ``CODECARBON_*`` variables and both ``.codecarbon.config`` locations while a tracker is built."""
    saved_env = {k: v for k, v in os.environ.items() if k.lower().startswith("codecarbon_") or k == "HOME"}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="ascbench-energy-") as empty:
        for key in saved_env:
            del os.environ[key]
        os.environ["HOME"] = empty
        os.chdir(empty)
        try:
            yield
        finally:
            os.chdir(cwd)
            os.environ.pop("HOME", None)
            os.environ.update(saved_env)


@contextlib.contextmanager
def _codecarbon_log_level(level: int) -> Iterator[None]:
    """CodeCarbon logs INFO/WARNING lines before it applies its own ``log_level``; keep them out of reports."""
    logger = logging.getLogger("codecarbon")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _make_tracker(country_iso_code: str, measure_power_secs: float) -> OfflineEmissionsTracker:
    with _isolated_from_user_config():
        return OfflineEmissionsTracker(
            country_iso_code=country_iso_code, region=None, cloud_provider=None, cloud_region=None,
            tracking_mode="process", measure_power_secs=measure_power_secs, output_methods=[], output_handlers=[],
            log_level="error", allow_multiple_runs=True, gpu_ids=None, force_cpu_power=None, force_ram_power=None,
            force_mode_cpu_load=False, rapl_include_dram=False, rapl_prefer_psys=False, pue=1.0, wue=0.0,
            force_carbon_intensity_g_co2e_kwh=None, electricitymaps_api_token=None, project_name="ascbench",
        )


def _cpu_method(tracker) -> str:
    modes = [getattr(hw, "_mode", None) for hw in getattr(tracker, "_hardware", [])]
    mode = next((m for m in modes if m), "unknown")
    if "rapl" in mode:
        return "rapl"
    if mode == "cpu_load":
        return "cpu-load-estimate"
    return f"codecarbon-{mode}"


class EnergyError(RuntimeError):
    """CodeCarbon returned a reading that cannot be right; the message says what it saw."""


def measure_energy(workload: Callable[[], None], n_clips: int, *, min_seconds: float = 1.0, attempts: int = 3,
                   country_iso_code: str = "USA", measure_power_secs: float = 3600.0) -> MeasuredEnergy:
    """Run ``workload`` (inference over ``n_clips`` clips) under CodeCarbon and return energy per clip.

    Tracker start-up (hardware probing, ~2 s on first use) happens before the measured interval starts. The
    workload repeats until ``min_seconds`` have passed: process CPU time is accounted in clock ticks, so a few
    milliseconds read as 0. A reading is accepted only if it has CPU energy and CodeCarbon accounted at least half
    the wall time (RAM energy / RAM power, a fixed model); otherwise it is repeated, up to ``attempts`` times, and
    then refused with ``EnergyError`` -- a zero or truncated figure is never reported (CodeCarbon 3.3 once returned
    2 ms of a 0.3 s workload in CI).
    """
    if n_clips <= 0 or attempts <= 0:
        raise ValueError(f"n_clips and attempts must be positive, got {n_clips} and {attempts}")
    for _ in range(attempts):
        measured = _measure_once(workload, n_clips, min_seconds, country_iso_code, measure_power_secs)
        accounted = (measured.ram_joules / measured.ram_power_w) if measured.ram_power_w > 0 else measured.wall_s
        if measured.cpu_joules > 0 and accounted >= 0.5 * measured.wall_s:
            return measured
    raise EnergyError(f"CodeCarbon accounted {accounted:.3f} s and {measured.cpu_joules:.4g} J of CPU energy for a "
                      f"{measured.wall_s:.3f} s workload, {attempts} times in a row; energy not reported")


def _measure_once(workload: Callable[[], None], n_clips: int, min_seconds: float, country_iso_code: str,
                  measure_power_secs: float) -> MeasuredEnergy:
    with _codecarbon_log_level(logging.ERROR):
        tracker = _make_tracker(country_iso_code, measure_power_secs)
        tracker.start()
        start = time.perf_counter()
        repeats = 0
        try:
            while repeats == 0 or time.perf_counter() - start < min_seconds:
                workload()
                repeats += 1
        finally:
            wall = time.perf_counter() - start
            tracker.stop()
    data = tracker.final_emissions_data
    cpu_j, ram_j, gpu_j = (data.cpu_energy * JOULES_PER_KWH, data.ram_energy * JOULES_PER_KWH,
                           data.gpu_energy * JOULES_PER_KWH)
    clips = n_clips * repeats
    return MeasuredEnergy(
        joules_per_clip=cpu_j / clips, total_joules_per_clip=(cpu_j + ram_j + gpu_j) / clips,
        method=_cpu_method(tracker), n_clips=n_clips, repeats=repeats, wall_s=wall, cpu_joules=cpu_j,
        ram_joules=ram_j, gpu_joules=gpu_j, cpu_power_w=float(data.cpu_power), ram_power_w=float(data.ram_power),
        cpu_model=data.cpu_model or platform.processor(), tracking_mode=data.tracking_mode,
        codecarbon_version=data.codecarbon_version,
    )


def measure_inference_energy(net: nn.Module, batches: Iterable[torch.Tensor], **options) -> MeasuredEnergy:
    """Energy per clip of running ``net`` (eval mode, no grad) over feature ``batches`` (first dim = clips)."""
    batches = list(batches)
    n_clips = sum(len(b) for b in batches)

    def run() -> None:
        with torch.inference_mode():
            for batch in batches:
                net(batch)

    was_training = net.training
    net.eval()
    try:
        return measure_energy(run, n_clips, **options)
    finally:
        net.train(was_training)
