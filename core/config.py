"""Hyper-parameter handling shared by layers, losses and optimizers.

A component's hyper-parameters are its constructor arguments, stored under the
same attribute names; that single convention lets ``get_config`` read them back
and lets validation errors name the component and the key at fault.
"""

from __future__ import annotations

import inspect
import json
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from .errors import ConfigError

DTYPES = ("float32", "float64")


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


#: the heading of the docstring section that documents the config keys, one per line
CONFIG_SECTION = "Config:"


def documented_keys(cls: type) -> dict[str, str]:
    """The one-line meanings of config keys in the ``Config:`` sections of the docstrings
    of ``cls`` and its bases (a subclass's entry wins)::

        Config:
            units: output features (the last axis).
            use_bias: add the bias b.

    An entry may continue on lines indented deeper than its key."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = klass.__dict__.get("__doc__")
        if isinstance(doc, str):
            found.update(_config_section(doc))
    return found


def _config_section(doc: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    lines = inspect.cleandoc(doc).splitlines()
    try:
        start = [line.strip() for line in lines].index(CONFIG_SECTION) + 1
    except ValueError:
        return entries
    indent: int | None = None
    key = None
    for line in lines[start:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:
            break  # the section ended
        if indent is None:
            indent = depth
        text = line.strip()
        if depth == indent and ":" in text:
            key, _, meaning = text.partition(":")
            key = key.strip()
            entries[key] = meaning.strip()
        elif key is not None:  # a continuation line
            entries[key] = f"{entries[key]} {text}".strip()
    return entries


def _type_name(parameter: inspect.Parameter) -> str:
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        default = parameter.default
        if default is inspect.Parameter.empty or default is None:
            return "any"
        return type(default).__name__
    if isinstance(annotation, str):  # ``from __future__ import annotations``
        return annotation
    return getattr(annotation, "__name__", None) or repr(annotation)


class Configurable:
    """Mixin: ``get_config`` / ``from_config`` from the constructor signature, and
    ``config_schema`` from the signature and the docstring's ``Config:`` section."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "component"
    #: constructor arguments left out of the config (they are not hyper-parameters)
    _not_config: tuple[str, ...] = ("label",)

    @classmethod
    def config_keys(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in list(sig.parameters.values())[1:]
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in cls._not_config
        ]

    @classmethod
    def config_schema(cls) -> list[dict[str, Any]]:
        """Each config key with its type (the annotation, else the default's type),
        default (``required`` true when there is none) and one-line meaning (from the
        ``Config:`` docstring sections, "" when undocumented)."""
        meanings = documented_keys(cls)
        parameters = inspect.signature(cls.__init__).parameters
        schema = []
        for key in cls.config_keys():
            parameter = parameters[key]
            required = parameter.default is inspect.Parameter.empty
            schema.append({"key": key, "type": _type_name(parameter),
                           "default": None if required else _json_value(parameter.default),
                           "required": required, "doc": meanings.get(key, "")})
        return schema

    def get_config(self) -> dict[str, Any]:
        """The hyper-parameters as plain JSON data; ``from_config`` rebuilds the object."""
        return {key: _json_value(getattr(self, key)) for key in self.config_keys()}

    @classmethod
    def from_config(cls, config: dict[str, Any], **extra: Any) -> Any:
        return construct(cls, {**config, **extra})


def config_problem(obj: Configurable) -> str | None:
    """Why ``obj.get_config()`` could not be saved and read back, naming the key (a
    constructor argument not stored under its own attribute name, a value that is not
    JSON data such as a set), or None. Checked when a layer is built, so a run does not
    train for hours and then fail to save its model."""
    for key in obj.config_keys():
        try:
            value = _json_value(getattr(obj, key))
        except AttributeError:
            return (f"config key {key!r}: the constructor argument is not stored under the "
                    f"attribute {key!r}, so get_config cannot read it back")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            return (f"config key {key!r}: {type(value).__name__} {value!r} is not plain "
                    f"JSON data ({exc})")
    return None


def construct(cls: type[Configurable], config: dict[str, Any]) -> Any:
    """Instantiate ``cls(**config)``, turning an unknown key into a ConfigError that lists
    the valid ones instead of a bare TypeError."""
    keys = cls.config_keys()
    allowed = set(keys) | set(cls._not_config)
    unknown = sorted(set(config) - allowed)
    kind = cls.kind
    if unknown:
        raise ConfigError(
            f"{kind} {cls.name!r}: unknown config key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(keys) or '(none)'}"
        )
    try:
        return cls(**config)
    except TypeError as exc:
        raise ConfigError(f"{kind} {cls.name!r}: {exc}") from None


def check_dtype(owner: str, dtype: Any) -> str:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ConfigError(f"{owner}: dtype must be one of {DTYPES}, got {dtype!r}")
    return name


def positive_int(owner: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ConfigError(f"{owner}: {key} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(owner: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(f"{owner}: {key} must be a non-negative integer, got {value!r}")
    return int(value)


def number(owner: str, key: str, value: Any, *, low: float | None = None,
           high: float | None = None, low_open: bool = False) -> float:
    """A real number within [low, high] (or (low, high] when ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(
        float(value)
    ):
        raise ConfigError(f"{owner}: {key} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ConfigError(f"{owner}: {key} must be {bound}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{owner}: {key} must be <= {high}, got {value!r}")
    return value


def choice(owner: str, key: str, value: Any, options: Sequence[Any]) -> Any:
    if value not in options:
        raise ConfigError(f"{owner}: {key} must be one of {list(options)}, got {value!r}")
    return value


def int_tuple(owner: str, key: str, value: Any, length: int | None = None, *,
              allow_zero: bool = False) -> tuple[int, ...]:
    """An int or a sequence of ints (an int is repeated ``length`` times)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if length is None:
            raise ConfigError(f"{owner}: {key} must be a list of integers, got {value!r}")
        value = (int(value),) * length
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"{owner}: {key} must be an integer or a list of integers, got {value!r}")
    if length is not None and len(value) != length:
        raise ConfigError(f"{owner}: {key} must have {length} entries, got {list(value)!r}")
    floor = 0 if allow_zero else 1
    if any(v < floor for v in value):
        kind = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{owner}: {key} entries must be {kind}, got {list(value)!r}")
    return tuple(int(v) for v in value)
