"""SIGTERM / Ctrl-C: the run finishes its step, saves, writes its summary and exits 143 / 130;
resumed with checkpoint.resume=auto it ends bit-identical to an uninterrupted run (nothing lost)."""
from __future__ import annotations

import signal

import pytest
import torch

from rt_testing import (
    checkpoints,
    ckpt_step,
    cli_env,
    final_state,
    load_state,
    read_json,
    run_cli,
    set_args,
    settings,
    train,
    train_steps,
)

TASK = "rt_helpers:SignalAtStepTask"
# 2 epochs of 16 steps, a cosine schedule, and no mid-epoch checkpoints: without the stop's own
# save, the signal would lose everything since the start.
RUN = {"training.epochs": 2, "training.lr_schedule": "cosine", "training.warmup_steps": 3,
       "training.val_every_n_steps": 4, "checkpoint.keep_last": 0}


def assert_same_state(a: dict, b: dict) -> None:
    assert a["progress"] == b["progress"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


@pytest.mark.timeout(180)
def test_sigterm_mid_epoch_saves_exits_143_and_resumes_bit_identical(tmp_path):
    train(tmp_path / "ref", task=TASK, **RUN)
    run = tmp_path / "run"
    args = ["--task", TASK, *set_args(settings(run, **RUN))]
    p = run_cli(args, env=cli_env(RT_SIGNAL_AT_STEP="13"), timeout=120)
    assert p.returncode == 143, p.stderr[-2000:]
    assert "interrupted by SIGTERM" in p.stderr
    # Zero steps lost: the step the signal arrived in is finished and saved, nothing after it.
    assert [ckpt_step(c) for c in checkpoints(run)] == [13]
    summary = read_json(run / "summary.json")
    assert summary["interrupted"] == "SIGTERM" and summary["global_step"] == 13
    assert summary["latest_checkpoint"].endswith("step-00000013")
    assert train_steps(run)[-1] == 13

    p = run_cli([*args, "--set", "checkpoint.resume=auto"], timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "step 13 (epoch 1, batch 13)" in p.stderr
    assert_same_state(final_state(tmp_path / "ref"), final_state(run))
    assert train_steps(run) == list(range(1, 33))
    assert read_json(run / "summary.json")["interrupted"] is None


def test_ctrl_c_in_process_stops_after_the_step_and_restores_handlers(tmp_path, monkeypatch):
    from raytrain_llm.core import interruption
    from raytrain_llm.core.config_loader import load_config
    from raytrain_llm.launchers.local.in_process import run_in_process

    monkeypatch.setenv("RT_SIGNAL_AT_STEP", "5")
    monkeypatch.setenv("RT_SIGNAL", "INT")
    before = signal.getsignal(signal.SIGINT)
    s = settings(tmp_path, **RUN)
    config = load_config(None, [f"{k}={v}" for k, v in s.items()], environ={}, task=TASK)
    result = run_in_process(config)
    assert result["step"] == 5 and interruption.received() == signal.SIGINT
    assert interruption.exit_code(interruption.received()) == 130
    assert signal.getsignal(signal.SIGINT) is before  # pytest's Ctrl-C works again
    assert read_json(tmp_path / "summary.json")["interrupted"] == "SIGINT"
    assert [ckpt_step(c) for c in checkpoints(tmp_path)] == [5]
    # The signal was this run's: a later run in this process (no handlers installed) trains on.
    monkeypatch.delenv("RT_SIGNAL_AT_STEP")
    result, _ = train(tmp_path / "later", task=TASK, **RUN)
    assert result["step"] == 32


@pytest.mark.timeout(180)
def test_a_second_signal_exits_at_once_and_leaves_saved_checkpoints_loadable(tmp_path):
    run = tmp_path / "run"
    args = ["--task", TASK, *set_args(settings(run, **RUN, **{"checkpoint.every_n_steps": 5}))]
    p = run_cli(args, env=cli_env(RT_SIGNAL_AT_STEP="13", RT_SIGNAL_TIMES="2"), timeout=120)
    assert p.returncode == 143, p.stderr[-2000:]
    assert "SIGTERM again: exiting now" in p.stderr
    assert [ckpt_step(c) for c in checkpoints(run)] == [5, 10]  # no save at 13: it exited at once
    assert load_state(checkpoints(run)[-1])["progress"]["global_step"] == 10
    p = run_cli([*args, "--set", "checkpoint.resume=auto"], timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert read_json(run / "summary.json")["global_step"] == 32


@pytest.mark.timeout(300)
def test_spawn_sigterm_to_the_parent_stops_both_workers_at_one_step(tmp_path):
    spawn = {**RUN, "distributed.launcher": "spawn", "distributed.num_workers": 2, "distributed.backend": "gloo",
             "training.batch_size": 8}
    ref = tmp_path / "ref"
    p = run_cli(["--task", TASK, *set_args(settings(ref, **spawn))], timeout=200)
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "run"
    args = ["--task", TASK, *set_args(settings(run, **spawn))]
    # Rank 1 signals the parent (as Kubernetes signals a pod's main process); the parent passes it on.
    p = run_cli(args, env=cli_env(RT_SIGNAL_AT_STEP="5", RT_SIGNAL_RANK="1", RT_SIGNAL_TARGET="parent"), timeout=200)
    assert p.returncode == 143, p.stderr[-2000:]
    summary = read_json(run / "summary.json")
    stopped = summary["global_step"]
    assert summary["interrupted"] == "SIGTERM" and 5 <= stopped < 32
    assert [ckpt_step(c) for c in checkpoints(run)] == [stopped]  # both ranks stopped at the saved step
    p = run_cli([*args, "--set", "checkpoint.resume=auto"], timeout=200)
    assert p.returncode == 0, p.stderr[-2000:]
    assert_same_state(final_state(ref), final_state(run))


def test_a_preemption_notice_saves_once_at_the_next_step_and_training_goes_on(tmp_path):
    from raytrain_llm.core import interruption

    seen = []

    def notice() -> bool:  # a launcher's notice source (Ray's drain notice), asked at each step boundary
        seen.append(1)
        return len(seen) >= 7

    interruption.watch_notice(notice)
    try:
        train(tmp_path / "run", task=TASK, **RUN)
    finally:
        interruption.watch_notice(None)
    # Step 7's save is the notice's own (no periodic saves); the run went on to its end.
    assert [ckpt_step(c) for c in checkpoints(tmp_path / "run")] == [7, 16, 32]
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["global_step"] == 32 and summary["interrupted"] is None
    train(tmp_path / "ref", task=TASK, **RUN)
    assert_same_state(final_state(tmp_path / "ref"), final_state(tmp_path / "run"))


@pytest.mark.timeout(180)
def test_a_signal_after_the_last_step_leaves_a_finished_run_exit_0(tmp_path):
    # The run ends, then SIGTERM arrives (its callbacks are done): nothing was interrupted.
    p = run_cli(["--task", TASK, *set_args(settings(tmp_path, **RUN))], env=cli_env(RT_SIGNAL_AT_END="1"),
                timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "SIGTERM received" in p.stderr and "interrupted by" not in p.stderr
    summary = read_json(tmp_path / "summary.json")
    assert summary["global_step"] == 32 and summary["interrupted"] is None


@pytest.mark.timeout(300)
def test_spawn_ctrl_c_to_the_parent_is_recorded_as_sigint_and_exits_130(tmp_path):
    spawn = {**RUN, "distributed.launcher": "spawn", "distributed.num_workers": 2, "distributed.backend": "gloo",
             "training.batch_size": 8}
    run = tmp_path / "run"
    # The parent passes the user's Ctrl-C on to its workers as SIGTERM; the run still records SIGINT.
    p = run_cli(["--task", TASK, *set_args(settings(run, **spawn))],
                env=cli_env(RT_SIGNAL_AT_STEP="5", RT_SIGNAL="INT", RT_SIGNAL_TARGET="parent"), timeout=200)
    assert p.returncode == 130, p.stderr[-2000:]
    assert "interrupted by SIGINT" in p.stderr
    summary = read_json(run / "summary.json")
    assert summary["interrupted"] == "SIGINT" and 5 <= summary["global_step"] < 32
    assert [ckpt_step(c) for c in checkpoints(run)] == [summary["global_step"]]
