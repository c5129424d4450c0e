"""Data parallelism through Ray is the same optimisation as one bigger batch, and as the local launcher;
expert parallelism through Ray is the spawn launcher's, bit for bit."""
from __future__ import annotations

import socket

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


# The MoE LM of tests/test_expert_parallel_training.py, at TINY_RAY's data and steps.
MOE_LM = {"model__vocab_size": 32, "model__d_model": 32, "model__n_layers": 1, "model__n_heads": 2,
          "model__seq_len": 16, "model__mlp_type": "swiglu", "model__dropout": 0.0, "model__use_moe": True,
          "model__num_experts": 4, "model__top_k": 2, "model__num_shared_experts": 1,
          "model__bias_balancing": True, "model__aux_loss_coef": 0.1, "model__aux_loss_scope": "global_batch",
          "training__lr": 1e-2, "training__lr_schedule": "constant"}


@pytest.mark.timeout(240)
def test_expert_parallel_through_ray_trains_as_under_spawn(tmp_path, ray_local, monkeypatch):
    """distributed.expert_parallel=2 on 2 Ray workers (Ray's process group, Ray Data's shards,
    validation in between) gives the weights of the same run's 2 spawned workers, bit for bit;
    tests/test_expert_parallel_training.py compares spawned ep=2 with ep=1."""
    ep = ray_config(tmp_path / "ray", task="lm", distributed__expert_parallel=2, **MOE_LM)
    result, resolved = fit(ep)
    assert result.error is None and result.metrics["step"] == 10.0
    ray_params = final_params(resolved)
    assert ray_params["blocks.0.ffn.w_in"].shape[0] == 4  # the checkpoint holds every expert

    from raytrain_llm.launchers.local.spawn import run_spawn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spawned = ray_config(tmp_path / "spawn", task="lm", distributed__launcher="spawn", distributed__expert_parallel=2,
                         distributed__master_port=port, **MOE_LM)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as Ray sets it for a fractional CPU
    run_spawn(spawned)
    spawn_params = final_params(spawned)
    assert ray_params.keys() == spawn_params.keys()
    for k in ray_params:
        assert torch.equal(ray_params[k], spawn_params[k]), k
