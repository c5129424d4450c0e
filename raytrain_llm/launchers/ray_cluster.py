"""Connecting to Ray: an existing cluster when one is named, otherwise a private local one.

Named means `distributed.address`, RAY_ADDRESS, or running as a `ray job submit` entrypoint
(the job supervisor sets RAY_ADDRESS and RAY_JOB_ID). A local cluster is started with
`address="local"` on purpose: a bare `ray.init()` would attach to whatever cluster Ray's
current-cluster file names, e.g. a head someone else started on this machine.
"""
from __future__ import annotations

import math
import os

from raytrain_llm.core.config import Config


def cluster_address(config: Config) -> str:
    """The address to connect to, or "" to start a local cluster."""
    address = config.distributed.address or os.environ.get("RAY_ADDRESS", "")
    if not address and os.environ.get("RAY_JOB_ID"):
        address = "auto"
    return address


def local_num_cpus(config: Config) -> int:
    # All cores, but never fewer logical CPUs than the workers reserve plus one for Ray Data.
    d = config.distributed
    need = d.num_workers * d.cpus_per_worker + 1
    return max(os.cpu_count() or 1, math.ceil(need))


def init_ray(config: Config, *, include_dashboard: bool = True) -> bool:
    """Connect or start Ray; True if this call started it (the caller then shuts it down).

    The dashboard is on (loopback only) because Train's placement-group cleaner and Tune's trial
    clean-up query the State API, which it serves; without it they retry and log forever.
    """
    import ray

    if ray.is_initialized():
        return False
    address = cluster_address(config)
    common = dict(log_to_driver=True, configure_logging=True, logging_level="WARNING")
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(address="local", num_cpus=local_num_cpus(config), include_dashboard=include_dashboard,
                 dashboard_host="127.0.0.1", **common)
    return True
