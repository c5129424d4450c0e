"""A task's own settings: `task_options.<name>` in YAML, `--set` and RAYTRAIN_TASK_OPTIONS__<NAME>.

The config cannot know a user task's settings, so it carries them as a plain mapping; the task
declares them as a dataclass (`TrainingTask.Options`) and they are checked against it as
strictly as the built-in sections: an unknown name (with a suggestion), a wrong type or a value
for a task that takes none is a ConfigError (exit 2) before anything starts.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from raytrain_llm.core.config_loader import _field_types, _suggest, _type_name, coerce, parse_text
from raytrain_llm.core.errors import ConfigError


def parse_task_options(options_cls: Optional[type], raw: Mapping[str, Any], task: str) -> Any:
    """An `options_cls` instance from `raw` (typed YAML values, or text from the environment and
    `--set`); None when the task declares no options and none were given."""
    if options_cls is None:
        if raw:
            raise ConfigError([f"task_options.{name}: task {task} takes no options (declare them as a "
                               "dataclass `Options` on the task)" for name in raw])
        return None
    types = _field_types(options_cls)
    values, errors = {}, []
    for name, value in raw.items():
        if name not in types:
            errors.append(f"task_options.{name}: unknown option of task {task}{_suggest(str(name), types)}"
                          f" (options: {', '.join(types) or 'none'})")
            continue
        tp = types[name]
        try:
            values[name] = parse_text(value, tp) if isinstance(value, str) and tp is not str else coerce(value, tp)
        except (ValueError, TypeError, StopIteration):
            errors.append(f"task_options.{name}: expected {_type_name(tp)}, got {value!r}")
    missing = [f.name for f in dataclasses.fields(options_cls)
               if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    errors += [f"task_options.{name}: required by task {task}, not set" for name in missing if name in types
               and not any(e.startswith(f"task_options.{name}:") for e in errors)]
    if errors:
        raise ConfigError(errors)
    return options_cls(**values)


def options_dict(options: Any) -> dict[str, Any]:
    """The options as plain config values (every field, defaults included), for config.yaml."""
    if options is None:
        return {}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}
