"""The whole small-scale path a user follows, through the real commands as subprocesses: prepare a
real corpus (stdlib sources) with a trained BPE tokenizer, train an lm on the prepared folder,
evaluate it (equal to the run's last validation), sample from it (greedy text through the run's
tokenizer), export it to the Hugging Face layout and continue the same prompt with transformers."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prep_testing import prepare_args, stdlib_corpus
from rt_testing import REPO, cli_env, read_jsonl

transformers = pytest.importorskip("transformers")

PROMPT, NEW_TOKENS = "def ", 16
MODEL = {"model.vocab_size": 0, "model.d_model": 48, "model.n_layers": 2, "model.n_heads": 2,
         "model.seq_len": 64, "model.mlp_type": "swiglu"}
TRAINING = {"training.max_steps": 40, "training.batch_size": 8, "training.lr": 3e-3, "training.warmup_steps": 5,
            "training.val_every_n_steps": 20, "training.limit_val_batches": 4,
            "checkpoint.every_n_steps": 20, "logging.log_every_n_steps": 10, "distributed.launcher": "local"}


def command(args, timeout=120) -> subprocess.CompletedProcess:
    """`python ARGS` from the repo root, as a user runs it; a nonzero exit fails with its stderr."""
    done = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{args[:2]} exited {done.returncode}: {done.stderr[-3000:]}"
    return done


def sampled_text(run) -> str:
    out = command(["-m", "raytrain_llm.sample", "--checkpoint", run, "--prompt", PROMPT, "--temperature", 0,
                   "--max-new-tokens", NEW_TOKENS, "--seed", 0, "--device", "cpu"]).stdout
    header, text = out.split("\n", 1)
    assert header == "--- sample 1 of prompt 1" and text.endswith("\n")
    return text[:-1]  # the command ends each sample with a newline


def greedy_ids(model, prompt: list[int], steps: int, eod_id: int) -> list[int]:
    """Greedy continuation by full forward passes (no KV cache): argmax of the last position's logits."""
    import torch

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([ids]))[0][0, -1].argmax())
            ids.append(nxt)
            if nxt == eod_id:
                break
    return ids


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    corpus = stdlib_corpus(root / "corpus", count=24)
    data, run = root / "data", root / "run"
    command(["-m", "raytrain_llm.prepare", *prepare_args([root / "corpus" / "*.py"], data, "--tokenizer",
             "train:512", "--val-fraction", "0.2", "--seed", "1", "--workers", "1")])
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["documents"] == len(corpus) and manifest["vocab_size"] == 512
    sets = {**MODEL, **TRAINING, "data.train_tokens": data, "logging.dir": run}
    command(["train.py", "--task", "lm", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]], timeout=300)
    return data, run, manifest


def test_evaluate_equals_the_runs_last_validation(trained):
    data, run, manifest = trained
    vals = [r for r in read_jsonl(run / "metrics.jsonl") if "val/loss" in r]
    assert vals and vals[-1]["step"] == TRAINING["training.max_steps"]
    limit = TRAINING["training.limit_val_batches"]

    def evaluate(*extra) -> dict:
        return json.loads(command(["-m", "raytrain_llm.evaluate", "--checkpoint", run, *extra,
                                   "--device", "cpu"]).stdout)

    # The run's own validation split (limited as the run limited it), and the prepared folder given
    # as --data with the same limit: the batches the run validated, so its last val/loss exactly.
    for report in (evaluate(), evaluate("--data", data, "--limit-batches", limit)):
        assert report["loss"] == pytest.approx(vals[-1]["val/loss"], rel=1e-6, abs=0)
        assert report["perplexity"] == pytest.approx(vals[-1]["val/perplexity"], rel=1e-6, abs=0)
        assert report["tokens"] == limit * TRAINING["training.batch_size"] * MODEL["model.seq_len"]
    # --data alone reads the whole val split: every window of seq_len + 1 tokens.
    whole = evaluate("--data", data)
    T = MODEL["model.seq_len"]
    assert whole["tokens"] == (manifest["splits"]["val"]["tokens"] - 1) // T * T > report["tokens"]


def test_sample_decodes_the_greedy_ids_and_the_hf_export_continues_the_same(trained, tmp_path):
    from tokenizers import Tokenizer

    from raytrain_llm.inference.checkpoint_source import load_trained_model

    data, run, manifest = trained
    text = sampled_text(run)
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)
    assert sampled_text(run) == text
    # The same text by hand: the run's tokenizer, the model's argmax step by step, the tokenizer's decode.
    tok = Tokenizer.from_file(str(run / "tokenizer.json"))
    assert (run / "tokenizer.json").read_bytes() == (data / "tokenizer.json").read_bytes()
    prompt = tok.encode(PROMPT, add_special_tokens=False).ids
    model = load_trained_model(str(run)).model.eval()
    ids = greedy_ids(model, prompt, NEW_TOKENS, manifest["eod_id"])
    assert tok.decode(ids, skip_special_tokens=False) == text

    out = tmp_path / "hf"
    command(["-m", "raytrain_llm.export", "--checkpoint", run, "--out", out, "--format", "hf"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    import torch

    hf_prompt = hf_tok(PROMPT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert hf_prompt[0].tolist() == prompt
    with torch.no_grad():
        hf_ids = hf.generate(hf_prompt, attention_mask=torch.ones_like(hf_prompt), max_new_tokens=NEW_TOKENS,
                             do_sample=False, pad_token_id=manifest["eod_id"])[0].tolist()
    assert hf_ids == ids
    assert hf_tok.decode(hf_ids) == text
