"""The engine owns backward: a train_step that calls `loss.backward()` is a usage error saying what
to return instead, on the first step or any later one, with or without retain_graph and gradient
accumulation; a train_step that takes gradients itself (torch.autograd.grad) is not."""
from __future__ import annotations

import pytest
import torch

from raytrain_llm.core.engine import TrainingEngine
from raytrain_llm.core.errors import UsageError
from raytrain_llm.tasks.regression_task import RegressionTask
from rt_testing import cli_env, make_config, run_cli, set_args, settings

MESSAGE = r"^train_step called backward\(\): the engine owns backward .* return the loss instead"


class BackwardInStepTask(RegressionTask):
    """Written as the original design sketched it: backward inside the step, then the loss returned."""

    def train_step(self, model, batch, criterion):
        out = super().train_step(model, batch, criterion)
        out.loss.backward()
        return out


class RetainedBackwardInStepTask(RegressionTask):
    """Keeps the graph: the engine's backward would succeed and silently double the gradients."""

    def train_step(self, model, batch, criterion):
        out = super().train_step(model, batch, criterion)
        out.loss.backward(retain_graph=True)
        return out


class DoubleBackwardInStepTask(RegressionTask):
    """Its own second backward fails inside train_step (as a compiled graph refuses retain_graph)."""

    def train_step(self, model, batch, criterion):
        out = super().train_step(model, batch, criterion)
        out.loss.backward()
        out.loss.backward()
        return out


class LateBackwardInStepTask(RegressionTask):
    """Calls backward from its third train_step on: caught where the engine's backward fails."""

    calls = 0

    def train_step(self, model, batch, criterion):
        out = super().train_step(model, batch, criterion)
        type(self).calls += 1
        if type(self).calls >= 3:
            out.loss.backward()
        return out


class InputGradientPenaltyTask(RegressionTask):
    """Takes a gradient inside the step without backward(): a gradient penalty on the inputs."""

    def train_step(self, model, batch, criterion):
        x = batch["x"].requires_grad_(True)
        loss = criterion(model(x).float(), batch["y"])
        (grad,) = torch.autograd.grad(loss, x, create_graph=True)
        return loss + 0.1 * grad.pow(2).sum(dim=1).mean()


def fit(tmp_path, task_cls, **overrides):
    cfg = make_config(tmp_path, **{"training.max_steps": 4, **overrides})
    engine = TrainingEngine(cfg, task_cls(cfg))
    return engine.fit(), engine


@pytest.mark.parametrize("task_cls", [BackwardInStepTask, RetainedBackwardInStepTask, DoubleBackwardInStepTask])
@pytest.mark.parametrize("accum", [1, 2])
def test_backward_in_train_step_is_a_usage_error_at_the_first_step(tmp_path, task_cls, accum):
    with pytest.raises(UsageError, match=MESSAGE):
        fit(tmp_path, task_cls, **{"training.grad_accum_steps": accum})
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_failing_backward_inside_train_step_keeps_torchs_reason(tmp_path):
    with pytest.raises(UsageError, match=r"\(torch: Trying to backward through the graph a second time"):
        fit(tmp_path, DoubleBackwardInStepTask)


def test_backward_in_a_later_train_step_is_a_usage_error(tmp_path):
    LateBackwardInStepTask.calls = 0
    with pytest.raises(UsageError, match=MESSAGE):
        fit(tmp_path, LateBackwardInStepTask)
    assert LateBackwardInStepTask.calls == 3


def test_gradients_taken_inside_train_step_are_allowed(tmp_path):
    result, engine = fit(tmp_path, InputGradientPenaltyTask)
    assert result["step"] == 4 and engine.global_step == 4
    assert result["train"]["loss"] > 0


@pytest.mark.timeout(120)
def test_backward_in_train_step_exits_2_with_one_line(tmp_path):
    s = settings(tmp_path, **{"training.max_steps": 2})
    p = run_cli(["--task", "test_task_backward:BackwardInStepTask", *set_args(s)], env=cli_env(), timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert "train_step called backward(): the engine owns backward" in p.stderr
