"""Test-only tasks, used as `--task rt_helpers:Name` (tests/ is on sys.path / PYTHONPATH).

Behaviour is driven by RT_* environment variables read when the task is built, so the same
class serves a subprocess run (a real kill, a real exit code) and an in-process run; Ray workers
do not see variables set after Ray started, so what a Ray test needs travels as task options.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time

import torch

from raytrain_llm.core.callbacks import Callback, EarlyStopping
from raytrain_llm.core.errors import UsageError
from raytrain_llm.core.task import StepOutput
from raytrain_llm.tasks.regression_task import RegressionTask


def _ints(name: str) -> set[int]:
    return {int(v) for v in os.environ.get(name, "").split(",") if v.strip()}


class KillAtStepTask(RegressionTask):
    """SIGKILLs its own process right after optimizer step $RT_KILL_AT_STEP (no cleanup at all)."""

    def __init__(self, config):
        super().__init__(config)
        self.kill_at = int(os.environ.get("RT_KILL_AT_STEP", "0"))
        self.steps = 0

    def on_optimizer_step(self, model) -> None:
        self.steps += 1
        if self.kill_at and self.steps == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


class KillRankAtStep(Callback):
    """SIGKILLs the worker of rank `rank` right after optimizer step `step`, as a crashed machine
    dies, while the `marker` file records fewer than `times` kills (a restarted run that reaches
    the step again goes on, or keeps dying when `times` exceeds the retries). With
    `signal="TERM"` it sends itself SIGTERM instead, as a reclaimed node's worker gets it, and
    waits for the handler on the worker's main thread to see it."""

    def __init__(self, rank: int, step: int, marker: str, times: int, signal_name: str = "KILL"):
        self.rank, self.step, self.marker, self.times = rank, step, marker, times
        self.signal_name = signal_name

    def on_batch_end(self, engine, step: int, outputs) -> None:
        if engine.dist.rank != self.rank or step != self.step:
            return
        kills = 0
        if os.path.exists(self.marker):
            with open(self.marker, encoding="utf-8") as fh:
                kills = len(fh.read().split())
        if kills >= self.times:
            return
        with open(self.marker, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            os.fsync(fh.fileno())
        if self.signal_name == "KILL":
            os.kill(os.getpid(), signal.SIGKILL)
        from raytrain_llm.core import interruption

        os.kill(os.getpid(), getattr(signal, f"SIG{self.signal_name}"))
        deadline = time.monotonic() + 30  # the main thread runs the handler when it next runs Python
        while not interruption.received() and time.monotonic() < deadline:
            time.sleep(0.01)


class KillRankTask(RegressionTask):
    """RegressionTask (the same weights, step for step) plus KillRankAtStep from its options."""

    @dataclasses.dataclass
    class Options:
        rank: int
        step: int
        marker: str
        times: int = 1
        signal: str = "KILL"  # KILL or TERM

    def configure_callbacks(self):
        o = self.options
        return [KillRankAtStep(o.rank, o.step, o.marker, o.times, o.signal)]


class NaNAtStepTask(RegressionTask):
    """Loss is NaN on the train_step calls listed in $RT_NAN_AT_CALLS (1-based; 1 call = 1 step at accum 1)."""

    def __init__(self, config):
        super().__init__(config)
        self.nan_calls = _ints("RT_NAN_AT_CALLS")
        self.calls = 0

    def train_step(self, model, batch, criterion):
        out = super().train_step(model, batch, criterion)
        self.calls += 1
        if self.calls in self.nan_calls:
            out.loss = out.loss * float("nan")  # keeps the graph: backward gives NaN grads too
        return out


class ScriptedValTask(RegressionTask):
    """Validation check i reports val/loss = $RT_VAL_LOSSES[i] (set data.num_val_samples <= batch size)."""

    def __init__(self, config):
        super().__init__(config)
        self.losses = [float(v) for v in os.environ.get("RT_VAL_LOSSES", "").split(",") if v.strip()]
        self.checks = 0

    def validation_step(self, model, batch, criterion):
        out = super().validation_step(model, batch, criterion)
        value = self.losses[min(self.checks, len(self.losses) - 1)]
        self.checks += 1
        out.loss = torch.tensor(value)
        return out


class PlateauTask(ScriptedValTask):
    """ReduceLROnPlateau (halve after 1 bad check), which only LRSchedulerCallback can drive."""

    def build_scheduler(self, optimizer, total_steps):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1)


class SparseMetricTask(RegressionTask):
    """Reports `call` (the 1-based train_step call) on odd calls only, and a plain float `half`."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = 0

    def train_step(self, model, batch, criterion):
        out = super().train_step(model, batch, criterion)
        self.calls += 1
        out.metrics["half"] = 0.5
        if self.calls % 2:
            out.metrics["call"] = torch.tensor(float(self.calls))
        return out


class TrainMetricPlateauTask(SparseMetricTask):
    """ReduceLROnPlateau on a train metric (`call` only grows): what checkpoint.monitor=call drives."""

    def build_scheduler(self, optimizer, total_steps):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1)


class StepCounter(Callback):
    """Counts optimizer steps; the count is state, so it must survive a resume."""

    def __init__(self):
        self.steps = 0

    def on_batch_end(self, engine, step, outputs) -> None:
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state) -> None:
        self.steps = state["steps"]


class OwnCallbacksTask(RegressionTask):
    """Adds a StepCounter and a second EarlyStopping (on val/mae) to the config's callbacks."""

    def configure_callbacks(self):
        return [StepCounter(), EarlyStopping(monitor="val/mae", patience=100)]


class RefuseToStart(Callback):
    def __init__(self, rank: int):
        self.rank = rank

    def on_train_start(self, engine) -> None:
        if engine.dist.rank == self.rank:
            raise UsageError(f"rank {self.rank} refuses to start")


