"""The system plugin interface: a folder with ``system.toml`` and Python modules, imported as one package.

``system.toml`` declares the system (name, description, citation), its stages in order, and hyperparameters per
profile (``smoke``, ``default``, ``paper``), optionally per named variant. The folder's ``system.py`` defines one
function per stage (``def general(ctx) -> dict``) and ``def submission(ctx) -> Submission``; optionally
``def extra_submissions(ctx) -> dict[str, tuple[Submission, kind]]`` for additional leaderboard rows. Each of them
declares the config keys it reads with :func:`bench.config.reads`; :meth:`SystemSpec.check` validates every profile
and variant against those declarations without training anything (``bench systems --check``).
"""

from __future__ import annotations

import functools
import importlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.config import (ConfigError, Key, Schema, StageConfig, check_table, check_value, declared, deep_merge,
                          merge, unknown_key_message, with_defaults)
from bench.identity import folder_files
from bench.loaded_systems import register_folder
from bench.paths import find_system, system_search_roots

PROFILES = ("smoke", "default", "paper")
RUN = Schema("run", {"val_fraction": Key(float, 0.1, "fraction of each scene's training locations held out for "
                                                     "validation (model selection, calibration, fusion)"),
                     "seed_shared_stages": Key(list, [], "stages trained once, at seed 0, and shared by every run "
                                                         "seed (e.g. a fixed teacher ensemble): `--seeds` reuses them")})
_TOP = {"system", "defaults", "profiles", "variants"}
_SYSTEM_KEYS = {"name": str, "description": str, "citation": str, "module": str, "stages": list,
                "default_variant": str}
