"""MoE layer: sorted dispatch vs the reference loop, balancing losses, capacity, biases."""
import copy

import pytest
import torch

from raytrain_llm.core.config import Config
from raytrain_llm.models.moe import MoE, _grouped_mm
from raytrain_llm.tasks.lm_task import LanguageModelingTask

BACKENDS = ["split", "padded"] + (["grouped"] if _grouped_mm is not None else [])


def make_moe(E, k, mlp_type="gelu", impl="loop", d=16, h=24, **kw):
    torch.manual_seed(0)
    moe = MoE(d, h, E, k, mlp_type=mlp_type, impl=impl, **kw)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.3)  # router spread wide enough that tokens disagree on experts
    return moe


def run(moe, x, r):
    x = x.clone().requires_grad_()
    y, stats = moe(x)
    ((y * r).sum() + stats["aux_loss"] + stats["z_loss"]).backward()
    grads = {n: p.grad.clone() for n, p in moe.named_parameters()}
    return y.detach(), x.grad, grads, stats


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mlp_type", ["gelu", "swiglu"])
@pytest.mark.parametrize("E,k,h", [(4, 1, 24), (4, 2, 24), (4, 4, 24), (8, 2, 24), (8, 3, 24), (8, 2, 8), (16, 4, 8)])
def test_sorted_dispatch_matches_loop(backend, mlp_type, E, k, h):
    # h > d scales the rows after the second GEMM, h <= d (fine-grained experts) before it.
    ref = make_moe(E, k, mlp_type, "loop", h=h)
    fast = copy.deepcopy(ref)
    fast.impl = backend
    x, r = torch.randn(2, 37, 16), torch.randn(2, 37, 16)
    y0, gx0, g0, s0 = run(ref, x, r)
    y1, gx1, g1, s1 = run(fast, x, r)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx1, gx0, rtol=1e-4, atol=1e-5)
    assert g0.keys() == g1.keys() and "router.weight" in g0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(s1["counts"], s0["counts"])


def one_hot_router(moe, scale=10.0):
    """Router weight = scale * I, so a token x routes by its largest coordinate (d == E)."""
    with torch.no_grad():
        moe.router.weight.copy_(scale * torch.eye(moe.num_experts))


def test_aux_loss_is_one_when_balanced_and_larger_when_skewed():
    E = 4
    moe = make_moe(E, 1, d=E)
    one_hot_router(moe)
    balanced = torch.eye(E).repeat(3, 1)  # 12 tokens, 3 per expert
    _, stats = moe(balanced)
    assert torch.allclose(stats["load"], torch.full((E,), 1 / E))
    assert stats["aux_loss"].item() == pytest.approx(1.0, abs=1e-6)
    assert stats["max_load"].item() == pytest.approx(1.0)
    skewed = torch.eye(E)[[0] * 9 + [1, 2, 3]]
    _, stats = moe(skewed)
    assert stats["aux_loss"].item() > 1.5
    assert stats["max_load"].item() == pytest.approx(3.0)


def test_aux_loss_is_one_for_uniform_router_probs_top2():
    moe = make_moe(6, 2)
    with torch.no_grad():
        moe.router.weight.zero_()  # P_i = 1/E whatever the (tie-broken) selection
    _, stats = moe(torch.randn(50, 16))
    assert stats["aux_loss"].item() == pytest.approx(1.0, abs=1e-6)
    assert stats["entropy"].item() == pytest.approx(torch.log(torch.tensor(6.0)).item(), abs=1e-5)


