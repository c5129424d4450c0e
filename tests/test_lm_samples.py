"""task_options.sample_prompts: samples in the log and TensorBoard at each validation, and a run
that trains exactly as it does without them."""
from __future__ import annotations

import glob

import pytest
import torch

from raytrain_llm.core.errors import UsageError
from rt_testing import final_state, make_config, train

SMALL = {"model.vocab_size": 48, "model.seq_len": 32, "model.d_model": 32, "model.n_layers": 2, "model.n_heads": 4,
         "training.max_steps": 6, "training.val_every_n_steps": 3, "training.batch_size": 8,
         "logging.tensorboard": "true"}


def test_samples_are_logged_and_change_nothing_in_training(tmp_path):
    plain, _ = train(tmp_path / "plain", "lm", **SMALL)
    sampled, _ = train(tmp_path / "sampled", "lm", **SMALL, **{"task_options.sample_prompts": "['1 2 3', '7']",
                                                                "task_options.sample_max_new_tokens": 5})
    assert sampled["val"] == plain["val"]
    a, b = final_state(tmp_path / "plain")["model"], final_state(tmp_path / "sampled")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = "".join(open(f, encoding="utf-8").read() for f in glob.glob(str(tmp_path / "sampled" / "logs" / "*")))
    for step in (3, 6):
        assert f"sample 0 at step {step}: '1 2 3 " in log and f"sample 1 at step {step}: '7 " in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "sampled" / "tensorboard" / "samples"), size_guidance={"tensors": 0})
    events.Reload()
    texts = events.Tensors("samples/prompt_1/text_summary")
    assert [t.step for t in texts] == [3, 6]
    assert texts[-1].tensor_proto.string_val[0].decode().startswith("7 ")


def test_a_prompt_the_model_cannot_take_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="task_options.sample_prompts"):
        train(tmp_path, "lm", **SMALL, **{"task_options.sample_prompts": "['hello']"})
    cfg = make_config(tmp_path, "lm", **{"task_options.sample_temperature": -1, "task_options.sample_prompts": "['1']"})
    from raytrain_llm.tasks.lm_task import LanguageModelingTask

    with pytest.raises(UsageError, match="sample_temperature"):
        LanguageModelingTask(cfg).configure_callbacks()
