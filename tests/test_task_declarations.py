"""What a task declares about the config before it is built (`TrainingTask.inactive_keys`), and
when a subclass inherits that declaration."""
from __future__ import annotations

import dataclasses

from raytrain_llm.core.config import Config, ModelConfig
from raytrain_llm.core.config_checks import switched_off_keys
from raytrain_llm.core.task import declared_inactive_keys
from raytrain_llm.tasks.lm_task import LanguageModelingTask
from raytrain_llm.tasks.regression_task import RegressionTask
from rt_helpers import OptionsTask, OwnCallbacksTask


def test_regression_declares_every_transformer_and_token_file_key():
    off = declared_inactive_keys(RegressionTask, Config())
    transformer = {f"model.{f.name}" for f in dataclasses.fields(ModelConfig)} - {
        "model.input_dim", "model.hidden_dim", "model.dropout"}
    token_files = {"data.markov_concentration", "data.train_tokens", "data.val_tokens", "data.token_dtype",
                   "data.check_token_ids"}
    assert set(off) == transformer | token_files
    assert set(off.values()) == {"task regression does not use it"}


def test_lm_declares_by_its_switches():
    cfg = Config(task="lm")
    cfg.data.train_tokens, cfg.data.val_tokens = "train.bin", "val.bin"
    cfg.training.lr_schedule = "constant"
    off = declared_inactive_keys(LanguageModelingTask, cfg)
    assert off["model.input_dim"] == "task lm does not use it" and off["model.top_k"] == "model.use_moe is false"
    assert off["data.num_train_samples"] == "data.train_tokens is set"
    assert off["training.min_lr_ratio"] == "training.lr_schedule is constant"
    assert "data.train_tokens" not in off and "model.d_model" not in off and "model.dropout" not in off


def test_a_subclass_inherits_the_declaration_only_when_it_reads_the_config_the_same_way():
    cfg = Config(task="rt_helpers:OwnCallbacksTask")
    # Adds callbacks only: the parent's model, data and schedule, so the parent's declaration.
    assert declared_inactive_keys(OwnCallbacksTask, cfg) == declared_inactive_keys(RegressionTask, cfg)
    # Builds its own model: it may read any key, so nothing is said to be unused.
    assert declared_inactive_keys(OptionsTask, cfg) == {}


def test_the_engine_switches_name_no_task_key():
    off = switched_off_keys(Config(task="lm"))
    assert off["callbacks.early_stopping_patience"] == "callbacks.early_stopping is false"
    assert not any(k.startswith(("model.", "data.")) or k == "training.min_lr_ratio" for k in off)
