"""Typed configuration: dataclasses built from keyword arguments or YAML, rejecting unknown keys."""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type or out-of-range value."""


def from_dict(cls: type[T], values: Mapping[str, Any], *, where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``values``, checking keys and converting literal types.

    Nested dataclass fields accept mappings. Tuples accept lists (YAML has no tuples). Ints are
    accepted where floats are expected; nothing else is coerced.

    Raises:
        ConfigError: for an unknown key, a value of the wrong type, or a value that the
            dataclass's own ``__post_init__`` rejects.
    """
    where = where or cls.__name__
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; valid options are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_yaml(cls: type[T], path: str | Path, overrides: Mapping[str, Any] | None = None) -> T:
    """Read ``cls`` from a YAML file, then apply ``overrides`` (dotted keys allowed: ``a.b``)."""
    return from_dict(cls, apply_overrides(read_yaml(path), overrides or {}), where=str(path))


@functools.cache
def _loader() -> Any:
    """PyYAML's safe loader, reading floats as YAML 1.2 does: ``5e-4`` and ``1e5`` are numbers
    (YAML 1.1, PyYAML's default, wants ``5.0e-4`` and reads ``5e-4`` as a string)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.VERBOSE),
        list("-+0123456789."),
    )
    return Loader


def parse_yaml(text: str | Any) -> Any:
    """The value of YAML ``text`` (a string or a stream) with :func:`read_yaml`'s number rules."""
    import yaml

    return yaml.load(text, Loader=_loader())  # a subclass of SafeLoader


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML file (empty for an empty file); ``1e-4`` reads as a number.

    Raises:
        ConfigError: the file is not valid YAML or does not hold a mapping.
    """
    import yaml

    with open(path, encoding="utf-8") as handle:
        try:
            values = parse_yaml(handle) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(values).__name__}")
    return values


def write_yaml(path: str | Path, values: Mapping[str, Any]) -> None:
    """Write a mapping of plain data as YAML (keys in their order)."""
    import yaml

    Path(path).write_text(yaml.safe_dump(dict(values), sort_keys=False), encoding="utf-8")


def apply_overrides(values: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` with dotted-key ``overrides`` set (``{"solver.iters": 10}``)."""
    values = deep_merge(values, {})
    for key, value in overrides.items():
        target = values
        *parents, leaf = key.split(".")
        for parent in parents:
            child = target.setdefault(parent, {})
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {key!r}: {parent!r} is not a section")
            target = child
        target[leaf] = value
    return values


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, merging nested mappings (copies; inputs unchanged)."""
    merged = {key: deep_merge(value, {}) if isinstance(value, Mapping) else value for key, value in base.items()}
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = deep_merge(value, {}) if isinstance(value, Mapping) else value
    return merged


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-data form of a config dataclass (tuples as lists), suitable for YAML."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError("; ".join(errors))
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, where=where)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_hint, value_hint = typing.get_args(hint) or (Any, Any)
        return {_convert(key_hint, k, where): _convert(value_hint, v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a sequence, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, where) for a, v in zip(args, value))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value
