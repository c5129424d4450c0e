"""One epoch convention everywhere: the epoch a step trained in, counted from 1 (a 2-epoch run's
last step is in epoch 2) in the console, metrics.jsonl, summary.json and checkpoints' meta.json."""
from __future__ import annotations

import io

from raytrain_llm.core.callbacks import ProgressBar
from raytrain_llm.core.progress import Progress
from rt_testing import checkpoints, ckpt_step, read_json, read_jsonl, train


def test_every_record_of_a_run_counts_epochs_from_1(tmp_path):
    # 16 steps per epoch; a save every 8 steps and at each epoch end, a validation at each epoch end.
    bar = ProgressBar(stream=io.StringIO())  # lines in the log (no terminal, left to decide)
    train(tmp_path, extra_callbacks=[bar], **{"training.epochs": 2, "checkpoint.every_n_steps": 8,
                                              "checkpoint.keep_last": 0})
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert {(r["step"], r["epoch"]) for r in records if r["split"] == "train"} == \
        {(s, 1 if s <= 16 else 2) for s in range(1, 33)}
    assert [(r["step"], r["epoch"]) for r in records if r["split"] == "val"] == [(16, 1), (32, 2)]
    metas = {ckpt_step(c): read_json(c / "meta.json")["epoch"] for c in checkpoints(tmp_path)}
    assert metas == {8: 1, 16: 1, 24: 2, 32: 2}
    summary = read_json(tmp_path / "summary.json")
    assert (summary["epoch"], summary["epochs_completed"]) == (2, 2)
    log = (tmp_path / "logs" / "rank0.log").read_text()
    assert "] step 1/32 epoch 1 " in log and "] step 32/32 epoch 2 " in log and " epoch 0 " not in log


def test_epoch_number_of_a_position():
    assert Progress(epoch=0, batch_in_epoch=0).epoch_number() == 1  # nothing trained yet: the first
    assert Progress(epoch=0, batch_in_epoch=5).epoch_number() == 1
    assert Progress(epoch=1, batch_in_epoch=0).epoch_number() == 1  # epoch 1 just ended, counter moved on
    assert Progress(epoch=1, batch_in_epoch=1).epoch_number() == 2
