"""Build a validated `Config` from defaults, a YAML file, the environment and `--set` overrides.

Every problem is collected and reported at once in a single `ConfigError`, each naming its
dotted key, so a user fixes a config in one round trip instead of one error per run.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from typing import Any, Iterable, Mapping, Optional

import yaml

from raytrain_llm.core.bounded_yaml import MAX_BYTES, BoundedLoader, load_text
from raytrain_llm.core.config import SECTIONS, Config
from raytrain_llm.core.config_checks import cross_field_errors
from raytrain_llm.core.env_settings import ENV_SETTINGS, env_setting_errors
from raytrain_llm.core.errors import ConfigError, clip, quote

ENV_PREFIX = "RAYTRAIN_"
# Variables the project reads itself that are not config fields (core/env_settings.py checks their
# values): every other RAYTRAIN_ variable must name a field, or a typo goes unnoticed.
ENV_NOT_FIELDS = frozenset(ENV_SETTINGS)


class _YamlLoader(BoundedLoader):
    """SafeLoader, bounded (core/bounded_yaml.py), that reads 1e-3 as a float, as YAML 1.2 and every
    user does: PyYAML's YAML 1.1 rules want a dot (1.0e-3) and would make it a string. Quoted
    '1e-3' stays a string."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def field_types(section_cls) -> dict[str, Any]:
    """Field name -> declared type (annotations resolved) of a dataclass: a config section or a
    task's `Options`."""
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def type_name(tp) -> str:
    """A declared type as an error message says it: "an integer", "a number or null"."""
    if typing.get_origin(tp) is typing.Union:
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            tuple: "a list", list: "a list of names", type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def parse_text(text: str, tp) -> Any:
    """A string from the environment or `--set`, parsed to the field's declared type."""
    if typing.get_origin(tp) is typing.Union:
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in ("none", "null", ""):
            return None
        tp = next(a for a in args if a is not type(None))
    s = text.strip()
    if tp is bool:
        if s.lower() in _TRUE:
            return True
        if s.lower() in _FALSE:
            return False
        raise ValueError
    if tp is int:
        return int(s)
    if tp is float:
        return float(s)
    if tp is tuple:
        loaded = load_text(s) if s.startswith("[") else [p for p in s.split(",") if p.strip()]
        return tuple(float(v) for v in loaded)
    if tp is list:  # names: `a,b` or `[a, b]`; empty = none
        loaded = yaml.safe_load(s) if s.startswith("[") else [p.strip() for p in s.split(",") if p.strip()]
        if not isinstance(loaded, list) or not all(isinstance(v, str) for v in loaded):
            raise ValueError
        return loaded
    return text


def coerce(value: Any, tp) -> Any:
    """A YAML value checked against the declared type (ints widen to floats, nothing else)."""
    if typing.get_origin(tp) is typing.Union:
        if value is None and type(None) in typing.get_args(tp):
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is tuple and isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return tuple(float(v) for v in value)
    if tp is list and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError


