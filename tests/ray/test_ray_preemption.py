"""Preemption drill on two Ray nodes: the node holding a worker is drained with reason PREEMPTION
(what the autoscaler and KubeRay do before a spot node is reclaimed), then removed. The run saves a
checkpoint at the step boundary after the notice, trains on, is restarted by Ray when the node goes
(a preemption restart: max_failures is 0), resumes from that checkpoint and ends with the weights
of an uninterrupted run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ray_testing import TESTS_DIR, final_params, fit, ray_config

RAY = str(Path(sys.executable).parent / "ray")


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.2)


# Written but never run to its end here: the shared Ray lock was held until the deadline (issue 20).
# Remove the skip after one passing run (tests/rt_helpers.py:PreemptionDrillTask drives it).
@pytest.mark.skip(reason="preemption drill not yet verified on this machine; run it once, then drop this skip")
@pytest.mark.timeout(400)
def test_a_drained_node_gets_a_checkpoint_and_the_restart_loses_nothing(tmp_path, reference_2w, monkeypatch):
    from ray.cluster_utils import Cluster

    import ray

    ray.shutdown()  # leave the shared session; the next test that needs it starts it again
    monkeypatch.setenv("RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", "0.2")  # inherited by the nodes started here
    release = tmp_path / "node-removed"
    monkeypatch.setenv("RT_NOTICE_STEP", "5")
    monkeypatch.setenv("RT_HOLD_STEP", "7")
    monkeypatch.setenv("RT_RELEASE", str(release))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    result = {}
    try:
        spot = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", runtime_env={"env_vars": {
            "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}})
        # No periodic saves: only the notice's own checkpoint lies between the start and epoch 0's end (step 8).
        config = ray_config(tmp_path, task="rt_helpers:PreemptionDrillTask",
                            distributed__placement_strategy="STRICT_SPREAD", checkpoint__every_n_steps=0)
        import threading

        logs = tmp_path / "run" / "logs"
        problems = []

        def drill() -> None:  # beside the driver's fit(), which runs on this (the main) thread
            try:
                for rank in (0, 1):
                    _wait_for(logs / f"ray_worker_rank{rank}.json", 200)
                on_spot = [json.loads((logs / f"ray_worker_rank{r}.json").read_text())["node_id"] == spot.node_id
                           for r in (0, 1)]
                assert sum(on_spot) == 1, "STRICT_SPREAD put no worker on the node to drain"
                drain = subprocess.run(
                    [RAY, "drain-node", "--address", cluster.address, "--node-id", spot.node_id,
                     "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim drill",
                     "--deadline-remaining-seconds", "120"], capture_output=True, text=True, timeout=60)
                assert drain.returncode == 0, drain.stderr[-2000:]
                _wait_for(tmp_path / "run" / "checkpoints" / "step-00000005", 120)  # the just-in-time save
                cluster.add_node(num_cpus=2)  # the replacement, for the restarted group
                cluster.remove_node(spot, allow_graceful=False)  # the spot node goes
            except BaseException as exc:  # noqa: BLE001 - reported by the test below
                problems.append(exc)
            finally:
                release.write_text("removed")

        runner = threading.Thread(target=drill, daemon=True)
        runner.start()
        result["result"], result["resolved"] = fit(config)
        runner.join(timeout=60)
        assert not problems, problems
        assert result["result"].error is None and result["result"].metrics["step"] == 10.0
        rank0 = (logs / "rank0.log").read_text()
        assert "preemption notice: saving a checkpoint at step 5" in rank0
        assert "at step 5 (epoch 0, batch 5)" in rank0, rank0[-3000:]  # the restart resumed from it
        params, ref = final_params(result["resolved"]), reference_2w["params"]
        for k in ref:
            assert torch.equal(params[k], ref[k]), f"{k} differs from the uninterrupted run"
    finally:
        release.write_text("done")  # never leave a worker holding
        ray.shutdown()
        cluster.shutdown()
