"""A Train run on a Ray this process started: Ray's callbacks, but no placement-group cleaner,
and no dashboard unless asked."""
from __future__ import annotations

import pytest

from ray_testing import ray_config


@pytest.mark.timeout(60)
def test_a_private_cluster_trainer_has_rays_callbacks_but_the_placement_group_cleaner(tmp_path, ray_local):
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from raytrain_llm.launchers.ray_train.private_cluster import PrivateClusterTorchTrainer

    kwargs = dict(scaling_config=ray.train.ScalingConfig(num_workers=1),
                  run_config=ray.train.RunConfig(name="private", storage_path=str(tmp_path)))
    rays = [type(c) for c in TorchTrainer(lambda: None, **kwargs)._create_default_callbacks()]
    ours = [type(c) for c in PrivateClusterTorchTrainer(lambda: None, **kwargs)._create_default_callbacks()]
    assert PlacementGroupCleanerCallback in rays  # what the subclass exists to leave out
    assert ours == [c for c in rays if c is not PlacementGroupCleanerCallback]


@pytest.mark.timeout(60)
def test_build_trainer_uses_the_private_cluster_trainer_only_when_asked(tmp_path, ray_local):
    from raytrain_llm.launchers.ray_train.private_cluster import PrivateClusterTorchTrainer
    from raytrain_llm.launchers.ray_train.trainer import build_trainer

    assert isinstance(build_trainer(ray_config(tmp_path), private_cluster=True), PrivateClusterTorchTrainer)
    assert not isinstance(build_trainer(ray_config(tmp_path)), PrivateClusterTorchTrainer)


def test_the_dashboard_is_off_by_default_and_a_setting(tmp_path):
    assert ray_config(tmp_path).distributed.dashboard is False
    assert ray_config(tmp_path, distributed__dashboard=True).distributed.dashboard is True


@pytest.mark.timeout(60)
def test_the_driver_starts_ray_datas_autoscaling_coordinator_that_trains_controller_asks_for(ray_local):
    import time

    import ray
    from raytrain_llm.launchers.ray_train.private_cluster import start_autoscaling_coordinator

    named = dict(name="AutoscalingCoordinator", namespace="AutoscalingCoordinator")  # what Ray Data gets or creates

    def running():
        try:
            return ray.get_actor(**named)
        except ValueError:
            return None

    if (earlier := running()) is not None:  # an earlier test's run made it: start from none
        ray.kill(earlier, no_restart=True)
        deadline = time.monotonic() + 30
        while running() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    assert running() is None
    start_autoscaling_coordinator()
    actor = running()
    assert actor is not None
    ray.get(actor.__ray_ready__.remote(), timeout=30)
