"""`python -m raytrain_llm.evaluate` reports what the run's own validation reported."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raytrain_llm.evaluate import cli
from rt_testing import read_json


@pytest.fixture
def text(text_lm_run):
    return text_lm_run


def evaluate(args, capsys) -> tuple[int, dict, str]:
    code = cli([str(a) for a in args])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else {}), out.err


def test_a_token_file_gives_the_runs_last_validation(text, capsys):
    run, _, _ = text
    val = read_json(run / "summary.json")["final"]["val"]
    code, report, _ = evaluate(["--checkpoint", run, "--data", run.parent / "val.bin", "--device", "cpu"], capsys)
    assert code == 0
    assert report["loss"] == pytest.approx(val["val/loss"], rel=1e-6, abs=0)
    assert report["perplexity"] == pytest.approx(val["val/perplexity"], rel=1e-6, abs=0)
    # Another batch size changes no number beyond round-off (samples are weighted, none dropped).
    other = evaluate(["--checkpoint", run, "--data", run.parent / "val.bin", "--batch-size", 3], capsys)[1]
    assert other["loss"] == pytest.approx(report["loss"], rel=1e-5)


def test_the_runs_own_validation_split_of_a_moe_run(moe_lm_run, capsys):
    run, result = moe_lm_run
    code, report, _ = evaluate(["--checkpoint", run], capsys)
    assert code == 0
    assert report["loss"] == pytest.approx(result["val"]["val/loss"], rel=1e-6, abs=0)
    assert report["tokens"] == 40 * 32


def test_a_text_file_goes_through_the_tokenizer(text, tmp_path, capsys):
    from raytrain_llm.inference.checkpoint_source import load_trained_model

    run, tok, _ = text
    doc = tmp_path / "doc.txt"
    doc.write_text("def evaluate(model, data):\n    return sum(loss(model, batch) for batch in data)\n" * 6)
    code, report, _ = evaluate(["--checkpoint", run, "--data", doc], capsys)
    assert code == 0
    # By hand: consecutive windows of seq_len + 1 tokens overlapping by one, mean next-token CE.
    ids = torch.tensor(tok.encode(doc.read_text()).ids)
    T = 32
    windows = torch.stack([ids[i * T:i * T + T + 1] for i in range((len(ids) - 1) // T)])
    model = load_trained_model(str(run)).model
    with torch.no_grad():
        logits = model(windows[:, :-1])[0]
    want = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    assert report["loss"] == pytest.approx(want, rel=1e-5)
    assert report["perplexity"] == pytest.approx(math.exp(want), rel=1e-5)
    assert report["tokens"] == windows[:, 1:].numel()


def test_user_mistakes_are_one_line_and_exit_2(text, moe_lm_run, tmp_path, capsys):
    run, _, _ = text
    moe, _ = moe_lm_run
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([1, 2, 5000] * 40))
    short = tmp_path / "short.npy"
    np.save(short, np.array([1, 2, 3]))
    (tmp_path / "t.txt").write_text("hello")
    capsys.readouterr()  # the training run's log
    cases = {
        "missing data": (["--checkpoint", run, "--data", tmp_path / "nope.bin"], "does not exist"),
        "id outside the vocabulary": (["--checkpoint", run, "--data", bad], "outside model.vocab_size"),
        "shorter than a sample": (["--checkpoint", run, "--data", short], "fewer than one sample"),
        "text for a model without a tokenizer": (["--checkpoint", moe, "--data", tmp_path / "t.txt"], "no tokenizer"),
        "no checkpoint": (["--checkpoint", tmp_path, "--data", bad], "no checkpoint"),
    }
    for name, (args, words) in cases.items():
        code, _, err = evaluate(args, capsys)
        assert code == 2, (name, err)
        assert err.count("\n") == 1 and words in err, (name, err)
