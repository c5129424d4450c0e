"""GPT model, parameter/FLOP accounting and the Markov token data module."""
import math

import numpy as np
import pytest
import torch

from raytrain_llm.core.config import Config, ModelConfig
from raytrain_llm.data.token_data import MarkovTokenDataModule
from raytrain_llm.models import GPT, count_parameters, flops_per_token
from raytrain_llm.tasks.lm_task import LanguageModelingTask

TINY = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, seq_len=16)
MOE = dict(use_moe=True, num_experts=4, top_k=2)


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{**TINY, **kw})


def ids(B=2, T=16, V=64, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", [{}, MOE, dict(MOE, mlp_type="swiglu", position="learned", norm="layernorm",
                                              moe_every_n_layers=2, num_shared_experts=1, tie_embeddings=False)])
def test_shapes_and_aux_contract(kw):
    model = GPT(tiny(**kw))
    logits, aux = model(ids())
    assert logits.shape == (2, 16, 64)
    assert aux["aux_loss"].shape == () and aux["z_loss"].shape == ()
    if kw.get("use_moe"):
        n_moe = 2 // kw.get("moe_every_n_layers", 1)
        assert aux["moe_load"].shape == (n_moe, 4) and aux["moe_max_load"].shape == (n_moe,)
        torch.testing.assert_close(aux["moe_load"].sum(-1), torch.ones(n_moe))
        assert aux["aux_loss"] > 0
    else:
        assert aux["aux_loss"] == 0


@pytest.mark.parametrize("kw", [{}, MOE, dict(position="learned")])
def test_causal(kw):
    model = GPT(tiny(**kw)).eval()
    x = ids()
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 64  # change the future only
    a, b = model(x)[0], model(y)[0]
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_tied_embeddings():
    model = GPT(tiny())
    assert model.head.weight is model.tok_emb.weight
    untied = GPT(tiny(tie_embeddings=False))
    assert untied.head.weight is not untied.tok_emb.weight


def loss_and_grads(model, x, cfg):
    model.zero_grad()
    _, aux = model(x, targets=x.roll(-1, 1))
    loss = aux["ce_loss"] + cfg.aux_loss_coef * aux["aux_loss"] + cfg.z_loss_coef * aux["z_loss"]
    loss.backward()
    raw = getattr(model, "_orig_mod", model)
    return loss.detach(), {n: p.grad.clone() for n, p in raw.named_parameters()}


def test_chunked_ce_and_activation_checkpointing_match_plain():
    cfg = tiny(**MOE, capacity_factor=1.5)
    torch.manual_seed(0)
    plain = GPT(cfg)
    other = GPT(tiny(**MOE, capacity_factor=1.5, activation_checkpointing=True), ce_chunk_rows=5)
    other.load_state_dict(plain.state_dict())
    x = ids()
    l0, g0 = loss_and_grads(plain, x, cfg)
    l1, g1 = loss_and_grads(other, x, cfg)
    torch.testing.assert_close(l1, l0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)
    assert other(x, targets=x)[0] is None  # chunked: the logits are never materialised


def test_attention_backend_preference_on_cpu():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    base = GPT(tiny())
    x = ids()
    l_auto, g_auto = loss_and_grads(base, x, tiny())
    with sdpa_kernel([SDPBackend.MATH]):
        l_ref, g_ref = loss_and_grads(base, x, tiny())
    for name, (l0, g0) in {"math": (l_ref, g_ref), "flash": (l_auto, g_auto),
                           # no CPU kernel: torch's own choice runs instead, no error
                           "cudnn": (l_auto, g_auto), "efficient": (l_auto, g_auto)}.items():
        model = GPT(tiny(attention_backend=name))
        model.load_state_dict(base.state_dict())
        l1, g1 = loss_and_grads(model, x, tiny())
        assert torch.equal(l1, l0), name
        assert all(torch.equal(g1[n], g0[n]) for n in g0), name
    assert not torch.equal(g_ref["blocks.0.attn.qkv.weight"], g_auto["blocks.0.attn.qkv.weight"])


@pytest.mark.timeout(300)
def test_compile_fullgraph_matches_eager():
    # A preferred SDPA backend too: its sdpa_kernel context must not break the graph.
    cfg = tiny(**MOE, moe_every_n_layers=2, num_shared_experts=1, capacity_factor=1.25, attention_backend="cudnn")
    torch.manual_seed(0)
    model = GPT(cfg)
    x = ids()
    l0, g0 = loss_and_grads(model, x, cfg)
    l1, g1 = loss_and_grads(torch.compile(model, fullgraph=True), x, cfg)
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-3, atol=1e-5, msg=n)


@pytest.mark.parametrize("kw", [{}, dict(MOE, mlp_type="swiglu")])
def test_bf16_autocast_on_cpu(kw):
    cfg = tiny(**kw)
    model = GPT(cfg)
    x = ids()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, aux = model(x, targets=x)
    assert logits.dtype == torch.bfloat16 and aux["ce_loss"].dtype == torch.float32
    aux["ce_loss"].backward()
    assert aux["ce_loss"].item() == pytest.approx(model(x, targets=x)[1]["ce_loss"].item(), rel=0.02)