_REQUIRED = ("name", "description", "citation", "stages")
SUBMISSION_FUNCTIONS = ("submission", "extra_submissions")


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
    def toml_path(self) -> Path:
        return self.path / "system.toml"

    @property
    def module(self) -> ModuleType:
        if self._module is None:
            self._module = _import(self)
        return self._module

    def files(self) -> dict[str, str]:
        """Every file of the folder with its SHA-256: all of it is the system's identity."""
        return folder_files(self.path)

    # -- declared keys ------------------------------------------------------------------------------------------
    def stage_schema(self, stage: str) -> Schema:
        return declared(getattr(self.module, stage))

    def submission_schema(self) -> Schema:
        fns = [getattr(self.module, f) for f in SUBMISSION_FUNCTIONS if callable(getattr(self.module, f, None))]
        return merge(*map(declared, fns), name="submission")

    def shared_schema(self) -> Schema:
        """Keys allowed outside a stage table: anything some stage or the submission reads, plus run keys."""
        return merge(RUN, self.submission_schema(), *map(self.stage_schema, self.stages), name="shared")

    # -- resolution ---------------------------------------------------------------------------------------------
    def resolve(self, profile: str, variant: str | None = None) -> dict[str, Any]:
        """Configuration for ``profile`` (and ``variant``): defaults <- profile <- variant, merged per key.
        Variants combine with ``+`` (``sm4+no_kd``), applied left to right."""
        if profile not in self.profiles:
            raise SystemError_(f"{self.toml_path}: no profile {profile!r} (has: {', '.join(self.profiles)})")
        cfg = deep_merge(self.defaults, self.profiles[profile])
        for name in self.variant_names(variant):
            if name not in self.variants:
                raise SystemError_(f"{self.toml_path}: no variant {name!r} (has: "
                                   f"{', '.join(sorted(self.variants)) or 'none'})")
            cfg = deep_merge(cfg, self.variants[name])
        unknown = sorted(set(cfg.get("seed_shared_stages") or []) - set(self.stages))
        if unknown:
            raise SystemError_(f"{self.toml_path}: seed_shared_stages names {', '.join(unknown)}, which "
                               f"{'is not a stage' if len(unknown) == 1 else 'are not stages'} (stages: "
                               f"{', '.join(self.stages)})")
        return cfg

    def variant_names(self, variant: str | None) -> list[str]:
        return [v for v in (variant or self.default_variant or "").split("+") if v]

    def _config(self, resolved: dict[str, Any], table: dict[str, Any], schema: Schema, owner: str,
                where: str) -> StageConfig:
        shared = {k: v for k, v in resolved.items() if k not in self.stages}
        merged = deep_merge(shared, table)
        values = with_defaults({k: v for k, v in merged.items() if k in schema.keys}, schema, str(self.toml_path),
                               where)
        for check in schema.checks:
            try:
                check(values)
            except ConfigError as exc:
                raise ConfigError(f"{self.toml_path}: [{where}] {exc}") from None
        return StageConfig(values, schema, owner)

    def stage_config(self, resolved: dict[str, Any], stage: str, where: str | None = None) -> StageConfig:
        """The stage's config: shared keys merged with its own table (which wins key by key), restricted to the
        keys the stage declares, completed with their defaults."""
        return self._config(resolved, resolved.get(stage, {}), self.stage_schema(stage), f"{self.name}/{stage}",
                            where or stage)

    def submission_config(self, resolved: dict[str, Any], where: str | None = None) -> StageConfig:
        return self._config(resolved, {}, self.submission_schema(), f"{self.name}/submission", where or "submission")

    # -- validation ---------------------------------------------------------------------------------------------
    def tables(self) -> list[tuple[str, dict[str, Any]]]:
        """Every raw table of system.toml that holds configuration, with its dotted name."""
        out = [("defaults", self.defaults)]
        out += [(f"profiles.{name}", table) for name, table in self.profiles.items()]
        out += [(f"variants.{name}", table) for name, table in self.variants.items()]
        return out

    def check(self) -> list[tuple[str, str | None]]:
        """Validate every table, then every profile alone and with each variant; returns the (profile, variant)
        combinations checked. Raises :class:`ConfigError` naming file, table, key and the nearest valid key."""
        where = str(self.toml_path)
        shared = self.shared_schema()
        for name, table in self.tables():
            for key, value in table.items():
                if key in self.stages:
                    if not isinstance(value, dict):
                        raise ConfigError(f"{where}: [{name}] {key}: a stage's settings must be a table")
                    check_table(where, f"{name}.{key}", value, self.stage_schema(key))
                elif key in shared.keys:
                    check_value(where, name, key, shared.keys[key], value)
                else:
                    raise ConfigError(unknown_key_message(where, name, key, [*shared.keys, *self.stages]))
        combos = [(p, v) for p in self.profiles for v in (None, *sorted(self.variants))]
        for profile, variant in combos:
            resolved = self.resolve(profile, variant)
            label = f"profiles.{profile}" + (f" + variants.{variant}" if variant else "")
            for stage in self.stages:
                self.stage_config(resolved, stage, f"{label}: {stage}")
            self.submission_config(resolved, f"{label}: submission")
        return combos


