"""DS-FlexiNet (Chen et al., arXiv 2412.20722): teachers -> distillation -> QAT.

1. teachers: CP-ResNet and PaSST teachers trained by the harness on the training split (shared cache).
2. distill: the student (Residual Normalization, Freq-MixStyle, ADIR, time roll, frequency masking) trained with
   alpha * CE(labels) + (1 - alpha) * CE(teacher targets); targets are the teachers' fused logits (one weight per
   teacher, one bias per class, fitted on validation clips), their average, or none (variants kd_average, no_kd).
3. qat: fake-quantized fine-tuning with the same loss, then conversion to INT8. That is the deployed model; the
   float student is scored beside it (paper Table II).
"""

from __future__ import annotations

from bench.config import reads
from bench.distill import KD
from bench.models import MODEL
from bench.submission import UNKNOWN, Deployment, ModelSubmission
from bench.train.qat import quantization_aware_training
from bench.train.recipes import AUGMENT
from bench.train.task import OPTIM
from bench.train.teachers import distillation, fit_distilled, teacher_stage, teacher_submissions

teachers = teacher_stage


@reads(MODEL, OPTIM, AUGMENT, KD)
def distill(ctx) -> dict:
    return {"student": fit_distilled(ctx, ctx.create_model()).model.state_dict()}


@reads(MODEL, OPTIM, AUGMENT, KD)
def qat(ctx) -> dict:
    model = ctx.create_model(state=ctx.previous["distill"]["student"])
    loss, extras = distillation(ctx)
    return quantization_aware_training(ctx, model, ctx.config, ctx.clips("fit"), ctx.clips("val"), loss, extras)


def _name(ctx) -> str:
    return f"dsflexinet-{ctx.config['model'].rsplit('_', 1)[-1]}"


@reads(MODEL)
def submission(ctx) -> ModelSubmission:
    deployed = Deployment.qat(ctx.create_model().eval(), ctx.previous["qat"]["prepared"])
    return ModelSubmission(_name(ctx), ctx.classes, {UNKNOWN: deployed})


@reads(MODEL)
def extra_submissions(ctx) -> dict:
    student = ctx.create_model(state=ctx.previous["distill"]["student"])
    rows = {"float": (ModelSubmission.single(f"{_name(ctx)}-float", student, ctx.classes), "ablation")}
    rows.update(teacher_submissions(ctx))
    return rows
