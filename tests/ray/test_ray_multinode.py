"""Two Ray nodes (two raylets on this machine), one worker each: same result as two workers on one node.

Train derives node_rank/local_rank from the IP, which both nodes share here, so the spread is
checked by node id (see the Ray field notes).
"""
from __future__ import annotations

import json

import pytest
import torch

from ray_testing import final_params, fit, ray_config


@pytest.mark.timeout(300)
def test_two_nodes_match_one_node(tmp_path, reference_2w):
    from ray.cluster_utils import Cluster

    import ray

    ray.shutdown()  # leave the shared session; the next test that needs it starts it again
    # 2 logical CPUs per node: 0.5 for the worker, the rest for Ray Data tasks (which take 1 CPU each).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        config = ray_config(tmp_path, distributed__placement_strategy="STRICT_SPREAD")
        result, resolved = fit(config)
        assert result.metrics["step"] == 10.0
        placements = [json.loads((tmp_path / "run" / "logs" / f"ray_worker_rank{r}.json").read_text())
                      for r in (0, 1)]
        assert placements[0]["node_id"] != placements[1]["node_id"], placements
        params, ref = final_params(resolved), reference_2w["params"]
        for k in ref:
            assert torch.equal(params[k], ref[k]), f"{k} differs between 2 nodes and 1 node"
    finally:
        ray.shutdown()
        cluster.shutdown()
