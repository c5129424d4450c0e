"""The TorchTrainer for a Ray cluster this process started and will shut down.

Ray Train starts a detached `PlacementGroupCleaner` actor per run that asks the State API (served
by the dashboard) every second whether the controller is alive, to free the workers' placement
group if the controller dies without doing so. A private cluster dies with this process and takes
every placement group with it, so there the cleaner only costs a process and a State API query a
second on the training cores, and without a dashboard it cannot query at all. Imported only
after `ray` may be imported (see cluster.keep_private_ray_on_loopback).

Two detached named actors of Ray Data are started by the driver as soon as the private
cluster is up, each a process that takes a second or two to start on the cores the run starts
on. The autoscaling coordinator, which Train's controller asks for the workers' resources (and
Ray Data for its tasks'): the controller creates it only when it requests them, and then waits
1.5-2 s for its process. The stats actor, which Ray Data creates when the first read starts
the pipeline, beside the first generating task's process. Started by the driver, both come up
while the controller's own process starts, and whoever needs them finds them by name.
"""
from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback


def start_ray_data_actors() -> None:
    """Ray Data's autoscaling coordinator and stats actor, created now (not waited for); either
    is left to Ray if this Ray has no such function (their locations are Ray-internal)."""
    try:
        from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator
    except ImportError:
        pass
    else:
        get_or_create_autoscaling_coordinator()
    try:
        from ray.data._internal.stats import get_or_create_stats_actor
    except ImportError:
        return
    get_or_create_stats_actor()


def without_placement_group_cleaner(callbacks: list) -> list:
    return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]


class PrivateClusterTorchTrainer(TorchTrainer):
    """A TorchTrainer without the placement-group cleaner (Ray's default callbacks otherwise)."""

    def _create_default_callbacks(self):
        return without_placement_group_cleaner(super()._create_default_callbacks())
