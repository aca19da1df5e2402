"""Dagster `Config` classes derived from the core's config dataclasses, so each knob is written
once, in the core: its name, type, default and doc.

`derive(SamplingConfig)` is a `dg.Config` with one field per dataclass field: a `Literal` becomes
an enum of its values (`choice`: Dagster's config schema refuses any other value at launch, naming
the field; Dagster cannot take a `Literal` inside `Optional`), a tuple becomes a list, a nested
dataclass a nested `Config`, and each field's description is its entry in the dataclass docstring.
`to_core()` converts back.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field


class CoreConfig(dg.Config):
    """A run config derived from a core dataclass (`derive`)."""

    __core__: ClassVar[type]  # the dataclass
    __excluded__: ClassVar[frozenset[str]] = frozenset()  # fields left at the core's default

    def to_core(self, **replace):
        """The core dataclass of these values; `replace` sets fields outright (excluded ones too)."""
        cls = self.__core__
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in replace:
                values[f.name] = replace[f.name]
            elif f.name not in self.__excluded__:
                values[f.name] = _to_core(getattr(self, f.name), hints[f.name])
        return cls(**values)


def derive(core_cls: type, defaults: Any = None, *, name: str | None = None, exclude: tuple[str, ...] = (),
           replace: dict[str, tuple[Any, Any, str]] | None = None,
           nested: dict[str, Callable[[Any], type[CoreConfig]]] | None = None) -> type[CoreConfig]:
    """A `CoreConfig` class with a field per field of the dataclass `core_cls`, defaults from
    `defaults` (an instance; default: `core_cls()`). `exclude` leaves fields out (they keep the
    core's default); `replace` gives fields a Dagster type, default and description of their own
    (e.g. an empty `solution_end` that means "the dataset's own"); `nested` derives a nested
    dataclass field with a function of its default (default: `derive(its class, its default)`)."""
    defaults = core_cls() if defaults is None else defaults
    namespace = fields_of(core_cls, defaults, exclude=exclude, replace=replace, nested=nested)
    namespace.update(__module__=__name__, __doc__=core_cls.__doc__, __core__=core_cls, __excluded__=frozenset(exclude))
    return type(name or f"{core_cls.__name__}Run", (CoreConfig,), namespace)


def fields_of(core_cls: type, defaults: Any, *, prefix: str = "", exclude: tuple[str, ...] = (),
              replace: dict[str, tuple[Any, Any, str]] | None = None,
              nested: dict[str, Callable[[Any], type[CoreConfig]]] | None = None) -> dict:
    """The fields of the dataclass `core_cls` as a class namespace (`__annotations__` and pydantic
    `Field`s) for `derive`, or for a flat class (a resource) when `prefix` names them `<prefix>_<field>`."""
    replace, nested = replace or {}, nested or {}
    hints = typing.get_type_hints(core_cls)
    docs = field_docs(core_cls)
    annotations, namespace = {}, {}
    for f in dataclasses.fields(core_cls):
        if f.name in exclude:
            continue
        key = f"{prefix}_{f.name}" if prefix else f.name
        if f.name in replace:
            hint, default, description = replace[f.name]
            annotations[key] = dagster_type(hint, f.name)
            namespace[key] = Field(default=default, description=description)
            continue
        hint, value = hints[f.name], getattr(defaults, f.name)
        if dataclasses.is_dataclass(hint):
            inner = nested[f.name](value) if f.name in nested else derive(hint, value)
            annotations[key] = inner
            namespace[key] = Field(default_factory=inner, description=docs.get(f.name))
        else:
            annotations[key] = dagster_type(hint, f.name)
            namespace[key] = Field(default=_plain(value), description=docs.get(f.name))
    return {"__annotations__": annotations, **namespace}


def core_value(value):
    """A run config value as the core takes it: a choice's value, a nested config's dataclass."""
    return _to_core(value, None)


def field_docs(cls: type) -> dict[str, str]:
    """Each field's entry in the dataclass docstring: a line `name: text` (or `a / b: text` for
    several), with the lines indented deeper below it."""
    names = {f.name for f in dataclasses.fields(cls)}
    lines = (cls.__doc__ or "").splitlines()
    docs: dict[str, str] = {}
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([\w ,/]+?):\s+(\S.*)$", line)
        keys = [k.strip() for k in re.split(r"[,/]", match.group(2))] if match else []
        if not keys or not set(keys) <= names:
            continue
        indent, text = len(match.group(1)), [match.group(3)]
        for more in lines[i + 1:]:
            if not more.strip() or len(more) - len(more.lstrip()) <= indent:
                break
            text.append(more.strip())
        for key in keys:
            docs.setdefault(key, " ".join(text))
    return docs


def dagster_type(hint, name: str):
    """The type Dagster's config takes for the core type of field `name`: a `Literal` becomes
    `choice`'s enum, a tuple a list, the rest is kept."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return choice(args, name)
    if origin is tuple:
        return list[dagster_type(args[0], name)]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(dagster_type(a, name) for a in args)]
    return hint


_CHOICES: dict[tuple[str, ...], type[enum.StrEnum]] = {}


def choice(values: tuple[str, ...], name: str) -> type[enum.StrEnum]:
    """One enum per set of `Literal` values (named after the first field that has them): its
    members are the values, and equal them as strings."""
    values = tuple(values)
    if values not in _CHOICES:
        title = "".join(w.capitalize() for w in name.split("_"))
        _CHOICES[values] = enum.StrEnum(title, {v: v for v in values}, module=__name__)
    return _CHOICES[values]


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _to_core(value, hint):
    if isinstance(value, CoreConfig):
        return value.to_core()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list) and typing.get_origin(hint) is tuple:
        return tuple(value)
    return value