@pytest.mark.parametrize("impl", ["loop"] + BACKENDS)
def test_capacity_drops_by_slot_then_token_order(impl):
    # E=3, k=2, N=4, capacity = ceil(0.75 * 4 * 2 / 3) = 2. With router weight = I, x = logits.
    moe = make_moe(3, 2, d=3, impl=impl, capacity_factor=0.75)
    one_hot_router(moe, 1.0)
    x = torch.tensor([[3., 2, 0], [0, 3, 2], [2, 0, 3], [3, 0, 2]])
    # expert 0: tok0/s0, tok3/s0, tok2/s1 -> tok2's second choice is dropped although tok2 < tok3
    # expert 1: tok1/s0, tok0/s1          -> both kept
    # expert 2: tok2/s0, tok1/s1, tok3/s1 -> tok3's second choice is dropped
    assert moe.router.capacity(4) == 2
    routing = moe.router(x)
    assert routing.experts.tolist() == [[0, 1], [1, 2], [2, 0], [0, 2]]
    kept = routing.weights > 0
    assert kept.tolist() == [[True, True], [True, True], [True, False], [True, False]]
    assert routing.stats["dropped_frac"].item() == pytest.approx(2 / 8)
    # A dropped assignment contributes nothing: the output equals tokens 2, 3 with only their top-1.
    y, _ = moe(x)
    ref = make_moe(3, 2, d=3, impl="loop")
    ref.load_state_dict(moe.state_dict())
    y_ref, _ = ref(x)  # dropless
    torch.testing.assert_close(y[:2], y_ref[:2])
    assert not torch.allclose(y[2:], y_ref[2:])


def test_dropless_by_default():
    _, stats = make_moe(4, 2)(torch.randn(64, 16))
    assert stats["dropped_frac"].item() == 0.0


@pytest.mark.parametrize("impl", ["loop"] + BACKENDS)
def test_every_expert_gets_a_gradient_even_when_unused(impl):
    moe = make_moe(4, 1, d=4, impl=impl)
    one_hot_router(moe)
    y, stats = moe(torch.eye(4)[[0] * 8])  # only expert 0 is ever chosen
    assert stats["counts"].tolist() == [8, 0, 0, 0]
    (y.sum() + stats["aux_loss"]).backward()
    for name, p in moe.named_parameters():
        assert p.grad is not None, name


def test_bias_balancing_moves_biases_toward_balance():
    moe = make_moe(4, 1, d=4, bias_balancing=True)
    one_hot_router(moe, 1.0)
    x = torch.eye(4)[[0] * 10 + [1, 2, 3, 3]]
    moe.update_router_bias(moe.router(x).counts, rate=0.1)  # counts [10, 1, 1, 2], mean 3.5
    assert moe.router.bias.tolist() == pytest.approx([-0.1, 0.1, 0.1, 0.1])


def test_bias_balancing_evens_out_a_skewed_router():
    torch.manual_seed(1)
    moe = make_moe(4, 2, d=8, bias_balancing=True)
    x = torch.randn(512, 8)
    x[:, 0] = 1.0
    with torch.no_grad():
        moe.router.weight[0, 0] = 3.0  # expert 0 is everyone's favourite
    before = moe.router(x).stats["max_load"].item()
    loads = []
    for _ in range(300):
        routing = moe.router(x)
        loads.append(routing.stats["max_load"].item())
        moe.update_router_bias(routing.counts, rate=0.002)
    assert before > 1.8 and sum(loads[-20:]) / 20 < 1.2
    assert moe.router.bias.argmin() == 0
    # The bias only picks experts: combine weights are still the renormalised router probs.
    routing = moe.router(x)
    probs = torch.softmax(x @ moe.router.weight.t(), -1).gather(1, routing.experts)
    torch.testing.assert_close(routing.weights, probs / probs.sum(-1, keepdim=True))


