"""Analytic energy figures and the isolation of the measured (CodeCarbon) energy from stray configuration."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.score.energy import (EnergyError, _isolated_from_user_config, analytic_energy, measure_energy,
                                measure_inference_energy)

BASELINE_MACS = 29_419_156
STRAY_CONFIG = "[codecarbon]\nforce_cpu_power = 5000\nforce_ram_power = 5000\ntracking_mode = machine\n" \
               "measure_power_secs = 0.01\nlog_level = debug\noutput_methods = csv\n"


@pytest.mark.parametrize("dtype, mac_uj", [("int8", 6.766), ("fp16", 44.13), ("fp32", 135.3)])
def test_analytic_baseline(dtype, mac_uj):
    nbytes = 61_148 * {"int8": 1, "fp16": 2, "fp32": 4}[dtype]
    e = analytic_energy(BASELINE_MACS, nbytes, dtype)
    assert e.mac_joules * 1e6 == pytest.approx(mac_uj, rel=1e-3)
    assert e.memory_joules == pytest.approx(nbytes * 1.25e-12)
    assert e.joules == pytest.approx(e.mac_joules + e.memory_joules)


def test_analytic_unknown_dtype():
    with pytest.raises(ValueError, match="bfloat16"):
        analytic_energy(BASELINE_MACS, 1000, torch.bfloat16)


@pytest.fixture(scope="module")
def polluted(tmp_path_factory):
    """A working directory and HOME with a .codecarbon.config, CODECARBON_* variables, and no network."""
    root = tmp_path_factory.mktemp("stray")
    (root / ".codecarbon.config").write_text(STRAY_CONFIG)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in test")

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HOME", str(root))
        mp.setenv("CODECARBON_FORCE_CPU_POWER", "5000")
        mp.setenv("CODECARBON_TRACKING_MODE", "machine")
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield root, attempts


@pytest.fixture(scope="module")
def measured(polluted):
    root, attempts = polluted
    # ~0.2 G MACs per batch: long enough (a few tenths of a second) for CPU-time accounting to register
    net = nn.Sequential(nn.Conv2d(1, 64, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    result = measure_inference_energy(net, [torch.randn(8, 1, 256, 65) for _ in range(6)])
    return result, root, attempts


def test_tracker_construction_sees_no_stray_config(polluted):
    from codecarbon.core.config import get_hierarchical_config

    assert get_hierarchical_config()["force_cpu_power"] == "5000"  # the trap is armed
    with _isolated_from_user_config():
        assert get_hierarchical_config() == {}
    assert get_hierarchical_config()["tracking_mode"] == "machine"  # and restored afterwards


def test_measured_energy_is_positive_and_labelled(measured):
    result, _, _ = measured
    assert result.n_clips == 48
    assert result.joules_per_clip > 0
    assert result.total_joules_per_clip >= result.joules_per_clip
    assert result.repeats >= 1 and result.wall_s >= 1.0  # repeated until the minimum duration had passed
    assert result.ram_joules / result.ram_power_w == pytest.approx(result.wall_s, rel=0.5)
    assert result.method in ("rapl", "cpu-load-estimate") or result.method.startswith("codecarbon-")
    if not Path("/sys/class/powercap/intel-rapl").exists():
        assert result.method == "cpu-load-estimate"


def test_measured_energy_ignores_stray_config_and_network(measured):
    result, root, attempts = measured
    assert result.tracking_mode == "process"
    assert result.cpu_power_w < 1000 and result.ram_power_w < 1000
    assert attempts == []
    assert not list(root.glob("*.csv"))
    assert Path.cwd() == root and os.environ["HOME"] == str(root)
    assert os.environ["CODECARBON_FORCE_CPU_POWER"] == "5000"


def test_truncated_codecarbon_reading_is_refused_not_reported(monkeypatch):
    """CodeCarbon 3.3.2 once returned 0 J of CPU and 2 ms of RAM time for a 0.3 s workload (CI): reproduce that
    reading by truncating what its tracker returns; the harness must take it again, then refuse it."""
    from codecarbon.emissions_tracker import BaseEmissionsTracker

    real_stop = BaseEmissionsTracker.stop
    stops = []

    def truncated_stop(self):
        out = real_stop(self)
        data = self.final_emissions_data
        self.final_emissions_data = dataclasses.replace(data, cpu_energy=0.0, ram_energy=data.ram_energy / 100)
        stops.append(1)
        return out

    monkeypatch.setattr(BaseEmissionsTracker, "stop", truncated_stop)
    with pytest.raises(EnergyError, match="3 times in a row; energy not reported"):
        measure_energy(lambda: None, 4, min_seconds=0.05)
    assert len(stops) == 3
