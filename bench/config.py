"""Declared configuration: every consumer of a config key declares it, with its type and default.

A stage's table in ``system.toml`` reaches code only through the keys the stage declares (``@stage(OPTIM, AUGMENT,
...)``); anything else — a typo (``epocs``), a key of another stage, a value of the wrong type — is an error naming
the file, the table, the key and the nearest valid key, found before anything trains (``bench systems --check``).
At run time a stage sees its config as a :class:`StageConfig`, which also refuses to hand out a key the stage did
not declare, so a declaration cannot silently fall behind the code that reads it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

REQUIRED = object()  # sentinel default: the key must be given


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names where it came from and what to change."""


@dataclass(frozen=True)
class Key:
    """One declared key. ``type`` is a Python type or a tuple of them (``float`` accepts ints, ``int`` refuses
    bools and floats); ``choices`` restricts string values; ``table`` validates each entry of a list of tables
    (``teachers``), each value of a table of tables (``per_device``, with ``mapping=True``) or one nested table
    (a ``dict`` key without ``mapping``)."""

    type: type | tuple[type, ...]
    default: Any = None
    doc: str = ""
    choices: tuple | None = None
    table: "Schema | None" = None
    mapping: bool = False

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        names = {bool: "a bool", int: "an integer", float: "a number", str: "a string", list: "a list",
                 dict: "a table"}
        out = " or ".join(names.get(t, t.__name__) for t in types)
        return out + (f" (one of {', '.join(map(repr, self.choices))})" if self.choices else "")


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    for t in types:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t not in (int, float) and isinstance(value, t):
            return True
    return False


@dataclass(frozen=True)
class Schema:
    """A named set of keys. ``a | b`` is the union (a key declared twice must be declared identically).
    ``checks`` validate a whole resolved config (e.g. ``model_options`` against the chosen ``model``) and raise
    :class:`ConfigError` without a location; the caller adds it."""

    name: str
    keys: Mapping[str, Key] = field(default_factory=dict)
    checks: tuple[Callable[[Mapping[str, Any]], None], ...] = ()

    def __or__(self, other: "Schema") -> "Schema":
        clash = [k for k in set(self.keys) & set(other.keys) if self.keys[k] != other.keys[k]]
        if clash:
            raise ValueError(f"schemas {self.name} and {other.name} declare {sorted(clash)} differently")
        checks = self.checks + tuple(c for c in other.checks if c not in self.checks)
        return Schema(f"{self.name}+{other.name}", {**self.keys, **other.keys}, checks)

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def defaults(self) -> dict[str, Any]:
        return {k: spec.default for k, spec in self.keys.items() if not spec.required}


def merge(*schemas: Schema, name: str | None = None) -> Schema:
    out = Schema(name or "none")
    for s in schemas:
        out = out | s
    return Schema(name or out.name, out.keys, out.checks)


def reads(*schemas: Schema, extra: Mapping[str, Key] | None = None) -> Callable:
    """Declare the config keys a stage (or ``submission``) function reads: harness schemas (``OPTIM``,
    ``AUGMENT``, ``MODEL`` ...) plus the system's own ``extra`` keys. Undeclared keys in its table are errors."""
    schema = merge(*schemas, Schema("own", dict(extra or {})), name="+".join(s.name for s in schemas) or "own")

    def mark(fn: Callable) -> Callable:
        fn.config_schema = schema
        return fn

    return mark


def deep_merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``b`` over ``a``, key by key; nested tables merge the same way (a variant changes one key of a table)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def optional(schema: Schema, name: str) -> Schema:
    """``schema`` with no required key (an override table that only changes what it names)."""
    return Schema(name, {k: replace(spec, default=None) if spec.required else spec for k, spec in schema.keys.items()},
                  schema.checks)


def declared(fn: Callable) -> Schema:
    """The schema a function declared with :func:`reads` (none: it reads no config)."""
    return getattr(fn, "config_schema", Schema("none"))


