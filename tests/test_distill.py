"""KD losses (reduction, soft-target form, Soft-Mixup through the task's mixup) and teacher ensembles."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import torch.nn.functional as F

from bench.distill import KDLoss, TeacherFusion, average_logits, kd_loss

C = 10


def _batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, generator=g) * 2
    batch = {"label": torch.randint(C, (n,), generator=g), "teacher_logits": torch.randn(n, C, generator=g) * 3,
             "device": torch.randint(6, (n,), generator=g), "wave": torch.randn(n, 32, generator=g)}
    return logits, batch


def _teacher_entropy(teacher: torch.Tensor, T: float) -> torch.Tensor:
    log_t = F.log_softmax(teacher / T, -1)
    return -(log_t.exp() * log_t).sum(-1)


def test_kd_loss_matches_the_cpjku_formula():
    torch.manual_seed(0)
    s, batch = _batch()
    t, y = batch["teacher_logits"], batch["label"]
    kl = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="none").mean()
    expected = 0.02 * F.cross_entropy(s, y) + 0.98 * 4 * kl
    torch.testing.assert_close(kd_loss(s, t, y, lam=0.02, T=2.0), expected)
    torch.testing.assert_close(kd_loss(s, t, y, lam=1.0, T=2.0), F.cross_entropy(s, y))


def test_mean_reduction_is_one_nth_of_batchmean():
    torch.manual_seed(0)
    s, batch = _batch()
    args = (s, batch["teacher_logits"], batch["label"], 0.0, 2.0)
    torch.testing.assert_close(kd_loss(*args, reduction="batchmean"), C * kd_loss(*args, reduction="mean"))


@pytest.mark.parametrize("reduction,scale", [("batchmean", 1.0), ("mean", 1.0 / C)])
def test_soft_cross_entropy_is_kl_plus_teacher_entropy(reduction, scale):
    torch.manual_seed(0)
    s, batch = _batch()
    t, y = batch["teacher_logits"], batch["label"]
    s_kl, s_ce = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    kl = kd_loss(s_kl, t, y, lam=0.3, T=2.0, reduction=reduction, soft_target="kl")
    ce = kd_loss(s_ce, t, y, lam=0.3, T=2.0, reduction=reduction, soft_target="ce")
    torch.testing.assert_close(ce - kl, 0.7 * 4 * scale * _teacher_entropy(t, 2.0).mean())
    kl.backward()
    ce.backward()
    torch.testing.assert_close(s_kl.grad, s_ce.grad)


def test_kd_loss_module_reads_the_batch_and_validates_options():
    s, batch = _batch()
    loss = KDLoss(lam=0.1, T=3.0, reduction="batchmean")
    torch.testing.assert_close(loss(s, batch), kd_loss(s, batch["teacher_logits"], batch["label"], 0.1, 3.0,
                                                       "batchmean"))
    assert pickle.loads(pickle.dumps(loss)) == loss          # the task is pickled for DDP spawn
    with pytest.raises(ValueError):
        KDLoss(reduction="sum")
    with pytest.raises(ValueError):
        KDLoss(soft_target="mse")


@pytest.mark.parametrize("soft_target", ["kl", "ce"])
def test_task_mixup_gives_soft_mixup(soft_target):
    """The task mixes ``lam * loss(batch) + (1 - lam) * loss(batch[perm])``; for the teacher term this equals (CE:
    exactly; KL: up to a constant, so in gradient) distilling from the mixed teacher distribution."""
    from bench.train.task import permute_batch

    torch.manual_seed(0)
    s, batch = _batch()
    perm, lam, kd_lam, T = torch.randperm(len(s)), 0.35, 0.2, 2.0
    loss = KDLoss(lam=kd_lam, T=T, soft_target=soft_target)
    s_task, s_ref = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    task = lam * loss(s_task, batch) + (1 - lam) * loss(s_task, permute_batch(batch, perm))

    p_t = F.softmax(batch["teacher_logits"] / T, -1)
    p_mix = lam * p_t + (1 - lam) * p_t[perm]
    hard = lam * F.cross_entropy(s_ref, batch["label"]) + (1 - lam) * F.cross_entropy(s_ref, batch["label"][perm])
    ref = kd_lam * hard + (1 - kd_lam) * T * T * (-p_mix * F.log_softmax(s_ref / T, -1)).mean()
    if soft_target == "ce":
        torch.testing.assert_close(task, ref)
    task.backward()
    ref.backward()
    torch.testing.assert_close(s_task.grad, s_ref.grad)


# --- ensembles ----------------------------------------------------------------------------------------------------

def _teachers(n: int = 400, k: int = 5, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Teachers of graded quality with per-class biases (what a bias term can fix), on the same clips."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(C, (n,), generator=g)
    onehot = F.one_hot(y, C).float()
    teachers = [onehot * (0.6 + 0.4 * i) + torch.randn(n, C, generator=g) * (1.5 - 0.2 * i)
                + torch.randn(C, generator=g) for i in range(k)]
    return teachers, y


def _loss_acc(z: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    return float(F.cross_entropy(z, y)), float((z.argmax(1) == y).float().mean())


def test_average_logits():
    teachers, _ = _teachers(n=20, k=3)
    torch.testing.assert_close(average_logits(teachers), (teachers[0] + teachers[1] + teachers[2]) / 3)
    with pytest.raises(ValueError):
        average_logits([teachers[0], teachers[1][:, :5]])


def test_fusion_beats_average_and_best_teacher_on_its_fitting_data():
    teachers, y = _teachers()
    fusion = TeacherFusion(max_iter=30).fit(teachers, y, split="split25")
    fused_loss, fused_acc = _loss_acc(fusion.transform(teachers), y)
    avg_loss, avg_acc = _loss_acc(average_logits(teachers), y)
    singles = [_loss_acc(z, y) for z in teachers]
    best_loss, best_acc = min(singles, key=lambda la: (-la[1], la[0]))
    assert fused_acc >= max(avg_acc, best_acc)
    assert fused_loss <= min(avg_loss, best_loss) + 1e-6
    assert fusion.info["scores"]["fit from average"]["loss"] <= fusion.info["scores"]["average"]["loss"]
    assert fusion.info["chosen"].startswith("fit from")


def test_fusion_falls_back_to_an_accurate_reference():
    """A confidently wrong teacher: the CE optimum shrinks it towards uniform and loses accuracy; fit keeps the
    teacher itself rather than lose accuracy."""
    g = torch.Generator().manual_seed(0)
    n = 300
    y = torch.randint(3, (n,), generator=g)
    z = torch.randn(n, 3, generator=g) * 0.1
    z[torch.arange(n), y] += 0.3
    wrong = torch.rand(n, generator=g) < 0.3
    z[wrong, (y[wrong] + 1) % 3] += 5.0
    fusion = TeacherFusion(max_iter=30).fit([z], y, split="train")
    assert _loss_acc(fusion.transform([z]), y)[1] == _loss_acc(z, y)[1]
    assert not fusion.info["chosen"].startswith("fit from")


def test_fusion_is_deterministic_and_round_trips():
    teachers, y = _teachers(n=200, k=3)
    a = TeacherFusion(max_iter=15).fit(teachers, y, split="validation")
    b = TeacherFusion(max_iter=15).fit(teachers, y, split="validation")
    assert torch.equal(a.weights, b.weights) and torch.equal(a.bias, b.bias)
    state = json.loads(json.dumps(a.to_dict()))
    c = TeacherFusion.from_dict(state)
    torch.testing.assert_close(c.transform(teachers), a.transform(teachers))
    assert c.info["split"] == "validation" and a.weights.shape == (3,) and a.bias.shape == (C,)
    with pytest.raises(ValueError):
        a.transform(teachers[:2])


@pytest.mark.parametrize("split", ["test", "dev-test", "TEST"])
def test_fusion_refuses_the_test_split(split):
    teachers, y = _teachers(n=20, k=2)
    with pytest.raises(ValueError, match="never on the test split"):
        TeacherFusion().fit(teachers, y, split=split)
