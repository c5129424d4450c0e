"""`SweepSpec`: a sweep YAML file, parsed and strictly validated (no Ray here).

Every problem in the file is collected and raised at once as one `ConfigError`, each naming
its key (`search_space.model.top_k: ...`), like the training config. See docs/tuning.md for
the file format.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from raytrain_llm.core.config import SECTIONS, Config
from raytrain_llm.core.config_checks import value_errors
from raytrain_llm.core.config_loader import coerce, field_types, read_yaml, suggest, type_name
from raytrain_llm.core.errors import ConfigError, clip, quote

TOP_KEYS = ("name", "storage_path", "base_config", "search_space", "metric", "mode", "num_samples",
            "max_concurrent_trials", "scheduler", "seed", "invalid_points")
SCHEDULER_KEYS = ("type", "time_attr", "grace_period", "max_t", "reduction_factor")
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
# Set per trial by the sweep itself; sweeping them would make trials collide or leave Ray.
RESERVED_KEYS = ("logging.dir", "checkpoint.dir", "checkpoint.resume", "distributed.launcher",
                 "distributed.run_name", "distributed.storage_path", "distributed.address")
TIME_ATTRS = {"reports": "training_iteration", "training_iteration": "training_iteration", "steps": "step"}
# Counters every report carries, the only clocks ASHA can compare trials by.
COUNTERS = (*TIME_ATTRS, "step", "epoch", "time_total_s")
TASK_OPTIONS = "task_options"  # task_options.<name>: a task's own setting (core/task_options.py)


@dataclass
class Dimension:
    key: str  # dotted config key
    kind: str  # one of DISTRIBUTIONS
    values: list  # grid/choice: the values; uniform/loguniform/randint: [low, high]

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"


@dataclass
class SchedulerSpec:
    type: str = "asha"  # asha | none
    time_attr: str = "training_iteration"  # Tune's result key: one per Train report
    grace_period: int = 1
    max_t: int = 100
    reduction_factor: float = 2.0


@dataclass
class SweepSpec:
    name: str
    storage_path: str  # absolute
    base_config: Optional[str]  # absolute path or None
    dimensions: list[Dimension]
    metric: str = "val/loss"
    mode: str = "min"
    num_samples: int = 1
    max_concurrent_trials: int = 0  # 0: computed from the cluster's CPUs/GPUs
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    seed: int = 0
    invalid_points: str = "resample"  # resample | skip (random draws only; invalid grid points are errors)
    source: str = ""

    @property
    def sweep_dir(self) -> str:
        return os.path.join(self.storage_path, self.name)

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _field_type(key: str):
    """The declared type of a config key; None for task_options.* (the task's Options types it,
    when the sweep's points are built: search_space.build_points)."""
    section, _, name = key.partition(".")
    if section == TASK_OPTIONS:
        return None
    return field_types(SECTIONS[section])[name]


def _check_key(key: Any, errors: list[str]) -> bool:
    where = f"search_space.{clip(str(key))}"
    if not isinstance(key, str) or key.count(".") != 1:
        errors.append(f"{where}: expected a dotted config key section.field (e.g. model.top_k)")
        return False
    section, _, name = key.partition(".")
    if section == TASK_OPTIONS:
        if not name.isidentifier():
            errors.append(f"{where}: expected task_options.<option name>")
            return False
        return True
    if section not in SECTIONS:
        errors.append(f"{where}: unknown config section {quote(section)}{suggest(section, SECTIONS)}")
        return False
    fields = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if name not in fields:
        errors.append(f"{where}: not a key of Config{suggest(name, fields)}")
        return False
    if key in RESERVED_KEYS:
        errors.append(f"{where}: set per trial by the sweep, cannot be swept")
        return False
    return True


def _typed(key: str, value: Any, what: str, errors: list[str]):
    tp = _field_type(key)
    if tp is None:  # a task option: the task's Options dataclass checks it with the points
        return value
    try:
        value = coerce(value, tp)
    except (TypeError, StopIteration):
        errors.append(f"search_space.{key}: {what} {quote(value)}: expected {type_name(tp)}")
        return None
    errors.extend(f"search_space.{e}" for e in value_errors(key, value))
    return value


def parse_dimension(key: Any, spec: Any, errors: list[str]) -> Optional[Dimension]:
    if not _check_key(key, errors):
        return None
    where = f"search_space.{key}"
    if isinstance(spec, list):  # shorthand: a bare list is a grid
        spec = {"grid": spec}
    if not isinstance(spec, dict) or len(spec) != 1:
        errors.append(f"{where}: expected one of {{{': [...]}, {'.join(DISTRIBUTIONS)}: [...]}} (got {quote(spec)})")
        return None
    (kind, values), = spec.items()
    if kind not in DISTRIBUTIONS:
        errors.append(f"{where}: unknown distribution {quote(kind)}{suggest(str(kind), DISTRIBUTIONS)} "
                      f"(known: {', '.join(DISTRIBUTIONS)})")
        return None
    if not isinstance(values, list) or not values:
        errors.append(f"{where}: {kind} expects a non-empty list (got {quote(values)})")
        return None
    n_before = len(errors)
    if kind in ("grid", "choice"):
        typed = [_typed(key, v, f"{kind} value", errors) for v in values]
        if len(errors) == n_before and len({repr(v) for v in typed}) != len(typed):
            errors.append(f"{where}: {kind} has repeated values {quote(values)}")
        return Dimension(key, kind, typed) if len(errors) == n_before else None
    if len(values) != 2 or not all(_is_num(v) for v in values):
        errors.append(f"{where}: {kind} expects [low, high] numbers (got {quote(values)})")
        return None
    tp = _field_type(key)
    if kind == "randint":
        if tp not in (int, None) or not all(_is_int(v) for v in values):
            errors.append(f"{where}: randint needs an integer key and integer bounds"
                          + (f" (key is {type_name(tp)})" if tp is not None else f" (got {quote(values)})"))
            return None
    elif tp not in (float, None):
        errors.append(f"{where}: {kind} needs a number key; {key} is {type_name(tp)} (use grid, choice or randint)")
        return None
    low, high = values
    ordered = low <= high if kind == "randint" else low < high
    if not ordered:
        errors.append(f"{where}: {kind} needs low < high (got {quote(values)})")
    if kind == "loguniform" and low <= 0:
        errors.append(f"{where}: loguniform needs low > 0 (got {quote(low)})")
    for bound in values:
        errors.extend(f"search_space.{e} ({kind} bound)" for e in value_errors(key, bound))
    if len(errors) != n_before:
        return None
    return Dimension(key, kind, [float(low), float(high)] if kind != "randint" else [low, high])


def parse_scheduler(raw: Any, errors: list[str]) -> SchedulerSpec:
    spec = SchedulerSpec()
    if raw is None:
        return spec
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        errors.append(f"scheduler: expected asha, none or a mapping (got {quote(raw)})")
        return spec
    for key, value in raw.items():
        if key not in SCHEDULER_KEYS:
            errors.append(f"scheduler.{key}: unknown key{suggest(str(key), SCHEDULER_KEYS)} "
                          f"(known: {', '.join(SCHEDULER_KEYS)})")
        elif key == "type":
            if value not in ("asha", "none", None):
                errors.append(f"scheduler.type: must be asha or none (got {quote(value)})")
            spec.type = value or "none"
        elif key == "time_attr":
            if value not in COUNTERS:
                # A typo would leave ASHA waiting on a value no report carries: it never stops a trial.
                # A metric (val/loss) is no clock: ASHA compares trials at equal amounts of training.
                errors.append(f"scheduler.time_attr: expected one of {', '.join(COUNTERS)}, a value every report "
                              f"carries that grows with training (got {quote(value)}){suggest(str(value), COUNTERS)}")
            else:
                spec.time_attr = TIME_ATTRS.get(value, value)
        elif key == "reduction_factor":
            if not _is_num(value) or value <= 1:
                errors.append(f"scheduler.reduction_factor: must be a number > 1 (got {quote(value)})")
            else:
                spec.reduction_factor = float(value)
        elif not _is_int(value) or value < 1:
            errors.append(f"scheduler.{key}: must be an integer >= 1 (got {quote(value)})")
        else:
            setattr(spec, key, value)
    if spec.grace_period > spec.max_t:
        errors.append(f"scheduler.grace_period: must be <= scheduler.max_t ({spec.max_t}) (got {spec.grace_period})")
    return spec


def _resolve_path(path: str, sweep_path: str) -> str:
    """Relative paths are taken from the sweep file's folder, then from the current directory."""
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    beside = os.path.join(os.path.dirname(os.path.abspath(sweep_path)), path)
    return beside if os.path.exists(beside) else os.path.abspath(path)


def parse_sweep(data: Any, sweep_path: str = "<sweep>") -> SweepSpec:
    if not isinstance(data, dict):
        raise ConfigError([f"{sweep_path}: expected a mapping of sweep settings, got {type(data).__name__}"])
    errors: list[str] = []
    for key in data:
        if key not in TOP_KEYS:
            errors.append(f"{clip(str(key))}: unknown sweep key{suggest(str(key), TOP_KEYS)} (known: {', '.join(TOP_KEYS)})")

    def get(key, check, message, default):
        if data.get(key) is None:
            return default
        value = data[key]
        if not check(value):
            errors.append(f"{key}: {message} (got {quote(value)})")
            return default
        return value

    stem = os.path.splitext(os.path.basename(sweep_path))[0] or "sweep"
    name = get("name", lambda v: isinstance(v, str) and v.strip() and "/" not in v,
               "expected a name without '/'", stem)
    storage = get("storage_path", lambda v: isinstance(v, str) and v.strip(), "expected a path", "runs/sweeps")
    base = get("base_config", lambda v: isinstance(v, str) and v.strip(), "expected a path to a YAML config", None)
    if base is not None:
        base = _resolve_path(base, sweep_path)
        if not os.path.isfile(base):
            errors.append(f"base_config: file not found: {base}")
    metric = get("metric", lambda v: isinstance(v, str) and v.strip(), "expected a metric name", "val/loss")
    mode = get("mode", lambda v: v in ("min", "max"), "must be min or max", "min")
    num_samples = get("num_samples", lambda v: _is_int(v) and v >= 1, "must be an integer >= 1", 1)
    concurrent = get("max_concurrent_trials", lambda v: _is_int(v) and v >= 0,
                     "must be an integer >= 0 (0: computed from the cluster)", 0)
    seed = get("seed", _is_int, "must be an integer", 0)
    invalid = get("invalid_points", lambda v: v in ("resample", "skip"), "must be resample or skip", "resample")
    scheduler = parse_scheduler(data.get("scheduler"), errors)

    space = data.get("search_space")
    dims: list[Dimension] = []
    if not isinstance(space, dict) or not space:
        errors.append("search_space: required, a mapping of dotted config keys to distributions "
                      "(e.g. model.top_k: {grid: [1, 2]})")
    else:
        for key, spec in space.items():
            dim = parse_dimension(key, spec, errors)
            if dim is not None:
                dims.append(dim)
    if errors:
        raise ConfigError([f"sweep {sweep_path}: {e}" for e in errors])
    return SweepSpec(name=name.strip(), storage_path=os.path.abspath(os.path.expanduser(storage)),
                     base_config=base, dimensions=dims, metric=metric, mode=mode, num_samples=num_samples,
                     max_concurrent_trials=concurrent, scheduler=scheduler, seed=seed, invalid_points=invalid,
                     source=os.path.abspath(sweep_path))


def load_sweep(sweep_path: str) -> SweepSpec:
    try:
        data = read_yaml(sweep_path)
    except ConfigError as exc:  # read_yaml speaks of --config; this came from --tune
        raise ConfigError([p.replace("--config", "--tune", 1) for p in exc.problems]) from None
    return parse_sweep(data, sweep_path)


def merge_base(cli_config: Config, base_file: Optional[str], cli_keys: Optional[set[str]] = None) -> Config:
    """The sweep's base file under the command line: every key the command line (`--config`,
    environment, `--set`, `--task`) set wins, also one set to the default (`cli_keys`, from
    config_loader.load_config_and_keys); without `cli_keys`, every key that differs from the default."""
    if not base_file:
        return cli_config
    from raytrain_llm.core.config_loader import config_from_mapping

    try:
        file_cfg = config_from_mapping(read_yaml(base_file))
    except ConfigError as exc:
        raise ConfigError([f"base_config {base_file}: {p}" for p in exc.problems]) from None
    merged = file_cfg.to_dict()
    default, cli = Config().to_dict(), cli_config.to_dict()
    if cli_keys is None:
        cli_keys = {f"{section}.{key}" for section in SECTIONS for key, value in cli[section].items()
                    if value != default[section][key]} | ({"task"} if cli["task"] != default["task"] else set())
        cli_keys |= {f"{TASK_OPTIONS}.{k}" for k in cli[TASK_OPTIONS]}
    for dotted in cli_keys:
        if dotted == "task":
            merged["task"] = cli["task"]
            continue
        section, _, key = dotted.partition(".")
        if section == TASK_OPTIONS:
            merged[TASK_OPTIONS][key] = cli[TASK_OPTIONS][key]
        elif section in SECTIONS and key in cli[section]:
            merged[section][key] = cli[section][key]
    return config_from_mapping(merged)
