"""Architecture registry, timm-style: ``create_model("cpmobile_baseline", **overrides)``.

Each architecture lives in its own module and registers named configurations with :func:`register`. A model is an
:class:`~bench.models.base.ASCModel`: a mel front-end (waveform at 32 kHz -> ``[B, 1, F, T]``) plus the network
that is counted for complexity, exactly as the DCASE inference packages split them.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from bench.models.base import ASCModel

_BUILDERS: dict[str, Callable[..., ASCModel]] = {}
_CONFIGS: dict[str, dict[str, Any]] = {}
_ARCH_MODULES = ("cpmobile", "cpresnet", "dsflexinet", "passt")
_loaded = False


def register(name: str, builder: Callable[..., ASCModel], **config: Any) -> None:
    """Register a named configuration of an architecture builder."""
    if name in _BUILDERS:
        raise ValueError(f"model name {name!r} is registered twice")
    _BUILDERS[name] = builder
    _CONFIGS[name] = dict(config)


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _ARCH_MODULES:
        importlib.import_module(f"bench.models.{mod}")
    _loaded = True


def list_models() -> list[str]:
    _load_all()
    return sorted(_BUILDERS)


def model_config(name: str) -> dict[str, Any]:
    _load_all()
    if name not in _CONFIGS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_CONFIGS))}")
    return dict(_CONFIGS[name])


def create_model(name: str, **overrides: Any) -> ASCModel:
    """Build a registered model; ``overrides`` replace entries of its named config."""
    config = model_config(name)
    unknown = set(overrides) - set(config)
    if unknown:
        raise TypeError(f"model {name!r} has no option(s) {sorted(unknown)}; options: {sorted(config)}")
    config.update(overrides)
    model = _BUILDERS[name](**config)
    model.arch_name = name
    model.arch_config = config
    return model


__all__ = ["ASCModel", "create_model", "list_models", "model_config", "register"]
