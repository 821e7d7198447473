"""Architecture registry, timm-style: ``create_model("cpmobile_baseline", **overrides)``.

Each architecture lives in its own module and registers named configurations with :func:`register`. A model is an
:class:`~bench.models.base.ASCModel`: a mel front-end (waveform at 32 kHz -> ``[B, 1, F, T]``) plus the network
that is counted for complexity, exactly as the DCASE inference packages split them.

A system folder may register its own architectures; their names are namespaced by the system's name
(``mysys/tfsepnet``), so they never collide with the harness's or another system's.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from bench.config import REQUIRED, ConfigError, Key, Schema, nearest
from bench.models.base import ASCModel

_BUILDERS: dict[str, Callable[..., ASCModel]] = {}
_CONFIGS: dict[str, dict[str, Any]] = {}
_ARCH_MODULES = ("beats", "cpmobile", "cpresnet", "dsflexinet", "passt", "tfsepnet")
_loaded = False


def _namespace(builder: Callable) -> str | None:
    """The system name a builder belongs to (from its module's system folder), or None for the harness."""
    from bench.loaded_systems import folder_of
    from bench.system import system_name

    folder = folder_of(getattr(builder, "__module__", "") or "")
    return system_name(folder) if folder else None


def register(name: str, builder: Callable[..., ASCModel], **config: Any) -> None:
    """Register a named configuration of an architecture builder. Harness names have no ``/``; a system's names
    must be ``<system name>/<arch>``; importing a system (again, or a saved copy of it) replaces its entries."""
    namespace = _namespace(builder)
    if namespace is None and "/" in name:
        raise ValueError(f"model name {name!r}: '/' is reserved for architectures registered by systems")
    if namespace is not None and not name.startswith(f"{namespace}/"):
        raise ValueError(f"model name {name!r}: architectures of system {namespace!r} are registered as "
                         f"'{namespace}/<name>', e.g. {namespace + '/' + name.split('/')[-1]!r}")
    if name in _BUILDERS and namespace is None:
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
        hint = nearest(name, _CONFIGS)
        raise KeyError(f"unknown model {name!r}" + (f"; did you mean {hint!r}?" if hint else "") +
                       f" (known: {', '.join(sorted(_CONFIGS))})")
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


def check_model_options(model: str, options: Mapping[str, Any]) -> None:
    """The config error for an unknown model or an option it does not have (before anything is built)."""
    try:
        known = model_config(model)
    except KeyError as exc:
        raise ConfigError(f"model = {model!r}: {exc.args[0]}") from None
    for key in options:
        if key not in known:
            hint = nearest(key, known)
            raise ConfigError(f"model_options.{key}: {model} has no option {key!r}" +
                              (f"; did you mean {hint}?" if hint else f" (options: {', '.join(sorted(known))})"))


def _check_model(cfg: Mapping[str, Any]) -> None:
    if cfg.get("model") is not None:
        check_model_options(cfg["model"], cfg.get("model_options") or {})


MODEL = Schema("model", {
    "model": Key(str, REQUIRED, "registry name of the architecture (bench.models, or '<system>/<arch>')"),
    "model_options": Key(dict, {}, "overrides of the architecture's named config (checked against its options)"),
}, checks=(_check_model,))

__all__ = ["ASCModel", "MODEL", "check_model_options", "create_model", "list_models", "model_config", "register"]
