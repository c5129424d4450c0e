"""SIGTERM on a Ray Train worker (its node reclaimed): the step finishes on every rank, a checkpoint
is saved and reported, and the restarted run (max_failures) goes on from it to the same weights."""
from __future__ import annotations

import os

import pytest
import torch

from ray_testing import final_params, fit, ray_config


@pytest.mark.timeout(300)
def test_sigterm_on_a_worker_saves_reports_and_the_restart_loses_nothing(tmp_path, ray_local, reference_2w):
    marker = tmp_path / "signals.txt"
    # Rank 1 gets SIGTERM after step 5 (in a callback's on_batch_end); the ranks agree on it at the
    # end of that step's turn, which no periodic save (every 2 steps) covers: only the stop's own
    # save keeps it.
    config = ray_config(tmp_path, task="rt_helpers:KillRankTask", distributed__max_failures=1,
                        task_options__rank=1, task_options__step=5, task_options__marker=marker,
                        task_options__times=1, task_options__signal="TERM")
    result, resolved = fit(config)
    assert len(marker.read_text().split()) == 1, "the signal was not sent"
    assert result.error is None and result.metrics["step"] == 10.0
    with open(os.path.join(resolved.logging.dir, "logs", "rank0.log"), encoding="utf-8") as fh:
        log = fh.read()
    assert "SIGTERM: stopping after step 5" in log
    assert "at step 5 (epoch 1, batch 5)" in log, log[-3000:]  # the restart resumed from the stop's save
    params, ref = final_params(resolved), reference_2w["params"]
    for k in ref:
        assert torch.equal(params[k], ref[k]), f"{k} differs from the uninterrupted run"
