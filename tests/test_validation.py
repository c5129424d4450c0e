"""`Validator` on its own: the metrics of one pass over the validation split (sample-weighted over
batches), the model's modes and the random streams left as they were, the declaration checked."""
from __future__ import annotations

import pytest
import torch

from raytrain_llm.core.distributed import DistributedManager
from raytrain_llm.core.errors import UsageError
from raytrain_llm.core.precision import Precision
from raytrain_llm.core.validation import Validator
from raytrain_llm.tasks.regression_task import RegressionTask
from rt_testing import make_config


def _validator(tmp_path, task_cls=RegressionTask, **overrides):
    # 40 samples in batches of 16: 16 + 16 + 8, so an unweighted mean of batch means would differ.
    cfg = make_config(tmp_path, **{"data.num_val_samples": 40, **overrides})
    task = task_cls(cfg)
    data = task.build_data_module()
    cpu = torch.device("cpu")
    validator = Validator(cfg, task, data, DistributedManager(), Precision("none", cpu), cpu, task.build_criterion())
    return validator, task, data


def test_run_reports_the_sample_weighted_means_of_the_split(tmp_path):
    validator, task, data = _validator(tmp_path)
    torch.manual_seed(0)
    model = task.build_model()
    model.train()
    model[2].eval()  # a submodule a task keeps in eval mode stays so
    rng = torch.get_rng_state()
    metrics = validator.run(model)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and not model[2].training and model[0].training
    x = torch.stack([data.val_dataset[i]["x"] for i in range(40)])
    y = torch.stack([data.val_dataset[i]["y"] for i in range(40)])
    with torch.no_grad():
        model.eval()
        pred = model(x).float()
    assert set(metrics) == {"val/loss", "val/mae"}
    assert metrics["val/loss"] == pytest.approx(float(((pred - y) ** 2).mean()), rel=1e-5)
    assert metrics["val/mae"] == pytest.approx(float((pred - y).abs().mean()), rel=1e-5)


class UndeclaredMetricTask(RegressionTask):
    """Declares val/loss and val/mae (inherited) but reports val/rmse too."""

    @classmethod
    def validation_metrics(cls, config) -> frozenset:
        return frozenset({"val/loss", "val/mae"})

    def validation_step(self, model, batch, criterion):
        out = super().validation_step(model, batch, criterion)
        out.metrics["rmse"] = out.loss.sqrt()
        return out


def test_first_run_checks_the_declaration_and_the_monitor(tmp_path):
    validator, task, _ = _validator(tmp_path, UndeclaredMetricTask)
    with pytest.raises(UsageError, match="val/rmse"):
        validator.run(task.build_model())
    validator, task, _ = _validator(tmp_path / "monitor", **{"checkpoint.monitor": "loss"})
    with pytest.raises(UsageError, match=r"checkpoint.monitor: 'loss' is not a validation or train metric"):
        validator.run(task.build_model(), {"loss": None})
    assert validator.run(task.build_model(), {"loss": None})  # checked once: the second run only measures
