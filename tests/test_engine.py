"""Engine numbers: convergence to the noise floor, accumulation, exact resume after a real kill,
NaN policies, and a 2-process gloo run equal to one process at double batch size."""
from __future__ import annotations

import json
import math
import signal
import socket

import pytest
import torch

from raytrain_llm.core.errors import TrainingError
from rt_testing import (
    checkpoints,
    ckpt_step,
    cli_env,
    final_state,
    load_state,
    make_config,
    read_json,
    read_jsonl,
    run_cli,
    set_args,
    settings,
    train,
)


def assert_same_params(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


# ----------------------------------------------------------------------------- learning
def test_regression_reaches_noise_floor(tmp_path):
    # The optimum MSE is noise_std² (the teacher network is exactly representable in shape, only
    # the label noise is irreducible). A large noise (0.3) on a 4-d input keeps the approximation
    # error small next to the floor, so 128 steps (~1s) get within ~1.2x; 1.35x leaves room for
    # run-to-run noise while a model that learned nothing sits at ~7x (the loss of predicting 0).
    noise = 0.3
    result, _ = train(tmp_path, **{"training.epochs": 4, "training.lr": 1e-2, "data.num_train_samples": 1024,
                                   "data.num_val_samples": 1024, "model.hidden_dim": 32, "model.input_dim": 4,
                                   "data.noise_std": noise, "training.batch_size": 32,
                                   "checkpoint.enabled": False})
    floor = noise ** 2
    val = result["val"]["val/loss"]
    assert 0.85 * floor < val < 1.35 * floor, val / floor
    first = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert first["split"] == "train" and first["loss"] > 3 * floor  # it really learned


def test_grad_accumulation_equals_big_batch(tmp_path):
    common = {"training.grad_clip": 0, "model.dropout": 0.0, "training.epochs": 2, "training.lr": 1e-2,
              "data.num_train_samples": 256}
    train(tmp_path / "big", **common, **{"training.batch_size": 32, "training.grad_accum_steps": 1})
    train(tmp_path / "acc", **common, **{"training.batch_size": 8, "training.grad_accum_steps": 4})
    big, acc = final_state(tmp_path / "big"), final_state(tmp_path / "acc")
    assert big["progress"]["global_step"] == acc["progress"]["global_step"] == 16
    assert_same_params(big["model"], acc["model"], atol=1e-6)
    # Not vacuous: the weights moved far more than the tolerance.
    moved = max((v.float() - load_state(checkpoints(tmp_path / "big")[0])["model"][k].float()).abs().max()
                for k, v in big["model"].items())
    assert moved > 1e-4


# ----------------------------------------------------------------------------- resume
RESUME = {"training.epochs": 2, "checkpoint.every_n_steps": 5, "checkpoint.keep_last": 10,
          "training.lr_schedule": "cosine", "training.warmup_steps": 3}  # 16 steps/epoch, 32 in all


@pytest.mark.timeout(180)
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    train(ref, task="rt_helpers:KillAtStepTask", **RESUME)

    run = tmp_path / "killed"
    # Validation every 4 steps and TensorBoard on: neither may change the training run.
    s = settings(run, **RESUME, **{"training.val_every_n_steps": 4, "logging.tensorboard": True})
    args = ["--task", "rt_helpers:KillAtStepTask", *set_args(s)]
    p = run_cli(args, env=cli_env(RT_KILL_AT_STEP="13"), timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert [ckpt_step(c) for c in checkpoints(run)] == [5, 10]  # killed after step 13, mid-epoch 0
    # What TensorBoard had at the kill: every record metrics.jsonl had (written as logged;
    # tensorboardX's queued writer lost the last validation and held the rest for up to 2 minutes).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [4, 8, 12]
    logged = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]
    assert [e.step for e in events.Scalars("train/loss")] == logged == list(range(1, 13))

    p = run_cli([*args, "--set", "checkpoint.resume=auto"], timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resumed from" in p.stderr and "step 10 (epoch 1, batch 10)" in p.stderr
    # Steps 11 and 12 were logged before the kill and again after the resume: TensorBoard shows
    # each step once (the resumed run voids the old events past its checkpoint), as metrics.jsonl.
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 33))
    assert [e.step for e in events.Scalars("val/loss")] == [4, 8, 12, 16, 20, 24, 28, 32]

    a, b = final_state(ref), final_state(run)
    assert a["progress"] == b["progress"] and a["progress"]["global_step"] == 32
    assert_same_params(a["model"], b["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 32
    # Every step is logged exactly once across the kill.
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]
    assert steps == list(range(1, 33))
    assert read_json(run / "summary.json")["global_step"] == 32


def test_max_steps_stop_then_resume_auto_matches_uninterrupted(tmp_path):
    # A constant LR: max_steps shortens the schedule by design, so only then are the runs comparable.
    common = {**RESUME, "training.lr_schedule": "constant", "training.warmup_steps": 0}
    train(tmp_path / "ref", **common)
    run = tmp_path / "split"
    r1, _ = train(run, **common, **{"training.max_steps": 21})  # stops 5 batches into epoch 1
    assert r1["step"] == 21 and ckpt_step(checkpoints(run)[-1]) == 21
    mid = load_state(checkpoints(run)[-1])["progress"]
    assert (mid["epoch"], mid["batch_in_epoch"]) == (1, 5)
    r2, _ = train(run, **common, **{"checkpoint.resume": "auto"})
    assert r2["step"] == 32
    assert_same_params(final_state(tmp_path / "ref")["model"], final_state(run)["model"])


def test_resume_with_more_epochs_follows_the_new_lr_schedule(tmp_path):
    # The checkpoint's schedule decays over 1 epoch; resumed with 2 epochs, the LR must follow
    # the 2-epoch cosine from the resume point on, as an uninterrupted 2-epoch run's does.
    common = {"training.lr_schedule": "cosine", "training.warmup_steps": 3}
    train(tmp_path / "ref", **common, **{"training.epochs": 2})
    run = tmp_path / "extended"
    train(run, **common, **{"training.epochs": 1})
    r2, _ = train(run, **common, **{"training.epochs": 2, "checkpoint.resume": "auto"})
    assert r2["step"] == 32
    lr = {name: {r["step"]: r["lr"] for r in read_jsonl(tmp_path / name / "metrics.jsonl") if "lr" in r}
          for name in ("ref", "extended")}
    after = [s for s in lr["ref"] if s > 16]
    assert len(after) == 16 and lr["extended"][16] < lr["ref"][16]  # the 1-epoch run had decayed
    for s in after:
        assert lr["extended"][s] == pytest.approx(lr["ref"][s], rel=1e-12), s
    assert lr["extended"][32] == pytest.approx(lr["ref"][32]) and lr["ref"][32] < lr["ref"][17]


def test_resume_with_another_lr_and_weight_decay_follows_the_config(tmp_path):
    common = {"training.lr_schedule": "constant", "training.warmup_steps": 0}
    train(tmp_path, **common, **{"training.lr": 0.001})
    r2, _ = train(tmp_path, **common, **{"training.epochs": 2, "training.lr": 0.01, "training.weight_decay": 0.3,
                                         "checkpoint.resume": "auto"})
    assert r2["step"] == 32
    lr = {r["step"]: r["lr"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"}
    assert all(lr[s] == 0.001 for s in range(1, 17)) and all(lr[s] == 0.01 for s in range(17, 33))
    groups = final_state(tmp_path)["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.3, 0.0]  # norms and biases stay undecayed
    log = (tmp_path / "logs" / "rank0.log").read_text()
    assert "optimizer settings follow this run's config, not the checkpoint's: weight_decay, lr changed" in log


@pytest.mark.parametrize("new_batch, steps_after, repeated", [(32, 7, 16), (8, 26, 0)])
def test_resume_with_another_batch_size_goes_on_from_the_same_sample(tmp_path, new_batch, steps_after, repeated):
    # 3 steps of 16 trained the epoch order's first 48 samples. At batch 32 the epoch goes on
    # from sample 32 (16 of them again, never skipping any); at batch 8 from sample 48, exactly.
    common = {"training.lr_schedule": "constant", "training.warmup_steps": 0}
    train(tmp_path, **common, **{"training.max_steps": 3})
    r2, _ = train(tmp_path, **common, **{"training.batch_size": new_batch, "checkpoint.resume": "auto"})
    assert r2["step"] == 3 + steps_after  # 256 samples: the rest of epoch 0 at the new batch
    log = (tmp_path / "logs" / "rank0.log").read_text()
    sample = 48 - repeated
    assert f"changed from 16 to {new_batch}: epoch 1 goes on after sample {sample} of its order" in log
    assert (f"; {repeated} samples already trained on in this epoch are seen again" in log) == bool(repeated)
    # The run is as long as the steps done plus those left at the new batch, and so is the schedule.
    assert f"on cpu x1, {3 + steps_after} steps" in log.split("goes on after sample")[1]
    assert f"decay over {3 + steps_after} steps" in log


# ----------------------------------------------------------------------------- NaN
@pytest.mark.timeout(120)
def test_nan_stop_exits_1_and_never_saves_bad_state(tmp_path):
    s = settings(tmp_path, **{"checkpoint.every_n_steps": 2, "checkpoint.keep_last": 100,
                              "training.nan_policy": "stop"})
    p = run_cli(["--task", "rt_helpers:NaNAtStepTask", *set_args(s)], env=cli_env(RT_NAN_AT_CALLS="7"), timeout=90)
    assert p.returncode == 1, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite loss") and "step 7" in last, last
    steps = [ckpt_step(c) for c in checkpoints(tmp_path)]
    assert steps == [2, 4, 6]  # nothing at or after the bad step
    for c in checkpoints(tmp_path):
        state = load_state(c)
        assert all(torch.isfinite(v).all() for v in state["model"].values())
        for group in state["optimizer"]["state"].values():
            assert all(torch.isfinite(v).all() for v in group.values() if torch.is_tensor(v))
    assert not (tmp_path / "summary.json").exists()


def test_nan_skip_continues_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("RT_NAN_AT_CALLS", "3,7")
    result, _ = train(tmp_path, task="rt_helpers:NaNAtStepTask", **{"training.nan_policy": "skip"})
    assert result["step"] == 16 and math.isfinite(result["val"]["val/loss"])
    summary = read_json(tmp_path / "summary.json")
    assert summary["skipped_steps"] == 2 and summary["global_step"] == 16
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert records[-1]["skipped_steps"] == 2
    # Skipped steps log no train record, and their NaN never reaches a logged average.
    assert [r["step"] for r in records][:8] == [1, 2, 4, 5, 6, 8, 9, 10]
    assert [r.get("skipped_steps", 0) for r in records][:6] == [0, 0, 1, 1, 1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    state = final_state(tmp_path)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    # A skipped step leaves the optimizer untouched: Adam counted only the 14 good steps.
    assert all(int(g["step"]) == 14 for g in state["optimizer"]["state"].values())


def test_nan_skip_ends_a_run_that_only_skips(tmp_path, monkeypatch):
    # Steps 3-4 skip (2 in a row, under the limit of 3); from step 9 on every step would skip:
    # the third in a row, step 11, ends the run.
    monkeypatch.setenv("RT_NAN_AT_CALLS", ",".join(map(str, [3, 4, *range(9, 17)])))
    with pytest.raises(TrainingError, match=r"^3 steps in a row had a non-finite loss or gradient, the last at "
                                            r"step 11 \(epoch 1, batch 10\): the run has diverged \(training."
                                            r"max_consecutive_skips=3\)"):
        train(tmp_path, task="rt_helpers:NaNAtStepTask", **{"training.nan_policy": "skip",
                                                             "training.max_consecutive_skips": 3,
                                                             "checkpoint.every_n_steps": 2})
    assert [ckpt_step(c) for c in checkpoints(tmp_path)][-1] == 10  # finite: skipped steps leave the weights


# ----------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(240)
def test_spawn_two_gloo_workers_equal_one_worker_at_double_batch(tmp_path):
    # 8 validation samples: rank 1 gets no validation batch at all, and must still join the
    # reduction (it used to reduce a shorter vector and hang the run).
    common = {"training.epochs": 2, "model.dropout": 0.0, "training.lr": 1e-2, "data.num_train_samples": 256,
              "data.num_val_samples": 8}
    train(tmp_path / "one", **common, **{"training.batch_size": 16})
    s = settings(tmp_path / "two", **common, **{"training.batch_size": 8, "distributed.launcher": "spawn",
                                                 "distributed.num_workers": 2, "distributed.backend": "gloo",
                                                 "distributed.master_port": _free_port()})
    p = run_cli(set_args(s), timeout=200)
    assert p.returncode == 0, p.stderr[-3000:]
    one, two = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    assert two["progress"]["world_size"] == 2 and one["progress"]["global_step"] == two["progress"]["global_step"] == 32
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in two["model"])
    assert_same_params(one["model"], two["model"], atol=1e-5)
    assert len(two["rng"]) == 2  # both ranks' RNG streams are saved
    v1 = read_json(tmp_path / "one" / "summary.json")["final"]["val"]["val/loss"]
    v2 = read_json(tmp_path / "two" / "summary.json")["final"]["val"]["val/loss"]
    assert v1 == pytest.approx(v2, rel=1e-4)
    printed = json.loads(p.stdout.strip().splitlines()[-1].partition("result: ")[2])
    assert set(printed["val"]) == {"val/loss", "val/mae"}  # the in-process result's shape
    assert printed["best_checkpoint"].startswith(str(tmp_path / "two" / "checkpoints" / "step-"))


def test_a_usage_error_at_start_is_raised_on_every_rank(tmp_path):
    from raytrain_llm.core.errors import UsageError

    with pytest.raises(UsageError, match="checkpoint.resume: no checkpoint at") as info:
        train(tmp_path, **{"checkpoint.resume": str(tmp_path / "missing")})
    assert info.value.on_every_rank  # what lets the Ray launcher end the run without a "crash"


@pytest.mark.timeout(200)
def test_spawn_stop_asked_by_one_rank_on_a_saving_step_stops_both(tmp_path):
    # Whether to save must not depend on should_stop before the ranks have shared it: rank 0
    # would skip the save's collective while rank 1 entered it, and the run would hang.
    s = settings(tmp_path, **{"distributed.launcher": "spawn", "distributed.num_workers": 2,
                              "distributed.backend": "gloo", "checkpoint.every_n_steps": 2})
    p = run_cli(["--task", "rt_helpers:StopOnRank0Task", *set_args(s)], timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1].partition("result: ")[2])["step"] == 2
    assert [ckpt_step(c) for c in checkpoints(tmp_path)] == [2]


@pytest.mark.timeout(200)
def test_spawn_usage_error_in_a_worker_exits_2(tmp_path):
    s = settings(tmp_path, **{"distributed.launcher": "spawn", "distributed.num_workers": 2,
                              "distributed.backend": "gloo", "distributed.master_port": _free_port(),
                              "checkpoint.resume": str(tmp_path / "no-such-checkpoint")})
    p = run_cli(set_args(s), timeout=180)
    assert p.returncode == 2, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: checkpoint.resume: no checkpoint at"), last
    assert "Traceback" not in p.stderr and "Terminating process" not in p.stderr


def test_spawn_on_a_master_port_in_use_is_a_usage_error_before_workers_start(tmp_path):
    import socket

    from raytrain_llm.core.errors import UsageError
    from raytrain_llm.launchers.local.spawn import run_spawn

    with socket.socket() as held:  # another process's server on that port
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        cfg = make_config(tmp_path, **{"distributed.launcher": "spawn", "distributed.num_workers": 2,
                                       "distributed.master_port": port})
        with pytest.raises(UsageError, match=rf"^distributed.master_port: 127.0.0.1:{port} cannot be used "
                                             r"\(Address already in use\); pick another port, or 0"):
            run_spawn(cfg)
    assert not (tmp_path / "logs").exists()  # no worker started


def test_a_run_with_nothing_to_train_or_a_warmup_past_its_end_says_so(tmp_path):
    train(tmp_path, **{"training.max_steps": 6})
    result, _ = train(tmp_path, **{"checkpoint.resume": "auto", "training.max_steps": 4})
    assert result["step"] == 6
    log = (tmp_path / "logs" / "rank0.log").read_text()
    assert ("nothing to train: resumed at step 6 (epoch 1), where a run of training.epochs=1, "
            "training.max_steps=4 ends; raise them to train on") in log
    train(tmp_path / "warm", **{"training.max_steps": 5, "training.warmup_steps": 50})
    log = (tmp_path / "warm" / "logs" / "rank0.log").read_text()
    assert "training.warmup_steps=50 is not shorter than the run (5 steps): the LR never reaches training.lr" in log
