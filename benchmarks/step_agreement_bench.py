"""The engine's per-step agreement: one collective per step vs the two it took before.

    python benchmarks/step_agreement_bench.py [--calls 2000] [--steps 300] [--rounds 3]

Two gloo processes on this machine, alternating the two variants round by round:
- `collective`: the bare per-step cost. "two" is what the engine did before (GracefulStop's
  all_reduce of 2 int32 read back, then the engine's `any_true` of should_stop); "one" is
  `core/step_agreement.agree` (one all_reduce of 4 int32 carrying all of it).
- `engine`: a tiny regression model trained by the real engine (DDP, 2 ranks) as it is now,
  and the same with a callback that adds the former extra all_reduce after every step.
Prints one line per measure with the median of each variant and the ratio two / one.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as tdist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raytrain_llm.core import step_agreement  # noqa: E402
from raytrain_llm.core.callbacks import Callback  # noqa: E402
from raytrain_llm.core.config_loader import load_config  # noqa: E402
from raytrain_llm.core.distributed import DistributedManager  # noqa: E402
from raytrain_llm.core.engine import TrainingEngine  # noqa: E402
from raytrain_llm.tasks.regression_task import RegressionTask  # noqa: E402


def two_collectives(dist: DistributedManager) -> None:
    flags = torch.tensor([0, 0], dtype=torch.int32)
    tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
    int(flags[0].item()), bool(flags[1].item())
    dist.any_true(False)


def one_collective(dist: DistributedManager) -> None:
    step_agreement.agree(dist, None, stop=False, validate_at_stop=True)


class FormerExtraAllReduce(Callback):
    """What GracefulStop added to every step before its flags rode in the engine's agreement."""

    def on_batch_end(self, engine, step, outputs) -> None:
        flags = torch.tensor([0, 0], dtype=torch.int32)
        tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
        int(flags[0].item()), bool(flags[1].item())


def engine_step_ms(dist: DistributedManager, steps: int, extra: bool, out_dir: str) -> float:
    sets = ["model.input_dim=8", "model.hidden_dim=16", "training.batch_size=8", "training.epochs=1",
            f"training.max_steps={steps}", f"data.num_train_samples={16 * (steps + 1)}", "data.num_val_samples=16",
            "training.validate=false", "checkpoint.enabled=false", "logging.progress_bar=off",
            "logging.tensorboard=false", f"logging.log_every_n_steps={steps}", "logging.level=WARNING",
            f"logging.dir={out_dir}", "training.device=cpu"]
    cfg = load_config(overrides=sets, environ={}, task="regression")
    engine = TrainingEngine(cfg, RegressionTask(cfg), dist=dist, callbacks=[FormerExtraAllReduce()] if extra else [],
                            check_data=False)
    dist.barrier()
    t0 = time.perf_counter()
    engine.fit()
    return (time.perf_counter() - t0) * 1e3 / steps


def worker(rank: int, world: int, port: int, a, queue) -> None:
    torch.set_num_threads(1)
    dist = DistributedManager()
    dist.init_process_group("gloo", rank, world, "127.0.0.1", port)
    calls = {"two": [], "one": []}
    steps = {"two": [], "one": []}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(a.rounds):
            for name, fn in (("two", two_collectives), ("one", one_collective)):
                for _ in range(50):
                    fn(dist)
                dist.barrier()
                t0 = time.perf_counter()
                for _ in range(a.calls):
                    fn(dist)
                calls[name].append((time.perf_counter() - t0) * 1e6 / a.calls)
            for name in ("two", "one"):
                steps[name].append(engine_step_ms(dist, a.steps, name == "two", os.path.join(out, f"{rank}-{name}")))
    if rank == 0:
        queue.put({"calls": calls, "steps": steps})
    dist.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    torch.multiprocessing.spawn(worker, args=(2, port, a, queue), nprocs=2, join=True)
    r = queue.get()
    load = os.getloadavg()[0]
    for measure, unit, values in (("collective", "us per step", r["calls"]), ("engine", "ms per step", r["steps"])):
        two, one = statistics.median(values["two"]), statistics.median(values["one"])
        print(json.dumps({"measure": measure, "unit": unit, "two_collectives": round(two, 3),
                          "one_collective": round(one, 3), "ratio_two_over_one": round(two / one, 3),
                          "rounds_two": [round(v, 3) for v in values["two"]],
                          "rounds_one": [round(v, 3) for v in values["one"]], "load_1min": load}))


if __name__ == "__main__":
    main()
