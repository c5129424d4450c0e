"""KV-cached generation against recomputing the sequence with the training forward."""
from __future__ import annotations

import pytest
import torch

from raytrain_llm.core.config import ModelConfig
from raytrain_llm.models import GPT
from raytrain_llm.models.generation import SamplingConfig, filter_logits, generate

ARCHS = {
    "dense-rope": dict(mlp_type="swiglu"),
    "dense-learned": dict(position="learned", norm="layernorm"),
    "moe-rope": dict(use_moe=True, mlp_type="swiglu", num_experts=4, top_k=2),
    "moe-learned-shared": dict(use_moe=True, position="learned", num_experts=4, top_k=1, num_shared_experts=1,
                               moe_every_n_layers=2),
}
PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12, 13], [4]]


def peaked_model(seed: int = 0, **kw) -> GPT:
    """A random model with confident logits: near-uniform ones (N(0, 0.02) init) would let
    round-off between two equal computations flip an argmax."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, seq_len=64, **kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(std=0.3)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_greedy_equals_recompute_for_a_batch_of_lengths(arch):
    model = peaked_model(**ARCHS[arch])
    s = SamplingConfig(max_new_tokens=24, temperature=0)
    cached = generate(model, PROMPTS, s)
    assert cached == generate(model, PROMPTS, s, use_cache=False)
    assert [len(r) for r in cached] == [24, 24, 24]
    # A row of the batch gets what it gets alone (padding changes nothing).
    assert generate(model, [PROMPTS[2]], s) == [cached[2]]


@pytest.mark.parametrize("arch", ["dense-rope", "moe-learned-shared"])
def test_cached_logits_match_the_training_forward(arch):
    model = peaked_model(**ARCHS[arch])
    seqs = [torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 12, 9)]
    longest = max(len(s) for s in seqs)
    pad = torch.tensor([longest - len(s) for s in seqs])
    cache = model.new_cache(pad, longest + 1)
    ids = torch.stack([torch.cat([torch.zeros(longest - len(s), dtype=torch.long), s]) for s in seqs])
    last = model.forward_cached(ids[:, :-1], cache)  # prefill all but the last slot
    step = model.forward_cached(ids[:, -1:], cache)
    with torch.no_grad():
        for row, s in enumerate(seqs):
            full = model(s[None])[0][0]  # [T, V]
            torch.testing.assert_close(step[row], full[-1], atol=1e-4, rtol=0)
            if len(s) > 1:
                torch.testing.assert_close(last[row], full[-2], atol=1e-4, rtol=0)


def test_seeded_sampling_is_reproducible_and_the_seed_matters():
    model = peaked_model(**ARCHS["moe-rope"])
    s = SamplingConfig(max_new_tokens=16, temperature=1.5, top_k=20, top_p=0.95)

    def run(seed, **kw):
        return generate(model, PROMPTS, s, torch.Generator().manual_seed(seed), **kw)

    assert run(7) == run(7) == run(7, use_cache=False)
    assert run(7) != run(8)


def test_stops_at_end_of_document_and_at_the_model_length():
    model = peaked_model(**ARCHS["dense-rope"])
    greedy = generate(model, PROMPTS, SamplingConfig(max_new_tokens=20, temperature=0))
    eod = greedy[0][3]  # the 4th token of row 0 becomes the end-of-document token
    out = generate(model, PROMPTS, SamplingConfig(max_new_tokens=20, temperature=0, eod_id=eod))
    for full, cut in zip(greedy, out):
        assert cut == (full[:full.index(eod) + 1] if eod in full else full)
    # seq_len 64, longest prompt 9: at most 55 new tokens whatever is asked.
    assert {len(r) for r in generate(model, PROMPTS, SamplingConfig(max_new_tokens=500, temperature=0))} == {55}


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))

    def kept(out):
        return torch.isfinite(out[0]).nonzero().flatten().tolist()

    assert kept(filter_logits(logits, 2, 1.0)) == [0, 1]
    assert kept(filter_logits(logits, 0, 0.79)) == [0, 1]  # 0.5 + 0.3 reaches 0.79
    assert kept(filter_logits(logits, 0, 0.81)) == [0, 1, 2]
    assert kept(filter_logits(logits, 0, 0.01)) == [0]
    assert kept(filter_logits(logits, 3, 0.6)) == [0, 1]


@pytest.mark.parametrize("kw", [{"top_k": 2, "mlp_type": "swiglu"}, {"top_k": 1, "num_shared_experts": 1},
                                {"top_k": 2, "bias_balancing": True}])
def test_moe_decode_path_equals_the_layer_forward(kw):
    from raytrain_llm.models import MoE

    torch.manual_seed(0)
    layer = MoE(32, 48, num_experts=4, **kw).eval()
    layer.router.bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0]))
    x = torch.randn(5, 1, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer.decode(x), layer(x)[0], atol=1e-6, rtol=1e-5)
