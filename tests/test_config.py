"""Strict configuration: every key a stage reads is declared; a typo or a wrong type anywhere in system.toml is an
error naming the file, the table, the key and the nearest valid key — before anything trains."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.config import ConfigError, Key, Schema, StageConfig
from bench.paths import SYSTEMS_DIR
from bench.run import run_system
from bench.system import SystemError_, load_system
from bench.train.stages import StageError

runner = CliRunner()

SYSTEM_PY = '''
from bench.config import reads
from bench.distill import KD
from bench.models import MODEL
from bench.submission import ModelSubmission
from bench.train.recipes import AUGMENT, PER_DEVICE
from bench.train.task import OPTIM
from bench.train.teachers import teacher_stage

teachers = teacher_stage


@reads(MODEL, OPTIM, AUGMENT, KD)
def train(ctx):
    return {}


@reads(MODEL, OPTIM, AUGMENT, PER_DEVICE)
def tune(ctx):
    return {}


@reads(MODEL)
def submission(ctx):
    return ModelSubmission.single("strict", ctx.create_model(), ctx.classes)
'''

TOML = '''
[system]
name = "strict"
description = "every kind of table"
citation = "none"
stages = ["teachers", "train", "tune"]

[defaults]
model = "cpmobile_baseline"
model_options = { freqm = 48 }

[defaults.train]
epochs = 1

[profiles.smoke]
roll_seconds = 0.1

[profiles.smoke.teachers]
teachers = [{ name = "t", model = "cpresnet_half", epochs = 1 }]

[profiles.smoke.tune]
per_device = { a = { epochs = 1 } }

[variants.v]
kd = "average"

[variants.v.train]
lr = 0.1
'''

# (original text, replacement, what the error must say)
TYPOS = [
    ('[defaults.train]\nepochs = 1', '[defaults.train]\nepocs = 1',
     r"\[defaults.train\] epocs: unknown key; did you mean epochs\?"),
    ('model = "cpmobile_baseline"\n', 'modle = "cpmobile_baseline"\n',
     r"\[defaults\] modle: unknown key; did you mean model\?"),
    ("roll_seconds = 0.1", "roll_secnds = 0.1", r"\[profiles.smoke\] roll_secnds: unknown key; did you mean roll_seconds\?"),
    ('kd = "average"', 'kd_lamda = 0.1', r"\[variants.v\] kd_lamda: unknown key; did you mean kd_lambda\?"),
    ("[variants.v.train]\nlr = 0.1", "[variants.v.trian]\nlr = 0.1",
     r"\[variants.v\] trian: unknown key; did you mean train\?"),
    ("lr = 0.1", 'lr = "fast"', r"\[variants.v.train\] lr = 'fast': must be a number, got str"),
    ('kd = "average"', 'kd = "averge"', r"\[variants.v\] kd = 'averge': must be one of .*did you mean 'average'\?"),
    ("[defaults.train]\nepochs = 1", "[defaults.train]\nepochs = 1.5", r"epochs = 1.5: must be an integer"),
    ("[defaults.train]\nepochs = 1", "[defaults.train]\nfms_per_batch = 1", r"fms_per_batch = 1: must be a bool"),
    ('model = "cpresnet_half", epochs = 1', 'model = "cpresnet_half", epocs = 1',
     r"\[profiles.smoke.teachers.teachers\[0\]\] epocs: unknown key; did you mean epochs\?"),
    ('{ name = "t", model', '{ model', r"\[profiles.smoke.teachers.teachers\[0\]\] needs name"),
    ("per_device = { a = { epochs = 1 } }", "per_device = { a = { epocs = 1 } }",
     r"\[profiles.smoke.tune.per_device.a\] epocs: unknown key; did you mean epochs\?"),
    ("model_options = { freqm = 48 }", "model_options = { freqn = 48 }",
     r"model_options.freqn: cpmobile_baseline has no option 'freqn'; did you mean freqm\?"),
    ('model = "cpmobile_baseline"\n', 'model = "cpmobile_baselin"\n', r"did you mean 'cpmobile_baseline'\?"),
    ('model = "cpresnet_half"', 'model = "cpresnet_hlf"', r"did you mean 'cpresnet_half'\?"),
]


@pytest.fixture
def strict_system(tmp_path):
    folder = tmp_path / "strict"
    folder.mkdir()
    (folder / "system.py").write_text(SYSTEM_PY)
    (folder / "system.toml").write_text(TOML)
    return folder


def test_the_fixture_itself_is_valid(strict_system):
    assert len(load_system(strict_system).check()) == 2  # profile smoke alone and with variant v


@pytest.mark.parametrize("original, typo, message", TYPOS, ids=[t[1].split("=")[0].strip()[:24] for t in TYPOS])
def test_every_kind_of_table_refuses_typos_with_a_suggestion(strict_system, original, typo, message):
    toml = strict_system / "system.toml"
    assert original in TOML
    toml.write_text(TOML.replace(original, typo, 1))
    with pytest.raises(ConfigError, match=message) as info:
        load_system(strict_system).check()
    assert str(toml) in str(info.value)


def test_a_run_is_refused_before_anything_trains(strict_system, smoke_dataset, tmp_path):
    (strict_system / "system.toml").write_text(TOML.replace("epochs = 1\n", "epocs = 1\n", 1))
    board = tmp_path / "board.parquet"
    result = runner.invoke(app, ["run", str(strict_system), "--data", str(smoke_dataset), "--profile", "smoke",
                                 "--board", str(board)])
    assert result.exit_code == 1 and "epocs: unknown key; did you mean epochs?" in result.output
    assert not board.exists() and "training" not in result.output


def test_a_stage_cannot_read_a_key_it_did_not_declare(tmp_path, smoke_dataset):
    folder = tmp_path / "sneaky"
    folder.mkdir()
    (folder / "system.toml").write_text('[system]\nname = "sneaky"\ndescription = "d"\ncitation = "c"\n'
                                        'stages = ["train"]\n[profiles.smoke.train]\n')
    (folder / "system.py").write_text("def train(ctx):\n    return {'lr': ctx.config['lr']}\n\n"
                                      "def submission(ctx):\n    raise AssertionError\n")
    with pytest.raises(StageError, match="reads config key 'lr', which it does not declare"):
        run_system(folder, str(smoke_dataset), "smoke", board=None, progress=False)


def test_stage_config_refuses_undeclared_keys_and_fills_defaults():
    schema = Schema("s", {"lr": Key(float, 1e-3), "epochs": Key(int, 1)})
    cfg = StageConfig({"lr": 0.5, "epochs": 1}, schema, "sys/stage")
    assert cfg["lr"] == 0.5 and cfg.replace(epochs=3)["epochs"] == 3
    with pytest.raises(KeyError, match="does not declare"):
        cfg.get("epocs")
    with pytest.raises(KeyError, match="does not declare"):
        cfg.replace(epocs=3)


def test_bench_systems_check_validates_every_shipped_system(tmp_path, strict_system):
    result = runner.invoke(app, ["systems", "--check", "--json", "--root", str(SYSTEMS_DIR)])
    assert result.exit_code == 0, result.output
    records = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(records) >= {"baseline", "dsflexinet"} and not any(r["error"] for r in records.values())
    assert records["dsflexinet"]["checked"] == 3 * (1 + len(load_system(SYSTEMS_DIR / "dsflexinet").variants))
    (strict_system / "system.toml").write_text(TOML.replace("lr = 0.1", "lr = 0.1\nwarmup_step = 3"))
    broken = runner.invoke(app, ["systems", "--check", "--root", str(strict_system.parent)])
    assert broken.exit_code == 1 and "warmup_step: unknown key; did you mean warmup_steps?" in broken.output


def test_system_table_typos_are_named(strict_system):
    (strict_system / "system.toml").write_text(TOML.replace('citation = "none"', 'citaton = "none"'))
    with pytest.raises(SystemError_, match=r"\[system\] citaton: unknown key; did you mean citation\?"):
        load_system(strict_system)
