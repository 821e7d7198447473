"""DCASE 2025 Task 1 complexity: MACs and parameter memory per device model, with a hidden-compute guard.

The official number is the organisers' count: ``torchinfo.summary(...).total_mult_adds`` on a float32 deep copy of
the device model at batch 1, and parameter memory = sum of ``numel x bytes(dtype)`` over ``parameters()``.
torchinfo only sees modules with parameters named ``weight``/``bias``, so compute done in functional ops
(``F.conv2d``, ``einsum``, ``matmul``, attention) counts 0. We therefore re-count at the dispatcher level with
``torch.utils.flop_counter.FlopCounterMode`` and mark a model non-compliant when the dispatcher sees clearly more
MACs than torchinfo. thop is recorded as a second opinion only (it puts the baseline at ~32.8 M, above the limit).

torchinfo multiplies every count by the batch size, so counting must happen at batch 1; other shapes are refused.

Where the official counter cannot see the model, the report says so instead of passing it:

- a converted INT8 model (its ``parameters()`` are empty and torchinfo counts 0 MACs) is counted from the quantized
  graph itself (:func:`quantized_counts`: each quantized Conv/Linear layer's multiply-accumulates and weights, at
  one byte per weight), labelled as such — the caller counts its float twin instead whenever it has one;
- a TorchScript module (hooks do not fire inside it), or a model in which neither counter sees a single
  multiply-accumulate, is **uncountable**: not compliant, and ``bench check`` exits 2;
- values the rule does not count because they are not ``parameters()`` — floating buffers other than
  normalisation statistics, and tensors a forward pass creates with factory ops (``torch.randn(...)`` weights) —
  are reported as *hidden parameters* and count against the 128 kB limit.

Blind spots that remain (docs/scoring.md): compute outside PyTorch ops (numpy in ``forward``), weights read from a
file or converted with ``torch.from_numpy`` during ``forward``, and constants written into the code.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
from dataclasses import dataclass, field
from math import prod
from typing import Mapping, NamedTuple

import torch
import torchinfo
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from bench.errors import ComplexityError
from bench.score.limits import MAX_MACS, MAX_PARAM_BYTES  # noqa: F401  (re-exported: the limits live there)

# torchinfo counts BatchNorm (2*C per layer) and conv biases, which the dispatcher ignores, so honest models sit a
# little *above* the dispatcher count. A dispatcher count above torchinfo x (1 + 5 %) + slack means hidden compute.
HIDDEN_REL_TOL = 0.05
HIDDEN_ABS_SLACK = 100_000
HIDDEN_PARAM_SLACK = 1_000  # values outside parameters() tolerated without a note (small constants)

DTYPE_BYTES = {
    torch.float32: 4, torch.int32: 4,
    torch.float16: 2, torch.bfloat16: 2,
    torch.int8: 1, torch.uint8: 1, torch.qint8: 1, torch.quint8: 1,
}
_DTYPE_ALIASES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32, "int32": torch.int32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "int8": torch.int8, "uint8": torch.uint8, "qint8": torch.qint8, "quint8": torch.quint8,
}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A deployed parameter dtype as ``torch.dtype``; only the dtypes the official helper knows are accepted."""
    resolved = _DTYPE_ALIASES.get(dtype.lower()) if isinstance(dtype, str) else dtype
    if resolved not in DTYPE_BYTES:
        known = ", ".join(sorted(_DTYPE_ALIASES))
        raise ValueError(f"unsupported parameter dtype {dtype!r}; the DCASE size rule knows only: {known}")
    return resolved


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def param_bytes(module: nn.Module, dtype: torch.dtype | str | None = None) -> int:
    """Parameter memory in bytes: every parameter stored as ``dtype``, or in its own dtype when ``dtype`` is None
    (the official helper's behaviour). Buffers such as BN running statistics are not counted, as in the rules."""
    if dtype is not None:
        return sum(p.numel() for p in module.parameters()) * DTYPE_BYTES[resolve_dtype(dtype)]
    return sum(p.numel() * DTYPE_BYTES[resolve_dtype(p.dtype)] for p in module.parameters())


def _dtype_label(module: nn.Module, dtype: torch.dtype | str | None) -> str:
    if dtype is not None:
        return dtype_name(resolve_dtype(dtype))
    return "+".join(sorted({dtype_name(p.dtype) for p in module.parameters()})) or "none"


# ---- dispatcher-level count ------------------------------------------------------------------------------------

