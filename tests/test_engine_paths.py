"""Engine paths that matter most on GPUs, exercised on CPU so CI keeps them working:
torch.compile, bf16 autocast, activation checkpointing and chunked cross-entropy, and the
benchmark scripts themselves."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from rt_testing import REPO, final_state, train

LM = {"model.vocab_size": 32, "model.d_model": 32, "model.n_layers": 2, "model.n_heads": 2, "model.seq_len": 16,
      "model.use_moe": True, "model.num_experts": 4, "model.top_k": 2, "data.num_train_samples": 64,
      "training.batch_size": 16, "training.lr_schedule": "constant", "training.lr": 3e-3}


def _params(run_dir):
    return final_state(run_dir)["model"]


@pytest.mark.timeout(400)
def test_compiled_engine_matches_eager(tmp_path):
    eager, _ = train(tmp_path / "eager", task="lm", **LM)
    compiled, _ = train(tmp_path / "compiled", task="lm", **LM, **{"optimization.compile": True})
    assert compiled["step"] == eager["step"] == 4
    a, b = _params(tmp_path / "eager"), _params(tmp_path / "compiled")
    for k in a:  # same math, different kernels: close, not bitwise
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-3), k


@pytest.mark.timeout(200)
def test_memory_savers_do_not_change_the_result(tmp_path):
    plain, _ = train(tmp_path / "plain", task="lm", **LM)
    saved, _ = train(tmp_path / "saved", task="lm", **LM, **{"model.activation_checkpointing": True,
                                                            "optimization.chunked_cross_entropy": 40})
    a, b = _params(tmp_path / "plain"), _params(tmp_path / "saved")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    assert abs(plain["val"]["val/loss"] - saved["val"]["val/loss"]) < 1e-4


@pytest.mark.timeout(200)
def test_bf16_autocast_trains_with_fp32_master_weights(tmp_path):
    result, _ = train(tmp_path, task="lm", **{**LM, "data.num_train_samples": 256, "training.epochs": 2},
                      **{"optimization.amp": "bf16"})
    state = _params(tmp_path)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert result["val"]["val/loss"] < 3.3  # well below log(32) = 3.47, the untrained loss


@pytest.mark.timeout(200)
def test_gpu_benchmark_script_runs_on_cpu_with_the_tiny_preset(tmp_path):
    # The script a GPU session runs first: correctness checks, then engine vs hand loop (dense and MoE).
    env = {**os.environ, "PYTHON": sys.executable, "PRESET": "cpu-tiny", "OUT": str(tmp_path)}
    p = subprocess.run(["bash", "benchmarks/gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    checks = [json.loads(line) for line in (tmp_path / "gpu_checks.jsonl").read_text().splitlines()]
    assert all(c["ok"] for c in checks), checks
    # Every check ran (an exception is reported as an "error" line), each backend once.
    assert [c["check"] for c in checks] == ["moe_grouped_vs_loop_bf16"] * 3 + [
        "moe_compile_graph_breaks", "engine_bf16_cpu"] + ["attention_backend"] * 5, checks
    assert [c["backend"] for c in checks[-5:]] == ["math", "auto", "flash", "cudnn", "efficient"]
    bench = [json.loads(line) for line in (tmp_path / "gpu_bench.jsonl").read_text().splitlines()]
    assert [b["moe"] for b in bench] == [False, True]
    for b in bench:
        assert b["hand"]["tokens_per_s"] > 0 and b["engine"]["tokens_per_s"] > 0 and b["ratio"] > 0


@pytest.mark.timeout(200)
def test_cross_entropy_benchmark_variants_compute_the_same_loss():
    # The variants ce_bench times must be the model's loss, or its speed-ups mean nothing.
    p = subprocess.run([sys.executable, "benchmarks/ce_bench.py", "--device", "cpu", "--tokens", "256", "--repeats", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout.splitlines()[-1])
    assert set(result["ms"]) == {"torch", "logsumexp", "logsumexp_gather"}
    assert all(0 <= d < 2e-3 for d in result["max_rel_diff"].values()), result["max_rel_diff"]
