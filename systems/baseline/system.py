"""The DCASE 2025 Task 1 baseline, reimplemented (architectures.md §2).

1. general: CP-Mobile trained on the training split with AdamW, warm-up + cosine schedule (per step), time roll,
   frequency masking and Freq-MixStyle; the last epoch is kept (as the official recipe).
2. device_specific: a copy per training device fine-tuned on that device's clips, Freq-MixStyle off.
Deployment: fp16; devices without a model (s4-s6, unknown) use the general model.
"""

from __future__ import annotations

import torch

from bench.augment import FreqMixStyle, TimeRoll
from bench.models.base import SAMPLE_RATE
from bench.submission import ModelSubmission
from bench.train.recipes import fine_tune_per_device
from bench.train.task import ClassifierTask, OptimConfig


def _task(ctx, model, optim: OptimConfig, fms_p: float) -> ClassifierTask:
    roll = TimeRoll(int(ctx.config["roll_seconds"] * SAMPLE_RATE))
    fms = [FreqMixStyle(fms_p, ctx.config.get("fms_alpha", 0.3))] if fms_p > 0 else []
    return ClassifierTask(model, optim, wave_augment=[roll], feature_augment=fms)


def general(ctx) -> dict:
    model = ctx.create_model(freqm=ctx.config["freqm"])
    task = _task(ctx, model, OptimConfig.from_dict(ctx.config), ctx.config["fms_p"])
    ctx.fit(task, ctx.clips("fit"), ctx.clips("val"))
    return {"general": model.state_dict()}


def device_specific(ctx) -> dict:
    base = ctx.previous["general"]["general"]
    return fine_tune_per_device(ctx, base, lambda model, optim: _task(ctx, model, optim, ctx.config["fms_p"]))


def _load(ctx, state):
    model = ctx.create_model(freqm=ctx.config["freqm"])
    model.load_state_dict(state)
    return model.eval()


def submission(ctx) -> ModelSubmission:
    general_model = _load(ctx, ctx.previous["general"]["general"])
    devices = {d: _load(ctx, s) for d, s in ctx.previous["device_specific"].items()}
    return ModelSubmission.from_models("baseline", general_model, ctx.classes, devices,
                                       dtype=getattr(torch, ctx.config["deploy_dtype"]))


def extra_submissions(ctx) -> dict:
    """The general model alone, so the board shows what device-specific fine-tuning adds."""
    general_model = _load(ctx, ctx.previous["general"]["general"])
    return {"general": (ModelSubmission.from_models("baseline-general", general_model, ctx.classes,
                                                    dtype=getattr(torch, ctx.config["deploy_dtype"])), "ablation")}
