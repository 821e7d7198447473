"""The DCASE 2025 Task 1 baseline, reimplemented (architectures.md §2).

1. general: CP-Mobile trained on the training split with AdamW, warm-up + cosine schedule (per step), time roll,
   frequency masking and Freq-MixStyle; the last epoch is kept (as the official recipe).
2. device_specific: a copy per training device fine-tuned on that device's clips, Freq-MixStyle off.
Deployment: fp16; devices without a model (s4-s6, unknown) use the general model.
"""

from __future__ import annotations

import torch

from bench.submission import ModelSubmission
from bench.train.recipes import fine_tune_per_device, make_task


def general(ctx) -> dict:
    model = ctx.create_model()
    ctx.fit(make_task(ctx, model, ctx.config), ctx.clips("fit"), ctx.clips("val"))
    return {"general": model.state_dict()}


def device_specific(ctx) -> dict:
    return fine_tune_per_device(ctx, ctx.previous["general"]["general"])


def _load(ctx, state):
    model = ctx.create_model()
    model.load_state_dict(state)
    return model.eval()


def _deploy_dtype(ctx) -> torch.dtype:
    return getattr(torch, ctx.config["deploy_dtype"])


def submission(ctx) -> ModelSubmission:
    general_model = _load(ctx, ctx.previous["general"]["general"])
    devices = {d: _load(ctx, s) for d, s in ctx.previous["device_specific"].items()}
    return ModelSubmission.from_models("baseline", general_model, ctx.classes, devices, dtype=_deploy_dtype(ctx))


def extra_submissions(ctx) -> dict:
    """The general model alone, so the board shows what device-specific fine-tuning adds."""
    general_model = _load(ctx, ctx.previous["general"]["general"])
    return {"general": (ModelSubmission.from_models("baseline-general", general_model, ctx.classes,
                                                    dtype=_deploy_dtype(ctx)), "ablation")}
