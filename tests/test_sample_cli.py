"""`python -m raytrain_llm.sample` on real runs: text through the run's tokenizer, seeded
reproducibility, and user mistakes as one line with exit 2."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from raytrain_llm.sample import cli
from rt_testing import REPO, checkpoints, cli_env


@pytest.fixture
def text(text_lm_run):
    return text_lm_run


@pytest.fixture
def moe(moe_lm_run):
    return moe_lm_run[0]


def sample(args, capsys) -> tuple[int, str, str]:
    code = cli([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sampling_through_the_tokenizer_is_reproducible(text, capsys):
    run, tok, _ = text
    args = ["--checkpoint", run, "--prompt", "def main(", "--prompt", "import os", "--max-new-tokens", 12,
            "--num-samples", 2, "--temperature", 0.9, "--top-k", 50, "--top-p", 0.95, "--seed", 5]
    code, first, _ = sample(args, capsys)
    assert code == 0
    assert sample(args, capsys)[1] == first
    assert sample(args[:-1] + [6], capsys)[1] != first
    blocks = first.split("--- sample ")[1:]
    assert len(blocks) == 4 and blocks[0].split("\n", 1)[1].startswith("def main(")
    # Characters outside the training text go through the byte-level BPE as bytes.
    code, out, _ = sample(["--checkpoint", run, "--prompt", "héllo € 日本", "--max-new-tokens", 3], capsys)
    assert code == 0 and out.splitlines()[1].startswith("héllo € 日本")
    # A checkpoint folder works as the run folder does (this run's best is its latest).
    assert sample(["--checkpoint", checkpoints(run)[-1], *args[2:]], capsys)[1] == first


def test_greedy_from_the_command_line_matches_generate(moe, capsys):
    import torch

    from raytrain_llm.inference.checkpoint_source import load_trained_model
    from raytrain_llm.models.generation import SamplingConfig, generate

    code, out, _ = sample(["--checkpoint", moe, "--prompt", "1 2 3", "--prompt", "7", "--temperature", 0,
                           "--max-new-tokens", 10, "--device", "cpu"], capsys)
    assert code == 0
    model = load_trained_model(str(moe)).model
    want = generate(model, [[1, 2, 3], [7]], SamplingConfig(10, temperature=0), torch.Generator())
    got = [line for line in out.splitlines() if not line.startswith("---")]
    assert got == [" ".join(map(str, p + w)) for p, w in zip([[1, 2, 3], [7]], want)]


def test_user_mistakes_are_one_line_and_exit_2(text, moe, tmp_path, capsys):
    run, _, _ = text
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(checkpoints(run)[-1], corrupt)
    (corrupt / "state.pt").write_bytes((corrupt / "state.pt").read_bytes()[:500])
    cases = {
        "no checkpoint": (["--checkpoint", empty, "--prompt", "x"], "no checkpoint in"),
        "missing path": (["--checkpoint", tmp_path / "nope", "--prompt", "x"], "does not exist"),
        "corrupt": (["--checkpoint", corrupt, "--prompt", "x"], "corrupt or unreadable"),
        "no prompt": (["--checkpoint", run], "give a prompt"),
        "top-p": (["--checkpoint", run, "--prompt", "x", "--top-p", "0"], "--top-p"),
        "ids for a model without a tokenizer": (["--checkpoint", moe, "--prompt", "hello"], "token ids"),
        "id outside the vocabulary": (["--checkpoint", moe, "--prompt", "1 99"], "outside"),
        "bad flag": (["--checkpoint", run, "--prompt", "x", "--temprature", "1"], "unrecognized"),
    }
    for name, (args, words) in cases.items():
        code, out, err = sample(args, capsys)
        assert code == 2, name
        assert err.count("\n") == 1 and words in err and "Traceback" not in err, (name, err)


def _tokenizer_without_byte_fallback(unk: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]") if unk else models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["def main(): return 1 + 2", "import os"] * 10,
                            trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]"] if unk else []))
    return tok


@pytest.mark.parametrize("unk", [True, False])
def test_a_prompt_the_tokenizer_cannot_encode_is_refused_by_name(text, tmp_path, capsys, unk):
    run, _, _ = text
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoints(run)[-1], ckpt)
    _tokenizer_without_byte_fallback(unk).save(str(ckpt / "tokenizer.json"))
    assert sample(["--checkpoint", ckpt, "--prompt", "import os", "--max-new-tokens", 2], capsys)[0] == 0
    code, _, err = sample(["--checkpoint", ckpt, "--prompt", "import €", "--max-new-tokens", 2], capsys)
    assert code == 2 and "'€'" in err and err.count("\n") == 1


def test_the_command_runs_as_a_module(text):
    run, _, _ = text
    p = subprocess.run([sys.executable, "-m", "raytrain_llm.sample", "--checkpoint", str(run), "--prompt", "class",
                        "--max-new-tokens", "5", "--temperature", "0"], cwd=REPO, env=cli_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[1].startswith("class")
    p = subprocess.run([sys.executable, "-m", "raytrain_llm.sample", "--checkpoint", str(run)], cwd=REPO,
                       env=cli_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
