"""Typed dataclass configs built from plain dicts (Ray param spaces, JSON, ``--set key=value``).

``config_from_dict`` rejects unknown keys and coerces values to the field's annotated type, so a typo in a
sweep definition fails before any trial starts instead of being silently ignored. Enum-like fields are typed
with ``Literal`` aliases: the loader rejects other values, and ``check_choices`` (called by each config's
``__post_init__``) does the same for configs built directly, with the same one-line message.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from vae_attention.errors import ConfigError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, value: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{name}: cannot use {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(_not_one_of(name, value, args))
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        if isinstance(value, str) and not value.strip():
            items = []
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[T, ...]: any length
            return tuple(_coerce(name, v, args[0]) for v in items)
        if len(items) != len(args):
            raise ConfigError(f"{name} needs {len(args)} values, got {value!r}")
        return tuple(_coerce(name, v, a) for v, a in zip(items, args, strict=True))
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in _TRUE | _FALSE:
                    raise ValueError
                return value.lower() in _TRUE
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
        if kind is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a valid {kind.__name__}") from None
    return value


def _not_one_of(name: str, value: Any, choices: tuple) -> str:
    return f"{name}={value!r} is not one of {', '.join(map(str, choices))}"


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(cls)
            if typing.get_origin(hints[f.name]) is typing.Literal}


def check_choices(config: Any) -> None:
    """``ConfigError`` unless every ``Literal``-typed field of the dataclass ``config`` holds one of its values."""
    for name, choices in _literal_fields(type(config)).items():
        value = getattr(config, name)
        if value not in choices:
            raise ConfigError(_not_one_of(name, value, choices))


def config_from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from ``values``; unknown keys and uncoercible values raise ``ConfigError``."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s) {unknown}; known keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a config dataclass (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def check_same_config(stored: dict[str, Any] | None, current: Any, ignore: tuple[str, ...] = ("data_dir",)) -> None:
    """Refuse to continue a checkpoint written under another config (e.g. defaults changed since)."""
    if stored is None:
        return
    now = config_to_dict(current)
    differ = sorted(k for k in set(stored) | set(now) if k not in ignore and stored.get(k) != now.get(k))
    if differ:
        pairs = ", ".join(f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in differ)
        raise ConfigError(f"checkpoint was written with another config ({pairs}); start a new sweep instead")
