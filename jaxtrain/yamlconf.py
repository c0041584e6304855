"""Typed YAML for frozen dataclasses: build from mappings, coerce scalars, merge `base:` chains.

Generic over any dataclass tree, so the run config (`jaxtrain.config`) only
declares its sections. Overrides are `section.key=value` strings whose values
are parsed as YAML scalars and then checked against the dataclass field type.
Every problem is a ConfigError naming the dotted key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

import yaml
from etils import epath

from jaxtrain.errors import ConfigError


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}.")
        return build(tp, value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(choices)}.")
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}.")
        return tuple(coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {tp}.")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}.")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__}).")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__}).")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}; quote it in YAML.")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}.")  # pragma: no cover


def build(cls: type, values: dict, prefix: str = "") -> Any:
    """The dataclass `cls` from a mapping; unknown keys are refused with the closest valid one.

    A section's own checks (`__post_init__`) raise ConfigError with the key relative to the
    section; the prefix makes it the full dotted key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else ""
            raise ConfigError(f"{full}: unknown key.{hint} Valid keys here: {', '.join(names)}.")
        kwargs[key] = coerce(value, hints[key], full)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: where it went wrong, what, and where the construct began."""
    if not isinstance(e, yaml.MarkedYAMLError) or e.problem_mark is None:
        return f": {' '.join(str(e).split())}"
    where = f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
    started = (f" ({e.context} that starts at line {e.context_mark.line + 1}, column {e.context_mark.column + 1})"
               if e.context and e.context_mark is not None else f" ({e.context})" if e.context else "")
    return f"{where}: {e.problem}{started}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first at line {seen[key]})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: epath.Path, resolve_base, seen: tuple = ()) -> dict:
    """A YAML mapping with its `base:` chain merged in; `resolve_base(name)` finds a base's path."""
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself.")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML{_yaml_problem(e)}; fix the syntax there.") from e
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; write the config sections there (or `base: demo` to "
                          "start from a preset).")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config sections (e.g. `model: {{num_layers: 4}}`), "
                          f"got {type(raw).__name__} {str(raw)[:40]!r}.")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return merge(load_yaml(resolve_base(str(base)), resolve_base, seen + (path,)), raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. model.num_layers=4.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(values: dict, overrides) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section.")
        node[keys[-1]] = value
    return values


def dump(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
