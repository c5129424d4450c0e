"""FSDP2 (distributed.strategy=fsdp) against DDP, in numbers: the same losses and weights, gradient
accumulation, bit-identical resume from a sharded checkpoint, resharding 2->1 and 1->2, DDP and
FSDP checkpoints resuming each other, the per-rank memory of the training state, and a sharded
checkpoint that lost a shard never being loaded. One pair of gloo processes runs every 2-worker
training (see rt_fsdp.run_two_ranks); 1-worker runs train in this process."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch

from raytrain_llm.core.checkpointing import CheckpointManager
from rt_fsdp import checkpoint_weights, run_two_ranks
from rt_testing import read_jsonl, train

pytestmark = pytest.mark.timeout(420)

FSDP, DDP = {"distributed.strategy": "fsdp"}, {"distributed.strategy": "ddp"}
TWO = {"training.batch_size": 8}  # per worker: the same global batch of 16 as one worker's
ONE = {"training.batch_size": 16}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_dir(run, step: int):
    return run / "checkpoints" / f"step-{step:08d}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from rt_fsdp import LM

    root = tmp_path_factory.mktemp("fsdp")
    r = {name: root / name for name in ("a", "c", "d", "a2", "b", "b_to_2", "c_to_f", "a_to_ddp", "a_to_1")}
    # One worker, fsdp (not sharded, but checkpoints in the sharded format).
    train(r["b"], "lm", **LM, **FSDP, **ONE)
    mid = lambda name: {"checkpoint.resume": str(step_dir(r[name], 10))}  # noqa: E731
    samples = {"task_options.sample_prompts": '["1 2 3"]'}  # rank 0 alone generates at each validation
    run_two_ranks([
        (str(r["a"]), {**FSDP, **TWO, **samples}),
        (str(r["c"]), {**DDP, **TWO, **samples}),
        (str(r["d"]), {**FSDP, "training.batch_size": 4, "training.grad_accum_steps": 2}),
        (str(r["a2"]), {**FSDP, **TWO, **mid("a")}),
        (str(r["b_to_2"]), {**FSDP, **TWO, **mid("b")}),
        (str(r["c_to_f"]), {**FSDP, **TWO, **mid("c")}),
        (str(r["a_to_ddp"]), {**DDP, **TWO, **mid("a")}),
    ], port=_port(), timeout_s=400)
    train(r["a_to_1"], "lm", **LM, **FSDP, **ONE, **mid("a"))
    return r


def losses(run) -> dict[int, float]:
    return {rec["step"]: rec["loss"] for rec in read_jsonl(run / "metrics.jsonl") if rec.get("split") == "train"}


def weights(run, step: int = 20) -> tuple[dict, dict]:
    return checkpoint_weights(step_dir(run, step))


def assert_close(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=tol, rtol=tol, msg=k)


def test_sharded_checkpoint_layout(runs):
    folder = step_dir(runs["a"], 20)
    assert sorted(os.listdir(folder)) == ["config.yaml", "meta.json", "sharded", "state.pt"]
    assert sorted(os.listdir(folder / "sharded")) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    state = torch.load(folder / "state.pt", weights_only=True)
    assert state["model"] is None and state["optimizer"] is None and state["format"] == "sharded"
    assert json.loads((folder / "meta.json").read_text())["step"] == 20
    keys = CheckpointManager.load(str(folder))  # the DCP keys, read from its metadata
    from raytrain_llm.core.sharded.io import storage_reader

    names = set(storage_reader(keys["sharded_path"]).read_metadata().state_dict_metadata)
    assert "model.blocks.0.attn.qkv.weight" in names and "optimizer.state.blocks.0.attn.qkv.weight.exp_avg" in names
    assert not any("_orig_mod" in n or ".module." in n or n.startswith("model.module.") for n in names)


def test_fsdp_trains_like_ddp(runs):
    fsdp, ddp = losses(runs["a"]), losses(runs["c"])
    assert sorted(fsdp) == list(range(1, 21)) and fsdp.keys() == ddp.keys()
    for step in fsdp:
        assert fsdp[step] == pytest.approx(ddp[step], rel=1e-5), step
    assert_close(weights(runs["a"])[0], weights(runs["c"])[0], 1e-5)


def test_rank_0_alone_samples_from_the_sharded_model_as_from_ddp(runs):
    def samples(run) -> list[str]:
        lines = (run / "logs" / "rank0.log").read_text().splitlines()
        return [line.partition(" sample ")[2] for line in lines if " sample 0 at step " in line]

    assert len(samples(runs["a"])) == 2 and samples(runs["a"]) == samples(runs["c"])


def test_accumulation_under_fsdp_equals_one_batch(runs):
    # 2 micro-batches of 4 per worker (gradients reduced once, after the second) == one batch of 8.
    for step, loss in losses(runs["a"]).items():
        assert losses(runs["d"])[step] == pytest.approx(loss, rel=1e-5), step
    assert_close(weights(runs["d"])[0], weights(runs["a"])[0], 1e-5)


def test_resume_at_the_same_world_size_is_bit_identical(runs):
    model, optim = weights(runs["a2"])
    model_ref, optim_ref = weights(runs["a"])
    for k in model_ref:
        assert torch.equal(model[k], model_ref[k]), k
    for i, values in optim_ref["state"].items():
        for name, v in values.items():
            assert torch.equal(optim["state"][i][name], v), (i, name)
    resumed, ref = losses(runs["a2"]), losses(runs["a"])
    assert sorted(resumed) == list(range(11, 21)) and all(resumed[s] == ref[s] for s in resumed)


def test_reshard_two_to_one_and_one_to_two(runs):
    # Two workers at batch 8 train as one at 16 (within fp32 rounding), so each resumed run must
    # end where the uninterrupted run at its new size ends.
    assert_close(weights(runs["a_to_1"])[0], weights(runs["b"])[0], 1e-5)
    assert_close(weights(runs["b_to_2"])[0], weights(runs["a"])[0], 1e-5)


@pytest.mark.slow  # 4 more processes on this 2-core machine
def test_reshard_two_to_four(runs, tmp_path):
    run_two_ranks([(str(tmp_path / "a_to_4"), {**FSDP, "training.batch_size": 4,
                                                "checkpoint.resume": str(step_dir(runs["a"], 10))})],
                  port=_port(), timeout_s=300, world_size=4)
    assert_close(weights(tmp_path / "a_to_4")[0], weights(runs["a"])[0], 1e-5)


def test_ddp_and_fsdp_checkpoints_resume_each_other(runs):
    assert_close(weights(runs["c_to_f"])[0], weights(runs["a"])[0], 1e-5)  # DDP checkpoint -> fsdp
    assert_close(weights(runs["a_to_ddp"])[0], weights(runs["c"])[0], 1e-5)  # fsdp checkpoint -> DDP
    assert (step_dir(runs["a_to_ddp"], 20) / "state.pt").is_file()
    assert not (step_dir(runs["a_to_ddp"], 20) / "sharded").exists()  # DDP writes full checkpoints


def test_fsdp_holds_about_half_the_training_state_per_rank(runs):
    for rank in (0, 1):
        fsdp = json.loads((runs["a"] / f"state-bytes-rank{rank}.json").read_text())
        ddp = json.loads((runs["c"] / f"state-bytes-rank{rank}.json").read_text())
        assert ddp["optimizer"] > 0 and sum(fsdp.values()) <= 0.55 * sum(ddp.values()), (fsdp, ddp)


def test_a_sharded_checkpoint_missing_a_shard_is_skipped(runs, tmp_path):
    import shutil

    ckpts = tmp_path / "checkpoints"
    for step in (10, 20):
        shutil.copytree(step_dir(runs["a"], step), ckpts / f"step-{step:08d}")
    os.remove(ckpts / "step-00000020" / "sharded" / "__1_0.distcp")  # a rank's shards lost
    manager = CheckpointManager(str(ckpts))
    path, state = manager.load_latest_valid()
    assert path == str(ckpts / "step-00000010") and state["progress"]["global_step"] == 10
    assert (ckpts / "unloadable-step-00000020").is_dir()  # kept, but no longer the latest


_KILL_IN_SAVE = """
import os, signal, sys
import torch.distributed.checkpoint as dcp
from raytrain_llm.cli import main

