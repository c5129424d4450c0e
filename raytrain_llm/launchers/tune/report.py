"""A finished (or resumed) sweep's results: table (CSV + Markdown), best config, summary (plots: plots.py).

Rows come from Tune's `ResultGrid`, i.e. exactly what the trials reported: each row's final and
best metric are the last and best finite values of that trial's reports.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Optional

from raytrain_llm.core.atomic_io import atomic_write_text
from raytrain_llm.core.callbacks.metrics_logger import SUMMARY_FILE, read_records, read_summary
from raytrain_llm.core.config import Config
from raytrain_llm.core.config_loader import dump_yaml
from raytrain_llm.launchers.ray_train.results import exception_line
from raytrain_llm.launchers.tune.plots import plot_results
from raytrain_llm.launchers.tune.reported_values import finite, fmt
from raytrain_llm.launchers.tune.search_space import POINT_ID, apply_point
from raytrain_llm.launchers.tune.sweep_spec import SweepSpec

# Reported names differ by launcher version: with and without the "train/" prefix.
TOKENS_KEYS = ("train/tokens_per_s", "tokens_per_s")
LOAD_KEYS = ("train/moe_max_load", "moe_max_load")


def _column(history: list[dict], keys) -> list[float]:
    for key in keys:
        values = [h[key] for h in history if finite(h.get(key))]
        if values:
            return values
    return []


def param_counts(cfg: Config, cache: dict) -> tuple[Optional[int], Optional[int]]:
    """(active, total) parameters of a trial's model, counted on the meta device."""
    key = json.dumps([cfg.task, cfg.to_dict()["model"]], sort_keys=True)
    if key in cache:
        return cache[key]
    try:
        import torch

        if cfg.task == "lm":
            from raytrain_llm.models import count_parameters

            pc = count_parameters(cfg.model)
            out = (pc.active, pc.total)
        else:
            from raytrain_llm.launchers.task_resolution import resolve_task

            with torch.device("meta"):
                model = resolve_task(cfg.task)(cfg).build_model()
            total = sum(p.numel() for p in model.parameters())
            out = (total, total)
    except Exception:  # noqa: BLE001 - a count is nice to have, never worth failing the report
        out = (None, None)
    cache[key] = out
    return out


