"""`bench check`: the CI compliance gate."""

from __future__ import annotations

import json
import sys

import torch
from torch import nn
from typer.testing import CliRunner

from bench.cli import app
from bench.models import create_model
from bench.submission import ModelSubmission, save_submission

runner = CliRunner()


def baseline_net() -> nn.Module:
    return create_model("cpmobile_baseline").net


def wide_net() -> nn.Module:
    """Over the MAC limit: 64 -> 64 3x3 convolutions at full resolution."""
    return nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10))


def test_callable_targets_pass_and_fail(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules["check_targets"] = sys.modules[__name__]
    ok = runner.invoke(app, ["check", "check_targets:baseline_net", "--input-shape", "1,1,256,65",
                             "--dtype", "float16", "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["per_device"]["all"] == {"MACs": 29_419_156, "Params": 122_296} and data["compliant"]
    over_bytes = runner.invoke(app, ["check", "check_targets:baseline_net", "--input-shape", "1,1,256,65"])
    assert over_bytes.exit_code == 1 and "244,592" in over_bytes.output  # fp32: 61,148 x 4 B > 128,000 B
    over_macs = runner.invoke(app, ["check", "check_targets:wide_net", "--input-shape", "1,1,256,65", "--json"])
    assert over_macs.exit_code == 1 and "MACs" in json.loads(over_macs.output)["reasons"]["all"][0]
    bad_shape = runner.invoke(app, ["check", "check_targets:baseline_net", "--input-shape", "1,3,8"])
    assert bad_shape.exit_code == 2 and "failed" in bad_shape.output


def test_saved_submission_is_checked_per_device(tmp_path):
    torch.manual_seed(0)
    general, device_a = create_model("cpmobile_baseline"), create_model("cpmobile_baseline")
    classes = [str(i) for i in range(10)]
    sub = ModelSubmission.per_device("x", classes, general, {"a": device_a}, "float16")
    save_submission(sub, tmp_path / "submission")
    result = runner.invoke(app, ["check", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["per_device"]) == {"a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10"}
    assert data["max_MACs"] == 29_419_156 and data["max_Params"] == 122_296
