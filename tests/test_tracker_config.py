"""logging.trackers and friends: parsed from YAML lists, `--set a,b` / `[a, b]` and the
environment; unknown or repeated names refused with the key named; TensorBoard from either switch."""
from __future__ import annotations

import pytest

from raytrain_llm.core.callbacks import MLflowLogger, TensorBoardLogger, WandbLogger, default_callbacks
from raytrain_llm.core.config_loader import config_from_mapping, load_config
from raytrain_llm.core.errors import ConfigError


@pytest.mark.parametrize("text", ["mlflow,wandb", "[mlflow, wandb]", " mlflow , wandb "])
def test_trackers_from_the_command_line(text):
    assert load_config(None, [f"logging.trackers={text}"], environ={}).logging.trackers == ["mlflow", "wandb"]


def test_trackers_from_yaml_and_environment(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("logging:\n  trackers: [wandb]\n  wandb_mode: offline\n")
    cfg = load_config(str(path), [], environ={"RAYTRAIN_LOGGING__EXPERIMENT": "e1"})
    assert cfg.logging.trackers == ["wandb"] and cfg.logging.wandb_mode == "offline"
    assert cfg.logging.experiment == "e1"
    assert load_config(None, [], environ={"RAYTRAIN_LOGGING__TRACKERS": "mlflow"}).logging.trackers == ["mlflow"]
    assert config_from_mapping(cfg.to_dict()).logging.trackers == ["wandb"]  # the round trip to workers


@pytest.mark.parametrize("overrides, message", [
    (["logging.trackers=mlfow"], "logging.trackers: 'mlfow' is not one of tensorboard, mlflow, wandb"),
    (["logging.trackers=mlflow,mlflow"], "logging.trackers: a tracker is listed twice"),
    (["logging.wandb_mode=cloud"], "logging.wandb_mode: must be one of online, offline"),
    (["logging.trackers=[1, 2]"], "logging.trackers"),
])
def test_bad_tracker_settings_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides, environ={})
    assert message in str(info.value)


def test_callbacks_follow_the_settings(tmp_path):
    def kinds(*overrides):
        cfg = load_config(None, [f"logging.dir={tmp_path}", *overrides], environ={})
        return [type(cb) for cb in default_callbacks(cfg) if isinstance(cb, (TensorBoardLogger, MLflowLogger,
                                                                            WandbLogger))]

    assert kinds() == [TensorBoardLogger]  # logging.tensorboard is on by default
    assert kinds("logging.tensorboard=false") == []
    assert kinds("logging.tensorboard=false", "logging.trackers=tensorboard") == [TensorBoardLogger]
    assert kinds("logging.tensorboard=false", "logging.trackers=wandb,mlflow") == [MLflowLogger, WandbLogger]
