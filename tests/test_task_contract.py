"""What a task's steps and callbacks hand the engine: mistakes are usage errors naming the hook
and the value, and whatever a task returns never makes a checkpoint that cannot be loaded."""
from __future__ import annotations

import datetime

import numpy as np
import pytest
import torch

from raytrain_llm.core.callbacks import default_callbacks
from raytrain_llm.core.checkpointing import CheckpointManager
from raytrain_llm.core.engine import TrainingEngine
from raytrain_llm.core.errors import TrainingError, UsageError
from raytrain_llm.core.logger import Logger
from raytrain_llm.core.task import StepOutput, declared_validation_metrics
from raytrain_llm.launchers.local.spawn import child_exception, run_spawn
from raytrain_llm.tasks.regression_task import RegressionTask
from rt_helpers import StepCounter
from rt_testing import make_config


def fit(tmp_path, task_cls, callbacks=(), **overrides):
    cfg = make_config(tmp_path, **{"training.max_steps": 4, **overrides})
    engine = TrainingEngine(cfg, task_cls(cfg), callbacks=list(callbacks))
    return engine.fit(), engine


def step_returning(value_fn):
    class Task(RegressionTask):
        def train_step(self, model, batch, criterion):
            return value_fn(super().train_step(model, batch, criterion))
    return Task


@pytest.mark.parametrize("make, message", [
    (lambda out: float(out.loss), r"^train_step returned a float: return a StepOutput"),
    (lambda out: {"loss": out.loss}, r"^train_step returned a dict"),
    (lambda out: None, r"^train_step returned a NoneType"),
    (lambda out: (out.loss, {}, 1), r"^train_step returned a tuple of 3"),
    (lambda out: out.loss.detach(), r"^train_step returned a loss that does not require grad"),
    (lambda out: torch.tensor(3), r"^train_step returned a loss that does not require grad"),
    (lambda out: out.loss * torch.ones(4), r"^train_step returned a loss of shape \[4\]: reduce it"),
    (lambda out: (out.loss, {"acc": "high"}), r"^train_step: metric 'acc' is a str \('high'\), not a number"),
    (lambda out: (out.loss, {"acc": torch.ones(16)}), r"^train_step: metric 'acc' is a tensor of shape \[16\]"),
    (lambda out: (out.loss, {"loss": out.loss.detach()}), r"^train_step returned a metric named 'loss', a name the engine"),
    (lambda out: (out.loss, {"grad_norm": 100.0}), r"metric named 'grad_norm'"),
    (lambda out: (out.loss, {"step": 1.0}), r"metric named 'step'"),
    (lambda out: (out.loss, {"val/mae": 1.0}), r"metric named 'val/mae'.*val/ names are validation's"),
])
def test_train_step_mistakes_name_the_hook_and_value(tmp_path, make, message):
    with pytest.raises(UsageError, match=message):
        fit(tmp_path, step_returning(make))


class ValLossMetric(RegressionTask):
    def validation_step(self, model, batch, criterion):
        out = super().validation_step(model, batch, criterion)
        return StepOutput(loss=out.loss, metrics={"loss": out.loss * 0})


class ValVectorMetric(RegressionTask):
    def validation_step(self, model, batch, criterion):
        out = super().validation_step(model, batch, criterion)
        return StepOutput(loss=out.loss, metrics={"err": (out.loss * torch.ones(3))})


class TensorAndNumpyFinal(RegressionTask):
    def finalize_validation(self, metrics):
        return {**metrics, "val/err": np.float64(1.0) - metrics["val/mae"], "val/exp": torch.tensor(2.0)}


def test_validation_mistakes_and_finalized_values(tmp_path):
    with pytest.raises(UsageError, match=r"^validation_step returned a metric named 'loss'.*val/loss"):
        fit(tmp_path / "a", ValLossMetric)
    with pytest.raises(UsageError, match=r"^validation_step: metric 'err' is a tensor of shape \[3\]"):
        fit(tmp_path / "b", ValVectorMetric)
    result, _ = fit(tmp_path / "c", TensorAndNumpyFinal)
    assert type(result["val"]["val/err"]) is float and result["val"]["val/exp"] == 2.0


class DeclaresWrongly(RegressionTask):
    @classmethod
    def validation_metrics(cls, config):
        return frozenset({"val/loss", "val/r2"})


class DeclaresItsOwn(TensorAndNumpyFinal):
    @classmethod
    def validation_metrics(cls, config):
        return frozenset({"val/loss", "val/mae", "val/err", "val/exp"})


