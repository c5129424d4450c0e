"""The ranks' per-step agreement (core/step_agreement): the same verdict on every rank from
different local flags, and a single agreement collective per optimizer step in a real two-rank
engine run."""
from __future__ import annotations

import signal
import socket

import pytest
import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(rank: int, port: int, out_dir: str, queue) -> None:
    import torch.distributed as tdist

    from raytrain_llm.core import interruption, step_agreement
    from raytrain_llm.core.callbacks import Callback
    from raytrain_llm.core.config_loader import load_config
    from raytrain_llm.core.distributed import DistributedManager
    from raytrain_llm.core.engine import TrainingEngine
    from raytrain_llm.tasks.regression_task import RegressionTask

    torch.set_num_threads(1)
    dist = DistributedManager()
    dist.init_process_group("gloo", rank, 2, "127.0.0.1", port)
    # Rank 0 asks to stop and skip the final validation; rank 1 brings a stop signal and a notice.
    if rank == 1:
        interruption.request(signal.SIGINT)
        interruption.watch_notice(lambda: True)
    agreed = step_agreement.agree(dist, None, stop=rank == 0, validate_at_stop=rank != 0)
    interruption.watch_notice(None)
    interruption.forget_agreement()
    interruption._state.requested = 0  # this process trains on below

    calls = []
    real_all_reduce = tdist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        calls.append(1)
        return real_all_reduce(*args, **kwargs)

    class CollectivesPerStep(Callback):
        def __init__(self):
            self.at_step = []

        def on_batch_end(self, engine, step, outputs) -> None:
            self.at_step.append(len(calls))

    counter = CollectivesPerStep()
    sets = ["model.input_dim=8", "model.hidden_dim=16", "training.batch_size=8", "training.epochs=1",
            "training.max_steps=12", "data.num_train_samples=256", "data.num_val_samples=16",
            "training.validate=false", "checkpoint.enabled=false", "logging.progress_bar=off",
            "logging.tensorboard=false", "logging.log_every_n_steps=100", "logging.level=WARNING",
            f"logging.dir={out_dir}/{rank}", "training.device=cpu"]
    cfg = load_config(overrides=sets, environ={}, task="regression")
    engine = TrainingEngine(cfg, RegressionTask(cfg), dist=dist, callbacks=[counter], check_data=False)
    tdist.all_reduce = counting_all_reduce
    try:
        engine.fit()
    finally:
        tdist.all_reduce = real_all_reduce
    per_step = [b - a for a, b in zip(counter.at_step, counter.at_step[1:])]
    queue.put((rank, agreed, per_step))
    del engine  # its DDP model holds the group: destroyed (threads joined) before this process exits
    dist.cleanup()


@pytest.mark.timeout(120)
def test_every_rank_gets_one_verdict_in_one_collective_per_step(tmp_path):
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    torch.multiprocessing.spawn(_two_ranks, args=(_free_port(), str(tmp_path), queue), nprocs=2, join=True)
    results = dict((rank, (agreed, per_step)) for rank, agreed, per_step in (queue.get(), queue.get()))
    (a0, steps0), (a1, steps1) = results[0], results[1]
    assert a0 == a1
    assert a0.stop and not a0.validate_at_stop and a0.signum == signal.SIGINT and a0.notice
    # Between two step ends (no log, validation or save there): the NaN check before the optimizer
    # step and the agreement after it, nothing else (GracefulStop's own all_reduce made it three).
    assert steps0 == steps1 == [2] * 11
