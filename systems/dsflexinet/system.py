"""DS-FlexiNet (Chen et al., arXiv 2412.20722; architectures.md §6): teachers -> distillation -> QAT.

1. teachers: CP-ResNet and PaSST teachers trained by the harness on the training split (shared cache).
2. distill: the student (Residual Normalization, Freq-MixStyle, ADIR, time roll, frequency masking) trained with
   alpha * CE(labels) + (1 - alpha) * CE(teacher targets); targets are the teachers' fused logits (one weight per
   teacher, one bias per class, fitted on validation clips), their average, or none (variants kd_average, no_kd).
3. qat: fake-quantized fine-tuning with the same loss, then conversion to INT8 (x86/fbgemm). That is the deployed
   model; the float student is scored beside it (paper Table II).
"""

from __future__ import annotations

from bench.distill import KDLoss
from bench.submission import ModelSubmission
from bench.train.qat import quantization_aware_training
from bench.train.recipes import make_task
from bench.train.task import cross_entropy
from bench.train.teachers import kd_targets, teacher_stage, teacher_submissions


def teachers(ctx) -> dict:
    return teacher_stage(ctx)


def _loss(ctx):
    """(task loss, per-clip extras) for the configured KD mode."""
    if ctx.config["kd"] == "none":
        return cross_entropy, None
    targets = kd_targets(ctx, ctx.previous["teachers"], ctx.config["kd"])
    loss = KDLoss(ctx.config["kd_lambda"], ctx.config["kd_temperature"], ctx.config["kd_reduction"],
                  ctx.config["kd_soft_target"])
    return loss, targets.extras


def distill(ctx) -> dict:
    model = ctx.create_model()
    loss, extras = _loss(ctx)
    ctx.fit(make_task(ctx, model, ctx.config, loss), ctx.clips("fit"), ctx.clips("val"), extras=extras)
    return {"student": model.state_dict()}


def qat(ctx) -> dict:
    model = ctx.create_model()
    model.load_state_dict(ctx.previous["distill"]["student"])
    loss, extras = _loss(ctx)
    return quantization_aware_training(ctx, model, ctx.config, ctx.clips("fit"), ctx.clips("val"), loss, extras)


def _name(ctx) -> str:
    return f"dsflexinet-{ctx.config['model'].rsplit('_', 1)[-1]}"


def submission(ctx) -> ModelSubmission:
    return ModelSubmission.from_qat(_name(ctx), ctx.create_model().eval(), ctx.previous["qat"]["prepared"],
                                    ctx.classes)


def extra_submissions(ctx) -> dict:
    student = ctx.create_model()
    student.load_state_dict(ctx.previous["distill"]["student"])
    rows = {"float": (ModelSubmission.from_models(f"{_name(ctx)}-float", student.eval(), ctx.classes), "ablation")}
    rows.update(teacher_submissions(ctx))
    return rows