def test_declared_validation_metrics_are_checked_against_what_validation_reports(tmp_path):
    with pytest.raises(UsageError) as info:
        fit(tmp_path / "wrong", DeclaresWrongly)
    assert str(info.value) == ("DeclaresWrongly.validation_metrics() declares val/loss, val/r2 but validation "
                               "reported val/loss, val/mae: make them agree, or return None")
    result, _ = fit(tmp_path / "own", DeclaresItsOwn)
    assert set(result["val"]) == DeclaresItsOwn.validation_metrics(None)
    # A subclass that changes what validation reports without declaring it inherits no stale list.
    assert declared_validation_metrics(TensorAndNumpyFinal, make_config(tmp_path)) is None
    assert declared_validation_metrics(DeclaresItsOwn, make_config(tmp_path)) == {"val/loss", "val/mae", "val/err",
                                                                                 "val/exp"}


def _declaring(returns=None, method=classmethod):
    class Task(RegressionTask):
        def validation_metrics(cls, config):
            return returns
    Task.validation_metrics = method(Task.validation_metrics)
    return Task


@pytest.mark.parametrize("task_cls, message", [
    (_declaring(method=lambda f: f), r"^Task\.validation_metrics\(\) must be a classmethod"),
    (_declaring("val/loss"), r"^Task\.validation_metrics\(\) returned 'val/loss': return None or a set"),
    (_declaring({"loss", "mae"}), r"returned \{.*\}: return None or a set of the validation metric names, each "
                                  r"'val/\.\.\.', val/loss among them"),
    (_declaring({"val/mae"}), r"returned \{'val/mae'\}"),
])
def test_a_declaration_that_cannot_be_right_is_named_as_the_mistake(tmp_path, task_cls, message):
    with pytest.raises(UsageError, match=message):
        declared_validation_metrics(task_cls, make_config(tmp_path))
    assert declared_validation_metrics(_declaring(None), make_config(tmp_path)) is None


def test_a_subclass_changing_only_the_training_loss_keeps_the_declaration(tmp_path):
    from raytrain_llm.tasks.lm_task import LanguageModelingTask

    class CustomLoss(LanguageModelingTask):  # validation runs LanguageModelingTask.validation_step
        def train_step(self, model, batch, criterion):
            return super().train_step(model, batch, criterion)

    declared = declared_validation_metrics(CustomLoss, make_config(tmp_path, task="lm"))
    assert declared == {"val/loss", "val/perplexity"}


@pytest.mark.parametrize("task", ["regression", "lm"])
def test_the_built_in_tasks_declare_what_their_validation_reports(tmp_path, task):
    from raytrain_llm.launchers.task_resolution import resolve_task
    from rt_testing import train

    overrides = {"model.vocab_size": 32, "model.d_model": 16, "model.n_layers": 1, "model.n_heads": 2,
                 "model.seq_len": 8} if task == "lm" else {}
    result, cfg = train(tmp_path, task=task, **{"training.max_steps": 2, **overrides})
    declared = declared_validation_metrics(resolve_task(task), cfg)
    assert declared is not None and set(result["val"]) == declared


class NumpyState(StepCounter):
    def state_dict(self):
        return {"steps": np.int64(self.steps), "history": np.arange(3.0), "seen": [np.float32(0.5)]}

    def load_state_dict(self, state):
        self.steps, self.loaded = int(state["steps"]), state


class DatetimeState(StepCounter):
    def state_dict(self):
        return {"when": datetime.datetime(2026, 1, 1)}


def test_numpy_values_in_checkpoints_load_back(tmp_path):
    # A numpy float from finalize_validation (sklearn's metrics return them) or in a callback's
    # state used to save fine and make every checkpoint unloadable (weights-only load).
    _, engine = fit(tmp_path, TensorAndNumpyFinal, callbacks=[NumpyState()], **{"training.max_steps": 0,
                                                                                "training.epochs": 2})
    assert engine.global_step == 32
    for meta in CheckpointManager(str(tmp_path / "checkpoints")).checkpoints():
        CheckpointManager.load(meta["path"])  # weights-only: raises if anything is not plain
    cfg = make_config(tmp_path, **{"training.epochs": 3, "checkpoint.resume": "auto"})
    resumed = NumpyState()
    TrainingEngine(cfg, TensorAndNumpyFinal(cfg), callbacks=[resumed]).fit()
    assert resumed.steps == 48
    assert resumed.loaded["history"].tolist() == [0.0, 1.0, 2.0] and resumed.loaded["seen"] == [0.5]
    with pytest.raises(UsageError, match=r"^checkpoint state callbacks\['DatetimeState'\]\['when'\] is a "
                                         r"datetime.datetime, which a checkpoint cannot hold"):
        fit(tmp_path / "d", RegressionTask, callbacks=[DatetimeState()], **{"checkpoint.every_n_steps": 2})


