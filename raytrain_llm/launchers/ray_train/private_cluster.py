"""The TorchTrainer for a Ray cluster this process started and will shut down.

Ray Train starts a detached `PlacementGroupCleaner` actor per run that asks the State API (served
by the dashboard) every second whether the controller is alive, to free the workers' placement
group if the controller dies without doing so. A private cluster dies with this process and takes
every placement group with it, so there the cleaner only costs a process and a State API query a
second on the training cores, and without a dashboard it cannot query at all. Imported only
after `ray` may be imported (see cluster.keep_private_ray_on_loopback).

Ray Data's autoscaling coordinator (a detached named actor that Train's controller asks for the
workers' resources, and Ray Data for its tasks') is started by the driver as soon as the
private cluster is up: Train's controller creates it only when it requests the workers'
resources, and then waits 1.5-2 s for its process. Started by the driver, it comes up while the
controller's own process starts, and the controller finds it by name.
"""
from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback


def start_autoscaling_coordinator() -> None:
    """Ray Data's `AutoscalingCoordinator` actor, created now (not waited for); nothing if this
    Ray has no such function (its location is Ray-internal)."""
    try:
        from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator
    except ImportError:
        return
    get_or_create_autoscaling_coordinator()


def without_placement_group_cleaner(callbacks: list) -> list:
    return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]


class PrivateClusterTorchTrainer(TorchTrainer):
    """A TorchTrainer without the placement-group cleaner (Ray's default callbacks otherwise)."""

    def _create_default_callbacks(self):
        return without_placement_group_cleaner(super()._create_default_callbacks())
