"""Typed, validated configuration objects loaded from YAML.

Configs are frozen keyword-only dataclasses; :func:`from_mapping` builds one from a
parsed YAML mapping and raises :class:`ConfigError` naming the file, the key and the
fix for unknown keys, wrong types and bad values, before anything runs.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message says how to fix it."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is tuple:
        return f"list of {len(typing.get_args(tp))} numbers"
    if origin is dict:
        return "mapping"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _same_shape(value: Any, tp: Any) -> bool:
    """Whether ``value`` is a list for a list type, or a mapping for a dataclass or dict."""
    origin = typing.get_origin(tp)
    if isinstance(value, list):
        return origin in (list, tuple)
    return isinstance(value, dict) and (origin is dict or dataclasses.is_dataclass(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None  # optional X: null is None (an optional section stays off)
        if value is not None and len(options) == 1:  # optional X: X's own error is clearer
            return _convert(value, options[0], where)
        errors = {}
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors[arg] = err
        for arg, err in errors.items():  # the option of the value's shape says what is wrong
            if _same_shape(value, arg):
                raise err
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [_convert(v, item, f"{where}[{k}]") for k, v in enumerate(value)]
    elif origin is tuple:
        items = typing.get_args(tp)
        if isinstance(value, (list, tuple)) and len(value) == len(items):
            return tuple(_convert(v, t, f"{where}[{k}]") for k, (v, t) in enumerate(zip(value, items)))
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` prefixes error messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys are {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {name!r}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file; syntax errors become ConfigError naming the file."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


def to_mapping(obj: Any) -> Any:
    """A config object as plain data (for YAML and HDF5 attributes)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def resource(default: Any) -> Any:
    """A config field that says how a stage runs (device, threads, workers, batch
    budgets), not what it computes: it never enters a fingerprint, so changing it
    does not make finished outputs stale."""
    return dataclasses.field(default=default, metadata={"resource": True})


def science(obj: Any) -> Any:
    """``obj`` as plain data without its :func:`resource` fields (nested configs too):
    the settings that can change a result."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: science(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.metadata.get("resource")}
    if isinstance(obj, dict):
        return {k: science(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [science(v) for v in obj]
    return obj


def fingerprint(obj: Any) -> str:
    """The science settings of ``obj`` as canonical JSON (recorded in every output and
    compared on resume)."""
    return json.dumps(science(obj), sort_keys=True)
