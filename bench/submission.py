"""A submission: the DCASE 2025 inference API, in-process.

Inputs are built from waveforms and device ids; each device id has its own model, ids without one fall back to the
general model; ``predict`` returns logits in a declared class order. Our trained systems, third-party checkpoints and
(through an adapter) official inference packages all reach the scorer in this one shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from bench.models import create_model
from bench.models.base import SAMPLE_RATE, ASCModel
from bench.score.quantize import rebuild_qat

# The device ids the official complexity check (test_complexity.py) walks through.
OFFICIAL_DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10")
GENERAL = "general"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8}


class SubmissionError(RuntimeError):
    """Something about a submission that a user must fix; the message names the submission."""


class Submission:
    """Base class. Subclasses provide ``load_inputs`` and ``get_model_for_device``."""

    name: str = "submission"
    class_order: list[str]
    sample_rate: int = SAMPLE_RATE

    def load_inputs(self, waves: torch.Tensor, device_ids: Sequence[str]) -> torch.Tensor:
        """Model-ready inputs ``[B, ...]`` for 32 kHz waveforms ``[B, T]``."""
        raise NotImplementedError

    def get_model_for_device(self, device_id: str) -> nn.Module:
        raise NotImplementedError

    def deploy_dtype(self, device_id: str) -> torch.dtype:
        """The dtype the device model is deployed in (decides its parameter bytes)."""
        return torch.float32

    def counted_model_for_device(self, device_id: str) -> nn.Module:
        """The float model the official check counts (for INT8 deployments: the model before conversion)."""
        return self.get_model_for_device(device_id)

    def input_key(self) -> tuple | None:
        """Submissions with equal keys compute identical inputs (the scorer then computes them once)."""
        return None

    @torch.inference_mode()
    def predict(self, waves: torch.Tensor, device_ids: Sequence[str]) -> torch.Tensor:
        """Float32 logits ``[B, n_classes]``; clips are routed to their device's model (mixed batches are fine)."""
        if len(device_ids) != len(waves):
            raise SubmissionError(f"{self.name}: {len(waves)} waveforms but {len(device_ids)} device ids")
        return self.predict_inputs(self.load_inputs(waves, device_ids), device_ids)

    @torch.inference_mode()
    def predict_inputs(self, inputs: torch.Tensor, device_ids: Sequence[str]) -> torch.Tensor:
        """The model half of :meth:`predict`, on inputs from :meth:`load_inputs`."""
        out: torch.Tensor | None = None
        groups: dict[int, tuple[nn.Module, str, list[int]]] = {}
        for i, dev in enumerate(device_ids):
            model = self.get_model_for_device(dev)
            groups.setdefault(id(model), (model, dev, []))[2].append(i)
        for model, dev, idx in groups.values():
            dtype = self.deploy_dtype(dev)
            x = inputs[idx]
            x = x.to(dtype) if dtype in (torch.float16, torch.bfloat16) else x
            try:
                y = model(x).float()
            except Exception as exc:
                raise SubmissionError(f"{self.name}: model for device {dev!r} failed on input {tuple(x.shape)}: "
                                      f"{type(exc).__name__}: {exc}") from exc
            if out is None:
                out = torch.empty(len(inputs), y.shape[1])
            out[idx] = y
        return out


