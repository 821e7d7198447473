"""Quantization-aware training as a reusable stage, for any network built from standard modules.

The float network is prepared with fake quantization (FX, x86 backend: conv-BN-ReLU fused), fine-tuned through the
same Lightning task as every other stage, then converted to INT8. What is stored is the prepared model's state
(weights, BN statistics, observer ranges), from which ``bench.score.quantize.rebuild_qat`` recreates the INT8
network (see ``ModelSubmission.from_qat``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from bench.models.base import ASCModel
from bench.score.quantize import prepare_qat
from bench.train.recipes import make_task
from bench.train.stages import StageContext
from bench.train.task import LossFn, cross_entropy


def example_input(model: ASCModel) -> torch.Tensor:
    return torch.zeros(model.input_shape())


def prepared_model(model: ASCModel) -> ASCModel:
    """The same front-end with a fake-quantized copy of the network."""
    return ASCModel(model.frontend, prepare_qat(model.net, example_input(model)))


def quantization_aware_training(ctx: StageContext, model: ASCModel, cfg: dict[str, Any], train: pd.DataFrame,
                                val: pd.DataFrame | None = None, loss: LossFn = cross_entropy,
                                extras=None) -> dict[str, Any]:
    """Fine-tune ``model`` with fake quantization; returns ``{"prepared": state_dict}``."""
    qmodel = prepared_model(model)
    ctx.fit(make_task(ctx, qmodel, cfg, loss), train, val, name="qat", extras=extras)
    return {"prepared": qmodel.net.state_dict()}


