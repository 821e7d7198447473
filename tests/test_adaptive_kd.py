"""Adaptive KD with a device-aware teacher (Jeong & Kim): DAFA against hand-computed values and on a tiny training
run, device-stratified batches, weighted and per-device teacher ensembles, Mixup of the teacher targets in the
training step, and the system end to end (smoke profile) with its exported package."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchinfo import summary

from bench.data.loaders import DeviceStratifiedBatchSampler
from bench.distill import DeviceWeights, KDLoss, average_logits
from bench.models import create_model
from bench.run import run_system
from bench.score.leaderboard import read_board
from bench.train.dafa import DAFA, DAFATask, dafa_loss, dcsl, gdal
from bench.train.task import ClassifierTask, OptimConfig
from conftest import FAST

TOY = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 4.0], [3.0, 3.0]])


# --- DAFA -----------------------------------------------------------------------------------------------------------

def test_dcsl_and_gdal_match_hand_computed_values():
    # Two devices: centroids (1, 0) and (0, 3); within-device scatter 2 + 2; between ||(1, -3)||^2 = 10.
    two, dev2 = TOY[:4], torch.tensor([0, 0, 1, 1])
    assert float(dcsl(two, dev2)) == pytest.approx(4 / (10 + 1e-6))
    assert float(gdal(two, dev2)) == pytest.approx(2.5)  # both centroids 2.5 from their mean (0.5, 1.5)
    # A third device at (3, 3) (one clip, no scatter): between-centroid sum 10 + 13 + 9 = 32.
    three, dev3 = TOY, torch.tensor([0, 0, 1, 1, 7])
    assert float(dcsl(three, dev3)) == pytest.approx(4 / 32)
    assert float(gdal(three, dev3)) == pytest.approx(96 / 27)  # mean of 37/9, 25/9, 34/9
    assert float(dafa_loss(three, dev3, 5.0, 0.005)) == pytest.approx(5 * 4 / 32 + 0.005 * 96 / 27)


def test_dafa_is_zero_with_one_device_and_keeps_the_graph():
    z = TOY.clone().requires_grad_(True)
    one = torch.zeros(len(z), dtype=torch.long)
    loss = dafa_loss(z, one, 5.0, 0.005)
    assert loss.item() == 0.0
    loss.backward()  # still differentiable: a one-device batch contributes a zero gradient, not an error
    assert torch.count_nonzero(z.grad) == 0


def _train_on_dafa(store, lam_dcsl: float, lam_gdal: float, steps: int = 12) -> list[dict[str, float]]:
    """A tiny PaSST + projection head trained on DAFA alone on real clips of two devices (4 each); per step: the
    squared distance between the two device centroids of the projected embeddings, and DCSL."""
    split = store.split("split25")
    rows = np.concatenate([split[split["device"] == d]["row"].to_numpy()[:4] for d in ("a", "b")])
    wave = torch.from_numpy(store.waveforms(rows))
    devices = torch.tensor([0] * 4 + [1] * 4)
    torch.manual_seed(0)
    model = create_model("passt_tiny")
    task = DAFATask(model, OptimConfig.from_config({"lr": 1e-3}), DAFA.defaults())
    opt = torch.optim.Adam([*model.parameters(), *task.projection.parameters()], lr=1e-3)
    history = []
    for step in range(steps + 1):
        z = task.projection(model.net.forward_features(model.features(wave)))
        with torch.no_grad():
            history.append({"distance": float((z[:4].mean(0) - z[4:].mean(0)).pow(2).sum()),
                            "dcsl": float(dcsl(z, devices))})
        if step < steps:
            opt.zero_grad()
            dafa_loss(z, devices, lam_dcsl, lam_gdal).backward()
            opt.step()
    return history


def test_on_a_tiny_training_run_gdal_pulls_device_centroids_together_and_dcsl_separates_them(smoke_store):
    """What each DAFA term does to real embeddings: GDAL pulls the device centroids together (their distance
    falls); DCSL, a ratio, tightens each device's cluster relative to the distance between devices, and it does so
    by pushing the centroids apart. At PAFA's weights (5 and 0.005, the default) DCSL dominates: the centroids move
    apart (docs/adaptive_kd.md)."""
    gdal_only = _train_on_dafa(smoke_store, 0.0, 1.0)
    assert gdal_only[-1]["distance"] < 0.5 * gdal_only[0]["distance"]
    dcsl_only = _train_on_dafa(smoke_store, 1.0, 0.0)
    assert dcsl_only[-1]["dcsl"] < 0.5 * dcsl_only[0]["dcsl"]
    default = _train_on_dafa(smoke_store, DAFA.defaults()["dcsl"], DAFA.defaults()["gdal"])
    assert default[-1]["dcsl"] < 0.5 * default[0]["dcsl"] and default[-1]["distance"] > default[0]["distance"]


def test_a_dafa_teacher_refuses_mixup_and_a_network_without_an_embedding():
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="mixup_alpha = 0"):
        DAFATask(create_model("passt_tiny"), OptimConfig.from_config({"mixup_alpha": 0.3}), {})
    with pytest.raises(ConfigError, match="forward_features"):
        DAFATask(create_model("cpmobile_baseline"), OptimConfig.from_config({}), {})


# --- device-stratified batches --------------------------------------------------------------------------------------

def _devices() -> torch.Tensor:
    """split25-like: device 0 is 73 % of the clips, five devices share the rest."""
    return torch.tensor([0] * 730 + [d for d in range(1, 6) for _ in range(54)])


def test_stratified_batches_use_every_clip_once_and_every_batch_holds_every_device():
    devices = _devices()
    sampler = DeviceStratifiedBatchSampler(devices, 32, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-len(devices) // 32)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(devices)))  # each clip exactly once, nothing dropped
    assert {len(b) for b in batches} <= {31, 32}
    for b in batches:
        counts = torch.bincount(devices[b], minlength=6)
        assert (counts >= 1).all(), counts  # every device in every batch
        assert 22 <= int(counts[0]) <= 24  # device 0 keeps its share (73 % of 31-32)
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new permutation per epoch ...
    sampler.set_epoch(0)
    assert list(sampler) == batches  # ... that depends on the seed and the epoch only (a resumed fit)


def test_stratified_batches_shard_across_processes_without_overlap():
    devices = _devices()
    shards = [list(DeviceStratifiedBatchSampler(devices, 32, seed=1, rank=r, world=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(DeviceStratifiedBatchSampler(devices, 32, rank=0, world=2))
    seen = [i for shard in shards for b in shard for i in b]
    assert len(seen) == len(set(seen))


# --- ensembles and the distillation step ----------------------------------------------------------------------------

def _two_teachers(n: int = 300):
    """Teacher 0 is right on device 'x' and noise on 'y'; teacher 1 the reverse."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(10, (n,), generator=g)
    devices = ["x"] * (n // 2) + ["y"] * (n - n // 2)
    good, noise = F.one_hot(y, 10).float() * 4, torch.randn(n, 10, generator=g) * 2
    on_x = torch.tensor([d == "x" for d in devices])[:, None]
    t0 = torch.where(on_x, good + noise * 0.3, noise)
    t1 = torch.where(on_x, noise, good + noise * 0.3)
    return [t0, t1], y, devices


def test_weighted_average_and_per_device_weights():
    teachers, y, devices = _two_teachers()
    torch.testing.assert_close(average_logits(teachers, [1, 3]), 0.25 * teachers[0] + 0.75 * teachers[1])
    torch.testing.assert_close(average_logits(teachers, [1, 1]), average_logits(teachers))
    with pytest.raises(ValueError):
        average_logits(teachers, [1.0])
    fitted = DeviceWeights().fit(teachers, y, devices, split="validation")
    assert fitted.weights["x"][0] > 0.8 and fitted.weights["y"][1] > 0.8  # each device trusts its good teacher
    assert sum(fitted.overall) == pytest.approx(1.0)
    per_device = fitted.transform(teachers, devices)
    acc = lambda z: float((z.argmax(1) == y).float().mean())  # noqa: E731
    assert acc(per_device) > acc(average_logits(teachers)) + 0.1
    torch.testing.assert_close(fitted.transform(teachers, ["z"] * len(y)), average_logits(teachers, fitted.overall))
    with pytest.raises(ValueError, match="never on test"):
        DeviceWeights().fit(teachers, y, devices, split="test")


def test_the_training_step_mixes_teacher_targets_with_the_labels_lambda_and_permutation():
    """Under Mixup the step's loss is lam * KD(mixed input; teacher, y) + (1 - lam) * KD(...; teacher[perm],
    y[perm]) with the lambda and permutation it drew: the teacher targets are mixed like the labels."""
    torch.manual_seed(0)
    model = create_model("cpmobile_passt_mel")
    loss = KDLoss(lam=0.02, T=2.0)
    task = ClassifierTask(model, OptimConfig.from_config({"mixup_alpha": 0.3}), loss=loss)
    x = torch.randn(6, 1, 256, 44)
    batch = {"label": torch.arange(6), "teacher_logits": torch.randn(6, 10), "device": torch.zeros(6).long()}
    model.eval()  # BN in eval: the two forward passes below see the same statistics
    torch.manual_seed(5)
    got = task.batch_loss(x, batch)
    torch.manual_seed(5)
    lam = float(torch.distributions.Beta(0.3, 0.3).sample())
    perm = torch.randperm(6)
    logits = model.net(lam * x + (1 - lam) * x[perm])
    permuted = {"label": batch["label"][perm], "teacher_logits": batch["teacher_logits"][perm]}
    want = lam * loss(logits, batch) + (1 - lam) * loss(logits, permuted)
    assert not torch.equal(perm, torch.arange(6)) and 0 < lam < 1
    torch.testing.assert_close(got, want)


# --- the system -----------------------------------------------------------------------------------------------------

def test_student_on_the_passt_mel_counts_as_the_challenge_counts():
    model = create_model("cpmobile_passt_mel")
    assert model.input_shape() == (1, 1, 256, 44)  # 1 + 31,999 // 744 frames at 32 kHz
    s = summary(copy.deepcopy(model.net).float(), input_size=(1, 1, 256, 44), verbose=0)
    assert (s.total_params, s.total_mult_adds) == (61_148, 19_321_492)


@pytest.mark.heavy
def test_adaptive_kd_smoke_end_to_end_and_its_package_reproduces_the_logits(tmp_path, smoke_dataset,
                                                                            exported_package):
    board = tmp_path / "board.parquet"
    result = run_system("systems/adaptive_kd", str(smoke_dataset), "smoke", board=board, progress=False,
                        score_options=FAST)
    rows = read_board(board).set_index("submission")
    assert set(rows.index) == {"adaptive-kd", "adaptive-kd-general", "teacher:passt-ce", "teacher:passt-dafa"}
    row = rows.loc["adaptive-kd"]
    assert row["compliant"] and row["deploy_dtype"] == "float16"
    assert row["max_macs"] == 19_321_492 and row["max_param_bytes"] == 122_296
    per_device = json.loads(row["complexity_per_device"])
    assert all(v["macs"] == 19_321_492 and v["param_bytes"] == 122_296 for v in per_device.values())
    assert "device c has no validation clips; its last epoch is kept" in row["notes"]
    assert list(json.loads(row["stages"])) == ["teachers", "distill", "device_specific"]
    reports = result.run_dir / "reports"
    assert set(json.loads((reports / "teachers-teachers.json").read_text())["quality"]) == {"passt-ce", "passt-dafa"}
    assert json.loads((reports / "distill-kd_targets.json").read_text())["weights"] == [0.5, 0.5]

    _, package_model = exported_package(result, "Jk")
    assert set(package_model.deployments) == {"unknown", "a", "b", "c", "s1", "s2", "s3"}
    general = package_model.get_model_for_device("unknown")
    assert package_model.get_model_for_device("s5") is general and package_model.get_model_for_device("a") is not general
    assert all(next(dep.net.parameters()).dtype == torch.float16 for dep in package_model.deployments.values())
