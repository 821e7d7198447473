"""The DCASE 2025 Task 1 baseline, reimplemented (Schmid et al., arXiv:2505.01747; CPJKU/dcase2025_task1_baseline).

1. general: CP-Mobile trained on the training split with AdamW, warm-up + cosine schedule (per step), time roll,
   frequency masking and Freq-MixStyle; the last epoch is kept (as the official recipe).
2. device_specific: a copy per training device fine-tuned on that device's clips, Freq-MixStyle off.
Deployment: fp16; devices without a model (s4-s6, unknown) use the general model.
"""

from __future__ import annotations

from bench.config import reads
from bench.models import MODEL
from bench.submission import DEPLOY, ModelSubmission
from bench.train.recipes import AUGMENT, PER_DEVICE, fine_tune_per_device, make_task
from bench.train.task import OPTIM


@reads(MODEL, OPTIM, AUGMENT)
def general(ctx) -> dict:
    model = ctx.create_model()
    ctx.fit(make_task(ctx, model, ctx.config), ctx.clips("fit"), ctx.clips("val"))
    return {"general": model.state_dict()}


@reads(MODEL, OPTIM, AUGMENT, PER_DEVICE)
def device_specific(ctx) -> dict:
    return fine_tune_per_device(ctx, ctx.previous["general"]["general"])


@reads(MODEL, DEPLOY)
def submission(ctx) -> ModelSubmission:
    devices = {d: ctx.create_model(state=s) for d, s in ctx.previous["device_specific"].items()}
    general_model = ctx.create_model(state=ctx.previous["general"]["general"])
    return ModelSubmission.per_device("baseline", ctx.classes, general_model, devices, ctx.config["deploy_dtype"])


@reads(MODEL, DEPLOY)
def extra_submissions(ctx) -> dict:
    """The general model alone, so the board shows what device-specific fine-tuning adds."""
    general_model = ctx.create_model(state=ctx.previous["general"]["general"])
    return {"general": (ModelSubmission.single("baseline-general", general_model, ctx.classes,
                                               ctx.config["deploy_dtype"]), "ablation")}