finish = dcp.FileSystemWriter.finish
saves = []

def finish_or_die(self, metadata, results):
    # The shards of the second save are written, its .metadata is not: the process dies here.
    saves.append(1)
    if len(saves) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return finish(self, metadata, results)

dcp.FileSystemWriter.finish = finish_or_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(240)
def test_a_run_killed_mid_sharded_save_resumes_from_the_previous_checkpoint(tmp_path):
    import subprocess
    import sys

    from rt_fsdp import LM
    from rt_testing import cli_env, set_args, settings

    common = {**LM, **FSDP, **ONE, "checkpoint.every_n_steps": 5, "training.val_every_n_steps": 0}
    killed = tmp_path / "killed"
    p = subprocess.run([sys.executable, "-c", _KILL_IN_SAVE, "--task", "lm", *set_args(settings(killed, **common))],
                       env=cli_env(), capture_output=True, text=True, timeout=200)
    assert p.returncode == -9, p.stderr[-2000:]
    left = sorted(os.listdir(killed / "checkpoints"))
    assert left[1] == "step-00000005" and left[0].startswith(".tmp-step-00000010-"), left  # never renamed
    train(killed, "lm", **common, **{"checkpoint.resume": "auto"})
    assert sorted(os.listdir(killed / "checkpoints")) == ["step-00000005", "step-00000010", "step-00000015",
                                                          "step-00000020"]  # the dead save's folder removed
    train(tmp_path / "whole", "lm", **common)
    resumed, whole = weights(killed), weights(tmp_path / "whole")
    for k in whole[0]:
        assert torch.equal(resumed[0][k], whole[0][k]), k