def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q.K^T plus A.V for any leading batch/head dims; registered because the fused CPU SDPA kernel has no
    formula in FlopCounterMode and would otherwise count 0
    (pytorch/pytorch#195460; PyTorch 'FlopCounterMode' docs)."""
    *lead, q_len, qk_dim = query_shape
    kv_len, v_dim = key_shape[-2], value_shape[-1]
    return 2 * prod(lead) * q_len * kv_len * (qk_dim + v_dim)


def _vector_product_flops(*args, out_shape=None, **kwargs) -> int:
    """mv / addmv / dot: one MAC per element of the largest operand (the matrix, or the vectors)."""
    return 2 * max(prod(a) for a in args if isinstance(a, torch.Size))


_aten = torch.ops.aten
EXTRA_FLOP_FORMULAS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
    _aten._scaled_dot_product_fused_attention_overrideable: _attention_flops,
    _aten.mv: _vector_product_flops,
    _aten.addmv: _vector_product_flops,
    _aten.dot: _vector_product_flops,
    _aten.vdot: _vector_product_flops,
}


def dispatcher_macs(module: nn.Module, example: torch.Tensor) -> int:
    """MACs seen by the ATen dispatcher (FLOPs / 2) for one forward pass of ``module`` (already a float copy).

    Runs with autograd enabled and parameters requiring grad: under ``no_grad`` ``nn.MultiheadAttention`` and
    ``nn.TransformerEncoderLayer`` take a fused fast path that FlopCounterMode counts as 0."""
    for p in module.parameters():
        p.requires_grad_(p.is_floating_point())
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    with torch.enable_grad(), counter:
        module(example)
    return counter.get_total_flops() // 2


# ---- reports -----------------------------------------------------------------------------------------------------

@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    return (("torchinfo", importlib.metadata.version("torchinfo")), ("thop", _thop_version()),
            ("torch", torch.__version__), ("dispatcher", "torch.utils.flop_counter.FlopCounterMode"))


def counter_versions() -> dict[str, str]:
    """Names and versions of the counters, recorded with every report."""
    return dict(_versions())


def _thop_version() -> str:
    try:
        return "ultralytics-thop " + importlib.metadata.version("ultralytics-thop")
    except importlib.metadata.PackageNotFoundError:
        return "thop " + importlib.metadata.version("thop")


@dataclass
class ComplexityReport:
    """Complexity of one device model. ``macs``/``param_bytes`` are the official DCASE figures."""

    macs: int
    params: int
    param_bytes: int
    dtype: str
    input_shape: tuple[int, ...]
    dispatcher_macs: int
    thop_macs: int | None
    compliant: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counters: dict[str, str] = field(default_factory=counter_versions)
    counter: str = "torchinfo"      # what produced macs/params: torchinfo, or the quantized-graph counter
    hidden_params: int = 0          # values outside parameters() (buffers, tensors made in forward)
    countable: bool = True          # False: nothing here can be trusted; reasons say why

    @property
    def status(self) -> str:
        if not self.countable:
            return "cannot count: " + "; ".join(self.reasons)
        return "compliant" if self.compliant else "non-compliant: " + "; ".join(self.reasons)


def _hidden_compute(torchinfo_macs: int, seen_macs: int) -> bool:
    return seen_macs > torchinfo_macs * (1 + HIDDEN_REL_TOL) + HIDDEN_ABS_SLACK


def _violations(macs: int, nbytes: int, seen_macs: int | None, hidden_bytes: int = 0) -> list[str]:
    reasons = []
    if macs > MAX_MACS:
        reasons.append(f"MACs {macs:,} > {MAX_MACS:,}")
    if nbytes > MAX_PARAM_BYTES:
        reasons.append(f"parameter memory {nbytes:,} B > {MAX_PARAM_BYTES:,} B")
    elif nbytes + hidden_bytes > MAX_PARAM_BYTES:
        reasons.append(f"hidden parameters: with {hidden_bytes:,} B of values outside parameters(), "
                       f"{nbytes + hidden_bytes:,} B > {MAX_PARAM_BYTES:,} B")
    if seen_macs is not None and _hidden_compute(macs, seen_macs):
        reasons.append(f"hidden compute: dispatcher counts {seen_macs:,} MACs, torchinfo {macs:,}")
    return reasons


# ---- what the official counter cannot see ------------------------------------------------------------------------

_FACTORIES = {_aten.randn, _aten.rand, _aten.randint, _aten.normal, _aten.empty, _aten.empty_strided, _aten.zeros,
              _aten.ones, _aten.full, _aten.arange, _aten.linspace, _aten.eye, _aten.lift_fresh,
              _aten.scalar_tensor}


