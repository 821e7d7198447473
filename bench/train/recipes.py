"""Pieces several systems share: the augmentation set a config asks for, a task built from it, and
device-specific fine-tuning as a reusable stage.

Config keys understood (all optional): ``roll_seconds``; ``fms_p``, ``fms_alpha``, ``fms_per_batch``;
``dir_p`` with ``adir`` (bool) and ``adir_threshold`` (number or ``"mean"``); ``mixup_alpha`` (in OptimConfig).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from torch import nn

from bench.augment import AutoDeviceImpulseResponse, DeviceImpulseResponse, FreqMixStyle, TimeRoll
from bench.models.base import SAMPLE_RATE, ASCModel
from bench.train.stages import StageContext
from bench.train.task import ClassifierTask, LossFn, OptimConfig, cross_entropy


def augmentations(ctx: StageContext, cfg: dict[str, Any]) -> tuple[list[nn.Module], list[nn.Module]]:
    """(waveform augmentations, feature augmentations) for a config."""
    wave: list[nn.Module] = []
    if cfg.get("roll_seconds", 0) > 0:
        wave.append(TimeRoll(int(cfg["roll_seconds"] * SAMPLE_RATE)))
    if cfg.get("dir_p", 0) > 0:
        ref = ctx.device_index(ctx.manifest.reference_device)
        if cfg.get("adir"):
            threshold = cfg.get("adir_threshold", 323.0)
            aug = AutoDeviceImpulseResponse(ctx.impulse_responses(), ref, cfg["dir_p"], threshold)
            if threshold == "mean":
                rows = ctx.clips("fit")["row"].to_numpy()
                aug.calibrate(ctx.env.store.waveforms(chunk) for chunk in np.array_split(rows, max(1, len(rows) // 512)))
        else:
            aug = DeviceImpulseResponse(ctx.impulse_responses(), ref, cfg["dir_p"])
        wave.append(aug)
    feats: list[nn.Module] = []
    if cfg.get("fms_p", 0) > 0:
        feats.append(FreqMixStyle(cfg["fms_p"], cfg.get("fms_alpha", 0.3), per_sample=not cfg.get("fms_per_batch")))
    return wave, feats


def make_task(ctx: StageContext, model: ASCModel, cfg: dict[str, Any], loss: LossFn = cross_entropy) -> ClassifierTask:
    wave, feats = augmentations(ctx, cfg)
    return ClassifierTask(model, OptimConfig.from_dict(cfg), wave, feats, loss)


def per_device_config(config: dict[str, Any], device: str) -> dict[str, Any]:
    """The stage config with ``per_device.<device>`` overrides applied (e.g. fewer epochs for device a)."""
    return {**config, **config.get("per_device", {}).get(device, {})}


def fine_tune_per_device(ctx: StageContext, base_state: dict[str, Any],
                         build: Callable[[ASCModel, dict[str, Any]], ClassifierTask] | None = None,
                         devices: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Device-specific fine-tuning: a copy of the general model per training device, fine-tuned on that device's
    clips only (all parameters, fresh optimiser, per-device overrides from ``per_device``). Devices without a model
    fall back to the general one at inference. Returns ``{device: state_dict}``."""
    build = build or (lambda model, cfg: make_task(ctx, model, cfg))
    out = {}
    for device in devices or list(ctx.manifest.training_devices):
        cfg = per_device_config(ctx.config, device)
        train = ctx.clips("fit", [device])
        if len(train) == 0:
            continue
        model = ctx.create_model()
        model.load_state_dict(base_state)
        ctx.fit(build(model, cfg), train, ctx.clips("val", [device]), name=f"device-{device}")
        out[device] = model.state_dict()
    return out
