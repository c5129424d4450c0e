"""The `lm` task end to end through the engine: it really learns, and it resumes exactly."""
from __future__ import annotations

import math

import pytest
import torch

from raytrain_llm.core.config_loader import load_config
from raytrain_llm.core.errors import UsageError
from raytrain_llm.tasks.lm_task import LanguageModelingTask
from rt_testing import final_state, read_jsonl, run_cli, set_args, settings, train

# Small enough for ~200 CPU steps in seconds, big enough to reach the data's entropy floor.
TINY_LM = {
    "model.vocab_size": 32, "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2,
    "model.seq_len": 32, "model.mlp_type": "swiglu",
    "data.num_train_samples": 2048, "data.num_val_samples": 256, "data.markov_concentration": 0.1,
    "training.batch_size": 32, "training.lr": 1e-2, "training.warmup_steps": 10,
    "logging.log_every_n_steps": 16,
}
MOE = {"model.use_moe": True, "model.num_experts": 4, "model.top_k": 2}


@pytest.mark.timeout(300)
def test_cli_lm_moe_reaches_entropy_floor_with_balanced_routing(tmp_path):
    s = settings(tmp_path, **TINY_LM, **MOE, **{"training.epochs": 3})
    p = run_cli(["--task", "lm", *set_args(s)], timeout=280)
    assert p.returncode == 0, p.stderr[-2000:]
    cfg = load_config(None, [f"{k}={v}" for k, v in s.items()], environ={}, task="lm")
    floor = LanguageModelingTask(cfg).entropy_floor()
    records = read_jsonl(tmp_path / "metrics.jsonl")
    val = [r for r in records if r["split"] == "val"][-1]["val/loss"]
    # The Markov chain's conditional entropy bounds every model from below.
    assert floor <= val <= 1.10 * floor, (val, floor)
    last_val = [r for r in records if r["split"] == "val"][-1]
    # exp of the mean loss (a mean of per-batch exp(loss) would be larger: Jensen)
    assert last_val["val/perplexity"] == pytest.approx(math.exp(last_val["val/loss"]), rel=1e-9)
    last_train = [r for r in records if r["split"] == "train"][-1]
    assert last_train["perplexity"] == pytest.approx(math.exp(last_train["ce_loss"]), rel=1e-9)  # the same for train
    assert last_train["moe_max_load"] < 2.0  # busiest expert under twice the mean load
    assert 0.9 < last_train["aux_loss"] < 1.5  # near 1.0, the balanced value


@pytest.mark.timeout(300)
@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_lm_resume_mid_epoch_matches_uninterrupted(tmp_path, moe):
    common = {**TINY_LM, **(MOE if moe else {}), "data.num_train_samples": 256, "training.epochs": 2,
              "training.lr_schedule": "constant", "checkpoint.every_n_steps": 3, "model.dropout": 0.1}
    full, _ = train(tmp_path / "full", task="lm", **common)
    # Stop mid-epoch 0 (8 steps per epoch), then continue from the latest checkpoint.
    train(tmp_path / "split", task="lm", **common, **{"training.max_steps": 5})
    resumed, _ = train(tmp_path / "split", task="lm", **common, **{"checkpoint.resume": "auto"})
    assert resumed["step"] == full["step"] == 16
    a, b = final_state(tmp_path / "full")["model"], final_state(tmp_path / "split")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_monitor_may_name_a_metric_finalize_train_metrics_adds_not_one_never_logged(tmp_path):
    small = {**TINY_LM, "data.num_train_samples": 256, "training.max_steps": 4, "training.val_every_n_steps": 2,
             "data.num_val_samples": 64}
    result, _ = train(tmp_path / "ppl", "lm", **small, **{"checkpoint.monitor": "perplexity"})
    assert result["step"] == 4  # the train perplexity comes from finalize_train_metrics
    with pytest.raises(UsageError, match=r"^checkpoint.monitor: 'mfu' is not a validation or train metric of this run"):
        train(tmp_path / "mfu", "lm", **small, **{"checkpoint.monitor": "mfu"})  # logged on known GPUs only