def test_a_spawned_workers_failure_names_its_exception_and_keeps_the_traceback(tmp_path):
    text = ("\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
            "  File \"x.py\", line 1, in f\n    g()\nRuntimeError: Expected to have finished reduction\n"
            "parameters that were not used: find_unused_parameters=True\n"
            "In addition, you can set the environment variable TORCH_DISTRIBUTED_DEBUG to INFO\n")
    assert child_exception(text) == ("RuntimeError", "Expected to have finished reduction")
    cfg = make_config(tmp_path, "rt_helpers:UnusedParameterTask", **{
        "distributed.launcher": "spawn", "distributed.num_workers": 2, "training.max_steps": 3})
    with pytest.raises(TrainingError, match=r"a spawned worker failed: RuntimeError: .*set "
                                            r"distributed.find_unused_parameters=true \(traceback in .*error.log\)"):
        run_spawn(cfg)
    assert "Traceback (most recent call last)" in (tmp_path / "error.log").read_text()


class OneCycleTask(RegressionTask):
    def build_scheduler(self, optimizer, total_steps):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=total_steps)


class WarmupCosineTask(RegressionTask):
    def build_scheduler(self, optimizer, total_steps):
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=3)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - 3)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[3])


@pytest.mark.parametrize("task_cls", [OneCycleTask, WarmupCosineTask])
def test_a_task_scheduler_follows_a_longer_resumed_run(tmp_path, task_cls):
    # The task plans its schedule from total_steps; a run resumed with more epochs gets the
    # schedule of the longer run from where it stands (OneCycleLR used to fail past its old
    # end, a cosine restarted its cycle), and OneCycle's cycled betas are not "config changes".
    from rt_testing import read_jsonl

    def lrs(folder):
        return {r["step"]: r["lr"] for r in read_jsonl(folder / "metrics.jsonl") if r["split"] == "train"}

    def run(folder, **settings):
        cfg = make_config(folder, **settings)
        logger = Logger(log_dir=str(folder))
        engine = TrainingEngine(cfg, task_cls(cfg), callbacks=default_callbacks(cfg, logger), logger=logger)
        engine.fit()
        logger.close()
        return engine

    straight = run(tmp_path / "whole", **{"training.epochs": 2})
    run(tmp_path / "cut", **{"training.epochs": 1})
    resumed = run(tmp_path / "cut", **{"training.epochs": 2, "checkpoint.resume": "auto"})
    expected, got = lrs(tmp_path / "whole"), lrs(tmp_path / "cut")
    assert max(got) == 32 and all(got[s] == pytest.approx(expected[s], rel=1e-9) for s in range(17, 33))
    for a, b in zip(resumed.optimizer.param_groups, straight.optimizer.param_groups):
        assert a["betas"] == pytest.approx(b["betas"]) and a["lr"] == pytest.approx(b["lr"])
    log = (tmp_path / "cut" / "logs" / "rank0.log").read_text()
    assert "planned again for 32 steps (the checkpoint's run: 16)" in log and "betas changed" not in log


