"""FSDP under Ray Train: Ray makes the process group, the engine shards; a worker SIGKILLed
mid-run is restarted from the reported sharded checkpoint and the run ends bit-identical."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from ray_testing import fit, ray_config
from raytrain_llm.core.checkpointing import CheckpointManager
from raytrain_llm.core.sharded.checkpoint import load_model_and_optimizer
from raytrain_llm.launchers.ray_train.checkpoint_pointer import resolve


def sharded_weights(config) -> dict[str, torch.Tensor]:
    """The newest engine checkpoint's weights, read into a whole model in this process."""
    from raytrain_llm.tasks.regression_task import RegressionTask

    path = CheckpointManager(config.checkpoint_dir, is_main=False).latest_path()
    state = CheckpointManager.load(path)
    assert state["format"] == "sharded" and state["model"] is None
    task = RegressionTask(dataclasses.replace(config, task_options={}))  # KillRankTask's options aside
    model = task.build_model()
    load_model_and_optimizer(state, model, task.build_optimizer(model))
    return model.state_dict()


@pytest.mark.slow  # two Ray fits (reference and killed): 56-93 s in all on the shared 2-core machine
@pytest.mark.timeout(300)
def test_killed_worker_under_fsdp_restarts_and_matches_uninterrupted_run(tmp_path, ray_local):
    reference, ref_config = fit(ray_config(tmp_path / "ref", distributed__strategy="fsdp"))
    assert reference.error is None
    # The checkpoint Ray holds (a pointer to the engine's folder, with Ray's storage in the run's
    # folder: checkpoints are stored once) has every rank's shards.
    reported = resolve(reference.checkpoint.path)
    assert sorted(os.listdir(os.path.join(reported, "sharded"))) == [".metadata", "__0_0.distcp", "__1_0.distcp"]

    marker = tmp_path / "kills.txt"
    config = ray_config(tmp_path / "kill", task="rt_helpers:KillRankTask", distributed__strategy="fsdp",
                        distributed__max_failures=1, task_options__rank=1, task_options__step=9,
                        task_options__marker=marker, task_options__times=1)
    result, resolved = fit(config)
    assert len(marker.read_text().split()) == 1, "the fault was not injected"
    assert result.error is None and result.metrics["step"] == 10.0
    mine, ref = sharded_weights(resolved), sharded_weights(ref_config)
    assert mine.keys() == ref.keys()
    for k in ref:
        assert torch.equal(mine[k], ref[k]), f"{k} differs from the uninterrupted run"
