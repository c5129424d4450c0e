"""The sweep's metric-vs-key plot compares like with like: a trial ASHA stopped early (its value
at the fewer steps it trained) is kept apart from the trials trained to the end."""
from __future__ import annotations

from types import SimpleNamespace

from raytrain_llm.launchers.tune.plots import metric_vs_key, plot_results

SPEC = SimpleNamespace(name="moe", metric="val/loss", mode="min", keys=["model.num_experts", "model.top_k"])


def row(trial, experts, top_k, best, stopped, steps):
    return {"trial": trial, "model.num_experts": experts, "model.top_k": top_k, "val/loss best": best,
            "stopped early": "yes" if stopped else "no", "steps": steps, "_curve": [(steps, best)]}


ROWS = [
    row("t000", 2, 1, 3.0, False, 16), row("t001", 4, 1, 4.5, True, 8),  # 4 experts top-1: stopped only
    row("t002", 2, 2, 2.9, False, 16), row("t003", 4, 2, 2.7, False, 16),
    row("t004", 4, 2, 2.1, True, 4),  # better than t003, but at 4 steps: not the point of the line
    row("t005", 8, 2, float("nan"), False, 16),  # no finite value: not drawn
]


def test_stopped_trials_are_kept_apart_from_finished_ones():
    groups = metric_vs_key(SPEC, ROWS, "model.num_experts", "model.top_k")
    assert groups == {
        1: {"finished": {2: 3.0}, "stopped": [(4, 4.5, 8, "t001")]},
        2: {"finished": {2: 2.9, 4: 2.7}, "stopped": [(4, 2.1, 4, "t004")]},
    }


def test_without_a_group_key_and_in_max_mode():
    spec = SimpleNamespace(name="s", metric="val/acc", mode="max", keys=["model.num_experts"])
    rows = [{"trial": f"t{i}", "model.num_experts": x, "val/acc best": v, "stopped early": s, "steps": 8}
            for i, (x, v, s) in enumerate([(2, 0.5, "no"), (2, 0.7, "no"), (2, 0.9, "yes")])]
    assert metric_vs_key(spec, rows, "model.num_experts", None) == {
        None: {"finished": {2: 0.7}, "stopped": [(2, 0.9, 8, "t2")]}}


def test_plot_files_are_written(tmp_path):
    paths = plot_results(SPEC, ROWS, str(tmp_path))
    assert sorted(p.split("/")[-1] for p in paths) == ["loss_curves.png", "val_loss_vs_num_experts.png"]