def test_a_custom_datasets_mistakes_name_its_rows_or_init(tmp_path):
    from raytrain_llm.data.base import DataModule, IndexedDataset

    class Rows(IndexedDataset):
        def __init__(self, n, make):
            super().__init__(n, 0)
            self.make = make

        def rows(self, ids):
            return self.make(ids)

    class NoSuper(IndexedDataset):
        def __init__(self):
            pass

        def rows(self, ids):
            return {}

    def module(dataset):
        class Module(DataModule):
            def build_train_dataset(self):
                return dataset

            def build_val_dataset(self):
                return dataset
        return Module(make_config(tmp_path))

    def batch(make):
        return next(iter(module(Rows(32, make)).train_batches(epoch=0, start_batch=0, batch_size=4, rank=0,
                                                               world_size=1)))

    ok = batch(lambda ids: {"x": torch.ones(len(ids), 2), "y": np.zeros((len(ids), 1), np.float32)})
    assert ok["x"].shape == (4, 2) and ok["y"].dtype == torch.float32  # CPU tensors are taken too
    with pytest.raises(UsageError, match=r"^Rows.rows returned a list: return a dict"):
        batch(lambda ids: [ids])
    with pytest.raises(UsageError, match=r"^Rows.rows: column 'x' has shape \[2\] for 4 ids"):
        batch(lambda ids: {"x": np.zeros(2)})
    with pytest.raises(UsageError, match=r"^Rows.rows: column 'x' is a list"):
        batch(lambda ids: {"x": [0] * len(ids)})
    with pytest.raises(UsageError, match=r"^NoSuper.__init__ must call super\(\).__init__\(num_samples, seed\)"):
        module(NoSuper()).train_dataset

    class ModuleNoSuper(DataModule):
        def __init__(self, config):
            self.config = config

        build_train_dataset = build_val_dataset = None

    with pytest.raises(UsageError, match=r"^ModuleNoSuper.__init__ must call super\(\).__init__\(config\)"):
        ModuleNoSuper(make_config(tmp_path)).train_dataset


def test_the_local_launcher_says_it_ignores_num_workers(tmp_path, capsys):
    from raytrain_llm.launchers.local.spawn import run_in_process

    run_in_process(make_config(tmp_path, **{"distributed.num_workers": 2, "training.max_steps": 1}))
    assert "distributed.num_workers=2 is ignored (launcher=spawn or ray runs 2 workers)" in capsys.readouterr().err


class OneCycleSkipping(OneCycleTask):
    """OneCycleLR, and a NaN loss on train_step calls 2 and 3 (nan_policy=skip skips those steps)."""

    calls = 0

    def train_step(self, model, batch, criterion):
        out = super().train_step(model, batch, criterion)
        OneCycleSkipping.calls += 1
        if OneCycleSkipping.calls in (2, 3):
            out.loss = out.loss * float("nan")
        return out


def test_a_replanned_task_scheduler_counts_applied_steps_and_keeps_new_settings(tmp_path):
    def run(folder, task_cls=OneCycleTask, **settings):
        cfg = make_config(folder, **settings)
        engine = TrainingEngine(cfg, task_cls(cfg))
        engine.fit()
        return engine

    # A shorter resumed run (nothing left to schedule) reports the finished run instead of failing.
    run(tmp_path / "short", **{"training.max_steps": 8})
    assert run(tmp_path / "short", **{"training.max_steps": 4, "checkpoint.resume": "auto"}).global_step == 8
    # Skipped steps never stepped the scheduler: the re-planned one is stepped to the applied count.
    skip = {"training.nan_policy": "skip", "training.max_steps": 6}
    first = run(tmp_path / "skip", OneCycleSkipping, **skip)
    assert (first.skipped_steps, first.scheduler.last_epoch) == (2, 4)
    again = run(tmp_path / "skip", OneCycleSkipping, **{**skip, "training.max_steps": 12, "checkpoint.resume": "auto"})
    assert (again.skipped_steps, again.scheduler.last_epoch) == (2, 10)
    # OneCycleLR cycles beta1; a new beta2 from the config still applies.
    run(tmp_path / "betas", **{"training.max_steps": 8})
    resumed = run(tmp_path / "betas", **{"training.max_steps": 12, "training.betas": "0.9,0.5",
                                         "checkpoint.resume": "auto"})
    assert all(g["betas"][1] == 0.5 and g["betas"][0] != 0.9 for g in resumed.optimizer.param_groups)


def test_numpy_metrics_and_exotic_numpy_state_are_taken_as_numbers(tmp_path):
    from raytrain_llm.core.checkpointing import loadable_state
    from raytrain_llm.core.step_checks import metric_float

    for value in (np.bool_(True), np.array(0.5), np.array([2]), np.float32(1.5), np.int64(3)):
        assert isinstance(metric_float("m", value, "validation_step"), float)
    state = loadable_state({"a": np.longdouble(1.5), "b": np.array([1, 2], dtype=">i4"),
                            "c": np.array([0.5], dtype=np.longdouble)}, "callbacks")
    path = tmp_path / "s.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["a"] == 1.5 and loaded["b"].tolist() == [1, 2] and loaded["c"].tolist() == [0.5]
    with pytest.raises(UsageError, match=r"callbacks\['d'\] is a datetime"):
        loadable_state({"d": np.datetime64("2026-01-01T10:00")}, "callbacks")