def test_param_count_and_flops():
    dense = tiny()
    d, V, L, T = 32, 64, 2, 16
    attn, mlp, norms = 4 * d * d, 8 * d * d, 2 * d
    expected = V * d + L * (attn + mlp + norms) + d  # RMSNorm: weight only; tied head
    counted = count_parameters(dense)
    assert counted.total == counted.active == expected == sum(p.numel() for p in GPT(dense).parameters())
    assert flops_per_token(dense) == 6 * expected + 12 * L * d * T

    moe = tiny(use_moe=True, num_experts=8, top_k=2, num_shared_experts=1, position="learned")
    c = count_parameters(moe)
    per_expert = 2 * d * 4 * d
    assert c.position == T * d
    assert c.total == expected + T * d + L * (7 * per_expert + per_expert + 8 * d)  # 8 routed + 1 shared - dense
    assert c.active == c.total - T * d - L * 6 * per_expert
    assert count_parameters(GPT(moe)) == c


def test_learned_positions_excluded_from_active():
    c = count_parameters(tiny(position="learned"))
    assert c.active == c.total - c.position > 0


# ---------------------------------------------------------------- data
def data_module(**kw):
    cfg = Config(task="lm")
    cfg.model.vocab_size, cfg.model.seq_len = kw.pop("vocab_size", 16), kw.pop("seq_len", 32)
    for k, v in kw.items():
        setattr(cfg.data, k, v)
    return MarkovTokenDataModule(cfg)


def test_data_is_deterministic_and_shifted():
    a, b = data_module(), data_module()
    ra = a.train_dataset.rows(np.array([3, 9, 0]))
    rb = b.train_dataset.rows(np.array([0, 9]))
    assert ra["input_ids"].dtype == np.int64 and ra["input_ids"].shape == (3, 32)
    np.testing.assert_array_equal(ra["input_ids"][[2, 1]], rb["input_ids"])
    np.testing.assert_array_equal(ra["input_ids"][:, 1:], ra["targets"][:, :-1])
    assert not np.array_equal(a.val_dataset.rows(np.array([0]))["input_ids"], rb["input_ids"][:1])
    other = data_module(seed=7).train_dataset.rows(np.array([3]))
    assert not np.array_equal(other["input_ids"], ra["input_ids"][:1])
    assert a.entropy_floor() == b.entropy_floor()


@pytest.mark.parametrize("vocab_size", [16, 300])
def test_markov_sampling_paths_agree(vocab_size):
    # Small batches walk each sequence in Python, large ones step numpy over the batch; a sample
    # must not depend on which (the DataLoader asks for 8 rows, a Ray Data block for 64).
    from raytrain_llm.data.token_data import PER_SEQUENCE_MAX_BATCH, uniforms
    dm = data_module(vocab_size=vocab_size, seq_len=40, markov_concentration=0.05)
    chain = dm.chain
    u = uniforms(0, 0, np.arange(64), 41)
    u[0, :] = np.nextafter(1.0, 0)  # the largest uniform: must land in the last slot, not past it
    u[1, :] = 0.0
    first = np.minimum(np.searchsorted(chain.stationary_cdf, u[:, 0], side="right"), vocab_size - 1)
    np.testing.assert_array_equal(chain._sample_per_sequence(u, first), chain._sample_per_step(u, first))
    big = dm.train_dataset.rows(np.arange(PER_SEQUENCE_MAX_BATCH + 20))
    small = dm.train_dataset.rows(np.arange(5, 9))
    np.testing.assert_array_equal(big["input_ids"][5:9], small["input_ids"])
    assert chain.sample(u[:3, :1]).shape == (3, 1)


def test_entropy_floor_matches_empirical_bigram_ce():
    dm = data_module(vocab_size=16, seq_len=128)
    rows = dm.train_dataset.rows(np.arange(500))
    x, y = rows["input_ids"].ravel(), rows["targets"].ravel()
    counts = np.zeros((16, 16))
    np.add.at(counts, (x, y), 1)
    bigram = counts / counts.sum(1, keepdims=True)
    empirical = -np.log(bigram[x, y]).mean()
    floor = dm.entropy_floor()
    assert 0 < floor < math.log(16)
    assert empirical == pytest.approx(floor, abs=0.02)
    # Lower concentration -> more predictable chain.
    assert data_module(markov_concentration=0.02).entropy_floor() < data_module(markov_concentration=1.0).entropy_floor()


def test_task_step_reports_metrics():
    cfg = Config(task="lm")
    cfg.model.use_moe = True
    task = LanguageModelingTask(cfg)
    model = task.build_model()
    batch = {k: torch.from_numpy(v) for k, v in task.build_data_module().train_dataset.rows(np.arange(4)).items()}
    out = task.train_step(model, batch, None)
    assert out.num_tokens == 4 * cfg.model.seq_len == task.tokens_in_batch(batch)
    for name in ("ce_loss", "aux_loss", "z_loss", "moe_max_load", "moe_dropped_frac", "moe_router_entropy"):
        assert out.metrics[name].shape == (), name
    expected = out.metrics["ce_loss"] + 0.01 * out.metrics["aux_loss"] + 0.001 * out.metrics["z_loss"]
    torch.testing.assert_close(out.loss.detach(), expected)
    val = task.validation_step(model, batch, None)
    torch.testing.assert_close(val.loss, out.metrics["ce_loss"])
    assert task.flops_per_token(torch.compile(model)) == flops_per_token(cfg.model)  # unwraps