def nearest(key: str, valid) -> str | None:
    match = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_key_message(where: str, table: str, key: str, valid) -> str:
    hint = nearest(key, valid)
    lead = f"{where}: [{table}] {key}" if table else f"{where}: {key}"
    return lead + ": unknown key" + (f"; did you mean {hint}?" if hint else
                                     f"; valid keys here: {', '.join(sorted(valid)) or 'none'}")


def check_value(where: str, table: str, key: str, spec: Key, value: Any) -> None:
    """Type, choices and nested tables of one value."""
    lead = f"{where}: [{table}] {key}" if table else f"{where}: {key}"
    if not _type_ok(value, spec.type):
        raise ConfigError(f"{lead} = {value!r}: must be {spec.type_name()}, got {type(value).__name__}")
    if spec.choices is not None and isinstance(value, str) and value not in spec.choices:
        raise ConfigError(f"{lead} = {value!r}: must be one of {', '.join(map(repr, spec.choices))}"
                          + (f"; did you mean {nearest(value, spec.choices)!r}?" if nearest(value, spec.choices)
                             else ""))
    if spec.table is None:
        return
    if isinstance(value, dict) and not spec.mapping:  # one nested table (a teacher's ``pretrain``)
        check_table(where, f"{table}.{key}" if table else key, value, spec.table)
        return
    entries = value.items() if spec.mapping else enumerate(value)
    for name, entry in entries:
        inner = f"{key}.{name}" if spec.mapping else f"{key}[{name}]"
        inner = f"{table}.{inner}" if table else inner
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: [{inner}]: must be a table, got {type(entry).__name__}")
        check_table(where, inner, entry, spec.table)
        missing = [k for k, s in spec.table.keys.items() if s.required and k not in entry]
        if missing:
            raise ConfigError(f"{where}: [{inner}] needs {', '.join(missing)}")


def check_table(where: str, table: str, values: Mapping[str, Any], schema: Schema) -> None:
    """Every key of ``values`` must be declared by ``schema`` with a value of its type."""
    for key, value in values.items():
        if key not in schema.keys:
            raise ConfigError(unknown_key_message(where, table, key, schema.keys))
        check_value(where, table, key, schema.keys[key], value)


def with_defaults(values: Mapping[str, Any], schema: Schema, where: str, table: str) -> dict[str, Any]:
    """``values`` (already checked) completed with the schema's defaults; a missing required key is an error.
    Nested tables are left as given: their consumer decides what they default to (a teacher inherits its stage's
    settings, a per-device override only overrides)."""
    missing = [k for k, spec in schema.keys.items() if spec.required and k not in values]
    if missing:
        raise ConfigError(f"{where}: [{table}] needs {', '.join(missing)} (no default)")
    out = schema.defaults()
    out.update(values)
    return out


class StageConfig(Mapping):
    """A stage's resolved configuration: reading a key the stage did not declare is an error, not a silent miss."""

    def __init__(self, values: Mapping[str, Any], schema: Schema, owner: str):
        self._values, self._schema, self._owner = dict(values), schema, owner

    def _check(self, key: str) -> None:
        if key not in self._schema.keys:
            raise KeyError(f"{self._owner} reads config key {key!r}, which it does not declare; add it to the keys "
                           f"the stage declares (bench.config), e.g. @stage(..., extra={{{key!r}: Key(...)}})")

    def __getitem__(self, key: str) -> Any:
        self._check(key)
        return self._values.get(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._check(key)
        value = self._values.get(key)
        return default if value is None else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __repr__(self) -> str:
        return f"StageConfig({self._owner}: {self._values!r})"

    @property
    def schema(self) -> Schema:
        return self._schema

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def replace(self, **changes: Any) -> "StageConfig":
        """The same config with some declared keys changed (e.g. per-device overrides)."""
        for key in changes:
            self._check(key)
        return StageConfig({**self._values, **changes}, self._schema, self._owner)