class _Builder:
    """Accumulates overrides into a nested dict, recording every error on the way."""

    def __init__(self):
        self.values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        self.task_options: dict[str, Any] = {}  # checked by the task (core/task_options.py)
        self.task: Optional[str] = None
        self.errors: list[str] = []
        self.sources: dict[str, str] = {}  # dotted key -> where its value came from, for messages
        self.types = {name: field_types(cls) for name, cls in SECTIONS.items()}

    def _lookup(self, key: str, source: str):
        parts = key.split(".")
        if len(parts) != 2:
            hint = (" (the task is chosen with --task or a top-level `task:` in YAML)" if key == "task"
                    else self._suggest_dotted(key))
            self.errors.append(f"{key}: expected section.field{source}{hint}")
            return None
        section, name = parts
        if section not in SECTIONS:
            close = suggest(section, SECTIONS)
            self.errors.append(f"{key}: unknown section {section!r}{source}"
                               + (close or f" (sections: {', '.join(SECTIONS)})"))
            return None
        if name not in self.types[section]:
            self.errors.append(f"{key}: unknown key{source}{suggest(name, self.types[section])}")
            return None
        return section, name

    def _suggest_dotted(self, key: str) -> str:
        """" (did you mean 'training.lr'?)" for a bare field name (`lr`): the sections holding a
        field of that name, else the closest `section.field`."""
        if "." in key:
            return ""
        names = {f: f"{s}.{f}" for s in reversed(list(SECTIONS)) for f in self.types[s]}
        same = [f"{s}.{key}" for s in SECTIONS if key in self.types[s]]
        close = difflib.get_close_matches(key, list(names), n=1)
        found = same or [names[c] for c in close]
        return " (did you mean " + " or ".join(repr(k) for k in found) + "?)" if found else ""

    def set_typed(self, key: str, value: Any, source: str) -> None:
        """A value that already has a type (from YAML or a dict)."""
        self._set(key, value, source, coerce)

    def set_text(self, key: str, text: str, source: str) -> None:
        """A string (from the environment or `--set`), parsed to the field's type."""
        self._set(key, text, source, parse_text)

    def _set(self, key: str, value: Any, source: str, convert) -> None:
        section, _, name = key.partition(".")
        if section == "task_options" and name and "." not in name:
            self.task_options[name] = value  # typed by the task's Options later
            self.sources[key] = source
            return
        found = self._lookup(key, source)
        if found is None:
            return
        section, name = found
        tp = self.types[section][name]
        try:
            self.values[section][name] = convert(value, tp)
            self.sources[key] = source
        except (ValueError, TypeError, StopIteration, yaml.YAMLError):
            # `progress_bar: off` is a bool in YAML 1.1; the fix is not obvious from the type alone.
            hint = (" (YAML reads unquoted on/off/yes/no as booleans: quote it)"
                    if isinstance(value, bool) and str in (tp, *typing.get_args(tp)) else "")
            self.errors.append(f"{key}: expected {type_name(tp)}, got {quote(value)}{hint}{source}")

    def merge_mapping(self, data: Any, source: str) -> None:
        if not isinstance(data, Mapping):
            self.errors.append(f"<root>: expected a mapping of sections{source}, got {type(data).__name__}")
            return
        for section, body in data.items():
            section = clip(str(section))
            if section == "task":
                if isinstance(body, str) and body:
                    self.task = body
                    self.sources["task"] = source
                else:
                    self.errors.append(f"task: expected a task name{source}, got {quote(body)}")
                continue
            if section not in SECTIONS and section != "task_options":
                self.errors.append(f"{section}: unknown section{source}{suggest(str(section), [*SECTIONS, 'task_options'])}")
                continue
            if body is None:
                continue
            if not isinstance(body, Mapping):
                self.errors.append(f"{section}: expected a mapping{source}, got {quote(body)}")
                continue
            for name, value in body.items():
                self.set_typed(f"{section}.{clip(str(name))}", value, source)

    def build(self) -> Config:
        sections = {name: cls(**self.values[name]) for name, cls in SECTIONS.items()}
        cfg = Config(**sections, task_options=dict(self.task_options))
        if self.task:
            cfg.task = self.task
        return cfg


