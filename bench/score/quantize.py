"""INT8 quantization of a counted network, and the size of the quantized artefact.

Method: PyTorch FX graph-mode quantization (``torch.ao.quantization.quantize_fx``) with the ``x86`` backend's
default qconfig mappings (per-channel symmetric qint8 weights, quint8 activations; ``qnnpack`` on machines without
the x86 engine), run by oneDNN kernels (see ``_select_engine``). Why this one:

- it runs in torch 2.11: ``torch.ao.quantization`` is deprecated but not removed (pytorch/pytorch#153892;
  pytorch/ao#2259; PyTorch 'Quantization' docs);
- static post-training quantization and quantization-aware training share the same prepare/convert path;
- it needs no extra dependency;
- the PT2E + torchao path silently quantizes nothing unless the model is exported with ``strict=True``, and ONNX
  Runtime would add ``onnx``, ``onnxscript`` and ``onnxruntime``.

The deprecation warnings of ``torch.ao`` (and its observer range notice) are silenced inside this module only.
Calibration data must come from training or validation clips, never from the test split.

Size: after conversion ``parameters()`` is empty (quantized layers keep packed weights), so the official
``get_model_size_bytes`` reports 0 B and torchinfo 0 MACs; count MACs on the float model and the size with
:func:`int8_size`, which counts every tensor the converted model stores, as PyTorch stores it:

- quantized tensors (the packed Conv/Linear weights, unpacked): 1 B per qint8/quint8 element;
- their quantization parameters: per-channel scales (float64, 8 B) and zero points (int64, 8 B) per channel, or
  one float64 scale and one int64 zero point for a per-tensor quantized weight;
- every other tensor of the state dict and every non-persistent buffer by its dtype: float32 biases (BatchNorm is
  folded into them), each layer's output scale (float32) and zero point (int64), the scales/zero points of input
  quantization and quantized adds, and any parameters or buffers of layers left in float (e.g. LayerNorm);
- BatchNorm's ``num_batches_tracked`` counters are skipped: nothing computes with them.

Float64/int64 quantization parameters make this a conservative, PyTorch-specific figure; an embedded runtime would
store them in fewer bytes.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*torch\.ao\.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max", category=UserWarning)
        yield


with _quiet():
    from torch.ao.quantization import (HistogramObserver, MinMaxObserver, QConfig, QConfigMapping,
                                       get_default_qat_qconfig_mapping, get_default_qconfig_mapping)
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx


class QuantizationError(RuntimeError):
    """The network cannot be quantized; the message says why, for the result table."""


def _qconfig_backend() -> str:
    """Whose default qconfig mapping (observers, ranges) decides the quantized values."""
    return "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"


def _select_engine(engine: str | None = None) -> None:
    """Select the engine that packs the converted model's weights (``engine``, or the default below); the packed
    weights keep their kernels afterwards, whatever engine is selected when the model runs.

    The default on x86 is oneDNN: the ``x86`` engine itself packs most convolutions for oneDNN (on VNNI CPUs, groups
    <= 100) and the rest for fbgemm, whose depthwise kernel falls to a path 50-100x slower when the channel count is
    not a multiple of 8 (DS-FlexiNet sm2's 108 and sm4's 204 channels). Other networks run faster on fbgemm
    (TF-SepNet: 2x on AVX2; ``python -m bench.benchmarks.int8_inference``): a PTQ recipe may name its ``engine``.
    The quantized weights and scales come from the x86 qconfig either way; the kernels may round a requantized value
    differently, rarely (docs/scoring.md)."""
    supported = torch.backends.quantized.supported_engines
    if engine is None:
        engine = "onednn" if _qconfig_backend() == "x86" and "onednn" in supported else _qconfig_backend()
    elif engine not in supported:
        raise QuantizationError(f"engine {engine!r} is not available here (PyTorch offers "
                                f"{', '.join(e for e in supported if e != 'none')})")
    torch.backends.quantized.engine = engine


ACTIVATION_OBSERVERS = {"histogram": HistogramObserver, "minmax": MinMaxObserver}
RECIPE_KEYS = ("activation_observer", "reduce_range", "float_modules", "engine")


def _mapping(net: nn.Module, qat: bool, recipe: Mapping[str, Any] | None
             ) -> tuple[QConfigMapping, PrepareCustomConfig | None]:
    """The backend's default qconfig mapping, changed by a post-training ``recipe`` (keys ``RECIPE_KEYS``, each
    optional): ``activation_observer`` ("histogram", the default, or "minmax"), ``reduce_range`` (7-bit activations;
    default: the backend's, true for x86) and ``float_modules`` (class names of submodules kept in float, between a
    dequantize and a quantize, e.g. ``["ResidualNorm"]``: parameter-free normalisations whose int8 kernel loses
    accuracy); its ``engine`` packs the converted weights (:func:`_select_engine`)."""
    backend = _qconfig_backend()
    mapping = get_default_qat_qconfig_mapping(backend) if qat else get_default_qconfig_mapping(backend)
    if not recipe:
        return mapping, None
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown or qat:
        raise QuantizationError(f"quantization recipe: {'a recipe is for static PTQ, not QAT' if qat else ''}"
                                f"{'unknown keys ' + ', '.join(unknown) if unknown else ''} "
                                f"(keys: {', '.join(RECIPE_KEYS)})")
    name = recipe.get("activation_observer") or "histogram"
    if name not in ACTIVATION_OBSERVERS:
        raise QuantizationError(f"activation_observer {name!r} is not one of {', '.join(ACTIVATION_OBSERVERS)}")
    default = mapping.global_qconfig
    reduce_range = recipe.get("reduce_range")
    observer = ACTIVATION_OBSERVERS[name].with_args(
        reduce_range=default.activation.p.keywords.get("reduce_range", False) if reduce_range is None
        else bool(reduce_range))
    mapping.set_global(QConfig(activation=observer, weight=default.weight))
    for kind, qconfig in list(mapping.object_type_qconfigs.items()):  # LayerNorm etc. share the global observer
        if qconfig is not None and qconfig.activation is default.activation:
            mapping.set_object_type(kind, QConfig(activation=observer, weight=qconfig.weight))
    floats = list(recipe.get("float_modules") or [])
    if not floats:
        return mapping, None
    classes = {type(m).__name__: type(m) for m in net.modules()}
    missing = [f for f in floats if f not in classes]
    if missing:
        raise QuantizationError(f"float_modules: no {', '.join(missing)} module in {type(net).__name__}")
    for f in floats:
        mapping.set_object_type(classes[f], None)
    return mapping, PrepareCustomConfig().set_non_traceable_module_classes([classes[f] for f in floats])


def _prepare(net: nn.Module, example_input: torch.Tensor, qat: bool,
             recipe: Mapping[str, Any] | None = None) -> nn.Module:
    model = copy.deepcopy(net).float().cpu().train(qat)
    mapping, custom = _mapping(net, qat, recipe)
    try:
        with _quiet():
            return (prepare_qat_fx if qat else prepare_fx)(model, mapping, (example_input,),
                                                           prepare_custom_config=custom)
    except Exception as err:
        raise QuantizationError(f"FX graph-mode tracing/preparation failed: {type(err).__name__}: {err}") from err


def _convert(prepared: nn.Module, engine: str | None = None) -> nn.Module:
    model = copy.deepcopy(prepared).eval()
    _select_engine(engine)
    try:
        with _quiet():
            converted = convert_fx(model)
    except Exception as err:
        raise QuantizationError(f"FX conversion to INT8 failed: {type(err).__name__}: {err}") from err
    if int8_size(converted).n_quantized_tensors == 0:
        raise QuantizationError("no layer was quantized (no quantizable Conv/Linear in the traced graph)")
    return converted


def observe_static(net: nn.Module, calibration_batches: Iterable[torch.Tensor],
                   example_input: torch.Tensor, recipe: Mapping[str, Any] | None = None) -> nn.Module:
    """The first half of post-training static quantization: a prepared copy of ``net`` whose observers have seen
    ``calibration_batches`` (feature batches from training/validation clips). Its ``state_dict`` (weights and
    observer ranges) and the ``recipe`` (see :func:`_mapping`) are what an INT8 model is rebuilt from
    (:func:`rebuild_int8`); ``net`` is not modified."""
    prepared = _prepare(net, example_input, qat=False, recipe=recipe)
    n_batches = 0
    with torch.no_grad(), _quiet():
        for batch in calibration_batches:
            prepared(batch)
            n_batches += 1
    if n_batches == 0:
        raise QuantizationError("no calibration batches were given")
    return prepared


def quantize_static(net: nn.Module, calibration_batches: Iterable[torch.Tensor],
                    example_input: torch.Tensor, engine: str | None = None,
                    recipe: Mapping[str, Any] | None = None) -> nn.Module:
    """Post-training static quantization: observe activation ranges on ``calibration_batches``, then convert.
    ``engine`` overrides the kernels (``"x86"``, ``"fbgemm"``, ...; benchmarks compare them); the quantized weights
    and scales do not depend on it."""
    return _convert(observe_static(net, calibration_batches, example_input, recipe), engine)


def prepare_qat(net: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """A copy of ``net`` with fake-quantization inserted, in train mode, to be fine-tuned and then passed to
    :func:`convert_prepared`."""
    return _prepare(net, example_input, qat=True)


def convert_prepared(prepared: nn.Module, recipe: Mapping[str, Any] | None = None) -> nn.Module:
    """The INT8 model of a prepared network: observed (:func:`observe_static`, with its ``recipe``) or
    QAT-fine-tuned (:func:`prepare_qat`); ``prepared`` is not modified."""
    return _convert(prepared, (recipe or {}).get("engine"))


def rebuild_int8(net: nn.Module, example_input: torch.Tensor, prepared_state: dict, qat: bool,
                 recipe: Mapping[str, Any] | None = None) -> nn.Module:
    """The INT8 model from a float network of the same architecture and a stored prepared state dict: observed
    (:func:`observe_static` with its ``recipe``, ``qat=False``) or QAT-fine-tuned (:func:`prepare_qat`,
    ``qat=True``). Converted models do not round-trip through ``state_dict``; prepared ones do, bit for bit."""
    prepared = _prepare(net, example_input, qat=qat, recipe=recipe)
    try:
        prepared.load_state_dict(prepared_state)
    except RuntimeError as err:
        raise QuantizationError(f"stored {'QAT' if qat else 'calibration'} state does not fit the network: "
                                f"{err}") from err
    return convert_prepared(prepared, recipe)


@dataclass(frozen=True)
class Int8Size:
    """Bytes of a converted model by kind; see the module docstring for exactly what is counted."""

    quantized_values: int
    quantization_params: int
    other_tensors: int
    n_quantized_tensors: int

    @property
    def total(self) -> int:
        return self.quantized_values + self.quantization_params + self.other_tensors


def _tensors(value) -> Iterator[torch.Tensor]:
    """Tensors in a state-dict value; quantized Linear layers store a (weight, bias) tuple."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def _stored_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    state = model.state_dict()
    for name, value in state.items():
        if not name.endswith("num_batches_tracked"):
            yield from _tensors(value)
    for name, buffer in model.named_buffers():
        if name not in state:
            yield buffer


def _qparam_bytes(tensor: torch.Tensor) -> int:
    if tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                            torch.per_channel_affine_float_qparams):
        scales, zero_points = tensor.q_per_channel_scales(), tensor.q_per_channel_zero_points()
        return scales.numel() * scales.element_size() + zero_points.numel() * zero_points.element_size()
    return 8 + 8  # per-tensor: one double scale and one int64 zero point


def int8_size(qmodel: nn.Module) -> Int8Size:
    """Size of a converted INT8 model, counted from the tensors it stores (not from ``parameters()``)."""
    values = qparams = other = n_quantized = 0
    for tensor in _stored_tensors(qmodel):
        if tensor.is_quantized:
            values += tensor.numel() * tensor.element_size()
            qparams += _qparam_bytes(tensor)
            n_quantized += 1
        else:
            other += tensor.numel() * tensor.element_size()
    return Int8Size(values, qparams, other, n_quantized)


def int8_size_bytes(qmodel: nn.Module) -> int:
    return int8_size(qmodel).total
