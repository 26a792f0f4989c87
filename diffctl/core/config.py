"""Typed configs: dataclasses whose fields are the single source of defaults, built strictly from mappings.

A config class declares each setting once, as a typed field with its default and an attribute docstring
(a string literal right after the field). ``from_dict`` refuses unknown keys and names the valid ones;
``__post_init__`` converts YAML/CLI values to the declared types (no bool for a number, no 2.5 for an int,
one of the ``Literal`` choices) and then runs ``validate`` for the checks that involve several fields.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import math
import numbers
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

C = TypeVar("C", bound="Config")


@dataclass
class Config:
    """Base of diffctl's typed configs (training, sampler, every agent).

    ``section`` names the config in error messages (``training.lr must be positive``).
    """

    section: ClassVar[str] = "config"

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            setattr(self, f.name, coerce(hints[f.name], value, f"{self.section}.{f.name}"))
        self.validate()

    def validate(self) -> None:
        """Checks that involve several fields (ValueError naming them); single-field types are checked
        before this runs."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default of every field that has one (required fields left out)."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        """Build from a mapping; unknown keys or missing required ones raise one ValueError naming them."""
        if not isinstance(values, Mapping):
            raise ValueError(f"{cls.section} must be a mapping of settings, got {values!r}")
        names = cls.field_names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown {cls.section} keys {unknown}; valid keys: {sorted(names)}")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in required if k not in values]
        if missing:
            raise ValueError(f"{cls.section} is missing required keys {missing}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able values (tuples become lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed, validated like the constructor."""
        return type(self).from_dict({**self.to_dict(), **changes})

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Each field's attribute docstring, over the class and its bases (subclasses win)."""
        docs: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            if klass is object or not dataclasses.is_dataclass(klass):
                continue
            docs.update(_attribute_docs(klass))
        return {name: docs.get(name, "") for name in cls.field_names()}

    @classmethod
    def describe(cls) -> str:
        """One line per field, ``name: type = default  # doc``: the config's reference in plain text."""
        hints, docs, defaults = _type_hints(cls), cls.field_docs(), cls.defaults()
        lines = []
        for name in cls.field_names():
            default = f" = {defaults[name]!r}" if name in defaults else " (required)"
            doc = f"  # {docs[name]}" if docs[name] else ""
            lines.append(f"{name}: {type_name(hints[name])}{default}{doc}")
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _attribute_docs(cls: type) -> dict[str, str]:
    """Docstrings written as a string literal directly after an annotated class attribute."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def type_name(tp: Any) -> str:
    """Readable name of a type hint: ``int``, ``float | None``, ``one of ('edm', 'vp')``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return f"one of {typing.get_args(tp)}"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any value"
    names = {float: "a finite number", int: "an integer", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def coerce(tp: Any, value: Any, label: str) -> Any:
    """``value`` converted to the type hint ``tp`` (strictly: no bool for a number, no fractional int, no
    NaN or inf for a float), or a ValueError naming ``label`` and the expected type."""
    try:
        return _coerce(tp, value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be {type_name(tp)}, got {value!r}") from None


def _coerce(tp: Any, value: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ValueError(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value)
            except (TypeError, ValueError):
                continue
        raise ValueError(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(tp)
        return value
    if tp is int:  # numbers.Real admits numpy scalars as well
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(tp)
        if not math.isfinite(value) or not float(value).is_integer():
            raise ValueError(tp)
        return int(value)
    if tp is float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(tp)
        if not math.isfinite(value):
            raise ValueError(tp)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(tp)
        return value
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise TypeError(tp)
        return dict(value)
    if origin in (tuple, list, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TypeError(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(tp)
            return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
        item = args[0] if args else Any
        items = [_coerce(item, v) for v in value]
        return tuple(items) if origin is tuple else items
    return value


class Configurable:
    """Mixin of an agent built from a typed config: ``config`` (a ``config_class`` instance) and
    ``hparams``, a read-only mapping view of it (memoized in ``_cache``, which is never pickled).

    Agents are constructed as ``cls(obs_dim, action_dim, *, sampler=..., normalizers=..., **settings)`` with
    ``settings`` the other fields of ``config_class``; ``from_config`` builds one from a config object.
    """

    config_class: ClassVar[type[Config]]
    config: Config
    task: str | None = None
    """The task the agent was trained on (set by the train pipeline, saved in ``config.json``)."""
    dataset: dict[str, Any] | None = None
    """The identity of its training data (``core.persistence.dataset_identity``)."""

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> Any:
        """The agent ``config`` describes (``kwargs``: ``sampler``, ``normalizers``)."""
        if not isinstance(config, cls.config_class):
            raise TypeError(f"{cls.__name__} is built from a {cls.config_class.__name__}, got {config!r}")
        settings = config.to_dict()
        return cls(settings.pop("obs_dim"), settings.pop("action_dim"), **kwargs, **settings)

    @property
    def hparams(self) -> Mapping[str, Any]:
        """The config as a read-only mapping (change it with ``agent.config = agent.config.replace(...)``)."""
        cache = self.__dict__.setdefault("_cache", {})
        hit = cache.get("hparams")
        if hit is None or hit[0] is not self.config:
            hit = cache["hparams"] = (self.config, types.MappingProxyType(self.config.to_dict()))
        return hit[1]
