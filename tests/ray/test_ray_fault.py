"""Fault tolerance for real: a worker SIGKILLed mid-run is restarted by Ray and the run ends bit-identical."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from ray_testing import final_params, fit, ray_config
from raytrain_llm.core.checkpointing import CheckpointManager
from raytrain_llm.core.errors import TrainingError


@pytest.mark.timeout(300)
def test_killed_worker_restarts_and_matches_uninterrupted_run(tmp_path, ray_local, reference_2w):
    marker = tmp_path / "kills.txt"
    # Rank 1 dies right after step 9, the first step of epoch 1: the last checkpoint is step 8 (end of
    # epoch 0), so the restarted workers skip all of epoch 0 in their Ray Data stream and redo step 9.
    config = ray_config(tmp_path, task="rt_helpers:KillRankTask", distributed__max_failures=1,
                        task_options__rank=1, task_options__step=9, task_options__marker=marker, task_options__times=1)
    result, resolved = fit(config)
    assert len(marker.read_text().split()) == 1, "the fault was not injected"
    assert result.error is None and result.metrics["step"] == 10.0
    # Stored once: Ray's run folder holds pointers to the engine's checkpoint folders, no copies,
    # and the restart above resumed through one of them.
    from raytrain_llm.launchers.ray_train.checkpoint_pointer import resolve

    ray_run = os.path.join(resolved.distributed.storage_path, resolved.distributed.run_name)
    assert not [f for _, _, files in os.walk(ray_run) for f in files if f == "state.pt"]
    newest = CheckpointManager(resolved.checkpoint_dir, is_main=False).latest_path()
    assert resolve(result.checkpoint.path) == newest and result.checkpoint.path.startswith(ray_run)
    params = final_params(resolved)
    ref = reference_2w["params"]
    for k in ref:
        assert torch.equal(params[k], ref[k]), f"{k} differs from the uninterrupted run"
    # Every logged step appears once in metrics.jsonl (the records of the killed attempt after step 8
    # were dropped, step 10 logged by the restarted one), with the uninterrupted run's values.
    import json

    def records(config):
        with open(os.path.join(config.logging.dir, "metrics.jsonl")) as fh:
            return [json.loads(line) for line in fh]

    got, want = records(resolved), records(reference_2w["config"])
    # TINY_RAY: logs and saves every 2 steps, validates every 4, at epoch 0's end (step 8) and at the end.
    assert [r["step"] for r in got if r["split"] == "train"] == [2, 4, 6, 8, 10]
    assert [r["step"] for r in got if r["split"] == "val"] == [4, 8, 10]
    assert [(r["split"], r["step"], r["epoch"]) for r in got] == [(r["split"], r["step"], r["epoch"]) for r in want]
    for mine, ref in zip(got, want):
        keys = ("loss", "mae") if ref["split"] == "train" else ("val/loss", "val/mae")
        for key in keys:
            assert mine[key] == pytest.approx(ref[key], rel=1e-6), (mine["step"], key)


@pytest.mark.timeout(300)
def test_exhausted_retries_raise_training_error_and_keep_last_checkpoint(tmp_path, ray_local):
    from raytrain_llm.launchers.ray_train.trainer import run_ray

    marker = tmp_path / "kills.txt"
    config = ray_config(tmp_path, task="rt_helpers:KillRankTask", distributed__max_failures=1,
                        task_options__rank=1, task_options__step=5, task_options__marker=marker, task_options__times=99)
    with pytest.raises(TrainingError) as info:
        run_ray(config)
    message = str(info.value)
    assert "failed after 1 restart" in message and config.distributed.run_name in message
    assert "step-00000004" in message, message
    assert len(marker.read_text().split()) == 2  # first attempt + one restart
    # The last good checkpoint is intact and loads.
    state = CheckpointManager.load(str(tmp_path / "run" / "checkpoints" / "step-00000004"))
    assert state["progress"]["global_step"] == 4
    print(message)


@pytest.mark.timeout(30)
def test_failure_message_names_the_dead_worker(tmp_path):
    from ray.exceptions import ActorDiedError
    from ray.train import WorkerGroupError

    from raytrain_llm.launchers.ray_train.results import failure_message

    config = ray_config(tmp_path, distributed__max_failures=2)
    exc = WorkerGroupError("boom", {0: RuntimeError("Connection closed by peer"), 1: ActorDiedError()})
    message = failure_message(config, exc)
    assert "failed after 2 restart(s)" in message and "worker rank 1 died" in message
    assert "Last good checkpoint: none" in message
    from ray.train import ControllerError  # not retried: no "restarts" to speak of

    message = failure_message(config, ControllerError(TypeError("unsupported operand")))
    assert "failed in Ray Train's controller" in message and "restart" not in message


class _OneRank:
    def gather_objects(self, obj):
        return [obj]


@pytest.mark.timeout(30)
def test_restart_without_ray_checkpoint_resumes_from_engine_folder(tmp_path):
    """Ray can lose a report when a worker dies within a poll interval of it; the folder still has it."""
    from raytrain_llm.core.errors import UsageError
    from raytrain_llm.launchers.ray_train.trainer import (
        _engine_checkpoint_after,
        _refuse_stale_checkpoints,
        ray_restores_run,
        resolve_paths,
    )

    config = resolve_paths(ray_config(tmp_path))
    assert not _engine_checkpoint_after(config, _OneRank(), -1)  # nothing on disk: a fresh start
    _refuse_stale_checkpoints(config, ray_restores_run(config))
    manager = CheckpointManager(config.checkpoint_dir)
    for step in (2, 4):
        manager.save({"model": {"w": torch.zeros(1)}, "optimizer": {}, "progress": {}}, step=step, epoch=0,
                     metrics={})
    assert _engine_checkpoint_after(config, _OneRank(), -1)  # no Ray checkpoint at all
    assert _engine_checkpoint_after(config, _OneRank(), 2)  # Ray's last registered report is older
    assert not _engine_checkpoint_after(config, _OneRank(), 4)  # Ray has the newest: take Ray's
    # ...while a new run (not a restart) in that folder is refused before anything starts.
    fresh = resolve_paths(ray_config(tmp_path))
    with pytest.raises(UsageError, match="already holds checkpoints"):
        _refuse_stale_checkpoints(fresh, ray_restores_run(fresh))


@pytest.mark.timeout(240)
def test_a_usage_error_in_the_workers_stays_a_usage_error(tmp_path, ray_local):
    from raytrain_llm.core.errors import UsageError
    from raytrain_llm.launchers.ray_train.trainer import build_trainer, check_result, run_ray

    # Rank 1 alone refuses to start; rank 0 must stop with it rather than wait in an all-reduce.
    # The workers return normally with the message: no failure, so no worker tracebacks and no
    # restart (max_failures=2) of a run that would fail the same way.
    config = ray_config(tmp_path, task="rt_helpers:UsageErrorOnRank1Task", distributed__max_failures=2)
    result = build_trainer(config).fit()
    assert result.error is None and result.return_value == {"usage_error": "rank 1 refuses to start"}
    with pytest.raises(UsageError, match="^rank 1 refuses to start$"):  # exit 2, its own message
        check_result(result, config)
    # A task the driver imports but the workers cannot (a cluster run without --working-dir).
    (tmp_path / "rt_driver_only.py").write_text("from rt_helpers import UsageErrorOnRank1Task as Task\n")
    sys.path.append(str(tmp_path))
    try:
        result = build_trainer(ray_config(tmp_path, task="rt_driver_only:Task")).fit()
    finally:
        sys.path.remove(str(tmp_path))
    assert result.error is None and result.return_value["usage_error"].startswith(
        "--task: cannot import 'rt_driver_only' for task 'rt_driver_only:Task': No module named")
    with pytest.raises(UsageError, match="training.batch_size: the training set is smaller than one batch"):
        run_ray(ray_config(tmp_path, training__batch_size=1000))  # refused before any worker starts


@pytest.mark.timeout(300)
def test_a_run_resumed_by_its_name_goes_on_from_its_last_report(tmp_path, ray_local):
    # Step 2 is saved without a validation (val every 4 steps): its report carries no val/loss,
    # and Ray's snapshot of the run must still load when the run name is used again.
    first = ray_config(tmp_path, training__max_steps=6)
    result, _ = fit(first)
    assert result.metrics["step"] == 6
    unscored = [m for _, m in result.best_checkpoints if "val/loss" not in m]
    assert 2 in [m["step"] for m in unscored] and all(m["checkpoint_score"] > 1e300 for m in unscored)
    again = ray_config(tmp_path, training__max_steps=10, distributed__run_name=first.distributed.run_name)
    result, resolved = fit(again)
    assert result.error is None and result.metrics["step"] == 10
    log = (tmp_path / "run" / "logs" / "rank0.log").read_text()
    # Ray's last report is a pointer to the engine's own checkpoint, which the run loads.
    resumed = log.split("resumed from ", 1)[1].splitlines()[0]
    assert resumed.startswith(f"{tmp_path / 'run' / 'checkpoints' / 'step-00000006'} at step 6"), resumed


def test_failure_lines_name_the_cause_not_rays_banner():
    from raytrain_llm.launchers.ray_train.results import exception_line

    class Wrapped(Exception):  # as RayTaskError: a coloured banner, the user's exception in .cause
        def __init__(self, text, cause=None):
            super().__init__(text)
            self.cause = cause

    banner = "\x1b[36mray::SplitCoordinator.get()\x1b[39m (pid=123, ip=10.0.0.1)"
    assert exception_line(Wrapped(banner, ValueError("token id 226 is outside"))) == "ValueError: token id 226 is outside"
    assert exception_line(Wrapped(f"{banner}\nOSError: disk full")) == "Wrapped: OSError: disk full"


@pytest.mark.timeout(300)
def test_a_resume_with_a_smaller_global_batch_reads_past_max_steps_worth_of_batches(tmp_path, ray_local):
    # 6 steps of global batch 16 = 96 samples; at global batch 8 that is batch 12 of 16, past the
    # 10 batches a max_steps=10 stream from the start would hold. Both a resumed run and a run
    # restored by its name get a stream over every epoch; one sized from the start must fail
    # loudly, not train on empty batches (NaN) or end quietly.
    from raytrain_llm.launchers.ray_train.trainer import ray_restores_run, resolve_paths, run_ray

    first = ray_config(tmp_path / "a", training__max_steps=6)
    fit(first)
    result = run_ray(ray_config(tmp_path / "a", training__max_steps=10, training__batch_size=4,
                                checkpoint__resume="auto"))
    assert result["step"] == 10
    name = first.distributed.run_name + "b"
    fit(ray_config(tmp_path / "b", training__max_steps=6, distributed__run_name=name))
    again = resolve_paths(ray_config(tmp_path / "b", training__max_steps=10, training__batch_size=4,
                                     distributed__run_name=name))
    assert ray_restores_run(again)
    assert run_ray(again)["step"] == 10
    log = (tmp_path / "b" / "run" / "logs" / "rank0.log").read_text()
    assert "at step 6" in log.split("resumed from ", 1)[1].splitlines()[0]


def test_a_restored_run_name_is_found_in_local_and_uri_storage(tmp_path):
    from raytrain_llm.launchers.ray_train.trainer import SNAPSHOT, ray_restores_run

    cfg = ray_config(tmp_path, distributed__run_name="r1", distributed__storage_path=str(tmp_path / "store"))
    uri = ray_config(tmp_path, distributed__run_name="r1", distributed__storage_path=f"file://{tmp_path}/store")
    assert not ray_restores_run(cfg) and not ray_restores_run(uri)
    (tmp_path / "store" / "r1").mkdir(parents=True)
    assert not ray_restores_run(cfg)  # a folder alone: Ray starts afresh
    (tmp_path / "store" / "r1" / SNAPSHOT).write_text("{}")
    assert ray_restores_run(cfg) and ray_restores_run(uri)
    broken = ray_config(tmp_path, distributed__run_name="r1", distributed__storage_path="nosuchscheme://x/y")
    assert not ray_restores_run(broken)


@pytest.mark.timeout(60)
def test_token_ids_are_checked_in_the_driver_before_workers_start(tmp_path):
    from raytrain_llm.core.errors import UsageError
    from raytrain_llm.launchers.ray_train.trainer import build_trainer
    from rt_testing import write_token_files_with_a_bad_id

    train, val = write_token_files_with_a_bad_id(tmp_path)
    cfg = ray_config(tmp_path, task="lm", model__vocab_size=64, model__seq_len=16,
                     data__train_tokens=train, data__val_tokens=val)
    with pytest.raises(UsageError, match=r"^data.train_tokens: token id 77 at position 1500"):
        build_trainer(cfg)  # raised before a TorchTrainer (or a Ray session) exists


@pytest.mark.timeout(60)
def test_a_dashboard_port_as_ray_address_is_named_not_waited_on(tmp_path):
    # `ray start` prints the dashboard as host:8265 without http://; ray.init would retry it for
    # minutes. Anything that answers HTTP/1 is named as the job server in seconds.
    import http.server
    import threading

    from raytrain_llm.core.errors import UsageError
    from raytrain_llm.launchers.ray_train.cluster import _check_reachable

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        with pytest.raises(UsageError, match=rf"^RAY_ADDRESS: {address} answers HTTP: it is the dashboard"):
            _check_reachable(address, "RAY_ADDRESS")
    finally:
        server.shutdown()
        server.server_close()
