"""Adaptive KD with a device-aware teacher (Jeong & Kim, DCASE 2025 Task 1, arXiv 2509.09262;
inference package wa976/dcase2025_task1_inference): teachers -> distillation -> device-specific fine-tuning.

1. teachers: two PaSST teachers trained by the harness (shared cache): a baseline teacher (cross-entropy) and the
   generalization expert (cross-entropy + Device-Aware Feature Alignment, bench.train.dafa), both on
   device-stratified batches so that DAFA is the only difference between them.
2. distill: the DCASE 2025 baseline network on the PaSST-style mel of their package, trained with
   lam * CE + (1 - lam) * T^2 * KL on the teachers' combined logits (equal weights, or per-device weights fitted on
   validation), with Freq-MixStyle and Mixup on its inputs (teacher targets mixed like the labels).
3. device_specific: a copy of the distilled student per training device, fine-tuned on that device's clips; each
   keeps its best epoch on that device's validation clips (the authors selected on the test split; we never do).
Deployment: float16; devices without a model (s4-s6, unknown ids) use the distilled general student.
"""

from __future__ import annotations

from bench.config import reads
from bench.distill import KD
from bench.models import MODEL
from bench.submission import DEPLOY, ModelSubmission
from bench.train.recipes import AUGMENT, PER_DEVICE, fine_tune_per_device
from bench.train.task import OPTIM
from bench.train.teachers import fit_distilled, teacher_stage, teacher_submissions

teachers = teacher_stage


@reads(MODEL, OPTIM, AUGMENT, KD)
def distill(ctx) -> dict:
    return {"general": fit_distilled(ctx, ctx.create_model()).model.state_dict()}


@reads(MODEL, OPTIM, AUGMENT, PER_DEVICE)
def device_specific(ctx) -> dict:
    return fine_tune_per_device(ctx, ctx.previous["distill"]["general"])


def _models(ctx):
    general = ctx.create_model(state=ctx.previous["distill"]["general"])
    return general, {d: ctx.create_model(state=s) for d, s in ctx.previous["device_specific"].items()}


@reads(MODEL, DEPLOY)
def submission(ctx) -> ModelSubmission:
    general, devices = _models(ctx)
    return ModelSubmission.per_device("adaptive-kd", ctx.classes, general, devices, ctx.config["deploy_dtype"])


@reads(MODEL, DEPLOY)
def extra_submissions(ctx) -> dict:
    """The distilled general student on every device (no device-specific fine-tuning), and the teachers."""
    general, _ = _models(ctx)
    rows = {"general": (ModelSubmission.single("adaptive-kd-general", general, ctx.classes,
                                               ctx.config["deploy_dtype"]), "ablation")}
    rows.update(teacher_submissions(ctx))
    return rows
