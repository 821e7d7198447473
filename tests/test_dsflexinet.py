"""DS-FlexiNet end to end on the smoke profile: teachers (shared cache), fused KD, QAT to INT8, leaderboard rows."""

from __future__ import annotations

import json
import shutil

import pytest

from bench.paths import SYSTEMS_DIR, data_home
from bench.run import run_system
from bench.score.leaderboard import read_board
from conftest import FAST


@pytest.mark.heavy
def test_dsflexinet_smoke_end_to_end_and_teacher_cache_shared(tmp_path, smoke_dataset):
    board = tmp_path / "board.parquet"
    first = run_system("systems/dsflexinet", str(smoke_dataset), "smoke", board=board, progress=False)
    rows = read_board(board).set_index("submission")
    main, fp32 = rows.loc["dsflexinet-sm1"], rows.loc["dsflexinet-sm1-float"]
    assert main["deploy_dtype"] == "int8" and main["compliant"]
    assert main["max_param_bytes"] == main["params"]             # official count: 1 byte per parameter
    assert 0 < main["int8_size_bytes"] < fp32["max_param_bytes"]  # the INT8 artefact is smaller than fp32
    assert main["int8_macro_acc"] == main["macro_acc"] and main["macro_acc"] is not None
    assert main["max_macs"] == fp32["max_macs"] < 30_000_000
    teachers = rows[rows["kind"] == "teacher"]
    assert len(teachers) == 2 and teachers["is_teacher"].all() and not teachers["compliant"].any()
    assert first.results[""].extra.get("energy") is not None
    # the CP-ResNet teacher is pre-trained on the event corpus: every row declares it as external data
    assert json.loads(main["external_data"])[0]["dataset"] == "events-smoke"
    stages = json.loads(main["stages"])
    assert main["train_samples"] == sum(stages[s]["budget"]["train_samples"] for s in ("teachers", "distill", "qat"))
    assert 0 <= main["val_macro_acc"] <= 1 and set(teachers["teacher_gate"]) == {"pass"}

    # A second system asking for the same teachers trains none of them.
    teacher_cache = data_home() / "cache" / "teachers"
    own = ("cpresnet-half-smoke-*/artifacts.pt", "passt-tiny-smoke-*/artifacts.pt")  # other tests share the cache
    before = {p: p.stat().st_mtime_ns for pattern in own for p in teacher_cache.glob(pattern)}
    assert len(before) == 2
    other = tmp_path / "dsf-copy"
    shutil.copytree(SYSTEMS_DIR / "dsflexinet", other)
    toml = other / "system.toml"
    toml.write_text(toml.read_text().replace('name = "dsflexinet"', 'name = "dsflexinet-copy"'))
    second = run_system(other, str(smoke_dataset), "smoke", board=board, progress=False, variant="no_kd",
                        score_options=FAST)
    assert not second.stages[0]["reused"]                     # a new system: its teacher stage runs ...
    assert all(r["kind"] != "teacher" for r in second.rows)  # ... but trains (and re-scores) no teacher
    assert {p: p.stat().st_mtime_ns for pattern in own for p in teacher_cache.glob(pattern)} == before
    assert read_board(board).set_index("submission").loc["dsflexinet-sm1", "variant"].tolist()[-1] == "no_kd"


TEACHER_ONLY = '''
[system]
name = "teacher-only"
description = "a teacher loaded from a local checkpoint"
citation = "none"
stages = ["teachers"]

[profiles.smoke.teachers]
teachers = [{ name = "from-file", model = "cpresnet_half", epochs = 0, checkpoint = "CKPT" }]
'''

TEACHER_ONLY_PY = '''
from bench.train.teachers import teacher_stage, teacher_submissions

teachers = teacher_stage


def submission(ctx):
    return teacher_submissions(ctx)["teacher-from-file"][0]
'''


def test_teacher_from_local_checkpoint(tmp_path, smoke_dataset, smoke_store):
    import pytest
    import torch

    from bench.models import create_model
    from bench.train.stages import StageError

    torch.manual_seed(123)
    reference = create_model("cpresnet_half")
    ckpt = tmp_path / "teacher.pt"
    torch.save(reference.net.state_dict(), ckpt)
    folder = tmp_path / "teacher-only"
    folder.mkdir()
    (folder / "system.py").write_text(TEACHER_ONLY_PY)
    (folder / "system.toml").write_text(TEACHER_ONLY.replace("CKPT", str(tmp_path / "missing.pt")))
    with pytest.raises(StageError, match="missing.pt not found"):
        run_system(folder, str(smoke_dataset), "smoke", board=None, progress=False)
    (folder / "system.toml").write_text(TEACHER_ONLY.replace("CKPT", str(ckpt)))
    run_system(folder, str(smoke_dataset), "smoke", board=None, progress=False, score_options=FAST)
    cached = torch.load(next((data_home() / "cache" / "teachers").glob("from-file-*/artifacts.pt")), weights_only=True)
    reference.eval()
    with torch.inference_mode():
        expected = reference(torch.from_numpy(smoke_store.waveforms(cached["rows"].numpy())))
    assert torch.allclose(cached["logits"], expected, atol=1e-5)


def test_table_v_variants_reach_the_model():
    """Each ablation row must train a different student: norm from model_options, DIR vs ADIR per stage."""
    import torch.nn as nn

    from bench.models import create_model
    from bench.models.resnorm import ResidualNorm
    from bench.system import load_system

    spec = load_system(SYSTEMS_DIR / "dsflexinet")
    expected = {"fms_dir": ("none", False), "bn_fms_dir": ("bn", False), "bn_fms_adir": ("bn", True),
                "rn_fms_dir": ("rn", False), "rn_fms_adir": ("rn", True)}
    seen = set()
    for variant, (norm, adir) in expected.items():
        for stage in ("distill", "qat"):
            cfg = spec.stage_config(spec.resolve("default", variant), stage)
            assert (cfg["model_options"]["norm"], cfg["adir"]) == (norm, adir), (variant, stage)
            assert cfg["model_options"]["rn_axis"] == "channel"   # deep merge keeps the default's other options
        model = create_model(cfg["model"], n_classes=10, **cfg["model_options"])
        kinds = {type(m) for name, m in model.named_modules() if name.endswith(".norm")}
        assert kinds == {"rn": {ResidualNorm}, "bn": {nn.BatchNorm2d}, "none": {nn.Identity}}[norm], variant
        seen.add(repr(sorted(cfg.items())))
    assert len(seen) == len(expected)
