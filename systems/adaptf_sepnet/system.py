"""AdapTF-SepNet (Zhou et al., DCASE 2025 Task 1 technical report "AdapTF-SepNet: AudioSet-driven adaptive
pre-training of TF-SepNet for multi-device acoustic scene classification"; TF-SepNet framework yqcai888/
easy_dcase_task1): teachers -> pretrain -> finetune -> distill -> device_specific -> quantize
(the teachers are independent of the student: first, so a second process can train them while one pre-trains).

1. teachers: three BEATs-style transformers trained by the harness — SSL (masked-patch pre-training, then fully
   fine-tuned), SSL+SL (the SSL model trained on the corpus labels too, then fine-tuned), SSL* (the SSL encoder
   frozen, a linear head trained).
2. pretrain: TF-SepNet-64 (depth 17) on a multi-label corpus (AudioSet in the report; the embedded event corpus
   here) with binary cross-entropy; the shared cache keeps one checkpoint per architecture, corpus and recipe.
3. finetune: the pre-trained network (head replaced) on the scenes; best epoch on validation.
4. distill: the fine-tuned TF-SepNet trained on the averaged teachers' logits (KL at temperature 2, label weight
   0.02, Soft-Mixup: teacher targets mixed like the labels).
5. device_specific: from the distilled model, one model per training device on that device's clips (DIR off) and an
   `unknown` model on every training clip (DIR p 0.8), all with the KD loss, every one resuming the distillation
   run's optimizer and schedule state; each keeps its best epoch on its own validation clips.
6. quantize: INT8 static post-training quantization of every device model, calibrated and checked on validation.
Deployment: INT8 per device (126,858 parameters = 126,858 B each, under 128,000 B); ids without a model use
`unknown`.
"""

from __future__ import annotations

from bench.config import Key, Schema, reads
from bench.distill import KD
from bench.models import MODEL
from bench.models.pretrained import checked_weights, load_pretrained
from bench.submission import UNKNOWN, ModelSubmission
from bench.train.ptq import PTQ, ptq_submission, quantize_per_device
from bench.train.recipes import AUGMENT, PER_DEVICE, fine_tune_per_device, make_task, per_device_config
from bench.train.stages import StageError
from bench.train.task import OPTIM
from bench.train.teachers import PRETRAIN, TEACHERS, distillation, fit_distilled, pretrained_weights, \
    stage_pretraining, teacher_stage, teacher_submissions


@reads(TEACHERS)
def teachers(ctx) -> dict:
    """The teachers; their parallel processes pre-train TF-SepNet alongside (the pretrain stage then finds it)."""
    return teacher_stage(ctx, pretrain_stage="pretrain")


FINETUNE = Schema("finetune", {
    "from_pretrained": Key(bool, True, "start from the pre-trained network (false: from scratch, the ablation)"),
})
DEVICE_SPECIFIC = Schema("device_specific", {
    "devices": Key(list, None, "training devices that get a model of their own (default: every training device)"),
    "unknown_model": Key(bool, True, "train the `unknown` model for devices without one (false: they use the "
                         "distilled general model)"),
    "resume_optimizer": Key(bool, True, "every device fit resumes the distillation run's optimizer and schedule "
                            "state (the authors' code); false: a fresh optimizer at the stage's lr"),
})


CHECKPOINT = Schema("checkpoint", {
    "checkpoint": Key(str, None, "local pre-trained weights of the network (a state dict of this architecture, e.g. "
                      "the `pretrain` stage of another run) used instead of pre-training here; never downloaded"),
})


@reads(MODEL, PRETRAIN, CHECKPOINT)
def pretrain(ctx) -> dict:
    if ctx.config["checkpoint"]:
        try:
            return {"weights": checked_weights(ctx.create_model(), ctx.config["checkpoint"])}
        except (FileNotFoundError, ValueError) as exc:
            raise StageError(f"{ctx.env.spec.name}/pretrain: {exc}; or drop `checkpoint` to pre-train here") from None
    weights, budget = pretrained_weights(ctx, *stage_pretraining(ctx))
    ctx.add_budget(budget)
    return {"weights": weights}


@reads(MODEL, OPTIM, AUGMENT, FINETUNE)
def finetune(ctx) -> dict:
    model = ctx.create_model()
    if ctx.config["from_pretrained"]:
        load_pretrained(model, ctx.previous["pretrain"]["weights"])
    ctx.fit(make_task(ctx, model, ctx.config), ctx.clips("fit"), ctx.clips("val"))
    return {"model": model.state_dict()}


@reads(MODEL, OPTIM, AUGMENT, KD)
def distill(ctx) -> dict:
    task = fit_distilled(ctx, ctx.create_model(state=ctx.previous["finetune"]["model"]))
    return {"general": task.model.state_dict(), "optimizer": task.final_optimizer_state}


@reads(MODEL, OPTIM, AUGMENT, KD, PER_DEVICE, DEVICE_SPECIFIC)
def device_specific(ctx) -> dict:
    loss, extras = distillation(ctx)
    general = ctx.previous["distill"]["general"]
    resumed = ctx.previous["distill"]["optimizer"] if ctx.config["resume_optimizer"] else None
    out = fine_tune_per_device(ctx, general, ctx.config["devices"], loss=loss, extras=extras,
                               optimizer_state=resumed)
    if ctx.config["unknown_model"]:
        model = ctx.create_model(state=general)
        task = make_task(ctx, model, per_device_config(ctx.config, UNKNOWN), loss, resumed)
        ctx.fit(task, ctx.clips("fit"), ctx.clips("val"), name=f"device-{UNKNOWN}", extras=extras)
        out[UNKNOWN] = model.state_dict()
    return out


@reads(MODEL, PTQ)
def quantize(ctx) -> dict:
    general = ctx.create_model(state=ctx.previous["distill"]["general"])
    devices = {d: ctx.create_model(state=s) for d, s in ctx.previous["device_specific"].items()}
    devices.setdefault(UNKNOWN, general)
    return {"devices": quantize_per_device(ctx, devices), "general": quantize_per_device(ctx, {UNKNOWN: general}, what="general model for")}


@reads(MODEL)
def submission(ctx) -> ModelSubmission:
    return ptq_submission("adaptf-sepnet", ctx.classes, ctx.previous["quantize"]["devices"])


@reads(MODEL)
def extra_submissions(ctx) -> dict:
    """The distilled general model in INT8 on every device (no device models: the report's Table 2 "Without"), the
    float device models (float vs INT8), and the teachers."""
    general = ctx.create_model(state=ctx.previous["distill"]["general"])
    devices = {d: ctx.create_model(state=s) for d, s in ctx.previous["device_specific"].items()}
    float_models = ModelSubmission.per_device("adaptf-sepnet-float", ctx.classes, devices.pop(UNKNOWN, general),
                                              devices)
    float_models.int8_row = "adaptf-sepnet"  # the system's own PTQ of these models, not the scorer's generic one
    rows = {"general": (ptq_submission("adaptf-sepnet-general", ctx.classes, ctx.previous["quantize"]["general"]),
                        "ablation"), "float": (float_models, "ablation")}
    rows.update(teacher_submissions(ctx))
    return rows
