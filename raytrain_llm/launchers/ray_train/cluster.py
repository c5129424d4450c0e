"""Connecting to Ray: an existing cluster when one is named, otherwise a private local one.

Named means `distributed.address`, RAY_ADDRESS, or running as a `ray job submit` entrypoint
(the job supervisor sets RAY_ADDRESS and RAY_JOB_ID). A local cluster is started with
`address="local"` on purpose: a bare `ray.init()` would attach to whatever cluster Ray's
current-cluster file names, e.g. a head someone else started on this machine.
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
from typing import Optional

from raytrain_llm.core.config import Config
from raytrain_llm.core.errors import UsageError
from raytrain_llm.launchers.task_resolution import import_root, resolve_task

# What a Ray Data task that generates batches reserves (Ray's default; a fractional request
# would split the read from the map, and the read task alone still asks for a whole CPU).
DATA_TASK_CPUS = 1.0
REACH_TIMEOUT_S = 5.0


def cluster_address(config: Config) -> str:
    """The address to connect to, or "" to start a local cluster."""
    address = config.distributed.address or os.environ.get("RAY_ADDRESS", "")
    if not address and os.environ.get("RAY_JOB_ID"):
        address = "auto"
    return address


def worker_resources(config: Config) -> dict[str, float]:
    """What each Train worker reserves (Tune sums these per trial)."""
    d = config.distributed
    res = {"CPU": d.cpus_per_worker}
    if d.use_gpu:
        res["GPU"] = d.gpus_per_worker or 1.0
    return res


def cpus_needed(config: Config) -> float:
    """Logical CPUs one run holds: its Train workers plus one Ray Data task feeding them."""
    d = config.distributed
    return d.num_workers * d.cpus_per_worker + DATA_TASK_CPUS


def local_num_cpus(config: Config, extra_cpus: float = 0.0) -> int:
    # All cores, but never fewer logical CPUs than the run reserves (plus, for a Tune sweep, its
    # trial actor): what is not there is waited for, forever.
    return max(os.cpu_count() or 1, math.ceil(cpus_needed(config) + extra_cpus - 1e-9))


def unmet_resources(config: Config, cluster: dict[str, float], nodes: int, extra_cpus: float = 0.0) -> list[str]:
    """What the cluster lacks for this run's workers, as phrases; [] when it fits."""
    d, per_worker = config.distributed, worker_resources(config)
    problems = []
    gpus = d.num_workers * per_worker.get("GPU", 0.0)
    if gpus > cluster.get("GPU", 0.0) + 1e-9:
        problems.append(f"distributed.use_gpu: {d.num_workers} worker(s) x {per_worker['GPU']:g} GPU, "
                        f"the cluster has {cluster.get('GPU', 0.0):g} GPU")
    cpus = cpus_needed(config) + extra_cpus
    if cpus > cluster.get("CPU", 0.0) + 1e-9:
        problems.append(f"distributed.cpus_per_worker: {cpus:g} CPUs with Ray Data's task, the cluster has "
                        f"{cluster.get('CPU', 0.0):g}")
    if d.placement_strategy == "STRICT_SPREAD" and d.num_workers > nodes:
        problems.append(f"distributed.placement_strategy: STRICT_SPREAD puts {d.num_workers} workers on "
                        f"{d.num_workers} nodes, the cluster has {nodes}")
    return problems


def warn_if_unplaceable(config: Config, *, extra_cpus: float = 0.0, logger=None) -> None:
    """On a running cluster an autoscaler may still add nodes: say what is missing, then wait.
    (A private local cluster is checked before it starts, in init_ray.)"""
    import ray

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    problems = unmet_resources(config, ray.cluster_resources(), nodes, extra_cpus)
    if not problems:
        return
    message = f"the cluster cannot place the run yet ({'; '.join(problems)}): waiting for nodes"
    if logger is not None:
        logger.warning(message)
    else:
        print(f"warning: {message}", file=sys.stderr)


def _check_reachable(address: str, source: str) -> None:
    """A GCS address that does not answer makes ray.init retry for minutes: fail in seconds."""
    if address.startswith(("http://", "https://")):  # ray.init rejects it after a long message
        raise UsageError(f"{source}: {address} is a job server (dashboard) address, for `ray job submit "
                         f"--address {address} -- python train.py ...`; to connect directly use the head's "
                         f"GCS address (host:6379) or `auto` on a cluster node")
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if address in ("auto", "local") or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S) as conn:
            web = not address.startswith("ray://") and _answers_http(conn)
    except OSError as exc:
        raise UsageError(f"{source}: cannot reach a Ray cluster at {address} ({exc.strerror or exc})") from None
    if web:  # the dashboard's port (ray start prints it): ray.init would retry it for minutes
        raise UsageError(f"{source}: {address} answers HTTP: it is the dashboard (job server), for `ray job "
                         f"submit --address http://{target} -- python train.py ...`; to connect directly use "
                         f"the head's GCS address (host:6379) or `auto` on a cluster node")


def _answers_http(conn: socket.socket) -> bool:
    """Whether the server on `conn` speaks HTTP/1 (a dashboard); the GCS speaks gRPC (HTTP/2) and
    does not answer an HTTP/1 request with an HTTP/1 status line."""
    try:
        conn.settimeout(REACH_TIMEOUT_S)
        conn.sendall(b"HEAD / HTTP/1.0\r\nHost: ray\r\n\r\n")
        return conn.recv(8).startswith(b"HTTP/1.")
    except OSError:
        return False


