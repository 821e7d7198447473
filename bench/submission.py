"""A submission: the DCASE 2025 inference API, in-process, as a mapping from device id to a deployed model.

Inputs are built from waveforms and device ids; each device id has its own deployed model, ids without one fall back
to the ``unknown`` entry (the general model); ``predict`` returns logits in a declared class order. Our trained
systems, third-party checkpoints and (through an adapter) official inference packages all reach the scorer in this
one shape.

A :class:`Deployment` is one device model as deployed: its architecture (a registry name, the harness's or the
system's own ``mysys/...``), its form — ``float32``, ``float16``, ``int8-ptq`` (static post-training quantization)
or ``int8-qat`` (quantization-aware training) — the state it is rebuilt from (float weights, or the prepared model's
state with its observer ranges) and, through the architecture, its front-end. :func:`save_submission` and
:func:`load_submission` round-trip every form with bit-identical logits.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import trust
from bench.config import Key, Schema
from bench.errors import SubmissionError
from bench.identity import digest_of, folder_files
from bench.models import create_model
from bench.models.base import SAMPLE_RATE, ASCModel, declared_memory_format
from bench.score.fp16 import fp16_inference
from bench.score.quantize import convert_prepared, observe_static, rebuild_int8

# The device ids the official complexity check (test_complexity.py) walks through.
OFFICIAL_DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10")
UNKNOWN = "unknown"  # the fallback entry: the general model, for every device id without a model of its own
FORMS = {"float32": torch.float32, "float16": torch.float16, "int8-ptq": torch.int8, "int8-qat": torch.int8}
FORMAT = 2

DEPLOY = Schema("deploy", {"deploy_dtype": Key(str, "float32", "dtype the float device models are deployed in",
                                               choices=("float32", "float16"))})


class Submission:
    """Base class. Subclasses provide ``load_inputs`` and ``get_model_for_device``."""

    name: str = "submission"
    class_order: list[str]
    sample_rate: int = SAMPLE_RATE
    notes: list[str] = []
    row_fields: dict = {}  # leaderboard columns the producer knows and the scorer cannot measure (a teacher's gate)

    def load_inputs(self, waves: torch.Tensor, device_ids: Sequence[str]) -> torch.Tensor | list[torch.Tensor]:
        """Model-ready inputs ``[B, ...]`` for 32 kHz waveforms ``[B, T]`` (a list of per-clip tensors when device
        models have front-ends with different output shapes)."""
        raise NotImplementedError

    def get_model_for_device(self, device_id: str) -> nn.Module:
        raise NotImplementedError

    def deploy_dtype(self, device_id: str) -> torch.dtype:
        """The dtype the device model is deployed in (decides its parameter bytes)."""
        return torch.float32

    def counted_model_for_device(self, device_id: str) -> nn.Module:
        """The float model the official check counts (for INT8 deployments: the architecture before conversion)."""
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
    def predict_inputs(self, inputs: torch.Tensor | list[torch.Tensor], device_ids: Sequence[str]) -> torch.Tensor:
        """The model half of :meth:`predict`, on inputs from :meth:`load_inputs`."""
        out: torch.Tensor | None = None
        groups: dict[int, tuple[nn.Module, str, list[int]]] = {}
        for i, dev in enumerate(device_ids):
            model = self.get_model_for_device(dev)
            groups.setdefault(id(model), (model, dev, []))[2].append(i)
        for model, dev, idx in groups.values():
            dtype = self.deploy_dtype(dev)
            x = inputs[idx] if isinstance(inputs, torch.Tensor) else torch.stack([inputs[i] for i in idx])
            x = x.to(dtype) if dtype in (torch.float16, torch.bfloat16) else x
            x = x.contiguous(memory_format=declared_memory_format(model)) if x.dim() == 4 else x
            try:
                with fp16_inference(dtype):
                    y = model(x).float()
            except Exception as exc:
                raise SubmissionError(f"{self.name}: model for device {dev!r} failed on input {tuple(x.shape)}: "
                                      f"{type(exc).__name__}: {exc}") from exc
            if out is None:
                out = torch.empty(len(device_ids), y.shape[1])
            out[idx] = y
        return out


class Deployment:
    """One deployed device model (see the module docstring). Build with :meth:`float`, :meth:`ptq`, :meth:`qat`."""

    def __init__(self, arch: str, arch_config: Mapping[str, Any], form: str, state: Mapping[str, torch.Tensor],
                 info: Mapping[str, Any] | None = None, prepared: nn.Module | None = None):
        """``prepared``: the prepared module ``state`` came from, when at hand (saves re-preparing it)."""
        if form not in FORMS:
            raise SubmissionError(f"deployment form {form!r} is not one of {', '.join(FORMS)}")
        self.arch, self.arch_config, self.form = arch, dict(arch_config), form
        self.state = {k: v.detach().clone() for k, v in state.items()}
        self.info = dict(info or {})  # e.g. the PTQ calibration record and its ``quantization`` recipe
        model = create_model(arch, **self.arch_config).eval()
        self.frontend = model.frontend
        self.input_shape = model.input_shape()
        if form.startswith("int8"):
            self.float_net = model.net                 # counted: the architecture before conversion
            recipe = self.info.get("quantization")
            key = digest_of([arch, self.arch_config, form, recipe, _state_digest(self.state)])
            self.net = _int8_net(key, lambda: convert_prepared(prepared, recipe) if prepared is not None else
                                 rebuild_int8(model.net, torch.zeros(self.input_shape), self.state,
                                              qat=form == "int8-qat", recipe=recipe))
        else:
            model.net.load_state_dict(self.state)
            self.float_net = model.net
            net = model.net if form == "float32" else _cast(model.net, FORMS[form])
            self.net = net.to(memory_format=declared_memory_format(net))  # infers faster in it (docs/models.md)

    @property
    def dtype(self) -> torch.dtype:
        return FORMS[self.form]

    def frontend_key(self) -> str:
        """Equal for deployments whose front-ends compute the same features (their architecture's config)."""
        return digest_of([self.arch, self.arch_config])

    @classmethod
    def float(cls, model: ASCModel, dtype: str = "float32") -> "Deployment":
        """A registry model deployed as float32 or float16 (weights stored in float32, cast at load)."""
        if dtype not in ("float32", "float16"):
            raise SubmissionError(f"a float deployment is float32 or float16, got {dtype!r}")
        state = {k: v.float() if v.is_floating_point() else v for k, v in model.net.state_dict().items()}
        return cls(_arch(model), model.arch_config, dtype, state)

    @classmethod
    def ptq(cls, model: ASCModel, calibration_batches: Sequence[torch.Tensor], info: Mapping | None = None,
            recipe: Mapping[str, Any] | None = None) -> "Deployment":
        """Static INT8 post-training quantization of a registry model, observed on ``calibration_batches``
        (features of validation clips, never test clips); ``recipe`` (observer, ranges, float modules:
        ``bench.score.quantize``) is kept in the record as ``quantization`` and rebuilds the same model."""
        example = torch.zeros(model.input_shape())
        observed = observe_static(model.net, calibration_batches, example, recipe)
        info = {**(info or {}), **({"quantization": dict(recipe)} if recipe else {})}
        return cls(_arch(model), model.arch_config, "int8-ptq", observed.state_dict(), info, prepared=observed)

    @classmethod
    def qat(cls, model: ASCModel, prepared_state: Mapping[str, torch.Tensor]) -> "Deployment":
        """INT8 from a QAT-fine-tuned prepared state (``bench.train.qat``) of a registry model."""
        return cls(_arch(model), model.arch_config, "int8-qat", prepared_state)

    def record(self) -> dict[str, Any]:
        return {"arch": self.arch, "arch_config": self.arch_config, "form": self.form,
                "input_shape": list(self.input_shape), "frontend": type(self.frontend).__name__, **self.info}


_INT8_NETS: OrderedDict[str, nn.Module] = OrderedDict()  # record digest -> converted model, least recent first
_INT8_NETS_KEPT = 32


def _int8_net(key: str, convert: Callable[[], nn.Module]) -> nn.Module:
    """A copy of the INT8 model of one deployment record, converted once per process: FX preparation and
    conversion take seconds, and one run rebuilds each device model several times (the check after calibration,
    every row that scores it, the export). The record (architecture, form, recipe, every tensor of the state)
    determines the converted model, so a copy of the first conversion is the model any later one would build."""
    if key not in _INT8_NETS:
        _INT8_NETS[key] = convert()
        while len(_INT8_NETS) > _INT8_NETS_KEPT:
            _INT8_NETS.popitem(last=False)
    _INT8_NETS.move_to_end(key)
    return copy.deepcopy(_INT8_NETS[key])


def _state_digest(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _arch(model: ASCModel) -> str:
    if not model.arch_name:
        raise SubmissionError("a deployment needs a registered architecture (bench.models.create_model, or a "
                              "system's own register('mysys/net', ...)), so it can be rebuilt from its record")
    return model.arch_name


def _cast(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    return copy.deepcopy(net).to(dtype).eval()


class ModelSubmission(Submission):
    """Device id -> :class:`Deployment`; ``unknown`` is required and serves every device without its own entry."""

    def __init__(self, name: str, class_order: Sequence[str], deployments: Mapping[str, Deployment],
                 notes: Sequence[str] = ()):
        if UNKNOWN not in deployments:
            raise SubmissionError(f"{name}: needs an {UNKNOWN!r} deployment (the general model, used for every "
                                  "device id without a model of its own)")
        self.name = name
        self.class_order = list(class_order)
        self.deployments = dict(deployments)
        self.notes = list(notes)
        # the row holding this float submission's own INT8 deployment (a system's float-vs-INT8 ablation): the
        # scorer does not quantize it a second time with its generic recipe
        self.int8_row: str | None = None

    @classmethod
    def single(cls, name: str, model: ASCModel, class_order: Sequence[str], form: str = "float32",
               notes: Sequence[str] = ()) -> "ModelSubmission":
        """One float model for every device."""
        return cls(name, class_order, {UNKNOWN: Deployment.float(model, form)}, notes)

    @classmethod
    def per_device(cls, name: str, class_order: Sequence[str], general: ASCModel,
                   device_models: Mapping[str, ASCModel], form: str = "float32") -> "ModelSubmission":
        """A float general model plus float models for some devices."""
        deployments = {UNKNOWN: Deployment.float(general, form)}
        deployments.update({d: Deployment.float(m, form) for d, m in device_models.items()})
        return cls(name, class_order, deployments)

    def deployment(self, device_id: str) -> Deployment:
        return self.deployments.get(device_id, self.deployments[UNKNOWN])

    def unique(self) -> dict[str, Deployment]:
        """Each distinct deployment once, keyed by the first device id that names it (``unknown`` first)."""
        out: dict[str, Deployment] = {}
        for dev, dep in self.deployments.items():
            if all(dep is not d for d in out.values()):
                out[dev] = dep
        return out

    def devices_of(self, deployment: Deployment) -> list[str]:
        return [d for d, dep in self.deployments.items() if dep is deployment and d != UNKNOWN]

    @torch.inference_mode()
    def load_inputs(self, waves: torch.Tensor, device_ids: Sequence[str]) -> torch.Tensor | list[torch.Tensor]:
        waves = waves.float()
        by_frontend: dict[str, tuple[nn.Module, list[int]]] = {}
        for i, dev in enumerate(device_ids):
            dep = self.deployment(dev)
            by_frontend.setdefault(dep.frontend_key(), (dep.frontend, []))[1].append(i)
        if len(by_frontend) <= 1:
            frontend = next(iter(by_frontend.values()))[0] if by_frontend else self.deployments[UNKNOWN].frontend
            return frontend(waves)
        per_clip: list[torch.Tensor | None] = [None] * len(device_ids)
        for frontend, idx in by_frontend.values():
            for i, x in zip(idx, frontend(waves[idx])):
                per_clip[i] = x
        shapes = {tuple(x.shape) for x in per_clip}
        return torch.stack(per_clip) if len(shapes) == 1 else per_clip

    def input_key(self) -> tuple | None:
        return ("frontends", tuple(sorted((d, dep.frontend_key()) for d, dep in self.deployments.items())))

    def get_model_for_device(self, device_id: str) -> nn.Module:
        return self.deployment(device_id).net

    def deploy_dtype(self, device_id: str) -> torch.dtype:
        return self.deployment(device_id).dtype

    def counted_model_for_device(self, device_id: str) -> nn.Module:
        return self.deployment(device_id).float_net

    def converted(self, name: str, convert: Callable[[str, Deployment], Deployment], notes: Sequence[str] = ()
                  ) -> "ModelSubmission":
        """The same device routing with each distinct deployment passed through ``convert(first device id,
        deployment)`` once (e.g. its INT8 conversion), in :meth:`unique` order."""
        new = {id(dep): convert(dev, dep) for dev, dep in self.unique().items()}
        return ModelSubmission(name, self.class_order, {d: new[id(dep)] for d, dep in self.deployments.items()},
                               [*self.notes, *notes])


# ---- on disk -------------------------------------------------------------------------------------------------------

def save_submission(sub: ModelSubmission, path: Path, extra: Mapping[str, Any] | None = None,
                    system_folder: Path | None = None) -> Path:
    """Write ``submission.json`` (routing and one record per deployment) and ``models.pt`` (their states).

    ``system_folder`` is copied into ``system/`` when a deployment uses one of the system's own architectures, so
    the submission can be rebuilt (scored, exported, checked) without the original folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    unique = sub.unique()
    ids = {id(dep): f"m{i}" for i, dep in enumerate(unique.values())}
    info: dict[str, Any] = {
        "format": FORMAT, "name": sub.name, "class_order": sub.class_order,
        "devices": {dev: ids[id(dep)] for dev, dep in sub.deployments.items()},
        "models": {ids[id(dep)]: dep.record() for dep in unique.values()}, "notes": sub.notes,
        **dict(extra or {})}
    if any("/" in dep.arch for dep in unique.values()):
        if system_folder is None:
            raise SubmissionError(f"{sub.name}: uses a system's own architecture; save it with its system_folder")
        shutil.rmtree(path / "system", ignore_errors=True)
        shutil.copytree(system_folder, path / "system", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        info["system_files"] = folder_files(path / "system")
    torch.save({ids[id(dep)]: dep.state for dep in unique.values()}, path / "models.pt")
    (path / "submission.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    trust.seal(path)
    return path


def read_info(path: str | Path) -> dict[str, Any]:
    info_path = Path(path) / "submission.json"
    if not info_path.exists():
        raise SubmissionError(f"{path}: no submission.json; pass a folder written by `bench run` (a run folder or "
                              "its submission/)")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise SubmissionError(f"{info_path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise SubmissionError(f"{info_path}: must hold a JSON object")
    if info.get("format") != FORMAT:
        raise SubmissionError(f"{info_path}: submission format {info.get('format')} (this ascbench reads format "
                              f"{FORMAT}); re-create it with `bench run`")
    expected = {"name": str, "class_order": list, "devices": dict, "models": dict}
    for key, kind in expected.items():
        if not isinstance(info.get(key), kind):
            raise SubmissionError(f"{info_path}: {key!r} must be a {kind.__name__}, got "
                                  f"{type(info.get(key)).__name__}")
    for key, record in info["models"].items():
        if not isinstance(record, dict) or not isinstance(record.get("arch"), str) or \
                not isinstance(record.get("arch_config"), dict) or record.get("form") not in FORMS:
            raise SubmissionError(f"{info_path}: models.{key} needs arch (string), arch_config (object) and form "
                                  f"(one of {', '.join(FORMS)})")
    unknown = sorted(set(info["devices"].values()) - set(info["models"]))
    if unknown or UNKNOWN not in info["devices"]:
        raise SubmissionError(f"{info_path}: devices must map every id (including {UNKNOWN!r}) to one of the models "
                              f"{sorted(info['models'])}" + (f"; unknown: {unknown}" if unknown else ""))
    return info


def load_submission(path: str | Path, allow_foreign_code: bool = False) -> ModelSubmission:
    """Rebuild a saved submission (weights loaded with ``weights_only=True``). A submission using its system's own
    architectures imports the copy of the system folder saved with it — that runs the system's code, so it is
    refused unless this machine sealed it (``bench.trust``) or ``allow_foreign_code`` (inside the sandbox)."""
    path = Path(path)
    info = read_info(path)
    if "system_files" in info:
        from bench.system import import_package

        if trust.is_foreign(path) and not allow_foreign_code:
            raise SubmissionError(f"{path}: carries code of its own that this machine did not seal (trained "
                                  "elsewhere or changed since); it only runs in the sandbox — `bench score "
                                  "--submission` and `bench check` do that for you")
        if folder_files(path / "system") != info["system_files"]:
            raise SubmissionError(f"{path / 'system'}: the system code saved with the submission was modified "
                                  "after saving; restore it or re-create the submission")
        import_package(path / "system")
    states = torch.load(path / "models.pt", map_location="cpu", weights_only=True)
    models = {}
    for key, record in info["models"].items():
        extra = {k: v for k, v in record.items() if k not in ("arch", "arch_config", "form", "input_shape",
                                                              "frontend")}
        try:
            models[key] = Deployment(record["arch"], record["arch_config"], record["form"], states[key], extra)
        except (RuntimeError, KeyError, TypeError) as exc:
            raise SubmissionError(f"{path}: model {key} ({record['arch']}, {record['form']}) cannot be rebuilt: "
                                  f"{type(exc).__name__}: {exc}") from exc
    return ModelSubmission(info["name"], info["class_order"], {d: models[m] for d, m in info["devices"].items()},
                           info.get("notes", []))
