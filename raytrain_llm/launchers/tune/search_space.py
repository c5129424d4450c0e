"""Every trial's point, drawn and validated before the sweep starts (no Ray here).

Grid dimensions are enumerated (their Cartesian product, repeated `num_samples` times);
choice/uniform/loguniform/randint dimensions are drawn per trial from `random.Random(seed)`,
so a sweep's points are reproducible and a resumed sweep can check it is the same sweep.

Rules for invalid points (a point is invalid when the base config with its values fails
`Config.validate`, e.g. model.top_k > model.num_experts):
- grid-only points are checked exhaustively; any invalid one rejects the whole sweep, listing them;
- repeats (`num_samples` > 1) get `training.seed` + repeat index unless training.seed is swept;
- task_options.<name> values are checked by the task's `Options` dataclass, like any other key;
- a key that another setting switches off in every trial (model.num_experts without
  model.use_moe) rejects the sweep: its trials would all be the same;
- a `val/` metric that the task declares it does not report (TrainingTask.validation_metrics)
  rejects the sweep;
- a random draw that is invalid is redrawn (`invalid_points: resample`, up to MAX_DRAWS draws;
  when none is valid the sweep is rejected) or dropped (`invalid_points: skip`).
"""
from __future__ import annotations

import itertools
import math
import random
from typing import Any

from raytrain_llm.core.config import Config
from raytrain_llm.core.config_checks import switched_off_keys
from raytrain_llm.core.config_loader import config_from_mapping
from raytrain_llm.core.errors import ConfigError
from raytrain_llm.core.task import declared_inactive_keys
from raytrain_llm.launchers.task_resolution import resolve_task
from raytrain_llm.launchers.tune.sweep_spec import TASK_OPTIONS, Dimension, SweepSpec

MAX_DRAWS = 100
POINT_ID = "id"  # a point's own key: "t000", ...; every other key is a dotted config key


def draw(dim: Dimension, rng: random.Random) -> Any:
    low_high = dim.values
    if dim.kind == "choice":
        return dim.values[rng.randrange(len(dim.values))]
    if dim.kind == "uniform":
        return rng.uniform(*low_high)
    if dim.kind == "loguniform":
        return math.exp(rng.uniform(math.log(low_high[0]), math.log(low_high[1])))
    if dim.kind == "randint":
        return rng.randint(*low_high)  # both bounds included
    raise ValueError(f"not a random dimension: {dim.kind}")


def apply_point(base: Config, point: dict[str, Any]) -> Config:
    """The base config with a point's values; raises ConfigError when the result is invalid
    (task options are checked by the task: `options_errors`)."""
    data = base.to_dict()
    for key, value in point.items():
        if key == POINT_ID:
            continue
        section, _, name = key.partition(".")
        data[section][name] = value
    return config_from_mapping(data)


def options_errors(cfg: Config) -> list[str]:
    """What the task's `Options` dataclass says of cfg.task_options (a point can set them)."""
    from raytrain_llm.core.task_options import parse_task_options

    try:
        parse_task_options(resolve_task(cfg.task).Options, cfg.task_options, cfg.task)
    except ConfigError as exc:
        return exc.problems
    return []


def point_errors(base: Config, point: dict[str, Any]) -> list[str]:
    try:
        cfg = apply_point(base, point)
    except ConfigError as exc:
        return exc.problems
    return options_errors(cfg) if any(k.startswith(TASK_OPTIONS + ".") for k in point) else []


def inactive_keys(cfg: Config) -> dict[str, str]:
    """Keys whose value cannot change this config's run, each with what switches it off: the
    task's declaration (`TrainingTask.inactive_keys`: model and data keys, its LR schedule's)
    and the engine's own settings (`config_checks.switched_off_keys`)."""
    off = declared_inactive_keys(resolve_task(cfg.task), cfg)
    for key, reason in switched_off_keys(cfg).items():
        off.setdefault(key, reason)
    return off


def no_effect_errors(spec: SweepSpec, configs: list[Config]) -> list[str]:
    """Swept keys that another setting switches off in every trial (model.num_experts without
    model.use_moe): trials that differ only in such a key would be copies of each other."""
    off_per_point = [inactive_keys(cfg) for cfg in configs]
    errors = []
    for key in spec.keys:
        reasons = {off.get(key) for off in off_per_point}
        if None not in reasons:
            errors.append(f"sweep {spec.source}: search_space.{key}: has no effect in any trial "
                          f"({'; '.join(sorted(reasons))}): trials that differ only in it would train the same "
                          "model; drop the key, or sweep or set what switches it on")
    return errors


