"""Pieces several systems share: the augmentations a config asks for, a task built from them, and device-specific
fine-tuning as a reusable stage body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
from torch import nn

from bench.augment import AutoDeviceImpulseResponse, DeviceImpulseResponse, FreqMixStyle, TimeRoll
from bench.config import Key, Schema, StageConfig
from bench.models.base import SAMPLE_RATE, ASCModel
from bench.train.stages import StageContext
from bench.train.task import OPTIM, ClassifierTask, LossFn, OptimConfig, cross_entropy

AUGMENT = Schema("augment", {
    "roll_seconds": Key(float, 0.0, "waveform time roll, up to +-this many seconds (0: off)"),
    "fms_p": Key(float, 0.0, "Freq-MixStyle probability per batch (0: off)"),
    "fms_alpha": Key(float, 0.3, "Freq-MixStyle Beta(alpha, alpha)"),
    "fms_per_batch": Key(bool, False, "one Freq-MixStyle lambda per batch instead of per sample"),
    "dir_p": Key(float, 0.0, "device impulse response augmentation probability for reference-device clips (in "
                 "pre-training: for every corpus clip) (0: off)"),
    "adir": Key(bool, False, "ADIR: DIR only for clips louder than adir_threshold"),
    "adir_threshold": Key((float, str), 323.0, "ADIR energy threshold, or \"mean\": the training clips' mean energy"),
    "irs_dir": Key(str, None, "folder of impulse responses for DIR (default: the dataset's own)"),
})

PER_DEVICE = Schema("per_device", {
    "per_device": Key(dict, {}, "overrides per device id, e.g. { a = { epochs = 1 } }", table=OPTIM | AUGMENT,
                      mapping=True),
})


def augmentations(ctx: StageContext, cfg: Mapping[str, Any], dir_every_clip: bool = False
                  ) -> tuple[list[nn.Module], list[nn.Module]]:
    """(waveform augmentations, feature augmentations) for a config that declares ``AUGMENT``. DIR touches the
    reference device's clips, or with ``dir_every_clip`` every clip (a pre-training corpus has no device labels)."""
    wave: list[nn.Module] = []
    if cfg["roll_seconds"] > 0:
        wave.append(TimeRoll(int(cfg["roll_seconds"] * SAMPLE_RATE)))
    if cfg["dir_p"] > 0:
        ref = None if dir_every_clip else ctx.device_index(ctx.manifest.reference_device)
        if cfg["adir"]:
            threshold = cfg["adir_threshold"]
            aug = AutoDeviceImpulseResponse(ctx.impulse_responses(), ref, cfg["dir_p"], threshold)
            if threshold == "mean":
                rows = ctx.clips("fit").rows
                aug.calibrate(ctx.data.store.waveforms(chunk) for chunk in np.array_split(rows, max(1, len(rows) // 512)))
        else:
            aug = DeviceImpulseResponse(ctx.impulse_responses(), ref, cfg["dir_p"])
        wave.append(aug)
    feats: list[nn.Module] = []
    if cfg["fms_p"] > 0:
        feats.append(FreqMixStyle(cfg["fms_p"], cfg["fms_alpha"], per_sample=not cfg["fms_per_batch"]))
    return wave, feats


def make_task(ctx: StageContext, model: ASCModel, cfg: Mapping[str, Any], loss: LossFn = cross_entropy,
              initial_optimizer_state: dict[str, Any] | None = None) -> ClassifierTask:
    """The task for a config that declares ``OPTIM`` and ``AUGMENT``."""
    wave, feats = augmentations(ctx, cfg)
    return ClassifierTask(model, OptimConfig.from_config(cfg), wave, feats, loss, initial_optimizer_state)


def per_device_config(config: StageConfig, device: str) -> StageConfig:
    """The stage config with ``per_device.<device>`` overrides applied (e.g. fewer epochs for device a)."""
    return config.replace(**config["per_device"].get(device, {}))


def fine_tune_per_device(ctx: StageContext, base_state: dict[str, Any], devices: list[str] | None = None,
                         loss: LossFn = cross_entropy, extras: Callable | None = None,
                         optimizer_state: dict[str, Any] | None = None,
                         build: Callable[[ASCModel, StageConfig], ClassifierTask] | None = None
                         ) -> dict[str, dict[str, Any]]:
    """Device-specific fine-tuning: a copy of the general model per training device, fine-tuned on that device's
    clips only (all parameters) and validated on that device's validation clips.

    ``loss``/``extras`` keep a KD loss and its teacher targets; ``optimizer_state`` starts every device from
    another fit's optimizer and schedule state (else a fresh optimizer); ``select = "best"`` in the config keeps
    each device's best epoch on its own validation clips; ``per_device`` overrides apply. Devices without a model
    fall back to the general one at inference. Returns ``{device: state_dict}``."""
    build = build or (lambda model, cfg: make_task(ctx, model, cfg, loss, optimizer_state))
    out = {}
    for device in devices or list(ctx.manifest.training_devices):
        cfg = per_device_config(ctx.config, device)
        train, val = ctx.clips("fit", [device]), ctx.clips("val", [device])
        if len(train) == 0:
            ctx.note(f"{ctx.stage}: device {device} has no training clips; it uses the general model")
            continue
        if cfg["select"] == "best" and len(val) == 0:
            ctx.note(f"{ctx.stage}: device {device} has no validation clips; its last epoch is kept, not its best")
            cfg = cfg.replace(select="last")
        model = ctx.create_model(state=base_state)
        ctx.fit(build(model, cfg), train, val, name=f"device-{device}", extras=extras)
        out[device] = model.state_dict()
    return out