@pytest.mark.parametrize("sets, key", [
    (["distributed.fsdp_cpu_offload=true"], "distributed.fsdp_cpu_offload"),
    (["distributed.fsdp_reshard_after_forward=false"], "distributed.fsdp_reshard_after_forward"),
    (["distributed.strategy=fsdp", "distributed.find_unused_parameters=true"], "distributed.find_unused_parameters"),
    (["distributed.strategy=fsdp", "optimization.amp=fp16", "training.device=cuda"], "optimization.amp"),
    (["distributed.strategy=fsdp", "distributed.fsdp_cpu_offload=true", "distributed.num_workers=2"],
     "distributed.fsdp_cpu_offload"),  # offloading a GPU's state, on a CPU run
])
def test_options_of_the_other_strategy_are_config_errors_naming_the_key(sets, key):
    from raytrain_llm.core.config_loader import load_config
    from raytrain_llm.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(None, ["training.device=cpu", *sets], environ={})
    assert [p.partition(":")[0] for p in err.value.problems] == [key], err.value.problems
    load_config(None, ["distributed.strategy=fsdp", "distributed.fsdp_reshard_after_forward=false"], environ={})


def test_a_sweep_refuses_the_other_strategys_options():
    from raytrain_llm.core.config_checks import switched_off_keys
    from raytrain_llm.core.config_loader import load_config

    ddp = switched_off_keys(load_config(None, [], environ={}))
    fsdp = switched_off_keys(load_config(None, ["distributed.strategy=fsdp"], environ={}))
    assert ddp["distributed.fsdp_cpu_offload"] == "distributed.strategy is ddp"
    assert "distributed.find_unused_parameters" not in ddp
    assert fsdp["distributed.find_unused_parameters"] == "distributed.strategy is fsdp"
    assert "distributed.fsdp_reshard_after_forward" not in fsdp


def test_a_sharded_checkpoint_of_another_model_is_a_usage_error(runs, tmp_path):
    from raytrain_llm.core.errors import UsageError
    from rt_fsdp import LM

    with pytest.raises(UsageError, match="model.n_layers is 3 here, 2 in the checkpoint"):
        train(tmp_path, "lm", **{**LM, **FSDP, **ONE, "model.n_layers": 3,
                                 "checkpoint.resume": str(step_dir(runs["b"], 10))})


def test_the_engines_sharded_checkpoint_consolidates_to_its_weights(runs):
    from raytrain_llm.core.sharded.consolidate import consolidate

    full = consolidate(step_dir(runs["a"], 20) / "sharded")  # what sample/evaluate/export read
    model, _ = weights(runs["a"])
    assert full.keys() == model.keys()
    for k in model:
        assert torch.equal(full[k], model[k]), k