class ModelSubmission(Submission):
    """Front-end + a general model + optional device-specific models (all sharing the front-end)."""

    def __init__(self, name: str, frontend: nn.Module, general: nn.Module, class_order: Sequence[str],
                 device_models: dict[str, nn.Module] | None = None, dtype: torch.dtype = torch.float32,
                 float_models: dict[str, nn.Module] | None = None, arch: str | None = None,
                 arch_config: dict | None = None, qat_states: dict[str, dict] | None = None):
        self.name = name
        self.qat_states = qat_states or {}  # for INT8 from QAT: the prepared states the INT8 models rebuild from
        self.arch, self.arch_config = arch, dict(arch_config or {})  # registry name, to save and rebuild
        self.frontend = frontend.eval()
        self.general = general.eval()
        self.device_models = {d: m.eval() for d, m in (device_models or {}).items()}
        self.class_order = list(class_order)
        self.dtype = dtype
        self.float_models = float_models or {}
        for m in (self.general, *self.device_models.values()):
            if dtype in (torch.float16, torch.bfloat16):
                m.to(dtype)

    @torch.inference_mode()
    def load_inputs(self, waves: torch.Tensor, device_ids: Sequence[str]) -> torch.Tensor:
        return self.frontend(waves.float())

    def input_key(self) -> tuple | None:
        if self.arch:
            return ("registry", self.arch, json.dumps(self.arch_config, sort_keys=True, default=str))
        return ("frontend", id(self.frontend))

    def get_model_for_device(self, device_id: str) -> nn.Module:
        return self.device_models.get(device_id, self.general)

    def deploy_dtype(self, device_id: str) -> torch.dtype:
        return self.dtype

    def counted_model_for_device(self, device_id: str) -> nn.Module:
        if self.float_models:
            return self.float_models.get(device_id, self.float_models[GENERAL])
        return self.get_model_for_device(device_id)

    def replace_models(self, name: str, general: nn.Module, device_models: dict[str, nn.Module],
                       dtype: torch.dtype) -> "ModelSubmission":
        """The same submission with other weights (e.g. its INT8 conversion), keeping the float models to count."""
        floats = self.float_models or {GENERAL: self.general, **self.device_models}
        return ModelSubmission(name, self.frontend, general, self.class_order, device_models, dtype, floats,
                               self.arch, self.arch_config)

    @classmethod
    def from_qat(cls, name: str, float_model: ASCModel, prepared_state: dict, class_order: Sequence[str]
                 ) -> "ModelSubmission":
        """INT8 deployment of a QAT-fine-tuned registry model (general model only); the float architecture is what
        the official check counts, at 1 byte per parameter."""
        example = torch.zeros(float_model.input_shape())
        int8 = rebuild_qat(float_model.net, example, prepared_state)
        return cls(name, float_model.frontend, int8, class_order, dtype=torch.int8,
                   float_models={GENERAL: float_model.net}, arch=float_model.arch_name,
                   arch_config=float_model.arch_config, qat_states={GENERAL: prepared_state})

    @classmethod
    def from_models(cls, name: str, general: ASCModel, class_order: Sequence[str],
                    device_models: dict[str, ASCModel] | None = None,
                    dtype: torch.dtype = torch.float32) -> "ModelSubmission":
        """Build from registry models (they share the general model's front-end)."""
        return cls(name, general.frontend, general.net, class_order,
                   {d: m.net for d, m in (device_models or {}).items()}, dtype, arch=general.arch_name,
                   arch_config=general.arch_config)


# ---- on disk -------------------------------------------------------------------------------------------------------

def save_submission(sub: ModelSubmission, path: Path, extra: dict | None = None) -> Path:
    """Write ``submission.json`` + ``models.pt`` (float state dicts of the general and device models)."""
    if not sub.arch:
        raise SubmissionError(f"{sub.name}: cannot be saved without its registry architecture name")
    path.mkdir(parents=True, exist_ok=True)
    dtype_name = next(k for k, v in DTYPES.items() if v == sub.dtype)
    info = {"format": 1, "name": sub.name, "class_order": sub.class_order, "arch": sub.arch,
            "arch_config": sub.arch_config, "deploy_dtype": dtype_name, "devices": sorted(sub.device_models),
            "quantization": "qat-fx-x86" if sub.qat_states else None, **(extra or {})}
    if sub.qat_states:
        states = sub.qat_states
    else:
        states = {GENERAL: {k: v.float() for k, v in sub.general.state_dict().items()}}
        states.update({d: {k: v.float() for k, v in m.state_dict().items()} for d, m in sub.device_models.items()})
    torch.save(states, path / "models.pt")
    (path / "submission.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return path


def load_submission(path: str | Path) -> ModelSubmission:
    """Rebuild a saved submission (weights loaded with ``weights_only=True``)."""
    path = Path(path)
    info_path = path / "submission.json"
    if not info_path.exists():
        raise SubmissionError(f"{path}: no submission.json; pass a folder written by `bench run` (…/submission)")
    info = json.loads(info_path.read_text())
    states = torch.load(path / "models.pt", map_location="cpu", weights_only=True)
    if info.get("quantization") == "qat-fx-x86":
        model = create_model(info["arch"], **info["arch_config"])
        return ModelSubmission.from_qat(info["name"], model.eval(), states[GENERAL], info["class_order"])
    models = {}
    frontend = None
    for key, state in states.items():
        model = create_model(info["arch"], **info["arch_config"])
        try:
            model.net.load_state_dict(state)
        except RuntimeError as exc:
            raise SubmissionError(f"{path}: weights for {key!r} do not fit {info['arch']}: {exc}") from exc
        frontend = frontend or model.frontend
        models[key] = model.net
    general = models.pop(GENERAL)
    return ModelSubmission(info["name"], frontend, general, info["class_order"], models,
                           DTYPES[info["deploy_dtype"]], arch=info["arch"], arch_config=info["arch_config"])
