"""Per-device deployment records: every form round-trips bit for bit for every device, routing falls back to
``unknown``, and complexity, dtype and compliance are per device model (the row shows the maximum)."""

from __future__ import annotations

import pytest
import torch

from bench import submission
from bench.models import create_model
from bench.score.fp16 import fp16_arithmetic
from bench.score.quantize import prepare_qat
from bench.score.scorer import complexity_columns, dtype_columns, official_complexity
from bench.submission import (OFFICIAL_DEVICES, UNKNOWN, Deployment, ModelSubmission, SubmissionError,
                              load_submission, save_submission)

CLASSES = [f"class{i}" for i in range(10)]


def _model(name: str, seed: int):
    torch.manual_seed(seed)
    return create_model(name).eval()


def _qat_state(model) -> dict:
    """A QAT-prepared copy that has seen a few training batches (its observers and BN statistics moved)."""
    prepared = prepare_qat(model.net, torch.zeros(model.input_shape()))
    with torch.no_grad():
        for seed in range(3):
            prepared(model.frontend(0.1 * torch.randn(4, 32_000, generator=torch.Generator().manual_seed(seed))))
    return prepared.state_dict()


@pytest.fixture(scope="module")
def mixed() -> ModelSubmission:
    """Four forms, three architectures with different front-ends (input 256x65, 256x64, 128x64); one PTQ model with
    a quantization recipe."""
    calib = _model("dsflexinet_sm1", 2)
    feats = calib.frontend(0.1 * torch.randn(16, 32_000, generator=torch.Generator().manual_seed(7)))
    qat = _model("dsflexinet_sm1", 3)
    return ModelSubmission("mixed", CLASSES, {
        UNKNOWN: Deployment.float(_model("cpmobile_baseline", 0), "float16"),
        "a": Deployment.float(_model("cpmobile_baseline", 1), "float32"),
        "b": Deployment.ptq(calib, list(torch.split(feats, 8))),
        "c": Deployment.qat(qat, _qat_state(qat)),
        "s2": Deployment.ptq(_model("tfsepnet_smoke", 4), list(torch.split(
            _model("tfsepnet_smoke", 4).frontend(0.1 * torch.randn(16, 32_000)), 8)),
            recipe={"activation_observer": "minmax", "reduce_range": False, "float_modules": ["ResidualNorm"]}),
    })


def _waves(n: int = 12) -> torch.Tensor:
    return 0.1 * torch.randn(n, 32_000, generator=torch.Generator().manual_seed(11))


def test_every_form_round_trips_bit_for_bit_on_every_device(mixed, tmp_path):
    devices = ["unknown", "a", "b", "c", "s4", "s1", "s2"] * 2
    waves = _waves(len(devices))
    before = mixed.predict(waves, devices)
    save_submission(mixed, tmp_path / "sub", {"system": "test"})
    submission._INT8_NETS.clear()  # rebuild from the saved record, not a copy of this process's first conversion
    loaded = load_submission(tmp_path / "sub")
    assert {d: dep.form for d, dep in loaded.deployments.items()} == {
        "unknown": "float16", "a": "float32", "b": "int8-ptq", "c": "int8-qat", "s2": "int8-ptq"}
    assert loaded.deployments["s2"].info["quantization"]["float_modules"] == ["ResidualNorm"]  # rebuilt with it
    after = loaded.predict(waves, devices)
    assert torch.equal(before, after)
    for form_device in ("unknown", "a", "b", "c", "s2"):  # each form on its own, too (a batch of one device)
        one = [form_device] * 4
        assert torch.equal(mixed.predict(waves[:4], one), loaded.predict(waves[:4], one))
    assert loaded.get_model_for_device("s4") is loaded.get_model_for_device("unknown")
    assert isinstance(mixed.load_inputs(waves[:6], devices[:6]), list)  # two front-ends, two input shapes


def test_float_models_infer_in_their_declared_layout_with_the_default_layouts_logits(mixed):
    # CP-Mobile infers 1.5-2x faster channels-last; the saved state stays in the default layout
    waves = _waves(4)
    for dev, dtype, atol in (("a", torch.float32, 1e-4), (UNKNOWN, torch.float16, 2e-2)):
        dep = mixed.deployment(dev)
        assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
                   for m in dep.net.modules() if isinstance(m, torch.nn.Conv2d))
        assert all(v.is_contiguous() for v in dep.state.values())
        plain = _model("cpmobile_baseline", 0 if dev == UNKNOWN else 1).net.to(dtype)
        with torch.inference_mode():
            expected = plain(dep.frontend(waves).to(dtype)).float()
        torch.testing.assert_close(mixed.predict(waves, [dev] * 4), expected, atol=atol, rtol=0)


def test_complexity_and_dtype_are_per_device_and_the_row_shows_the_maximum(mixed):
    complexity = official_complexity(mixed)
    assert list(complexity.per_device) == list(OFFICIAL_DEVICES)
    per = complexity.per_device
    cpmobile, sm1 = _model("cpmobile_baseline", 0), _model("dsflexinet_sm1", 0)
    n_cp, n_sm1 = (sum(p.numel() for p in m.net.parameters()) for m in (cpmobile, sm1))
    assert (per["a"].param_bytes, per["a"].dtype) == (4 * n_cp, "float32")
    assert (per["s5"].param_bytes, per["s5"].dtype) == (2 * n_cp, "float16")   # the unknown (general) model
    assert (per["b"].param_bytes, per["b"].dtype) == (n_sm1, "int8")           # counted from its float twin
    assert per["b"].macs == per["c"].macs > 0 and per["b"].input_shape == (1, 1, 256, 64)
    assert per["a"].input_shape == (1, 1, 256, 65)
    columns = {**complexity_columns(complexity), **dtype_columns(complexity)}
    assert columns["max_param_bytes"] == 4 * n_cp and columns["deploy_dtype"] == "mixed"
    assert not columns["compliant"] and "(a)" in columns["compliance_reasons"]  # only device a is over 128 kB
    assert columns["complexity_per_device"]["c"]["dtype"] == "int8"
    assert columns["fp16_arithmetic"] == fp16_arithmetic()  # the unknown model is fp16 (bench.score.fp16)


def test_routing_needs_a_fallback_and_saved_forms_are_validated(tmp_path, mixed):
    with pytest.raises(SubmissionError, match="needs an 'unknown' deployment"):
        ModelSubmission("x", CLASSES, {"a": mixed.deployments["a"]})
    with pytest.raises(SubmissionError, match="form 'int4'"):
        Deployment("cpmobile_baseline", {}, "int4", {})
    save_submission(mixed, tmp_path / "sub")
    states = torch.load(tmp_path / "sub" / "models.pt", weights_only=True)
    states["m1"] = {k: v[:1] if v.ndim else v for k, v in states["m1"].items()}  # weights of the wrong shape
    torch.save(states, tmp_path / "sub" / "models.pt")
    with pytest.raises(SubmissionError, match=r"model m1 \(cpmobile_baseline, float32\) cannot be rebuilt"):
        load_submission(tmp_path / "sub")