def test_task_updates_router_biases_after_optimizer_step():
    # The sign rule per MoE layer, from the assignments counted since the last optimizer step:
    # an expert above its layer's mean load loses `rate` of bias, one below gains it.
    import numpy as np

    cfg = Config(task="lm")
    cfg.model.use_moe, cfg.model.bias_balancing, cfg.model.bias_update_rate = True, True, 0.01
    task = LanguageModelingTask(cfg)
    model = task.build_model()
    rows = task.build_data_module().train_dataset.rows
    biases = lambda: torch.stack([m.router.bias for m in model.moe_layers]).clone()  # noqa: E731
    assert len(model.moe_layers) >= 1 and not biases().any()
    expected = torch.zeros_like(biases())
    for step in range(2):
        for micro in range(2):  # counts add up over a step's micro-batches; nothing moves before the step
            first = 4 * (2 * step + micro)
            batch = {k: torch.from_numpy(v) for k, v in rows(np.arange(first, first + 4)).items()}
            task.train_step(model, batch, None).loss.backward()
            assert torch.equal(biases(), expected)
        counts = task._pending_counts.clone()  # [L_moe, E] over both micro-batches
        assert counts.shape == expected.shape
        assert (counts.sum(-1) == 2 * 4 * cfg.model.seq_len * cfg.model.top_k).all()
        mean = counts.mean(-1, keepdim=True)
        over, under = counts > mean, counts < mean
        assert over.any() and under.any()  # both directions are exercised
        before = biases()
        task.on_optimizer_step(model)
        moved = biases() - before
        torch.testing.assert_close(moved[over], torch.full_like(moved[over], -0.01))  # overloaded: down
        torch.testing.assert_close(moved[under], torch.full_like(moved[under], 0.01))  # underloaded: up
        assert not moved[~over & ~under].any()  # exactly at the mean: unchanged
        expected = biases()
    task.on_optimizer_step(model)  # no step ran since the last update: nothing to apply
    assert torch.equal(biases(), expected)


def test_shared_experts_add_a_dense_path():
    moe = make_moe(4, 2, num_shared_experts=2)
    assert moe.shared.fc.out_features == 2 * 24
    plain = make_moe(4, 2)
    plain.load_state_dict({k: v for k, v in moe.state_dict().items() if not k.startswith("shared.")})
    x = torch.randn(10, 16)
    torch.testing.assert_close(moe(x)[0], plain(x)[0] + moe.shared(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_autocast_on_cpu(backend):
    moe = make_moe(4, 2, "swiglu", backend)
    x = torch.randn(32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, stats = moe(x)
    assert y.dtype == torch.float32 and stats["aux_loss"].dtype == torch.float32
    torch.testing.assert_close(y, moe(x)[0], rtol=0.05, atol=0.05)


def test_top1_keeps_the_raw_gate_probability_so_the_router_learns():
    moe = make_moe(4, 1)
    x = torch.randn(20, 16)
    routing = moe.router(x)
    probs = torch.softmax(x @ moe.router.weight.t(), -1)
    torch.testing.assert_close(routing.weights, probs.gather(1, routing.experts))
    y, _ = moe(x)
    y.sum().backward()
    assert moe.router.weight.grad.abs().sum() > 0


def test_auto_backend_on_eager_cpu_follows_the_rows_per_expert():
    from raytrain_llm.models.moe import PADDED_MAX_ROWS_PER_EXPERT, cpu_grouped_mm_works

    moe = MoE(16, 24, 8, 2)  # auto
    small = torch.randn(PADDED_MAX_ROWS_PER_EXPERT * 8 // 2, 16)  # exactly the limit: k*N/E rows
    large = torch.randn(small.shape[0] + 1, 16)
    assert moe.backend(small) == "padded"
    assert moe.backend(large) == ("grouped_mm" if cpu_grouped_mm_works(torch.float32) else "split")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert moe.backend(large) == ("grouped_mm" if cpu_grouped_mm_works(torch.bfloat16) else "split")


def test_both_ways_of_summing_a_tokens_rows_agree():
    # CUDA sums each token's k rows by a gather (no atomics), CPU by index_add_: same result.
    from raytrain_llm.models.moe import _sum_choices

    torch.manual_seed(0)
    N, k, d = 37, 3, 8
    order = torch.randperm(k * N)  # row r holds assignment order[r] = choice * N + token
    inverse = torch.empty_like(order).scatter_(0, order, torch.arange(k * N))
    rows = torch.randn(k * N, d, dtype=torch.float64)
    expected = torch.zeros(N, d, dtype=torch.float64).index_add_(0, order % N, rows)
    for atomic_free in (True, False):
        got = _sum_choices(rows, order % N, inverse, k, atomic_free=atomic_free)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
