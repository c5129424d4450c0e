"""Preemption drill on two Ray nodes: the node holding a worker is drained with reason PREEMPTION
(what the autoscaler and KubeRay do before a spot node is reclaimed), then removed after the drain's
deadline. The run saves a checkpoint at the step boundary after the notice, trains on, is restarted
by Ray at the deadline (a preemption restart, counted by distributed.max_preemption_failures:
max_failures is 0), resumes from that checkpoint and ends with the weights of an uninterrupted run.

Ray counts a drained node's death as a preemption only after the drain's deadline (the node's
death reason is then AUTOSCALER_DRAIN_PREEMPTED); removed before it, its workers' deaths are
plain failures."""
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
# Time from the drain to the reclaim: room for the notice's save and the replacement node to start.
DRAIN_DEADLINE_S = 15


@pytest.mark.timeout(360)  # with the shared reference run, on a loaded 2-core machine
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
                            distributed__placement_strategy="STRICT_SPREAD", checkpoint__every_n_steps=0,
                            distributed__max_preemption_failures=1)
        import threading

        logs = tmp_path / "run" / "logs"

        def train() -> None:  # on a thread: the drill adds and removes nodes, which Ray does on the main thread
            try:
                result["result"], result["resolved"] = fit(config)
            except BaseException as exc:  # noqa: BLE001 - raised again below
                result["error"] = exc

        def wait_for(path: Path, timeout: float) -> None:
            deadline = time.time() + timeout
            while not path.exists():
                assert "error" not in result and trainer.is_alive(), result.get("error")
                assert time.time() < deadline, f"{path} did not appear"
                time.sleep(0.2)

        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        try:
            for rank in (0, 1):
                wait_for(logs / f"ray_worker_rank{rank}.json", 90)
            on_spot = [json.loads((logs / f"ray_worker_rank{r}.json").read_text())["node_id"] == spot.node_id
                       for r in (0, 1)]
            assert sum(on_spot) == 1, "STRICT_SPREAD put no worker on the node to drain"
            # Drained once the ranks finished step 5: a notice before would be acted on earlier.
            wait_for(Path(f"{release}.at-notice-step"), 90)
            drain = subprocess.run(
                [RAY, "drain-node", "--address", cluster.address, "--node-id", spot.node_id,
                 "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim drill",
                 "--deadline-remaining-seconds", str(DRAIN_DEADLINE_S)], capture_output=True, text=True, timeout=60)
            assert drain.returncode == 0, drain.stderr[-2000:]
            reclaim_at = time.time() + DRAIN_DEADLINE_S
            wait_for(tmp_path / "run" / "checkpoints" / "step-00000005", 60)  # the just-in-time save
            cluster.add_node(num_cpus=2)  # the replacement, for the restarted group
            # At the deadline Ray restarts the group (the ranks hold at step 7 meanwhile); the spot node
            # goes after it, as a cloud reclaims it: Ray counts its workers' deaths as a preemption's.
            time.sleep(max(0.0, reclaim_at + 1 - time.time()))
            cluster.remove_node(spot, allow_graceful=False)
        finally:
            release.write_text("removed")
        trainer.join(timeout=150)
        assert not trainer.is_alive(), "the run did not end within 150 s of the node's removal"
        if "error" in result:
            raise result["error"]
        assert result["result"].error is None and result["result"].metrics["step"] == 10.0
        rank0 = (logs / "rank0.log").read_text()
        assert "preemption notice: saving a checkpoint at step 5" in rank0
        assert "at step 5 (epoch 1, batch 5)" in rank0, rank0[-3000:]  # the restart resumed from it
        # Nothing up to the notice step was trained twice: its train records were logged once.
        records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        upto_notice = [r["step"] for r in records if r.get("split") == "train" and r["step"] <= 5]
        assert upto_notice == sorted(set(upto_notice)) and upto_notice[-1] == 5, upto_notice
        params, ref = final_params(result["resolved"]), reference_2w["params"]
        for k in ref:
            assert torch.equal(params[k], ref[k]), f"{k} differs from the uninterrupted run"
    finally:
        release.write_text("done")  # never leave a worker holding
        ray.shutdown()
        cluster.shutdown()