def metric_errors(spec: SweepSpec, points: list[dict[str, Any]], configs: list[Config]) -> list[str]:
    """The sweep's metric when it names a validation metric (`val/...`), and an early-stopping
    trial's callbacks.monitor, against what each trial's task declares it validates
    (TrainingTask.validation_metrics): otherwise a misspelt name only surfaces at each trial's
    first validation, after Ray and every trial have started."""
    from raytrain_llm.core.step_checks import unknown_metric
    from raytrain_llm.core.task import declared_validation_metrics

    task = configs[0].task  # a sweep cannot sweep the task
    task_cls, where = resolve_task(task), f"sweep {spec.source}: "
    found: dict[str, list[dict[str, Any]]] = {}  # message -> the points it applies to
    for point, cfg in zip(points, configs):
        if not cfg.training.validate:
            continue
        declared = declared_validation_metrics(task_cls, cfg)
        problems = [unknown_metric(spec.metric, declared, where + "metric", task)]
        if cfg.callbacks.early_stopping:
            problems.append(unknown_metric(cfg.callbacks.monitor, declared, where + "callbacks.monitor", task,
                                           any_name=True))
        for msg in filter(None, problems):
            found.setdefault(msg, []).append(point)
    return [msg if len(bad) == len(points) else f"{msg}, in {len(bad)} of {len(points)} trials, e.g. {describe(bad[0])}"
            for msg, bad in found.items()]


def describe(point: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in point.items() if k != POINT_ID) + "}"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)


def build_points(spec: SweepSpec, base: Config) -> list[dict[str, Any]]:
    """Every trial's point (dotted key -> value, plus `id`), in trial order."""
    grid = [d for d in spec.dimensions if d.is_grid]
    rand = [d for d in spec.dimensions if not d.is_grid]
    combos = [dict(zip([d.key for d in grid], values)) for values in itertools.product(*[d.values for d in grid])]

    invalid_grid = [(c, errs) for c in combos for errs in [point_errors(base, c)] if errs and not rand]
    if invalid_grid:
        raise ConfigError([f"sweep {spec.source}: {len(invalid_grid)} of {len(combos)} grid points are invalid, "
                           "nothing was started; remove them from the grid"] +
                          [f"{describe(c)}: {'; '.join(errs)}" for c, errs in invalid_grid])

    rng = random.Random(spec.seed)
    points, hopeless, skipped = [], [], 0
    reseed = spec.num_samples > 1 and "training.seed" not in spec.keys
    for repeat in range(spec.num_samples):
        for combo in combos:
            if reseed:  # repeats differ in their training seed, or they would be copies
                combo = {**combo, "training.seed": base.training.seed + repeat}
            point = dict(combo)
            if rand:
                for attempt in range(MAX_DRAWS):
                    drawn = {**combo, **{d.key: draw(d, rng) for d in rand}}
                    errs = point_errors(base, drawn)
                    if not errs or spec.invalid_points == "skip":
                        break
                if errs:
                    if spec.invalid_points == "skip":
                        skipped += 1
                        continue
                    hopeless.append((combo, errs))
                    continue
                point = drawn
            points.append(point)
    if hopeless:
        raise ConfigError([f"sweep {spec.source}: no valid random draw in {MAX_DRAWS} tries for "
                           f"{len(hopeless)} grid point(s), nothing was started"] +
                          [f"{describe(c) if c else 'the search space'}: {'; '.join(errs)}" for c, errs in hopeless])
    if not points:
        raise ConfigError([f"sweep {spec.source}: every drawn point was invalid and skipped ({skipped}); "
                           "nothing to run"])
    configs = [apply_point(base, p) for p in points]  # valid: point_errors checked them
    idle = no_effect_errors(spec, configs) + metric_errors(spec, points, configs)
    if idle:
        raise ConfigError(idle)
    width = max(3, len(str(len(points) - 1)))
    return [{POINT_ID: f"t{i:0{width}d}", **p} for i, p in enumerate(points)]
