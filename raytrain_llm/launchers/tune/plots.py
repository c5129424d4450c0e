"""A sweep's plots (matplotlib, Agg): the best metric against a swept key, and each trial's curve."""
from __future__ import annotations

import os

from raytrain_llm.launchers.tune.reported_values import finite, fmt
from raytrain_llm.launchers.tune.sweep_spec import SweepSpec

X_KEY, GROUP_KEY = "model.num_experts", "model.top_k"  # preferred axes when they are swept


def plot_results(spec: SweepSpec, rows: list[dict], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    written = []
    metric_best = f"{spec.metric} best"
    numeric = [k for k in spec.keys if all(finite(r.get(k)) for r in rows)]
    x_key = X_KEY if X_KEY in numeric else (numeric[0] if numeric else None)
    group_key = GROUP_KEY if GROUP_KEY in spec.keys and GROUP_KEY != x_key else None
    scored = [r for r in rows if finite(r.get(metric_best))]
    if x_key and scored:
        fig, ax = plt.subplots(figsize=(6, 4))
        groups = sorted({r.get(group_key) for r in scored}, key=str) if group_key else [None]
        for g in groups:
            best: dict = {}  # x -> best value among trials with that x (other swept keys vary)
            for r in scored:
                if group_key and r.get(group_key) != g:
                    continue
                x, v = r[x_key], r[metric_best]
                if x not in best or (v < best[x] if spec.mode == "min" else v > best[x]):
                    best[x] = v
            xs = sorted(best)
            ax.plot(xs, [best[x] for x in xs], marker="o", label=f"{group_key}={g}" if group_key else None)
        ax.set_xlabel(x_key)
        ax.set_ylabel(f"{spec.metric} ({'lowest' if spec.mode == 'min' else 'highest'} reported)")
        if x_key == X_KEY:
            ax.set_xticks(sorted({r[x_key] for r in scored}))
        ax.set_title(f"sweep {spec.name}")
        ax.grid(alpha=0.3)
        if group_key:
            ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, f"{spec.metric.replace('/', '_')}_vs_{x_key.split('.')[-1]}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
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
