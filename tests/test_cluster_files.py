"""The cluster set-ups give every Ray process the auth token and fence the Kubernetes cluster in."""
from __future__ import annotations

from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"


def test_rayjob_takes_the_token_from_a_secret_and_admits_only_its_own_pods():
    job, policy = yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text())
    spec = job["spec"]
    templates = [spec["submitterPodTemplate"], spec["rayClusterSpec"]["headGroupSpec"]["template"],
                 *[g["template"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]]]
    labels = policy["spec"]["podSelector"]["matchLabels"]
    for template in templates:
        assert labels.items() <= template["metadata"]["labels"].items()  # the policy covers the pod
        for container in template["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "raytrain-ray-auth"
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    own, operator = policy["spec"]["ingress"]
    assert own["from"] == [{"podSelector": {"matchLabels": labels}}]
    assert operator["ports"] == [{"protocol": "TCP", "port": 8265}]


def test_ray_up_gives_worker_nodes_the_token_owner_only():
    config = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    assert config["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("chmod 600 ~/.ray/auth_token" in c for c in config["setup_commands"])
    for command in config["head_start_ray_commands"][-1:] + config["worker_start_ray_commands"][-1:]:
        assert "RAY_AUTH_MODE=token" in command
