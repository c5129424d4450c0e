"""A sweep's plots (matplotlib, Agg): the best metric against a swept key (trials ASHA stopped
drawn apart from those that trained to the end), and each trial's curve."""
from __future__ import annotations

import os
from typing import Any, Optional

from raytrain_llm.launchers.tune.reported_values import finite, fmt
from raytrain_llm.launchers.tune.sweep_spec import SweepSpec

X_KEY, GROUP_KEY = "model.num_experts", "model.top_k"  # preferred axes when they are swept


def metric_vs_key(spec: SweepSpec, rows: list[dict], x_key: str, group_key: Optional[str]) -> dict[Any, dict]:
    """The data of the metric-vs-key plot, per value of `group_key` (one group, None, without):
    `finished`: {x: best value among trials with that x that trained to the end (other swept
    keys vary)}; `stopped`: [(x, value, steps, trial)] of trials ASHA stopped early, each at the
    last step it trained. A stopped trial's value is not comparable with a finished one's (it
    trained fewer steps), so it is never part of `finished`."""
    metric_best = f"{spec.metric} best"
    better = (lambda a, b: a < b) if spec.mode == "min" else (lambda a, b: a > b)
    groups: dict[Any, dict] = {}
    for r in sorted((r for r in rows if finite(r.get(metric_best))), key=lambda r: r["trial"]):
        g = groups.setdefault(r.get(group_key) if group_key else None, {"finished": {}, "stopped": []})
        x, v = r[x_key], r[metric_best]
        if r.get("stopped early") == "yes":
            g["stopped"].append((x, v, r.get("steps"), r["trial"]))
        elif x not in g["finished"] or better(v, g["finished"][x]):
            g["finished"][x] = v
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def _plot_metric_vs_key(spec: SweepSpec, groups: dict, x_key: str, group_key: Optional[str], rows: list[dict],
                        out_dir: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    any_stopped = False
    for g, data in groups.items():
        name = f"{group_key}={g}" if group_key else "trained to the end"
        xs = sorted(data["finished"])
        line = ax.plot(xs, [data["finished"][x] for x in xs], marker="o", label=name if xs else None)[0]
        if data["stopped"]:
            any_stopped = True
            sx, sv = [p[0] for p in data["stopped"]], [p[1] for p in data["stopped"]]
            ax.scatter(sx, sv, s=64, facecolors="none", edgecolors=line.get_color(), linewidths=1.5,
                       label=(f"{name}: " if group_key else "") + "stopped early (ASHA), fewer steps")
            for x, v, steps, _ in data["stopped"]:
                ax.annotate(f"{steps} steps", (x, v), textcoords="offset points", xytext=(6, -3), fontsize=7,
                            color=line.get_color())
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"{spec.metric} ({'lowest' if spec.mode == 'min' else 'highest'} reported)")
    if x_key == X_KEY:
        ax.set_xticks(sorted({r[x_key] for r in rows if finite(r.get(x_key))}))
    ax.set_title(f"sweep {spec.name}" + ("\nfilled: trained to the end; hollow: stopped early at fewer steps "
                                        "(not comparable)" if any_stopped else ""), fontsize=9 if any_stopped else None)
    ax.grid(alpha=0.3)
    if group_key or any_stopped:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{spec.metric.replace('/', '_')}_vs_{x_key.split('.')[-1]}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_results(spec: SweepSpec, rows: list[dict], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    written = []
    numeric = [k for k in spec.keys if all(finite(r.get(k)) for r in rows)]
    x_key = X_KEY if X_KEY in numeric else (numeric[0] if numeric else None)
    group_key = GROUP_KEY if GROUP_KEY in spec.keys and GROUP_KEY != x_key else None
    if x_key:
        groups = metric_vs_key(spec, rows, x_key, group_key)
        if any(g["finished"] or g["stopped"] for g in groups.values()):
            written.append(_plot_metric_vs_key(spec, groups, x_key, group_key, rows, out_dir))
    curves = [r for r in rows if r["_curve"]]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in curves:
            xs, ys = zip(*r["_curve"])
            style = "--" if r["stopped early"] == "yes" else "-"
            label = r["trial"] + " " + ", ".join(f"{k.split('.')[-1]}={fmt(r[k])}" for k in spec.keys)
            ax.plot(xs, ys, style, marker=".", label=label + (" (stopped)" if style == "--" else ""))
        ax.set_xlabel("step")
        ax.set_ylabel(spec.metric)
        ax.set_title(f"sweep {spec.name}: {spec.metric} per trial")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, "loss_curves.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