def load_system(path: str | Path) -> SystemSpec:
    """Load and validate the structure of a system folder (a path, or the name of a shipped system)."""
    p = find_system(path)
    toml_path = p / "system.toml"
    if not p.is_dir():
        roots = ", ".join(str(r) for r in system_search_roots())
        raise SystemError_(f"{path}: no such system folder (looked in the working directory and {roots}); "
                           "`bench systems` lists the ones found")
    if not toml_path.exists():
        raise SystemError_(f"{p}: no system.toml; a system folder needs system.toml and a module (see README, "
                           "'Writing a system')")
    data = _read_toml(toml_path)
    unknown = set(data) - _TOP
    if unknown:
        raise SystemError_(f"{toml_path}: unknown table(s) {sorted(unknown)}; allowed: {sorted(_TOP)}")
    sysd = data.get("system")
    if not isinstance(sysd, dict):
        raise SystemError_(f"{toml_path}: missing [system] table")
    for key, value in sysd.items():
        if key not in _SYSTEM_KEYS:
            raise SystemError_(unknown_key_message(str(toml_path), "system", key, _SYSTEM_KEYS))
        if not isinstance(value, _SYSTEM_KEYS[key]):
            raise SystemError_(f"{toml_path}: system.{key} must be a {_SYSTEM_KEYS[key].__name__}, got "
                               f"{type(value).__name__}")
    for key in _REQUIRED:
        if key not in sysd:
            raise SystemError_(f"{toml_path}: missing system.{key}")
    if not sysd["stages"] or not all(isinstance(s, str) and s.isidentifier() for s in sysd["stages"]):
        raise SystemError_(f"{toml_path}: system.stages must be a non-empty list of stage names (identifiers)")
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not profiles:
        raise SystemError_(f"{toml_path}: needs at least one [profiles.<name>] table (smoke, default, paper)")
    for kind in ("profiles", "variants"):
        for name, table in data.get(kind, {}).items():
            if not isinstance(table, dict):
                raise SystemError_(f"{toml_path}: {kind}.{name} must be a table")
    module_file = p / sysd.get("module", "system.py")
    if not module_file.exists():
        raise SystemError_(f"{toml_path}: module {module_file.name} not found next to system.toml")
    spec = SystemSpec(p.resolve(), sysd["name"], sysd["description"], sysd["citation"], list(sysd["stages"]),
                      module_file, data.get("defaults", {}), profiles, data.get("variants", {}),
                      sysd.get("default_variant"))
    if spec.default_variant and spec.default_variant not in spec.variants:
        raise SystemError_(f"{toml_path}: default_variant {spec.default_variant!r} is not a [variants.*] table")
    return spec


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SystemError_(f"{path}: not valid TOML ({exc})") from exc


@functools.lru_cache(maxsize=256)
def _name_in(toml_path: str, mtime_ns: int) -> str | None:
    system = _read_toml(Path(toml_path)).get("system", {})
    return system.get("name") if isinstance(system, dict) else None


def system_name(folder: Path) -> str | None:
    """The ``[system] name`` of a folder's system.toml (for namespacing its registered architectures)."""
    toml_path = Path(folder) / "system.toml"
    return _name_in(str(toml_path), toml_path.stat().st_mtime_ns) if toml_path.exists() else None


def import_package(folder: Path, module: str = "system") -> ModuleType:
    """Import ``module`` of a system folder, the folder being a package (``bench.loaded_systems.<slug>``)."""
    package = register_folder(folder)
    source = Path(folder) / f"{module}.py"
    try:
        return importlib.import_module(f"{package}.{module}")
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top and ((Path(folder) / f"{top}.py").is_file() or (Path(folder) / top).is_dir()):
            raise SystemError_(f"{source}: imports {exc.name!r}, a module of the system folder itself, as a "
                               f"top-level module; a system folder is imported as a package, so write "
                               f"`from . import {top}` (or `from .{exc.name} import ...`)") from exc
        raise SystemError_(f"{source}: failed to import (ModuleNotFoundError: {exc}); pip install the package "
                           f"that provides {top!r}") from exc
    except Exception as exc:
        raise SystemError_(f"{source}: failed to import ({type(exc).__name__}: {exc})") from exc


def _import(spec: SystemSpec) -> ModuleType:
    module = import_package(spec.path, spec.module_file.stem)
    missing = [s for s in (*spec.stages, "submission") if not callable(getattr(module, s, None))]
    if missing:
        raise SystemError_(f"{spec.module_file}: missing function(s) {missing}; each stage in system.toml needs "
                           "a function of that name, plus submission(ctx)")
    return module


def discover(roots: list[Path] | None = None) -> list[SystemSpec | tuple[Path, str]]:
    """Every folder with a system.toml under the search roots: a spec, or (path, error) when it does not load."""
    out: list[SystemSpec | tuple[Path, str]] = []
    seen: set[Path] = set()
    for root in roots or system_search_roots():
        for toml_path in sorted(Path(root).glob("*/system.toml")):
            folder = toml_path.parent.resolve()
            if folder in seen:
                continue
            seen.add(folder)
            try:
                out.append(load_system(folder))
            except SystemError_ as exc:
                out.append((folder, str(exc)))
    return out


def check_system(spec: SystemSpec) -> int:
    """Import the module and validate every profile x variant; returns the number of combinations checked."""
    try:
        return len(spec.check())
    except ConfigError as exc:
        raise SystemError_(str(exc)) from None

