"""A task's own settings: `task_options.<name>` in YAML, `--set` and RAYTRAIN_TASK_OPTIONS__<NAME>.

The config cannot know a user task's settings, so it carries them as a plain mapping; the task
declares them as a dataclass (`TrainingTask.Options`) and they are checked against it as
strictly as the built-in sections: an unknown name (with a suggestion), a wrong type or a value
for a task that takes none is a ConfigError (exit 2) before anything starts.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, Optional

import yaml

from raytrain_llm.core.bounded_yaml import load_text
from raytrain_llm.core.config_loader import coerce, field_types, parse_text, suggest, type_name
from raytrain_llm.core.errors import ConfigError, clip, quote

_SCALARS = (int, float, bool, str)


def parse_task_options(options_cls: Optional[type], raw: Mapping[str, Any], task: str) -> Any:
    """An `options_cls` instance from `raw` (typed YAML values, or text from the environment and
    `--set`); None when the task declares no options and none were given."""
    if options_cls is None:
        if raw:
            raise ConfigError([f"task_options.{name}: task {task} takes no options (declare them as a "
                               "dataclass `Options` on the task)" for name in raw])
        return None
    types = field_types(options_cls)
    values, errors = {}, []
    for name, value in raw.items():
        if name not in types:
            errors.append(f"task_options.{clip(str(name))}: unknown option of task {task}{suggest(str(name), types)}"
                          f" (options: {', '.join(types) or 'none'})")
            continue
        tp = types[name]
        try:
            values[name] = convert(value, tp)
        except (ValueError, TypeError, StopIteration, yaml.YAMLError):
            errors.append(f"task_options.{name}: expected {_describe(tp)}, got {quote(value)}")
    missing = [f.name for f in dataclasses.fields(options_cls)
               if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    errors += [f"task_options.{name}: required by task {task}, not set" for name in missing if name in types
               and not any(e.startswith(f"task_options.{name}:") for e in errors)]
    if errors:
        raise ConfigError(errors)
    return options_cls(**values)


def convert(value: Any, tp: Any) -> Any:
    """`value` (typed from YAML, or text from `--set`/the environment) as the declared type: int,
    float, bool, str, Optional[...], Literal[...], list[...], tuple[...] (fixed or `X, ...`) and
    dict; other types take an instance as it is. ValueError/TypeError when it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return convert(value, arm)
            except (ValueError, TypeError) as exc:
                errors.append(exc)
        raise TypeError(errors)
    if origin is typing.Literal:
        for choice in args:
            try:
                if convert(value, type(choice)) == choice:
                    return choice
            except (ValueError, TypeError):
                continue
        raise ValueError(value)
    if tp in _SCALARS:
        return parse_text(value, tp) if isinstance(value, str) and tp is not str else coerce(value, tp)
    if origin in (list, tuple) or tp in (list, tuple):
        items = _sequence(value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(value)
            return tuple(convert(v, a) for v, a in zip(items, args))
        arm = args[0] if args else None
        out = [convert(v, arm) if arm is not None else v for v in items]
        return tuple(out) if (origin or tp) is tuple else out
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = load_text(value)
        if not isinstance(value, Mapping):
            raise TypeError(value)
        return dict(value)
    if tp is Any or (isinstance(tp, type) and isinstance(value, tp)):
        return value
    raise TypeError(value)


def _sequence(value: Any) -> list:
    """A YAML list, or text: `[8, 16]` or `8,16`."""
    if isinstance(value, str):
        text = value.strip()
        value = load_text(text if text.startswith("[") else f"[{text}]")
    if not isinstance(value, (list, tuple)):
        raise TypeError(value)
    return list(value)


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}" if args and (origin is list or args[-1] is Ellipsis) \
            else f"a list of {len(args)}" if args else "a list"
    if origin is typing.Union:
        return " or ".join(_describe(a) for a in args)
    return type_name(tp)


def options_dict(options: Any) -> dict[str, Any]:
    """The options as plain config values (every field, defaults included), for config.yaml."""
    if options is None:
        return {}
    return {k: _plain(v) for k, v in dataclasses.asdict(options).items()}


def _plain(value: Any) -> Any:
    """YAML-friendly: tuples as lists (convert() turns them back into the declared tuple)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