def suggest(name: str, known: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the closest of `known`, or "" when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_yaml(path: str) -> Any:
    """The file's data; {} for an empty file. Duplicate keys are errors (PyYAML keeps the last)."""
    if os.path.isdir(path):
        raise ConfigError([f"--config: {path} is a directory, not a YAML file"])
    if not os.path.isfile(path):
        raise ConfigError([f"--config: file not found: {path}"])
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(MAX_BYTES + 1)
        if len(text) > MAX_BYTES:  # characters >= bytes: a file this long is no config
            raise ConfigError([f"--config: {path}: longer than {MAX_BYTES} characters (a config is a few KB)"])
        data = _load(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"--config: {path}: {problem}{where}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"--config: cannot read {path}: {exc}"]) from None
    # Only a document that is empty (or just `null`) is an empty config; `0` or `[]` is a mistake.
    return {} if data is None else data


def _load(stream: str, path: str) -> Any:
    # _YamlLoader is a SafeLoader with one more float rule: plain data only, no objects.
    loader = _YamlLoader(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        # Checked on the node tree, where the lines are known; the loaded dict keeps the last value.
        duplicates = _duplicate_keys(node, "")
        if duplicates:
            raise ConfigError([f"{key}: set twice in {path} (lines {first} and {again})"
                               for key, first, again in duplicates])
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node, prefix: str, visited: Optional[set] = None) -> list[tuple[str, int, int]]:
    """(dotted key, first line, repeated line) for each key given twice in one mapping."""
    visited = set() if visited is None else visited
    if not isinstance(node, yaml.MappingNode) or id(node) in visited:  # an alias may point back up
        return []
    visited.add(id(node))
    found, seen = [], {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = f"{prefix}{key_node.value}"
        line = key_node.start_mark.line + 1
        if key_node.value in seen:
            found.append((key, seen[key_node.value], line))
        else:
            seen[key_node.value] = line
        found += _duplicate_keys(value_node, key + ".", visited)
    return found


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(dotted key, text) for each RAYTRAIN_<SECTION>__<FIELD> variable."""
    return [(key, text) for var, key, text in _env_vars(environ) if key]


def env_errors(environ: Mapping[str, str]) -> list[str]:
    """A RAYTRAIN_ variable that cannot name a field (RAYTRAIN_TRAINING_LR: one underscore)
    would otherwise be ignored without a word, and the run would train with the default."""
    return [f"${var}: not a config field (expected {ENV_PREFIX}<SECTION>__<FIELD>, two underscores)"
            f"{_suggest_env(var)}" for var, key, _ in _env_vars(environ) if not key] + env_setting_errors(environ)


def _env_vars(environ: Mapping[str, str]):
    for var, text in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_FIELDS:
            continue
        section, sep, name = var[len(ENV_PREFIX):].partition("__")
        yield var, f"{section.lower()}.{name.lower()}" if sep and section and name else None, text


def _suggest_env(var: str) -> str:
    names = [f"{ENV_PREFIX}{s}__{f.name}".upper() for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    # Underscores are what users get wrong: a match once they are all dropped is the best guess.
    same = [n for n in names if n.replace("_", "") == var.upper().replace("_", "")]
    close = same or difflib.get_close_matches(var.upper(), names, n=1, cutoff=0.85)
    return f" (did you mean {close[0]}?)" if close else ""


def load_config(config_file: Optional[str] = None, overrides: Iterable[str] = (),
                environ: Optional[Mapping[str, str]] = None, task: Optional[str] = None) -> Config:
    """Defaults < YAML < environment < `--set key=value` (< `task` from `--task`)."""
    return load_config_and_keys(config_file, overrides, environ, task)[0]


def load_config_and_keys(config_file: Optional[str] = None, overrides: Iterable[str] = (),
                         environ: Optional[Mapping[str, str]] = None,
                         task: Optional[str] = None) -> tuple[Config, set[str]]:
    """`load_config`, and the keys (`section.field`, `task`, `task_options.name`) that the YAML, the
    environment, `--set` or `--task` set: what must win over a sweep's base config, also where
    a value equals the default."""
    builder = _Builder()
    if config_file:
        builder.merge_mapping(read_yaml(config_file), f" in {config_file}")
    environ = os.environ if environ is None else environ
    builder.errors += env_errors(environ)
    for key, text in env_overrides(environ):
        var = ENV_PREFIX + key.replace(".", "__").upper()
        builder.set_text(key, text, f" (from ${var})")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            builder.errors.append(f"--set {item}: expected section.field=value")
            continue
        builder.set_text(key.strip(), text, " (from --set)")
    keys = set(builder.sources) | ({"task"} if task else set())
    return _finish(builder, task), keys


def config_from_mapping(data: Mapping[str, Any]) -> Config:
    """The `Config` a mapping describes (`Config.to_dict`'s inverse), as strictly as a YAML file:
    unknown keys, wrong types and invalid values raise one `ConfigError` naming them all."""
    builder = _Builder()
    builder.merge_mapping(data, "")
    return _finish(builder, None)


def _finish(builder: _Builder, task: Optional[str]) -> Config:
    # Fields that failed to parse keep their defaults, so range and cross-field checks
    # still run and the user sees every problem in one message.
    cfg = builder.build()
    if task:
        cfg.task = task
    errors = builder.errors + [_with_source(e, builder.sources) for e in cross_field_errors(cfg)]
    if errors:
        raise ConfigError(errors)
    return cfg


def _with_source(error: str, sources: Mapping[str, str]) -> str:
    """A range or cross-field error, told where its key's value was set (YAML, env or --set)."""
    return error + sources.get(error.partition(":")[0], "")


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)


def save_config(cfg: Config, path: str) -> None:
    from raytrain_llm.core.atomic_io import atomic_write_text

    atomic_write_text(path, dump_yaml(cfg))
