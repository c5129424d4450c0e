"""One shared in-process Ray session for the Ray tests.

The session is started on first use with `address="local"` (never attaching to a head that
another test or engineer started) and shut down after the last test of this folder, so the
tests that follow run in a process without Ray's threads (a fork with them alive can hang: the
prepare tests' forked pool did once). A test that needs its own cluster
(multi-node) shuts it down first; the next test that asks for `ray_local` starts it again.
"""
from __future__ import annotations

import pytest

from ray_testing import ensure_local_ray, final_params, fit, ray_config


@pytest.fixture(scope="session")
def _ray_session_owner():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def pytest_runtest_teardown(item, nextitem):
    """After the last test under tests/ray (they run first, and nextitem then lies elsewhere)."""
    here = item.path.parent
    if nextitem is not None and here in nextitem.path.parents:
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_local(_ray_session_owner):
    ensure_local_ray()
    yield


@pytest.fixture(scope="session")
def reference_2w(tmp_path_factory, _ray_session_owner):
    """An uninterrupted 2-worker run of TINY_RAY, shared by the equivalence, fault and multi-node tests."""
    ensure_local_ray()
    config = ray_config(tmp_path_factory.mktemp("ref2w"))
    result, resolved = fit(config)
    return {"config": resolved, "result": result, "params": final_params(resolved)}
