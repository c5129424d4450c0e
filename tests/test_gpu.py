"""CUDA checks as tests (marked `gpu`: skipped without a CUDA device, see conftest.py), small
versions of benchmarks/gpu_checks.py: the grouped MoE dispatch equals the per-expert loop in
bf16, the engine trains with fp16 + GradScaler, the MoE model compiles as one graph, and the
attention backends agree with the math kernel. Importable without CUDA: nothing touches the
device at import."""
from __future__ import annotations

import pytest
import torch

from rt_testing import make_config

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]
CUDA = torch.device("cuda")


@pytest.mark.parametrize("mlp_type,experts,top_k", [("gelu", 8, 2), ("gelu", 4, 4), ("swiglu", 8, 2)])
def test_grouped_moe_dispatch_matches_the_loop_in_bf16(mlp_type, experts, top_k):
    from raytrain_llm.models import MoE

    torch.manual_seed(0)
    layer = MoE(128, 256, experts, top_k, mlp_type=mlp_type, impl="grouped").to(CUDA)
    torch.nn.init.normal_(layer.router.weight, std=0.5)  # confident routing, as after training
    x = torch.randn(1024, 128, device=CUDA, requires_grad=True)
    outs, grads = [], []
    for impl in ("grouped", "loop"):
        layer.impl = impl
        x.grad = None
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, stats = layer(x)
        y.float().square().mean().backward()
        outs.append(y.float().detach())
        grads.append({"x": x.grad.clone(), **{n: p.grad.clone() for n, p in layer.named_parameters()}})
        counts = stats["counts"]
    assert counts.sum().item() == 1024 * top_k and (counts > 0).sum().item() > 1  # several experts used
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()  # noqa: E731
    assert rel(*outs) < 2e-2
    assert grads[0].keys() == grads[1].keys()
    for name in grads[1]:
        assert rel(grads[0][name], grads[1][name]) < 5e-2, name


def test_fp16_with_grad_scaler_trains(tmp_path):
    from raytrain_llm.core.callbacks import Callback
    from raytrain_llm.core.engine import TrainingEngine
    from raytrain_llm.tasks.lm_task import LanguageModelingTask

    class Keep(Callback):
        def __init__(self):
            self.records, self.scales = [], []

        def on_batch_end(self, engine, step, outputs):
            self.scales.append(engine.precision.scaler.get_scale())

        def on_log(self, engine, record):
            if record["split"] == "train":
                self.records.append(record)

    cfg = make_config(tmp_path, "lm", **{
        "model.use_moe": True, "model.num_experts": 4, "model.top_k": 2, "model.vocab_size": 128,
        "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4, "model.seq_len": 64,
        "training.max_steps": 40, "training.lr": 3e-3, "training.batch_size": 32, "training.device": "cuda",
        "optimization.amp": "fp16", "logging.log_every_n_steps": 10, "checkpoint.enabled": False,
        "training.validate": False, "data.num_train_samples": 2048})
    keep = Keep()
    engine = TrainingEngine(cfg, LanguageModelingTask(cfg), callbacks=[keep])
    assert engine.precision.scaler is not None and engine.precision.dtype == torch.float16
    engine.fit()
    losses = [r["loss"] for r in keep.records]
    assert [r["step"] for r in keep.records] == [10, 20, 30, 40]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.9 * losses[0], losses
    assert all(s > 0 for s in keep.scales) and engine.skipped_steps == 0
    assert all(p.dtype == torch.float32 for p in engine.raw_model.parameters())  # fp32 master weights


def test_the_moe_model_compiles_without_graph_breaks():
    from raytrain_llm.core.config_loader import load_config
    from raytrain_llm.models import GPT

    cfg = load_config(overrides=["model.use_moe=true", "model.num_experts=8", "model.top_k=2", "model.d_model=128",
                                 "model.n_heads=4", "model.vocab_size=512", "model.seq_len=128"], environ={})
    model = GPT(cfg.model).to(CUDA)
    ids = torch.randint(0, 512, (4, 128), device=CUDA)
    torch._dynamo.reset()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(ids, targets=ids)
    assert explanation.graph_break_count == 0, [str(b.reason)[:200] for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_attention_backends_agree_with_the_math_kernel():
    from raytrain_llm.models.attention import CausalSelfAttention

    torch.manual_seed(0)
    x = torch.randn(2, 256, 256, device=CUDA)
    results = {}
    for backend in ("math", "auto", "flash", "cudnn", "efficient"):
        torch.manual_seed(1)  # the same weights for every backend
        layer = CausalSelfAttention(256, 4, 256, 0.0, rope=False, backend=backend).to(CUDA)
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = layer(xi)
        y.float().square().mean().backward()
        results[backend] = (y.float().detach(), xi.grad.clone(), layer.qkv.weight.grad.clone())
    ref = results.pop("math")
    for backend, got in results.items():
        for name, a, b in zip(("out", "x.grad", "qkv.grad"), got, ref):
            err = ((a - b).abs().max() / b.abs().max()).item()
            assert err < 2e-2, (backend, name, err)
