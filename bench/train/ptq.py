"""Static INT8 post-training quantization per device model, as a reusable stage body.

Each device model is calibrated on its own device's validation clips; a device with fewer than ``min_device_clips``
of them (and the general ``unknown`` model) is calibrated on all validation clips instead, and the record says so.
The INT8 model must keep its float model's accuracy on the same validation clips (the device's own, or all of them
for a device with too few to tell a quantization loss from noise): a drop of more than
``max_int8_drop`` (default 1 point of macro class-wise accuracy) is written into the submission's notes, so the
leaderboard row says it. The test split is never used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from bench.config import Key, Schema
from bench.data.clips import ClipSet
from bench.identity import digest_of
from bench.models.base import ASCModel
from bench.score.metrics import macro_accuracy
from bench.score.quantize import ACTIVATION_OBSERVERS, RECIPE_KEYS, observe_static
from bench.submission import UNKNOWN, Deployment, ModelSubmission
from bench.train.stages import StageContext

PTQ = Schema("ptq", {
    "calib_clips": Key(int, 256, "validation clips each device model is calibrated on (at most)"),
    "min_device_clips": Key(int, 64, "fewer validation clips of a device than this: calibrate on all of them"),
    "max_int8_drop": Key(float, 0.01, "largest INT8 - float loss of validation macro accuracy accepted silently"),
    "calib_batch_size": Key(int, 64, "clips per calibration batch"),
    "activation_observer": Key(str, "histogram", "how activation ranges are observed: histogram (the x86 default, "
                               "minimises the quantization error) or minmax (the observed extremes)",
                               choices=tuple(ACTIVATION_OBSERVERS)),
    "reduce_range": Key(bool, None, "7-bit activations (default: the backend's, true for x86: fbgemm's AVX2 "
                        "kernels can saturate with 8 bits)"),
    "float_modules": Key(list, [], "class names of submodules kept in float between a dequantize and a quantize "
                         "(e.g. [\"ResidualNorm\"]: a parameter-free normalisation; their parameters, if any, count "
                         "in float32)"),
    "engine": Key(str, None, "the quantized engine that packs the weights, i.e. whose kernels run the INT8 model: "
                  "onednn (the default on x86), fbgemm (2x faster for TF-SepNet on AVX2), x86, qnnpack; the values "
                  "are the same, a requantized value may round differently, rarely", choices=("onednn", "fbgemm",
                                                                                          "x86", "qnnpack")),
})


@torch.inference_mode()
def _features(frontend: torch.nn.Module, clips: ClipSet, batch: int = 128) -> torch.Tensor:
    rows = clips.rows
    return torch.cat([frontend(torch.from_numpy(clips.store.waveforms(rows[i:i + batch])))
                      for i in range(0, len(rows), batch)])


@torch.inference_mode()
def _logits(net: torch.nn.Module, feats: torch.Tensor, batch: int = 128) -> np.ndarray:
    return torch.cat([net(feats[i:i + batch]).float() for i in range(0, len(feats), batch)]).numpy()


def _macro(clips: ClipSet, logits: np.ndarray) -> float:
    labels = clips.labels
    return macro_accuracy(labels, (logits.argmax(1) == labels).astype(np.float64), len(clips.classes))


def quantize_per_device(ctx: StageContext, models: Mapping[str, ASCModel], what: str = "device model"
                        ) -> dict[str, Any]:
    """INT8 of each ``{device: float model}`` (``unknown``: the general model), calibrated and checked on
    validation clips. Returns artifacts for :func:`ptq_submission`: per device the architecture, the observed
    prepared state and the calibration/accuracy record (with the quantization recipe). ``what`` names the models
    in the log."""
    cfg = ctx.config
    recipe = {k: cfg[k] for k in RECIPE_KEYS}
    val = ctx.clips("val")
    rng = np.random.default_rng(ctx.seed)
    out: dict[str, Any] = {"models": {}, "report": {}}
    features: dict[str, torch.Tensor] = {}  # the validation clips' features, once per front-end (all models share it)
    for device, model in models.items():
        model.eval()
        frontend = digest_of([model.arch_name, model.arch_config])
        if frontend not in features:
            features[frontend] = _features(model.frontend, val)
        own = np.arange(len(val)) if device == UNKNOWN else np.flatnonzero(val.frame["device"].to_numpy() == device)
        fallback = len(own) < cfg["min_device_clips"]
        calib = np.arange(len(val)) if fallback else own
        check = ClipSet(val.store, val.frame.iloc[calib], val.classes, val.device_vocab)
        pick = calib[np.sort(rng.choice(len(calib), size=min(len(calib), cfg["calib_clips"]), replace=False))]
        feats = features[frontend][pick]
        observed = observe_static(model.net, list(torch.split(feats, cfg["calib_batch_size"])), feats[:1], recipe)
        record = {"calibration": f"{len(pick)} validation clips of " + (
            f"all devices ({device} has {len(own)} < {cfg['min_device_clips']})" if fallback and device != UNKNOWN
            else "all devices" if device == UNKNOWN else f"device {device}"), "quantization": recipe}
        deployed = Deployment(model.arch_name, model.arch_config, "int8-ptq", observed.state_dict(), record,
                              prepared=observed)
        # checked on the calibration pool: a few clips of one device (14-23 of s1-s3 here) swing it by +-10 points
        pool = features[frontend][calib]
        float_acc, int8_acc = _macro(check, _logits(model.net, pool)), _macro(check, _logits(deployed.net, pool))
        record.update(validation_clips=len(check), float_val_acc=float_acc, int8_val_acc=int8_acc,
                      drop=float_acc - int8_acc, limit=cfg["max_int8_drop"],
                      within_limit=float_acc - int8_acc <= cfg["max_int8_drop"])
        out["models"][device] = {"arch": model.arch_name, "arch_config": model.arch_config,
                                 "state": observed.state_dict()}
        out["report"][device] = record
        ctx.env.console.print(f"    INT8 {what} {device}: validation {100 * float_acc:.1f} → {100 * int8_acc:.1f} % "
                              f"({record['calibration']})")
    return out


def ptq_submission(name: str, class_order, artifacts: Mapping[str, Any]) -> ModelSubmission:
    """The INT8 submission from :func:`quantize_per_device` artifacts; a device model that lost more than the
    stage's ``max_int8_drop`` on validation is named in the notes."""
    deployments = {dev: Deployment(m["arch"], m["arch_config"], "int8-ptq", m["state"], artifacts["report"][dev])
                   for dev, m in artifacts["models"].items()}
    notes = [f"INT8 PTQ loses {100 * r['drop']:.1f} points of validation macro accuracy on device model {dev} "
             f"(limit {100 * r['limit']:.1f})" for dev, r in artifacts["report"].items() if not r["within_limit"]]
    return ModelSubmission(name, class_order, deployments, notes)
