"""Strict, typed configuration loading shared by every package.

Configs are frozen :func:`dataclasses.dataclass` types. :func:`from_mapping`
builds one from a plain mapping (e.g. parsed YAML) and rejects unknown keys and
wrong types *before* anything starts, naming the offending key path, in the
spirit of nanoGPT's strict configurator. Nested dataclasses, ``tuple[...]``,
``list[...]``, ``Literal[...]`` and ``X | None`` fields are supported.

Numbers are checked too: a float must be finite (``.nan`` and ``.inf`` in YAML are refused for every
float field), and a field declared with :func:`ranged` (``metadata={"range": (lo, hi), "unit": ...}``)
must lie in its inclusive range (each item, for a tuple). The error names the source file, the key
path, the value and the allowed range.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is invalid. The message names source, key and expectation."""


def ranged(default: Any, lo: float | None, hi: float | None, unit: str = "") -> Any:
    """A dataclass field whose value (each item, for a tuple) must lie in the inclusive range [lo, hi].

    ``None`` leaves that side open. ``unit`` (e.g. ``"s"``, ``"Hz"``, ``"px"``) is quoted in the error message.
    :func:`from_mapping` checks the range of every value it reads.
    """
    return dataclasses.field(default=default, metadata={"range": (lo, hi), "unit": unit})


def range_text(lo: float | None, hi: float | None, unit: str = "") -> str:
    """``"[lo, hi] unit"`` with ``-inf`` / ``+inf`` for open sides."""
    lo_text = "-inf" if lo is None else f"{lo:g}"
    hi_text = "+inf" if hi is None else f"{hi:g}"
    return f"[{lo_text}, {hi_text}]" + (f" {unit}" if unit else "")


def check_range(field: dataclasses.Field, value: Any, key: str, source: str) -> None:
    """Raise :class:`ConfigError` if ``value`` (or an item of it) is outside ``field``'s declared range."""
    if "range" not in field.metadata:
        return
    lo, hi = field.metadata["range"]
    items = value if isinstance(value, (tuple, list)) else (value,)
    for item in items:
        if item is None or isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if (lo is not None and item < lo) or (hi is not None and item > hi):
            allowed = range_text(lo, hi, field.metadata.get("unit", ""))
            raise ConfigError(f"{source}: key '{key}': {value!r} out of range {allowed}")


def finite_float(text: str) -> float:
    """``argparse`` type for a number flag: a finite float, else ``argparse.ArgumentTypeError`` (argparse then
    exits 2 with ``argument --flag: expected a finite number, got 'nan'``: one line naming the flag).

    ``float()`` alone accepts ``nan``, ``inf`` and ``1e999``, which then pass every ``x < lo`` range check.
    """
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = get_origin(tp)
    where = f"{source}: key '{key}'"
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_mapping(tp, value, source=source, prefix=key + ".")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_convert(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(item_tp, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp!r}")


def from_mapping(cls: type[T], data: dict[str, Any] | None, source: str = "<config>", prefix: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``, strictly.

    Args:
        cls: a dataclass type whose fields all have defaults or appear in ``data``.
        data: mapping of field name to value (``None`` means all defaults).
        source: file name or description used in error messages.
        prefix: key path prefix for nested configs (internal).

    Raises:
        ConfigError: an unknown key (names it and lists the allowed ones), a value
            of the wrong type, a non-finite float, a value outside its field's declared range
            (:func:`ranged`), or a required key that is missing.
    """
    data = dict(data or {})
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], prefix + name, source)
            check_range(field, kwargs[name], prefix + name, source)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{prefix}{name}'")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{source}: {exc}") from exc


def to_mapping(obj: Any) -> Any:
    """Turn a (nested) dataclass into plain dicts/lists suitable for YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``.

    Raises:
        ConfigError: the file is missing, is not valid YAML, or is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load(cls: type[T], path: str | Path) -> T:
    """Load the dataclass ``cls`` from the YAML file ``path`` (strict; see :func:`from_mapping`)."""
    return from_mapping(cls, load_yaml(path), source=str(path))


def dump(obj: Any, path: str | Path) -> None:
    """Write a dataclass config as YAML to ``path`` (keys in declaration order)."""
    Path(path).write_text(yaml.safe_dump(to_mapping(obj), sort_keys=False), encoding="utf-8")
