"""Quantization-aware training as a reusable stage body, for any network built from standard modules.

The float network is prepared with fake quantization (FX, x86 qconfig: conv-BN-ReLU fused), fine-tuned through the
same Lightning task as every other stage, then converted to INT8. What is stored is the prepared model's state
(weights, BN statistics, observer ranges), from which ``bench.submission.Deployment.qat`` rebuilds the INT8
network. Call it once per device model (``name=f"qat-{device}"``) for per-device INT8 models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch

from bench.data.clips import ClipSet
from bench.models.base import ASCModel
from bench.score.quantize import prepare_qat
from bench.train.recipes import make_task
from bench.train.stages import StageContext
from bench.train.task import LossFn, cross_entropy


def prepared_model(model: ASCModel) -> ASCModel:
    """The same front-end with a fake-quantized copy of the network."""
    return ASCModel(model.frontend, prepare_qat(model.net, torch.zeros(model.input_shape())))


def quantization_aware_training(ctx: StageContext, model: ASCModel, cfg: Mapping[str, Any], train: ClipSet,
                                val: ClipSet | None = None, loss: LossFn = cross_entropy,
                                extras: Callable | None = None, name: str = "qat") -> dict[str, Any]:
    """Fine-tune ``model`` with fake quantization (``cfg`` declares ``OPTIM`` and ``AUGMENT``); returns
    ``{"prepared": state_dict}``."""
    qmodel = prepared_model(model)
    ctx.fit(make_task(ctx, qmodel, cfg, loss), train, val, name=name, extras=extras)
    return {"prepared": qmodel.net.state_dict()}
