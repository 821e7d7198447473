"""The platform the seed systems are written on: system folders as packages, per-stage data (a multi-label
pre-training corpus, head dropped), the shared reusable stages (device fine-tuning that keeps KD, resumes an
optimizer and keeps each device's best epoch; per-device INT8 PTQ with its accuracy check), run folders and
``bench runs``, and one row builder for runs and re-scores."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from bench.cli import app
from bench.data.splits import carve_validation
from bench.models.pretrained import load_pretrained
from bench.run import run_system
from bench.score.leaderboard import read_board
from bench.score.scorer import ScoreOptions
from bench.submission import load_submission
from bench.system import SystemError_, load_system
from conftest import FAST

runner = CliRunner()


def write_system(folder: Path, toml: str, py: str, **files: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "system.toml").write_text(toml)
    (folder / "system.py").write_text(py)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


# ---- a system is a package -----------------------------------------------------------------------------------------

PACKAGE_TOML = '''
[system]
name = "pkg"
description = "network in a sibling module"
citation = "none"
stages = ["train"]

[defaults]
model = "pkg/net"

[profiles.smoke.train]
epochs = 1
batch_size = 32
'''

PACKAGE_PY = '''
from bench.config import reads
from bench.models import MODEL
from bench.submission import ModelSubmission
from bench.train.task import OPTIM, ClassifierTask, OptimConfig
from . import nets  # registers pkg/net


@reads(MODEL, OPTIM)
def train(ctx):
    model = ctx.create_model()
    task = ctx.fit(ClassifierTask(model, OptimConfig.from_config(ctx.config)), ctx.clips("fit"))
    return {"model": model.state_dict(), "net_module": type(model.net).__module__}


@reads(MODEL)
def submission(ctx):
    return ModelSubmission.single("pkg", ctx.create_model(state=ctx.previous["train"]["model"]), ctx.classes)
'''

NETS_PY = '''
from torch import nn
from bench.models import register
from bench.models.base import ASCModel
from bench.models.frontends import TorchaudioLogMel


class Net(nn.Module):
    def __init__(self, n_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, n_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def build(n_classes):
    return ASCModel(TorchaudioLogMel(n_mels=32, n_fft=512, win_length=512, hop_length=1000), Net(n_classes))


register("pkg/net", build, n_classes=10)
'''


def test_system_folder_is_a_package_with_its_own_namespaced_architectures(tmp_path, smoke_dataset):
    folder = write_system(tmp_path / "pkg", PACKAGE_TOML, PACKAGE_PY, **{"nets.py": NETS_PY})
    result = run_system(folder, str(smoke_dataset), "smoke", board=None, progress=False, score_options=FAST)
    assert result.rows[0]["status"] == "ok"
    module = torch.load(next(Path(result.stages[0]["cache_dir"]).glob("artifacts.pt")), weights_only=True)
    assert module["net_module"].startswith("bench.loaded_systems.pkg_") and module["net_module"].endswith(".nets")
    sub = load_submission(result.run_dir / "submission")  # rebuilt from the copy saved with the run
    assert (result.run_dir / "submission" / "system" / "nets.py").read_text() == NETS_PY
    net = sub.get_model_for_device("a")
    assert pickle.loads(pickle.dumps(net)).__class__.__module__ == type(net).__module__  # DDP spawn can unpickle

    (folder / "system.py").write_text(PACKAGE_PY.replace("from . import nets", "import nets"))
    with pytest.raises(SystemError_, match=r"imports 'nets', a module of the system folder itself.*from \. import nets"):
        load_system(folder).module
    (folder / "system.py").write_text(PACKAGE_PY)
    (folder / "nets.py").write_text(NETS_PY.replace('register("pkg/net"', 'register("net"'))
    with pytest.raises(SystemError_, match=r"architectures of system 'pkg' are registered as 'pkg/<name>'"):
        load_system(folder).module


# ---- per-stage data: a multi-label corpus, then the scenes --------------------------------------------------------

EVENTS = ["low_tone", "high_tone", "noise_burst", "clicks"]


def write_corpus(root: Path, n: int = 48) -> Path:
    """A tiny multi-label corpus in the generic clips layout: 1-s 32 kHz WAVs with one or two events each."""
    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True)
    t = np.arange(32_000) / 32_000
    rows = []
    for i in range(n):
        labels = sorted(rng.choice(EVENTS, size=1 + i % 2, replace=False).tolist())
        x = 0.01 * rng.standard_normal(32_000)
        for label in labels:
            x += {"low_tone": 0.2 * np.sin(2 * np.pi * 220 * t), "high_tone": 0.2 * np.sin(2 * np.pi * 3_000 * t),
                  "noise_burst": 0.3 * rng.standard_normal(32_000) * (t < 0.3),
                  "clicks": 0.5 * (np.arange(32_000) % 4_000 == 0)}[label]
        name = f"audio/clip{i:03d}.wav"
        sf.write(root / name, x.astype(np.float32), 32_000, subtype="PCM_16")
        rows.append({"filename": name, "labels": ";".join(labels), "split": "validation" if i % 6 == 0 else "train"})
    pd.DataFrame(rows).to_csv(root / "meta.csv", sep="\t", index=False)
    manifest = {"name": "events-test", "layout": "clips", "title": "test corpus", "classes": EVENTS,
                "multilabel": True, "devices": {"unknown": "unseen"}, "meta": {"file": "meta.csv"},
                "splits": {"train": {"file": "meta.csv"}, "validation": {"file": "meta.csv"}},
                "train_split": "train", "validation_split": "validation", "audio": {"sample_rate": 32_000}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "ascbench_dataset.json").write_text(json.dumps({"manifest": "manifest.json"}))
    return root


PRETRAIN_TOML = '''
[system]
name = "pre"
description = "pre-train on a multi-label corpus, drop the head, fine-tune on the scenes"
citation = "none"
stages = ["pretrain", "finetune"]

[defaults]
model = "cpresnet_half"
model_options = { n_mels = 32 }

[profiles.smoke.pretrain]
data = "CORPUS"
epochs = 2
batch_size = 16
lr = 0.01

[profiles.smoke.finetune]
epochs = 1
batch_size = 32
'''

PRETRAIN_PY = '''
import torch
from bench.config import reads
from bench.models import MODEL
from bench.models.pretrained import load_pretrained
from bench.submission import ModelSubmission
from bench.train.stages import DATA
from bench.train.task import OPTIM, ClassifierTask, OptimConfig, binary_cross_entropy


@reads(MODEL, OPTIM, DATA)
def pretrain(ctx):
    model = ctx.create_model()
    ctx.fit(ClassifierTask(model, OptimConfig.from_config(ctx.config), loss=binary_cross_entropy),
            ctx.clips("fit"), ctx.clips("val"))
    return {"model": model.state_dict(), "classes": ";".join(ctx.classes), "n_fit": len(ctx.clips("fit")),
            "n_val": len(ctx.clips("val"))}


@reads(MODEL, OPTIM)
def finetune(ctx):
    model = ctx.create_model()
    dropped = load_pretrained(model, ctx.previous["pretrain"]["model"])
    start = model.state_dict()["net.stem.0.weight"].clone()
    ctx.fit(ClassifierTask(model, OptimConfig.from_config(ctx.config)), ctx.clips("fit"), ctx.clips("val"))
    return {"model": model.state_dict(), "dropped": ";".join(dropped), "classes": ";".join(ctx.classes),
            "started_from_pretrained": torch.equal(start, ctx.previous["pretrain"]["model"]["net.stem.0.weight"])}


@reads(MODEL)
def submission(ctx):
    return ModelSubmission.single("pre", ctx.create_model(state=ctx.previous["finetune"]["model"]), ctx.classes)
'''


def test_stage_trains_on_another_dataset_with_its_own_labels_then_the_head_is_dropped(tmp_path, smoke_dataset):
    corpus = write_corpus(tmp_path / "corpus")
    folder = write_system(tmp_path / "pre", PRETRAIN_TOML.replace("CORPUS", str(corpus)), PRETRAIN_PY)
    result = run_system(folder, str(smoke_dataset), "smoke", board=None, progress=False, score_options=FAST)
    pre, fine = (torch.load(Path(s["cache_dir"]) / "artifacts.pt", weights_only=True) for s in result.stages)
    meta = pd.read_csv(corpus / "meta.csv", sep="\t")
    assert pre["classes"] == ";".join(EVENTS) and pre["model"]["net.head.0.weight"].shape[0] == len(EVENTS)
    assert (pre["n_fit"], pre["n_val"]) == ((meta["split"] == "train").sum(), (meta["split"] == "validation").sum())
    assert fine["classes"].split(";")[0] == "airport" and fine["started_from_pretrained"]
    assert fine["dropped"].split(";") == ["net.head.0.weight", "net.head.1.weight", "net.head.1.bias",
                                          "net.head.1.running_mean", "net.head.1.running_var",
                                          "net.head.1.num_batches_tracked"]
    done = json.loads((Path(result.stages[0]["cache_dir"]) / "done.json").read_text())
    assert done["static"]["data"]["dataset"] == "events-test"  # the corpus' fingerprint keys the stage
    metrics = json.loads((Path(result.stages[0]["cache_dir"]) / "fit" / "metrics.json").read_text())
    assert 0 <= metrics["val_map"] <= 1 and metrics["samples"] == metrics["steps"] * 16
    assert result.rows[0]["status"] == "ok"


def test_load_pretrained_checks_key_by_key():
    from bench.models import create_model

    source, target = create_model("cpresnet_half", n_classes=4), create_model("cpresnet_half", n_classes=10)
    state = source.state_dict()
    assert load_pretrained(target, state)[0] == "net.head.0.weight"
    with pytest.raises(ValueError, match="net.stem.0.weight: shape"):
        load_pretrained(target, {**state, "net.stem.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing net.stem.0.weight"):
        load_pretrained(target, {k: v for k, v in state.items() if k != "net.stem.0.weight"})


# ---- device-specific fine-tuning with KD, resumed optimizer, best epoch; per-device INT8 PTQ ------------------------

DEVICES_TOML = '''
[system]
name = "devices"
description = "general model with KD, per-device models that keep it, INT8 per device"
citation = "none"
stages = ["teachers", "general", "devices", "int8"]

[defaults]
model = "dsflexinet_sm1"
kd = "average"

[profiles.smoke.teachers]
teachers = [{ name = "t-devices", model = "cpresnet_half", epochs = 1, batch_size = 32, model_options = { n_mels = 32 } }]

[profiles.smoke.general]
epochs = 1
batch_size = 32
schedule = "cosine_restarts"
restart_epochs = 2

[profiles.smoke.devices]
epochs = 2
batch_size = 4
schedule = "cosine_restarts"
restart_epochs = 2
select = "best"
per_device = { a = { batch_size = 16 } }

[profiles.smoke.int8]
min_device_clips = 4
max_int8_drop = -1.0
'''

DEVICES_PY = '''
from bench.config import reads
from bench.distill import KD, kd_loss_from_config
from bench.models import MODEL
from bench.submission import UNKNOWN
from bench.train.ptq import PTQ, ptq_submission, quantize_per_device
from bench.train.recipes import AUGMENT, PER_DEVICE, fine_tune_per_device, make_task
from bench.train.task import OPTIM
from bench.train.teachers import kd_targets, teacher_stage

teachers = teacher_stage


@reads(MODEL, OPTIM, AUGMENT, KD)
def general(ctx):
    model = ctx.create_model()
    targets = kd_targets(ctx, ctx.previous["teachers"], ctx.config["kd"])
    task = ctx.fit(make_task(ctx, model, ctx.config, kd_loss_from_config(ctx.config)), ctx.clips("fit"),
                   ctx.clips("val"), extras=targets.extras)
    return {"model": model.state_dict(), "optimizer": task.final_optimizer_state}


@reads(MODEL, OPTIM, AUGMENT, KD, PER_DEVICE)
def devices(ctx):
    targets = kd_targets(ctx, ctx.previous["teachers"], ctx.config["kd"])
    return fine_tune_per_device(ctx, ctx.previous["general"]["model"], devices=["a", "c"],
                                loss=kd_loss_from_config(ctx.config), extras=targets.extras,
                                optimizer_state=ctx.previous["general"]["optimizer"])


@reads(MODEL, PTQ)
def int8(ctx):
    general = ctx.previous["general"]["model"]
    models = {UNKNOWN: ctx.create_model(state=general), "b": ctx.create_model(state=general)}  # b: 1 val clip
    models.update({d: ctx.create_model(state=s) for d, s in ctx.previous["devices"].items()})
    return quantize_per_device(ctx, models)


@reads(MODEL)
def submission(ctx):
    return ptq_submission("devices", ctx.classes, ctx.previous["int8"])
'''


@pytest.mark.heavy
def test_device_models_keep_kd_resume_the_optimizer_and_keep_their_best_epoch(tmp_path, smoke_dataset, smoke_store):
    folder = write_system(tmp_path / "devices", DEVICES_TOML, DEVICES_PY)
    result = run_system(folder, str(smoke_dataset), "smoke", board=tmp_path / "b.parquet", progress=False,
                        score_options=ScoreOptions(energy=False, n_boot=10))
    stage_dir = {s["stage"]: Path(s["cache_dir"]) for s in result.stages}
    general_steps = json.loads((stage_dir["general"] / "fit" / "metrics.json").read_text())["steps"]
    for device in ("a",):
        fit = stage_dir["devices"] / f"device-{device}"
        metrics = json.loads((fit / "metrics.json").read_text())
        adam = torch.load(fit / "optimizer.pt", weights_only=True)["optimizer"]["state"][0]
        assert int(adam["step"]) == general_steps + metrics["steps"]  # continued the general model's optimizer
        log = pd.read_csv(fit / "logs" / "version_0" / "metrics.csv")
        scores = log["val_score"].dropna().tolist()
        assert len(scores) == 2 and metrics["best_epoch"] == int(np.argmax(scores))  # first best on its own val
        assert metrics["best_val_score"] == pytest.approx(max(scores))
    a_batch = json.loads((stage_dir["devices"] / "device-a" / "metrics.json").read_text())
    assert a_batch["samples"] == a_batch["steps"] * 16  # per_device override

    report = torch.load(stage_dir["int8"] / "artifacts.pt", weights_only=True)["report"]
    fit, val = carve_validation(smoke_store.split("split25"))
    n_a = int((val["device"] == "a").sum())
    assert n_a >= 4 and report["a"]["calibration"] == f"{n_a} validation clips of device a"
    assert report["b"]["calibration"].endswith(f"(b has {int((val['device'] == 'b').sum())} < 4)")
    assert report["unknown"]["calibration"].endswith("all devices")
    row = read_board(tmp_path / "b.parquet").iloc[0]
    assert row["deploy_dtype"] == "int8" and row["int8_macro_acc"] == row["macro_acc"]
    assert "INT8 PTQ loses" in row["notes"] and "device model b" in row["notes"]  # limit -1: every model named
    assert "device c has no validation clips; its last epoch is kept, not its best" in row["notes"]
    assert "best_epoch" not in json.loads((stage_dir["devices"] / "device-c" / "metrics.json").read_text())
    saved = load_submission(result.run_dir / "submission")  # per-device INT8, rebuilt: the scored logits exactly
    test = smoke_store.split("test")
    waves, ids = torch.from_numpy(smoke_store.waveforms(test["row"].to_numpy())), test["device"].tolist()
    logits = torch.cat([saved.predict(waves[i:i + 64], ids[i:i + 64]) for i in range(0, len(ids), 64)])
    assert np.array_equal(logits.numpy(), result.results[""].logits)


# ---- run folders, bench runs, one row for runs and re-scores --------------------------------------------------------

def test_runs_get_their_own_folder_and_a_rescore_makes_the_same_row(tmp_path, smoke_dataset, monkeypatch):
    monkeypatch.setenv("ASCBENCH_HOME", str(tmp_path / "home"))
    folder = write_system(tmp_path / "pkg", PACKAGE_TOML, PACKAGE_PY, **{"nets.py": NETS_PY})
    options = ScoreOptions(energy=False, n_boot=10)
    first = run_system(folder, str(smoke_dataset), "smoke", board=tmp_path / "b.parquet", progress=False,
                       score_options=options)
    second = run_system(folder, str(smoke_dataset), "smoke", board=tmp_path / "b.parquet", progress=False,
                        score_options=options)
    assert first.run_dir != second.run_dir and second.stages[0]["reused"]
    listed = runner.invoke(app, ["runs", "--json"])
    assert listed.exit_code == 0, listed.output
    runs = json.loads(listed.stdout)
    assert [r["run_dir"] for r in runs] == [str(second.run_dir), str(first.run_dir)]
    assert runs[0]["stages"][0]["key"] == runs[1]["stages"][0]["key"] and runs[0]["stages"][0]["reused"]
    assert runs[0]["rows"][0]["row_id"] == second.rows[0]["row_id"]
    table = runner.invoke(app, ["runs"])
    assert str(second.run_dir) in table.output and "(cached)" in table.output

    threads = torch.get_num_threads()
    try:
        rescored = runner.invoke(app, ["score", "--submission", "latest", "--data", str(smoke_dataset), "--board",
                                       str(tmp_path / "re.parquet"), "--no-energy", "--n-boot", "10", "--out",
                                       str(tmp_path / "out"), "--json", "--threads", "2"])
    finally:
        torch.set_num_threads(threads)
    assert rescored.exit_code == 0, rescored.output
    assert "scoring on 2 threads (asked for (--threads))" in rescored.stderr
    assert read_board(tmp_path / "re.parquet").iloc[0]["threads"] == 2
    run_row, again = read_board(tmp_path / "b.parquet").iloc[-1], read_board(tmp_path / "re.parquet").iloc[0]
    same = ["submission", "system", "seed", "profile", "config_hash", "run_dir", "stages", "macro_acc", "log_loss",
            "int8_macro_acc", "int8_size_bytes", "max_macs", "max_param_bytes", "complexity_per_device",
            "deploy_dtype", "dataset_fingerprint", "acc_per_device"]
    assert run_row[same].to_dict() == again[same].to_dict()  # INT8 calibrated on the run's own validation clips
    assert json.loads(rescored.stdout)["rows"][0]["row_id"] == again["row_id"]


# ---- boards by name; the harness's own output never makes the code "dirty" -----------------------------------------

def test_board_names_resolve_to_the_leaderboards_folder(tmp_path, monkeypatch):
    from bench.paths import REFERENCE_BOARDS, board_path

    monkeypatch.setenv("ASCBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert board_path(None) == tmp_path / "home" / "leaderboards" / "local.parquet"
    assert board_path("main", reading=True) == REFERENCE_BOARDS / "main.parquet"  # the shipped reference board
    assert board_path("main") == tmp_path / "home" / "leaderboards" / "main.parquet"
    (tmp_path / "leaderboards").mkdir()
    assert board_path("mine") == tmp_path / "leaderboards" / "mine.parquet"  # a project folder's own boards
    assert board_path("sub/x.parquet") == Path("sub/x.parquet")


def test_git_dirty_ignores_the_boards_the_harness_writes(tmp_path, monkeypatch):
    import subprocess

    from bench import provenance

    repo = tmp_path / "repo"
    (repo / "leaderboards").mkdir(parents=True)
    (repo / "leaderboards" / "main.parquet").write_bytes(b"rows")
    (repo / "code.py").write_text("x = 1\n")
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True)
    monkeypatch.setattr(provenance, "REPO_ROOT", repo)
    provenance._own_checkout.cache_clear()
    try:
        (repo / "leaderboards" / "main.parquet").write_bytes(b"more rows")  # what a run appends
        assert provenance.git_state()[1] is False
        (repo / "code.py").write_text("x = 2\n")
        assert provenance.git_state()[1] is True
    finally:
        provenance._own_checkout.cache_clear()
