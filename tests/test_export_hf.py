"""Export to the Hugging Face layout: the model transformers builds from the exported folder
computes our logits (fp32, 1e-4) and our greedy tokens, for each supported architecture; what
no architecture expresses is refused (exit 2, one line, nothing written)."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from raytrain_llm.core.config import Config  # noqa: E402
from raytrain_llm.data.text_codec import TokenIdCodec  # noqa: E402
from raytrain_llm.export import cli  # noqa: E402
from raytrain_llm.inference.checkpoint_source import TrainedModel  # noqa: E402
from raytrain_llm.inference.hf_export.writer import export  # noqa: E402
from raytrain_llm.models.generation import SamplingConfig, generate  # noqa: E402
from test_generation import peaked_model  # noqa: E402

ARCHS = {  # name: (model config, HF class)
    "gpt2": ({"position": "learned", "norm": "layernorm", "mlp_type": "gelu"}, "GPT2LMHeadModel"),
    "llama-swiglu-untied": ({"mlp_type": "swiglu", "tie_embeddings": False}, "LlamaForCausalLM"),
    "llama-gelu": ({"mlp_type": "gelu"}, "LlamaForCausalLM"),
    "mixtral": ({"mlp_type": "swiglu", "use_moe": True, "num_experts": 4, "top_k": 2}, "MixtralForCausalLM"),
    "qwen2moe-shared-top1-every2": ({"mlp_type": "swiglu", "use_moe": True, "num_experts": 4, "top_k": 1,
                                     "num_shared_experts": 2, "moe_every_n_layers": 2}, "Qwen2MoeForCausalLM"),
    "qwen2moe-no-shared-every2": ({"mlp_type": "swiglu", "use_moe": True, "num_experts": 4, "top_k": 2,
                                   "moe_every_n_layers": 2, "expert_hidden_dim": 24,
                                   "bias_balancing": True}, "Qwen2MoeForCausalLM"),
}


def trained_model(model) -> TrainedModel:
    config = Config(task="lm", model=model.cfg)
    return TrainedModel(model, config, checkpoint_dir="", run_dir=None, task=None)


def load_hf(folder):
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return hf.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_exported_model_computes_our_logits_and_greedy_tokens(arch, tmp_path):
    overrides, hf_class = ARCHS[arch]
    model = peaked_model(seed=3, **overrides)
    out = tmp_path / "hf"
    export(trained_model(model), TokenIdCodec(64), str(out), "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == [hf_class]
    hf = load_hf(out)
    assert type(hf).__name__ == hf_class
    ids = torch.randint(0, 64, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(ids)[0], hf(ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    prompt = ids[:1, :8]
    greedy = generate(model, prompt.tolist(), SamplingConfig(max_new_tokens=32, temperature=0))[0]
    hf_tokens = hf.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                            attention_mask=torch.ones_like(prompt), pad_token_id=0)[0, 8:].tolist()
    assert hf_tokens == greedy


REFUSALS = {
    "model.capacity_factor": {"mlp_type": "swiglu", "use_moe": True, "capacity_factor": 1.25},
    "model.bias_balancing": {"mlp_type": "swiglu", "use_moe": True, "bias_balancing": True},
    "model.mlp_type": {"use_moe": True, "mlp_type": "gelu"},
    "model.norm": {"norm": "layernorm"},
    "model.use_moe": {"position": "learned", "norm": "layernorm", "use_moe": True},
}


@pytest.mark.parametrize("key", REFUSALS)
def test_what_no_architecture_expresses_is_refused_by_key(key, tmp_path, capsys):
    from raytrain_llm.core.checkpointing import CheckpointManager

    model = peaked_model(**REFUSALS[key])
    if key == "model.bias_balancing":
        for layer in model.moe_layers:
            layer.router.bias.copy_(torch.linspace(-0.01, 0.01, layer.num_experts))
    # A real checkpoint folder, so the refusal goes through the command line.
    cfg = Config(task="lm", model=model.cfg)
    CheckpointManager(str(tmp_path / "ckpts")).save(
        {"model": model.state_dict(), "optimizer": {}, "progress": {}, "config": cfg.to_dict()},
        step=1, epoch=0, metrics={})
    out = tmp_path / "export" / "hf"
    code = cli(["--checkpoint", str(tmp_path / "ckpts" / "step-00000001"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and key in err, err
    assert not (tmp_path / "export").exists()  # not even the parent folder


def test_a_run_exports_with_its_tokenizer(text_lm_run, tmp_path, capsys):
    run, tok, _ = text_lm_run
    out = tmp_path / "hf"
    assert cli(["--checkpoint", str(run), "--out", str(out)]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "def f(x):\n    return x + 1\n"
    assert hf_tok(text)["input_ids"] == tok.encode(text).ids
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == tok.token_to_id("<|endoftext|>")
    assert load_hf(out).generation_config.eos_token_id == tok.token_to_id("<|endoftext|>")
    # An existing folder is never overwritten.
    capsys.readouterr()
    assert cli(["--checkpoint", str(run), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_safetensors_export_loads_back_into_our_model(tmp_path):
    from safetensors.torch import load_file

    from raytrain_llm.core.config_loader import load_config
    from raytrain_llm.models import GPT

    model = peaked_model(**ARCHS["mixtral"][0])
    export(trained_model(model), TokenIdCodec(64), str(tmp_path / "st"), "safetensors")
    cfg = load_config(str(tmp_path / "st" / "config.yaml"), [], environ={}, task="lm")
    again = GPT(cfg.model).eval()
    again.load_state_dict(load_file(tmp_path / "st" / "model.safetensors"), strict=True)
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.equal(again(ids)[0], model(ids)[0])
    # The commands take the folder as they take a checkpoint.
    from raytrain_llm.inference.checkpoint_source import load_trained_model

    loaded = load_trained_model(str(tmp_path / "st")).model
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], model(ids)[0])


def test_a_byte_level_model_from_a_compiled_ddp_checkpoint(tmp_path, capsys):
    """vocab 256 on token files: prompts are UTF-8 bytes, and the export carries a byte tokenizer.
    The state dict has the `module._orig_mod.` prefixes of a compiled model under DDP."""
    from raytrain_llm.core.checkpointing import CheckpointManager
    from raytrain_llm.sample import cli as sample_cli

    torch.manual_seed(0)
    model = peaked_model(**ARCHS["llama-gelu"][0])
    model = type(model)(type(model.cfg)(**{**vars(model.cfg), "vocab_size": 256})).eval()
    cfg = Config(task="lm", model=model.cfg)
    cfg.data.train_tokens, cfg.data.val_tokens = "train.bin", "val.bin"  # as the run had them (need not exist now)
    state = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    CheckpointManager(str(tmp_path / "run" / "checkpoints")).save(
        {"model": state, "optimizer": {}, "progress": {}, "config": cfg.to_dict()}, step=3, epoch=0, metrics={})
    assert sample_cli(["--checkpoint", str(tmp_path / "run"), "--prompt", "héllo", "--temperature", "0",
                       "--max-new-tokens", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    prompt = list("héllo".encode())
    want = generate(model, [prompt], SamplingConfig(8, temperature=0))[0]
    assert lines[1:] == bytes(prompt + want).decode("utf-8", errors="replace").splitlines()
    assert cli(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok("héllo wörld €")["input_ids"] == list("héllo wörld €".encode())
    assert tok.decode(list("wörld".encode())) == "wörld"
