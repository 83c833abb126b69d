"""Named model configs: look one up, override fields from the command line, build its model.

Each model file (training/samplernn.py, vrnn.py, wavegan.py) defines a config dataclass, `CONFIGS` (name ->
config) and `Model`. This module is the one place that knows where they live, so the trainer, the checkpoint
loader and export/ never import a model file by hand.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import types
import typing
from pathlib import Path
from typing import Any

from instrument.errors import UserError

# kind -> module defining CONFIGS and Model (tests may register another kind here)
MODEL_MODULES: dict[str, str] = {
    "samplernn": "training.samplernn",
    "vrnn": "training.vrnn",
    "wavegan": "training.wavegan",
}


def _modules() -> dict[str, types.ModuleType]:
    found = {}
    for kind, name in MODEL_MODULES.items():
        try:
            found[kind] = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the model file exists but something it needs does not: a real error
                raise
    return found


def _registry() -> dict[str, Any]:
    configs: dict[str, Any] = {}
    for module in _modules().values():
        configs.update(getattr(module, "CONFIGS", {}))
    return configs


def list_configs() -> list[str]:
    return sorted(_registry())


def _module_for(kind: str) -> types.ModuleType:
    modules = _modules()
    if kind not in modules:
        known = ", ".join(sorted(modules)) or "none"
        raise UserError(f"no model of kind {kind!r} is available (known kinds: {known}).")
    return modules[kind]


def get_config(name: str, overrides: typing.Iterable[str] = ()) -> Any:
    """A fresh copy of the config called `name` (or read from a JSON file) with `field=value` overrides."""
    path = Path(name)
    if name.endswith(".json") and path.is_file():
        try:
            config = config_from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise UserError(f"{name}: not valid JSON ({e.msg}).") from None
    else:
        registry = _registry()
        if name not in registry:
            raise UserError(f"unknown config {name!r}; choose one of: {', '.join(sorted(registry)) or 'none yet'}.")
        config = dataclasses.replace(registry[name])
    return apply_overrides(config, overrides)


def apply_overrides(config: Any, overrides: typing.Iterable[str]) -> Any:
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    changes = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"override {item!r} is not of the form field=value.")
        if key not in names:
            raise UserError(f"config {config.name!r} has no field {key!r} (fields: {', '.join(names)}).")
        try:
            changes[key] = parse_value(text.strip(), hints[key])
        except ValueError as e:
            raise UserError(f"override {key}={text!r}: {e}.") from None
    return dataclasses.replace(config, **changes) if changes else config


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(text: str, tp: Any) -> Any:
    """Parse command-line text as the type of a config field (int, float, bool, str, tuples/lists, Optional)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return parse_value(text, inner[0])
        for a in inner:  # first type that parses
            try:
                return parse_value(text, a)
            except ValueError:
                continue
        raise ValueError(f"expected one of {inner}")
    if origin in (tuple, list):
        body = text.strip()
        if body[:1] in "([" and body[-1:] in ")]":
            body = body[1:-1]
        parts = [p.strip() for p in body.split(",") if p.strip()]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(parts) != len(args):
                raise ValueError(f"expected {len(args)} comma-separated values")
            return tuple(parse_value(p, a) for p, a in zip(parts, args))
        elem = args[0] if args else str
        values = [parse_value(p, elem) for p in parts]
        return tuple(values) if origin is tuple else values
    if tp is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            f = float(text)  # accept 1e4
            if f != int(f):
                raise ValueError("expected a whole number") from None
            return int(f)
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    if tp is str or tp is Any:
        return text
    raise ValueError(f"cannot parse a value of type {tp}")


def config_from_dict(d: dict[str, Any]) -> Any:
    """Rebuild a config from its `dataclasses.asdict` form (as stored in checkpoints and ONNX metadata)."""
    kind = d.get("kind")
    module = _module_for(kind)
    classes = {type(c) for c in getattr(module, "CONFIGS", {}).values()}
    if not classes:
        raise UserError(f"the {kind} model file defines no configs.")
    cls = getattr(module, "Config", None) or next(iter(classes))
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in d.items():
        if key not in known:
            continue  # a field removed since the checkpoint was written: its default applies
        origin = typing.get_origin(hints[key])
        if isinstance(value, list) and origin is tuple:
            value = tuple(value)
        values[key] = value
    try:
        return cls(**values)
    except TypeError as e:
        raise UserError(f"the stored {kind} config is incomplete ({e}).") from None


def build_model(config: Any):
    """The `Model` of the config's kind, freshly initialised."""
    return _module_for(config.kind).Model(config)