class _CreatedTensors(TorchDispatchMode):
    """Values a forward pass creates from nothing (factory ops, ``torch.tensor`` constants): weights in disguise
    when they are large."""

    def __init__(self):
        super().__init__()
        self.values = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in _FACTORIES and isinstance(out, torch.Tensor) and out.is_floating_point():
            self.values += out.numel()
        return out


def hidden_parameters(module: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(values, bytes) a model holds or makes outside ``parameters()``: floating buffers other than normalisation
    statistics, plus floating tensors its forward pass creates with factory ops."""
    values = nbytes = 0
    for owner in module.modules():
        if isinstance(owner, nn.modules.batchnorm._NormBase):
            continue
        for buffer in owner.buffers(recurse=False):
            if buffer.is_floating_point():
                values += buffer.numel()
                nbytes += buffer.numel() * buffer.element_size()
    created = _CreatedTensors()
    with torch.no_grad(), created:
        _float_copy(module)(example)
    return values + created.values, nbytes + created.values * 4


_QUANTIZED_PREFIXES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.nn.quantized",
                       "torch.nn.intrinsic.quantized")


def is_quantized(module: nn.Module) -> bool:
    """Whether a model holds converted (INT8) layers, whose weights are packed outside ``parameters()``."""
    return any(type(m).__module__.startswith(_QUANTIZED_PREFIXES) for m in module.modules())


def quantized_counts(module: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, stored weight and bias values) of a converted INT8 model, from its quantized Conv/Linear layers seen
    in one forward pass at batch 1: a conv costs output elements x (input channels / groups x kernel area), a
    linear layer output elements x input features. Normalisation is folded into the convolutions after
    conversion, so this comes out a little below torchinfo's count of the float twin (which adds 2 per BN
    channel and output position)."""
    macs = 0
    values = 0
    hooks = []

    def weight_of(layer: nn.Module) -> torch.Tensor | None:
        weight = getattr(layer, "weight", None)
        return weight() if callable(weight) else weight

    def count(layer: nn.Module, inputs, output) -> None:
        nonlocal macs
        weight = weight_of(layer)
        if weight is None or not isinstance(output, torch.Tensor):
            return
        per_output = prod(weight.shape[1:])  # conv: in/groups x kernel; linear: in features
        macs += output.numel() * per_output // max(1, output.shape[0])

    layers = [m for m in module.modules() if type(m).__module__.startswith(_QUANTIZED_PREFIXES)
              and weight_of(m) is not None]
    for layer in layers:
        weight = weight_of(layer)
        bias = layer.bias() if callable(getattr(layer, "bias", None)) else getattr(layer, "bias", None)
        values += weight.numel() + (bias.numel() if isinstance(bias, torch.Tensor) else 0)
        hooks.append(layer.register_forward_hook(count))
    try:
        with torch.no_grad():
            module.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    values += sum(p.numel() for p in module.parameters())
    return macs, values


def _uncountable(why: str, module: nn.Module, input_shape: tuple[int, ...], dtype) -> ComplexityReport:
    return ComplexityReport(macs=0, params=0, param_bytes=0, dtype=_dtype_label(module, dtype),
                            input_shape=input_shape, dispatcher_macs=0, thop_macs=None, compliant=False,
                            reasons=[why], countable=False, counter="none")


def _float_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).float().cpu().eval()


def _thop_macs(module: nn.Module, example: torch.Tensor) -> int:
    import thop

    macs, _ = thop.profile(_float_copy(module), inputs=(example,), verbose=False)
    return int(macs)


