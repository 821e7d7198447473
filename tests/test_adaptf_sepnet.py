"""AdapTF-SepNet (Zhou et al.): chained and self-supervised pre-training, linear-probe teachers, DIR on a corpus
without devices, and the system end to end (smoke profile): INT8 device models counted as the challenge counts
them, and an exported package that routes by device id and reproduces the scored logits."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

from bench.augment import DeviceImpulseResponse
from bench.config import ConfigError, check_table
from bench.models import create_model
from bench.run import run_system
from bench.score.leaderboard import read_board
from bench.train.ssl import MaskedPatchTask
from bench.train.task import ClassifierTask, OptimConfig
from bench.train.teachers import TEACHERS
from conftest import FAST

DEVICE_MODELS = {"a", "b", "unknown"}  # the smoke profile's device models


def test_dir_without_a_device_touches_every_clip_and_with_one_only_its_clips():
    wave = torch.zeros(6, 400)
    wave[:, 0] = 1.0  # an impulse: the output is the impulse response itself
    ir = torch.zeros(50)
    ir[10] = 0.5
    devices = torch.tensor([0, 1, 0, 1, 0, 1])
    everyone = DeviceImpulseResponse([ir], None, p=1.0).train()(wave, devices)
    assert all(torch.allclose(everyone[i, :50], ir) for i in range(6))
    only_a = DeviceImpulseResponse([ir], 0, p=1.0).train()(wave, devices)
    assert torch.equal(only_a[1], wave[1]) and torch.allclose(only_a[0, :50], ir)


def test_a_linear_probe_trains_the_head_only_and_keeps_the_encoder_in_eval_mode():
    model = create_model("beats_tiny", drop=0.5)
    task = ClassifierTask(model, OptimConfig.from_config({"trainable": "head", "schedule": "cosine_restarts"}))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"net.head.weight", "net.head.bias"}
    task.train()
    task.on_train_epoch_start()
    assert not model.net.training and model.net.head.training
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = task.configure_optimizers()["optimizer"]
    loss = task.batch_loss(model.features(torch.randn(4, 32_000)), {"label": torch.tensor([0, 1, 2, 3])})
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trained


def test_a_linear_probe_of_a_network_without_a_head_is_a_config_error():
    model = create_model("tfsepnet_smoke")
    del model.net.head
    with pytest.raises(ConfigError, match="trainable = 'head': TFSepNet has no classifier head"):
        ClassifierTask(model, OptimConfig.from_config({"trainable": "head"}))


def test_masked_patch_pre_training_refuses_mixup_and_networks_without_patches():
    with pytest.raises(ValueError, match="mixup"):
        MaskedPatchTask(create_model("beats_tiny"), OptimConfig.from_config({"mixup_alpha": 0.3}))
    with pytest.raises(ValueError, match="patch embedding"):
        MaskedPatchTask(create_model("tfsepnet_smoke"), OptimConfig.from_config({}))


def test_a_typo_inside_a_chained_pre_training_is_a_config_error_naming_it():
    teacher = {"name": "t", "model": "beats_tiny",
               "pretrain": {"objective": "labels", "start": {"objective": "masked_patches", "epocs": 3}}}
    with pytest.raises(ConfigError, match=r"pretrain\.start\] epocs: unknown key; did you mean epochs"):
        check_table("system.toml", "teachers", {"teachers": [teacher]}, TEACHERS)


@pytest.mark.heavy
def test_adaptf_sepnet_smoke_end_to_end_and_its_package_reproduces_the_logits(tmp_path, smoke_dataset,
                                                                              exported_package):
    board, log = tmp_path / "board.parquet", io.StringIO()
    # two processes train the teachers and, alongside, the pretrain stage's TF-SepNet pre-training
    first = run_system("systems/adaptf_sepnet", str(smoke_dataset), "smoke", board=None, progress=False,
                       threads=2, until="pretrain", console=Console(file=log, width=300))
    assert "3 teachers and the pretrain stage's tfsepnet_smoke to train: 2 processes" in log.getvalue()
    assert "stage 2/6 pretrain: trained" in log.getvalue()
    pretrain_fits = json.loads((first.run_dir / "run.json").read_text())["stages"][1]["budget"]["fits"]
    assert [(f["fit"], f["cached"]) for f in pretrain_fits] == [("pretrain-tfsepnet_smoke", False)]  # by this run
    # the rest on one thread (two, beside the other test worker, run slower than one); the thread count is not
    # part of a stage's identity: the teachers and the pre-training come from the cache
    result = run_system("systems/adaptf_sepnet", str(smoke_dataset), "smoke", board=board, progress=False,
                        score_options=FAST, threads=1, console=Console(file=log, width=300))
    assert [s["reused"] for s in result.stages] == [True, True, False, False, False, False]
    rows = read_board(board).set_index("submission")
    teachers = {"teacher:beats-ssl", "teacher:beats-ssl-sl", "teacher:beats-ssl-frozen"}
    assert set(rows.index) == {"adaptf-sepnet", "adaptf-sepnet-general", "adaptf-sepnet-float", *teachers}
    row = rows.loc["adaptf-sepnet"]
    assert row["compliant"] and row["deploy_dtype"] == "int8"
    per_device = json.loads(row["complexity_per_device"])
    # tfsepnet_smoke: 10,122 parameters, 1 byte each as INT8; MACs counted on the float twin at 1 x 1 x 128 x 64
    assert all(v["macs"] == 748_672 and v["param_bytes"] == 10_122 for v in per_device.values())
    assert not rows.loc["adaptf-sepnet-float", "deploy_dtype"].startswith("int8")
    assert list(json.loads(row["stages"])) == ["teachers", "pretrain", "finetune", "distill", "device_specific",
                                               "quantize"]

    reports = result.run_dir / "reports"
    kd = json.loads((reports / "distill-kd_targets.json").read_text())
    assert kd["weights"] == pytest.approx([1 / 3] * 3)
    budget = json.loads((reports / "teachers-teachers.json").read_text())["budget"]
    pretrain_keys = {name: [b["key"] for b in items if b.get("pretrain")] for name, items in budget.items()}
    ssl = pretrain_keys["beats-ssl"]
    assert len(ssl) == 1 and pretrain_keys["beats-ssl-frozen"] == ssl  # one self-supervised pre-training, shared
    assert len(pretrain_keys["beats-ssl-sl"]) == 2 and pretrain_keys["beats-ssl-sl"][0] == ssl[0]  # then labels

    _, package_model = exported_package(result, "Zh")
    assert set(package_model.deployments) == DEVICE_MODELS
    unknown = package_model.get_model_for_device("unknown")
    assert package_model.get_model_for_device("s5") is unknown
    assert package_model.get_model_for_device("a") is not unknown
    assert package_model.get_model_for_device("b") is not package_model.get_model_for_device("a")
