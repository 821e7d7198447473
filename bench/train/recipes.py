"""Reusable stages that several systems share."""

from __future__ import annotations

from typing import Any, Callable

from bench.models.base import ASCModel
from bench.train.stages import StageContext
from bench.train.task import ClassifierTask, OptimConfig


def per_device_config(config: dict[str, Any], device: str) -> dict[str, Any]:
    """The stage config with ``per_device.<device>`` overrides applied (e.g. fewer epochs for device a)."""
    return {**config, **config.get("per_device", {}).get(device, {})}


def fine_tune_per_device(ctx: StageContext, base_state: dict[str, Any],
                         make_task: Callable[[ASCModel, OptimConfig], ClassifierTask],
                         devices: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Device-specific fine-tuning: a copy of the general model per training device, fine-tuned on that device's
    clips only (all parameters, fresh optimiser). Devices without a model fall back to the general one at
    inference. Returns ``{device: state_dict}``."""
    out = {}
    for device in devices or list(ctx.manifest.training_devices):
        cfg = per_device_config(ctx.config, device)
        train = ctx.clips("fit", [device])
        if len(train) == 0:
            continue
        model = ctx.create_model()
        model.load_state_dict(base_state)
        task = make_task(model, OptimConfig.from_dict(cfg))
        ctx.fit(task, train, ctx.clips("val", [device]), name=f"device-{device}")
        out[device] = model.state_dict()
    return out
