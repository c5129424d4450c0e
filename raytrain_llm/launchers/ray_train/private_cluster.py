"""The TorchTrainer for a Ray cluster this process started and will shut down.

Ray Train starts a detached `PlacementGroupCleaner` actor per run that asks the State API (served
by the dashboard) every second whether the controller is alive, to free the workers' placement
group if the controller dies without doing so. A private cluster dies with this process and takes
every placement group with it, so there the cleaner only costs a process and a State API query a
second on the training cores, and without a dashboard it cannot query at all. Imported only
after `ray` may be imported (see cluster.keep_private_ray_on_loopback).
"""
from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback


def without_placement_group_cleaner(callbacks: list) -> list:
    return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]


class PrivateClusterTorchTrainer(TorchTrainer):
    """A TorchTrainer without the placement-group cleaner (Ray's default callbacks otherwise)."""

    def _create_default_callbacks(self):
        return without_placement_group_cleaner(super()._create_default_callbacks())