def collect_rows(spec: SweepSpec, base: Config, grid, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per point of the sweep, in trial order, from a Tune ResultGrid.

    Tune creates a grid's trials as concurrency allows: after Ctrl-C the grid lacks the points
    it never started, and they are "unfinished" too (else the sweep would read finished).

    A trial that neither ended nor failed was interrupted (Ctrl-C) and is "unfinished". Ended:
    its last result is marked `done`, ASHA stopped it, or its training wrote its summary.json (the
    engine does so when a run ends). Not `done` alone: a finished trial restored from Tune's saved
    state can lack the flag (Tune sets it on a copy it does not save again), and the sweep would
    read "interrupted" for good. Not Tune's trial status either: on Ctrl-C its clean-up marks the
    interrupted trials TERMINATED.
    """
    from raytrain_llm.launchers.tune.scheduler import read_stopped

    stopped = {rec.get("name"): rec for rec in read_stopped(os.path.join(spec.sweep_dir, "early_stopped.json")).values()}
    cache: dict = {}
    rows = []
    for result in grid:
        point = (result.config or {}).get("point", {})
        df = result.metrics_dataframe
        history = df.to_dict("records") if df is not None else []
        stop_record = stopped.get(point.get(POINT_ID))
        folder = trial_folder(spec.sweep_dir, str(point.get(POINT_ID)))
        row = make_row(spec, base, point, history, stop_record, result.error, cache,
                       logged=logged_metric(folder, spec.metric))
        trained = os.path.exists(os.path.join(folder, SUMMARY_FILE))
        ended = (result.metrics or {}).get("done") or stop_record is not None or trained
        if not ended and result.error is None:
            row["status"] = "unfinished"
        rows.append(row)
    started = {row["trial"] for row in rows}
    for point in points:
        if point[POINT_ID] not in started:
            row = make_row(spec, base, point, [], None, None, cache)
            row["status"] = "unfinished"
            rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def logged_metric(folder: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of `metric` in a trial's metrics.jsonl. Tune's own history of a trial starts
    over when the trial is resumed (its reports before the restore point drop out, or repeat); the
    engine's file is rewound to the checkpoint it resumed from, so it holds each step once."""
    return [(r["step"], float(r[metric])) for r in read_records(folder)
            if finite(r.get(metric)) and isinstance(r.get("step"), int)]


def make_row(spec: SweepSpec, base: Config, point: dict, history: list[dict], stop_record: Optional[dict],
             error: Optional[BaseException], cache: dict,
             logged: Optional[list[tuple[int, float]]] = None) -> dict[str, Any]:
    steps = _column(history, ("step",))
    curve = None
    if logged and steps:
        # Up to the last report: a stopped trial may log another validation before it is killed.
        curve = [(s, v) for s, v in logged if s <= steps[-1]]
    values = [v for _, v in curve] if curve else _column(history, (spec.metric,))
    better = min if spec.mode == "min" else max
    tokens = _column(history, TOKENS_KEYS)
    load = _column(history, LOAD_KEYS)
    active, total = param_counts(apply_point(base, point), cache)
    row: dict[str, Any] = {"trial": point.get(POINT_ID, "?")}
    row.update({k: point.get(k) for k in spec.keys})
    row.update({
        f"{spec.metric} final": values[-1] if values else None,
        f"{spec.metric} best": better(values) if values else None,
        "reports": len(history),
        "steps": int(steps[-1]) if steps else None,
        "tokens/s": sum(tokens) / len(tokens) if tokens else None,
        "active params": active,
        "total params": total,
        "expert load max/mean": load[-1] if load else None,
        "stopped early": "yes" if stop_record else "no",
        "status": "error" if error else ("stopped" if stop_record else "done"),
        "error": exception_line(error)[:200] if error else "",
    })
    x = "step" if steps else "training_iteration"
    row["_curve"] = curve or [(h.get(x), h[spec.metric]) for h in history if finite(h.get(spec.metric))]
    row["_point"] = point
    return row


def table_text(rows: list[dict], markdown: bool) -> str:
    columns = [c for c in rows[0] if not c.startswith("_")] if rows else ["trial"]
    if not markdown:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
        return buf.getvalue()
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def best_row(spec: SweepSpec, rows: list[dict]) -> Optional[dict]:
    scored = [r for r in rows if finite(r.get(f"{spec.metric} best"))]
    if not scored:
        return None
    pick = min if spec.mode == "min" else max
    return pick(scored, key=lambda r: r[f"{spec.metric} best"])


def trial_folder(sweep_dir: str, trial: str) -> str:
    """A trial's logging.dir: its metrics, TensorBoard events, summary.json and checkpoints."""
    return os.path.join(sweep_dir, "tensorboard", trial)


def write_report(spec: SweepSpec, base: Config, rows: list[dict]) -> dict[str, Any]:
    """Writes results.csv, results.md, best_config.yaml, plots/*.png and summary.json in the sweep folder."""
    d = spec.sweep_dir
    os.makedirs(d, exist_ok=True)
    paths = {"table_csv": os.path.join(d, "results.csv"), "table_md": os.path.join(d, "results.md")}
    atomic_write_text(paths["table_csv"], table_text(rows, markdown=False))
    atomic_write_text(paths["table_md"], table_text(rows, markdown=True))
    best = best_row(spec, rows)
    summary: dict[str, Any] = {"name": spec.name, "metric": spec.metric, "mode": spec.mode, "trials": len(rows),
                               "stopped_early": sum(r["stopped early"] == "yes" for r in rows),
                               "errored": sum(r["status"] == "error" for r in rows), "best": None,
                               "best_config": None, **paths}
    if best is not None:
        cfg = apply_point(base, best["_point"])
        header = (f"# Best trial {best['trial']} of sweep {spec.name}: {spec.metric} = "
                  f"{best[f'{spec.metric} best']:.6g} ({spec.mode}).\n"
                  f"# Swept values: {json.dumps({k: best[k] for k in spec.keys})}\n")
        summary["best_config"] = os.path.join(d, "best_config.yaml")
        atomic_write_text(summary["best_config"], header + dump_yaml(cfg))
        folder = trial_folder(d, best["trial"])
        trial_summary = read_summary(folder) or {}
        summary["best"] = {"trial": best["trial"], "value": best[f"{spec.metric} best"],
                           "point": {k: best[k] for k in spec.keys}, "folder": folder,
                           "checkpoint": trial_summary.get("best_checkpoint")}
    summary["plots"] = plot_results(spec, rows, os.path.join(d, "plots"))
    atomic_write_text(os.path.join(d, "summary.json"), json.dumps(summary, indent=1, default=str))
    return summary
