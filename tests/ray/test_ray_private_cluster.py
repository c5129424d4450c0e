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


# The named detached actors Ray Data gets or creates: Train's controller asks for the first
# before placing the workers, the first read of a dataset for the second.
RAY_DATA_ACTORS = {"autoscaling coordinator": dict(name="AutoscalingCoordinator", namespace="AutoscalingCoordinator"),
                   "stats actor": dict(name="datasets_stats_actor", namespace="_dataset_stats_actor")}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", sorted(RAY_DATA_ACTORS))
def test_the_driver_starts_the_named_actors_that_ray_data_would_create_on_the_critical_path(ray_local, which):
    import time

    import ray
    from raytrain_llm.launchers.ray_train.private_cluster import start_ray_data_actors

    named = RAY_DATA_ACTORS[which]

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
    start_ray_data_actors()
    actor = running()
    assert actor is not None
    ray.get(actor.__ray_ready__.remote(), timeout=30)
