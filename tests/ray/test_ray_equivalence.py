"""Data parallelism through Ray is the same optimisation as one bigger batch, and as the local launcher."""
from __future__ import annotations

import pytest
import torch

from ray_testing import final_params, fit, ray_config


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=atol), f"{k}: max diff {(a[k] - b[k]).abs().max():.3g}"


@pytest.mark.timeout(240)
def test_two_workers_at_b_equal_one_worker_at_2b(tmp_path, ray_local, reference_2w):
    one = ray_config(tmp_path, distributed__num_workers=1, training__batch_size=16)
    result, resolved = fit(one)
    assert result.checkpoint is not None and result.metrics["step"] == 10.0
    one_params = final_params(resolved)
    # Same global batches, gradients averaged by DDP instead of within one batch: equal up to rounding.
    _assert_close(reference_2w["params"], one_params, atol=1e-5)
    assert reference_2w["result"].metrics["step"] == 10.0

    # One Ray worker reads Ray Data shards; the local launcher reads a DataLoader: same batches, same weights.
    from raytrain_llm.launchers.worker import train_worker

    local = ray_config(tmp_path / "local", distributed__launcher="local", distributed__num_workers=1,
                       training__batch_size=16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray worker (OMP_NUM_THREADS=1 with a fractional CPU)
    try:
        train_worker(local)
    finally:
        torch.set_num_threads(threads)
    _assert_close(final_params(local), one_params, atol=1e-6)