class UsageErrorOnRank1Task(RegressionTask):
    """Rank 1 alone raises a UsageError at train start: the other ranks must stop too, not wait."""

    def configure_callbacks(self):
        return [RefuseToStart(rank=1)]


class StopOnRank0(Callback):
    def on_batch_end(self, engine, step, outputs) -> None:
        if engine.dist.rank == 0 and step == 2:
            engine.should_stop = True  # on one rank only: the engine spreads it to the others


class StopOnRank0Task(RegressionTask):
    """Rank 0 alone asks to stop after step 2 (a step that also saves every N=2)."""

    def configure_callbacks(self):
        return [StopOnRank0()]


class UnusedParameterTask(RegressionTask):
    """A model with a layer no step uses: DDP fails unless distributed.find_unused_parameters=true."""

    def build_model(self):
        return _WithUnusedLayer(super().build_model())


class _WithUnusedLayer(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.unused = inner, torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.inner(x)


class OptionsTask(RegressionTask):
    """Declares its own settings (task_options.*); `width` sizes the model's hidden layer."""

    @dataclasses.dataclass
    class Options:
        width: int = 8
        scale: float = 1.0
        tag: str = "none"

    def build_model(self):
        m = self.config.model
        return torch.nn.Sequential(torch.nn.Linear(m.input_dim, self.options.width), torch.nn.GELU(),
                                   torch.nn.Linear(self.options.width, 1))


class TaggedMetricTask(OptionsTask):
    """Declares its validation metrics, which depend on an option: val/mae only with tag 'mae'."""

    @classmethod
    def validation_metrics(cls, config):
        tag = config.task_options.get("tag", "none")
        return frozenset({"val/loss", "val/mae"} if tag == "mae" else {"val/loss"})

    def validation_step(self, model, batch, criterion):
        out = super().validation_step(model, batch, criterion)
        return out if self.options.tag == "mae" else StepOutput(loss=out.loss)


class CustomValTask(OptionsTask):
    """Reports its own validation metric and declares nothing (validation_metrics inherited)."""

    def validation_step(self, model, batch, criterion):
        out = super().validation_step(model, batch, criterion)
        return StepOutput(loss=out.loss, metrics={"acc": 1.0})


class SignalAtEnd(Callback):
    """Sends its process `signum` once the run has ended (after its last step, save and summary):
    a signal that comes too late to stop anything."""

    def __init__(self, signum: int):
        self.signum = signum

    def on_train_end(self, engine) -> None:
        os.kill(os.getpid(), self.signum)


class SignalAtStepTask(RegressionTask):
    """Sends itself (or, RT_SIGNAL_TARGET=parent, spawn's parent) $RT_SIGNAL (TERM or INT) right after
    optimizer step $RT_SIGNAL_AT_STEP, on rank $RT_SIGNAL_RANK (0), $RT_SIGNAL_TIMES times (1):
    what a preempted machine's scheduler or a Ctrl-C does, at a known step. RT_SIGNAL_AT_END=1:
    once more after the run ended."""

    def __init__(self, config):
        super().__init__(config)
        self.at = int(os.environ.get("RT_SIGNAL_AT_STEP", "0"))
        self.signum = getattr(signal, "SIG" + os.environ.get("RT_SIGNAL", "TERM"))
        self.times = int(os.environ.get("RT_SIGNAL_TIMES", "1"))
        self.rank = int(os.environ.get("RT_SIGNAL_RANK", "0"))
        self.steps = 0

    def configure_callbacks(self):
        return [SignalAtEnd(self.signum)] if os.environ.get("RT_SIGNAL_AT_END") else []

    def on_optimizer_step(self, model) -> None:
        self.steps += 1
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if self.at and self.steps == self.at and rank == self.rank:
            target = os.getppid() if os.environ.get("RT_SIGNAL_TARGET") == "parent" else os.getpid()
            for _ in range(self.times):
                os.kill(target, self.signum)


class SlowTask(RegressionTask):
    """Sleeps $RT_STEP_SLEEP seconds in each optimizer step: a run that lasts long enough to be looked at."""

    def on_optimizer_step(self, model) -> None:
        import time

        time.sleep(float(os.environ.get("RT_STEP_SLEEP", "0.2")))


class PreemptionDrillTask(RegressionTask):
    """For the preemption drill (Ray only). Until the file $RT_RELEASE exists: after optimizer step
    $RT_NOTICE_STEP each rank writes $RT_RELEASE.at-notice-step and waits for Ray's preemption
    notice (the test drains a node once the file is there), and after
    step $RT_HOLD_STEP it waits for the file (the test removes the drained node meanwhile). A
    restarted run finds the file and trains straight through."""

    def __init__(self, config):
        super().__init__(config)
        self.notice_step = int(os.environ.get("RT_NOTICE_STEP", "0"))
        self.hold_step = int(os.environ.get("RT_HOLD_STEP", "0"))
        self.release = os.environ.get("RT_RELEASE", "")
        self.steps = 0

    def on_optimizer_step(self, model) -> None:
        import time

        from raytrain_llm.launchers.ray_train.interruption import preemption_notice

        self.steps += 1
        if not self.release or os.path.exists(self.release):
            return
        deadline = time.monotonic() + 120
        if self.steps == self.notice_step:
            with open(self.release + ".at-notice-step", "a", encoding="utf-8"):
                pass  # the test drains the node now: the notice then arrives at this step, no earlier
            while not preemption_notice() and time.monotonic() < deadline:
                time.sleep(0.05)
        elif self.steps == self.hold_step:
            while not os.path.exists(self.release) and time.monotonic() < deadline:
                time.sleep(0.05)