def count_complexity(module: nn.Module, input_shape: tuple[int, ...],
                     dtype: torch.dtype | str | None = None) -> ComplexityReport:
    """Count one device model at ``input_shape`` (batch 1, e.g. ``(1, 1, 256, 65)``).

    ``dtype`` is the dtype the parameters are deployed in (``None``: each parameter's current dtype, as the
    official helper does). Counting always happens on float32 deep copies; ``module`` is left untouched. A model
    the official counter cannot see is counted another way or reported uncountable (module docstring).
    """
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or input_shape[0] != 1:
        raise ValueError(f"count at batch 1 (torchinfo scales MACs with the batch size); got shape {input_shape}")
    if isinstance(module, torch.jit.ScriptModule):
        return _uncountable("cannot count: a TorchScript module (the official counter's hooks do not see inside "
                            "it); hand over the eager nn.Module", module, input_shape, dtype)
    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    if is_quantized(module):
        return _count_quantized(module, example, input_shape, dtype)
    nbytes = param_bytes(module, dtype)
    try:
        seen = dispatcher_macs(_float_copy(module), example)
        stats = torchinfo.summary(_float_copy(module), input_size=input_shape, verbose=0, device="cpu")
        hidden, hidden_bytes = hidden_parameters(module, example)
    except Exception as err:
        cause = err.__cause__ or err  # torchinfo wraps the model's own exception
        raise ComplexityError(f"forward pass at input shape {input_shape} failed: {type(cause).__name__}: {cause}") \
            from err
    if stats.total_mult_adds == 0 and seen == 0:
        return _uncountable("cannot count: neither torchinfo nor the dispatcher sees a single multiply-accumulate "
                            "(compute outside PyTorch ops?)", module, input_shape, dtype)
    notes = []
    try:
        thop_macs = _thop_macs(module, example)
    except Exception as err:  # a second opinion only; never blocks scoring
        thop_macs = None
        notes.append(f"thop failed: {type(err).__name__}: {err}")
    hidden = hidden if hidden > HIDDEN_PARAM_SLACK else 0
    if hidden:
        notes.append(f"hidden parameters: {hidden:,} values outside parameters() (buffers or tensors made in "
                     "forward)")
    reasons = _violations(stats.total_mult_adds, nbytes, seen, hidden_bytes if hidden else 0)
    return ComplexityReport(macs=int(stats.total_mult_adds), params=sum(p.numel() for p in module.parameters()),
                            param_bytes=nbytes, dtype=_dtype_label(module, dtype), input_shape=input_shape,
                            dispatcher_macs=seen, thop_macs=thop_macs, compliant=not reasons, reasons=reasons,
                            notes=notes, hidden_params=hidden)


def _count_quantized(module: nn.Module, example: torch.Tensor, input_shape: tuple[int, ...], dtype
                     ) -> ComplexityReport:
    try:
        macs, values = quantized_counts(copy.deepcopy(module), example)
    except Exception as err:
        return _uncountable(f"cannot count: a converted INT8 model whose quantized graph did not run "
                            f"({type(err).__name__}: {err}); count its float twin", module, input_shape, dtype)
    if macs == 0:
        return _uncountable("cannot count: a converted INT8 model without quantized Conv/Linear layers the counter "
                            "knows; count its float twin", module, input_shape, dtype)
    nbytes = values * DTYPE_BYTES[resolve_dtype(dtype)] if dtype is not None else values
    reasons = _violations(macs, nbytes, None)
    return ComplexityReport(macs=macs, params=values, param_bytes=nbytes,
                            dtype=dtype_name(resolve_dtype(dtype)) if dtype is not None else "int8",
                            input_shape=input_shape, dispatcher_macs=0, thop_macs=None, compliant=not reasons,
                            reasons=reasons, counter="quantized graph (no float twin to count)",
                            notes=["counted from the quantized graph: the official torchinfo count sees 0 MACs in a "
                                   "converted model"])


# ---- many device models ------------------------------------------------------------------------------------------

class DeviceModel(NamedTuple):
    module: nn.Module
    input_shape: tuple[int, ...]
    dtype: torch.dtype | str | None = None


@dataclass
class SubmissionComplexity:
    """Per-device reports; the limits apply to each device model, so the maxima decide compliance."""

    per_device: dict[str, ComplexityReport]

    @property
    def max_macs(self) -> int:
        return max(r.macs for r in self.per_device.values())

    @property
    def max_param_bytes(self) -> int:
        return max(r.param_bytes for r in self.per_device.values())

    @property
    def compliant(self) -> bool:
        return all(r.compliant for r in self.per_device.values())

    @property
    def countable(self) -> bool:
        return all(r.countable for r in self.per_device.values())

    def official_json(self) -> dict:
        """The ``complexity.json`` layout of the DCASE inference template (``Params`` holds bytes)."""
        return {"per_device": {dev: {"MACs": r.macs, "Params": r.param_bytes} for dev, r in self.per_device.items()},
                "max_MACs": self.max_macs, "max_Params": self.max_param_bytes}


def count_devices(models: Mapping[str, DeviceModel]) -> SubmissionComplexity:
    """Count every device model; a module shared by several devices (the general model) is counted once."""
    if not models:
        raise ValueError("no device models to count")
    done: dict[tuple, ComplexityReport] = {}
    per_device = {}
    for device, (module, shape, dtype) in models.items():
        key = (id(module), tuple(shape), str(dtype))
        if key not in done:
            done[key] = count_complexity(module, shape, dtype)
        per_device[device] = done[key]
    return SubmissionComplexity(per_device)