# Ray's switch for macOS/Windows behaviour: when off, a local node's IP is 127.0.0.1 and every
# Ray process of it (GCS, raylet, agents, workers) listens on loopback only. Read when `ray` is
# imported, so it is set before that (and inherited by the processes Ray starts).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_private_ray_on_loopback(config: Config) -> bool:
    """For a run that will start its own Ray (no cluster named): bind it to loopback. Call
    before the first `import ray`; True if it will take effect."""
    if cluster_address(config) or "ray" in sys.modules:
        return False
    os.environ.setdefault(LOOPBACK_ENV, "0")
    return os.environ[LOOPBACK_ENV] == "0"


def init_ray(config: Config, *, include_dashboard: Optional[bool] = None, extra_cpus: float = 0.0,
             log_to_driver: bool = True) -> bool:
    """Connect or start Ray; True if this call started it (the caller then shuts it down).

    A private local Ray starts its dashboard (on 127.0.0.1) only when asked: `include_dashboard`,
    else `distributed.dashboard`. Tune asks, because its trial clean-up queries the State API that
    the dashboard serves. A Train run on a private Ray does not need it: its only State API user,
    Train's placement-group cleaner, is left out there (`build_trainer(private_cluster=True)`).
    """
    import ray

    if ray.is_initialized():
        return False
    address = cluster_address(config)
    # log_to_driver=False: workers' output stays in Ray's log files (ray_train/console relays rank 0's).
    common = dict(log_to_driver=log_to_driver, configure_logging=True, logging_level="WARNING")
    if address:
        source = "distributed.address" if config.distributed.address else "RAY_ADDRESS"
        _check_reachable(address, source)
        try:
            ray.init(address=address, **common)
        except ConnectionError as exc:
            if not _is_auth_failure(exc):
                raise
            raise UsageError(
                f"{source}: the Ray cluster at {address} refused this client's authentication token (Ray's token "
                f"auth, on by default for new clusters): run with RAY_AUTH_MODE=token, as the cluster was started, "
                f"and the cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN") from None
    else:
        num_cpus = local_num_cpus(config, extra_cpus)
        # Checked before starting anything: what this machine lacks, Train would wait for forever.
        problems = unmet_resources(config, {"CPU": float(num_cpus), "GPU": float(local_num_gpus())}, nodes=1)
        if problems:
            raise UsageError(f"this machine cannot place the run: {'; '.join(problems)}")
        loopback = {"_node_ip_address": "127.0.0.1"} if os.environ.get(LOOPBACK_ENV) == "0" else {}
        if include_dashboard is None:
            include_dashboard = config.distributed.dashboard
        with _private_node_env(), _node_without_monitors(keep_log_monitor=log_to_driver):
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard,
                     dashboard_host="127.0.0.1", runtime_env=_task_import_env(config), **loopback, **common)
    return True


# What the processes of a private local node read from their environment (inherited from this
# process when ray.init starts them): no Train preemption watcher, an actor polling the drain
# state of the nodes every few seconds. The only node of a private cluster is this machine: a
# preemption notice for it could only be followed by the end of the driver with it, and nothing
# would restart the run. On a cluster that was started elsewhere the watcher stays (Ray's default).
PRIVATE_NODE_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@contextlib.contextmanager
def _private_node_env():
    """PRIVATE_NODE_ENV set while ray.init starts the node, then this process's own values back
    (a later cluster started by this process, e.g. a test's, gets Ray's defaults)."""
    saved = {k: os.environ.get(k) for k in PRIVATE_NODE_ENV}
    for k, v in PRIVATE_NODE_ENV.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _node_without_monitors(keep_log_monitor: bool):
    """While ray.init starts a private node: without the autoscaler monitor, and without the log
    monitor unless workers' output goes to the driver (`keep_log_monitor`). Each is a Python
    process importing Ray (1-1.5 CPU-s) started while the driver starts: on a fixed one-machine
    cluster nothing autoscales, and without log_to_driver no one reads what the log monitor
    relays. `ray start` has switches for both (--no-monitor, --include-log-monitor), ray.init
    none: its node parameters (Ray-internal `RayParams`) get them here; if this Ray has no such
    class, the node starts with both."""
    try:
        from ray._private import parameter
    except ImportError:
        parameter = None
    original = getattr(parameter, "RayParams", None)
    if original is None:
        yield
        return

    class RayParamsWithoutMonitors(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.no_monitor = True
            if not keep_log_monitor:
                self.include_log_monitor = False

    parameter.RayParams = RayParamsWithoutMonitors
    try:
        yield
    finally:
        parameter.RayParams = original


def _is_auth_failure(exc: BaseException) -> bool:
    """ray.init's ConnectionError caused by the GCS rejecting the token (or its absence). Ray
    chains a RuntimeError that quotes the AuthenticationError's traceback as text."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _task_import_env(config: Config) -> Optional[dict]:
    """Workers start with the raylet's sys.path, not the driver's: a user task found through the
    driver's script folder or current folder must be put on their PYTHONPATH. (On a running
    cluster `ray job submit --working-dir` ships it; here there is nothing to ship.)"""
    resolve_task(config.task)
    root = import_root(config.task)
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root is None or os.path.abspath(root) in [os.path.abspath(p) for p in inherited if os.path.isabs(p)]:
        # Nothing to add: the workers inherit this PYTHONPATH through the raylet (an absolute entry:
        # a relative one would be read from the worker's own folder). A job runtime env would also
        # keep the job off the workers Ray prestarts with the node (started without it).
        return None
    paths = [root] + [p for p in inherited if p != root]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


def local_num_gpus() -> int:
    """GPUs a private local Ray would find here (it honours CUDA_VISIBLE_DEVICES, as torch does)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
