"""The system plugin interface: a folder with ``system.toml`` and a Python module.

``system.toml`` declares the system (name, description, citation), its stages in order, and hyperparameters per
profile (``smoke``, ``default``, ``paper``), optionally per named variant. The module defines one function per stage
(``def general(ctx) -> dict``) and ``def submission(ctx) -> Submission``; optionally
``def extra_submissions(ctx) -> dict[str, tuple[Submission, kind]]`` for additional leaderboard rows.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.paths import SYSTEMS_DIR, data_home

PROFILES = ("smoke", "default", "paper")
_TOP = {"system", "defaults", "profiles", "variants"}
_SYSTEM_KEYS = {"name": str, "description": str, "citation": str, "module": str, "stages": list,
                "default_variant": str}
_REQUIRED = ("name", "description", "citation", "stages")


class SystemError_(ValueError):
    """A system folder that cannot be used; the message names the file and what to change."""


@dataclass
class SystemSpec:
    path: Path
    name: str
    description: str
    citation: str
    stages: list[str]
    module_file: Path
    defaults: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_variant: str | None = None
    _module: ModuleType | None = None

    @property
    def module(self) -> ModuleType:
        if self._module is None:
            self._module = _import(self)
        return self._module

    def source_hash(self) -> str:
        return hashlib.sha256(self.module_file.read_bytes()).hexdigest()

    def resolve(self, profile: str, variant: str | None = None) -> dict[str, Any]:
        """Configuration for ``profile`` (and ``variant``): defaults <- profile <- variant, merged per key.
        Variants combine with ``+`` (``sm4+no_kd``), applied left to right."""
        if profile not in self.profiles:
            raise SystemError_(f"{self.path / 'system.toml'}: no profile {profile!r} (has: "
                               f"{', '.join(self.profiles)})")
        cfg = _merge(self.defaults, self.profiles[profile])
        for name in (variant or self.default_variant or "").split("+"):
            if not name:
                continue
            if name not in self.variants:
                raise SystemError_(f"{self.path / 'system.toml'}: no variant {name!r} (has: "
                                   f"{', '.join(sorted(self.variants)) or 'none'})")
            cfg = _merge(cfg, self.variants[name])
        return cfg

    def stage_config(self, resolved: dict[str, Any], stage: str) -> dict[str, Any]:
        """Shared keys (everything that is not a stage table, ``model_options`` included) merged with the stage's
        own table, which wins key by key."""
        shared = {k: v for k, v in resolved.items() if k not in self.stages}
        return _merge(shared, resolved.get(stage, {}))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def load_system(path: str | Path) -> SystemSpec:
    """Load and validate a system folder (or a system name under ``systems/``)."""
    p = Path(path)
    if not p.exists() and (SYSTEMS_DIR / str(path)).exists():
        p = SYSTEMS_DIR / str(path)
    toml_path = p / "system.toml"
    if not p.is_dir():
        raise SystemError_(f"{p}: no such system folder; `bench systems` lists the ones found")
    if not toml_path.exists():
        raise SystemError_(f"{p}: no system.toml; a system folder needs system.toml and a module (see README, "
                           "'Writing a system')")
    try:
        data = tomllib.loads(toml_path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SystemError_(f"{toml_path}: not valid TOML ({exc})") from exc
    unknown = set(data) - _TOP
    if unknown:
        raise SystemError_(f"{toml_path}: unknown table(s) {sorted(unknown)}; allowed: {sorted(_TOP)}")
    sysd = data.get("system")
    if not isinstance(sysd, dict):
        raise SystemError_(f"{toml_path}: missing [system] table")
    for key, value in sysd.items():
        if key not in _SYSTEM_KEYS:
            raise SystemError_(f"{toml_path}: unknown key system.{key}; allowed: {sorted(_SYSTEM_KEYS)}")
        if not isinstance(value, _SYSTEM_KEYS[key]):
            raise SystemError_(f"{toml_path}: system.{key} must be a {_SYSTEM_KEYS[key].__name__}, got "
                               f"{type(value).__name__}")
    for key in _REQUIRED:
        if key not in sysd:
            raise SystemError_(f"{toml_path}: missing system.{key}")
    if not sysd["stages"] or not all(isinstance(s, str) for s in sysd["stages"]):
        raise SystemError_(f"{toml_path}: system.stages must be a non-empty list of stage names")
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not profiles:
        raise SystemError_(f"{toml_path}: needs at least one [profiles.<name>] table (smoke, default, paper)")
    for name, prof in {**profiles, **data.get("variants", {})}.items():
        if not isinstance(prof, dict):
            raise SystemError_(f"{toml_path}: profiles.{name} / variants.{name} must be a table")
    for name, prof in profiles.items():
        stray = [k for k, v in prof.items() if isinstance(v, dict) and k not in sysd["stages"]]
        if stray:
            raise SystemError_(f"{toml_path}: profiles.{name} has table(s) {stray} that are not stages "
                               f"{sysd['stages']}")
    module_file = p / sysd.get("module", "system.py")
    if not module_file.exists():
        raise SystemError_(f"{toml_path}: module {module_file.name} not found next to system.toml")
    spec = SystemSpec(p.resolve(), sysd["name"], sysd["description"], sysd["citation"], list(sysd["stages"]),
                      module_file, data.get("defaults", {}), profiles, data.get("variants", {}),
                      sysd.get("default_variant"))
    if spec.default_variant and spec.default_variant not in spec.variants:
        raise SystemError_(f"{toml_path}: default_variant {spec.default_variant!r} is not a [variants.*] table")
    return spec


_PREFIX = "ascbench_system_"


def _import(spec: SystemSpec) -> ModuleType:
    """Import the system's module under a unique name through a two-line shim on ``sys.path``.

    Processes that Lightning spawns for DDP unpickle the system's classes by module name and inherit the parent's
    ``sys.path``, so the shim makes the module importable there too.
    """
    name = _PREFIX + hashlib.sha1(str(spec.module_file).encode()).hexdigest()[:12]
    shim_dir = data_home() / "system_modules"
    shim_dir.mkdir(parents=True, exist_ok=True)
    shim = shim_dir / f"{name}.py"
    text = (f"# generated by ascbench: runs {spec.module_file} as this module\n"
            f"exec(compile(open({str(spec.module_file)!r}).read(), {str(spec.module_file)!r}, 'exec'))\n")
    if not shim.exists() or shim.read_text() != text:
        shim.write_text(text)
    if str(shim_dir) not in sys.path:
        sys.path.insert(0, str(shim_dir))
    importlib.invalidate_caches()
    sys.modules.pop(name, None)
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise SystemError_(f"{spec.module_file}: failed to import ({type(exc).__name__}: {exc})") from exc
    missing = [s for s in (*spec.stages, "submission") if not callable(getattr(module, s, None))]
    if missing:
        raise SystemError_(f"{spec.module_file}: missing function(s) {missing}; each stage in system.toml needs "
                           "a function of that name, plus submission(ctx)")
    return module


def discover(root: Path = SYSTEMS_DIR) -> list[SystemSpec | tuple[Path, str]]:
    """Every folder under ``root`` with a system.toml: a spec, or (path, error) when it does not load."""
    out: list[SystemSpec | tuple[Path, str]] = []
    for toml_path in sorted(root.glob("*/system.toml")):
        try:
            out.append(load_system(toml_path.parent))
        except SystemError_ as exc:
            out.append((toml_path.parent, str(exc)))
    return out
