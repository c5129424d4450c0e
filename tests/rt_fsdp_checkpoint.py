"""`write_fsdp_checkpoint(folder)`: a sharded checkpoint folder of the lm task's GPT as FSDP2
leaves it, written by 2 spawned gloo processes: each block and the root `fully_shard`ed
(parameters and AdamW moments are DTensors, each rank holding half), one AdamW step taken,
then DCP saves {"model", "optimizer"} from every rank into FOLDER/sharded, a fresh sharded
model and optimizer load it back through `load_sharded` (asserted equal), and rank 0 writes
state.pt ("format": "sharded", no model/optimizer tensors) and, for the test to compare with,
the full weights gathered from the shards as FOLDER/full_weights.pt."""
from __future__ import annotations

import os
import time
import warnings

import torch
import torch.multiprocessing as mp

MODEL = {"vocab_size": 48, "seq_len": 16, "d_model": 32, "n_layers": 2, "n_heads": 4}


def lm_config():
    from raytrain_llm.core.config import Config, ModelConfig

    return Config(task="lm", model=ModelConfig(**MODEL))


def save_from_two_ranks(rank: int, folder: str, port: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.fsdp import fully_shard

    from raytrain_llm.core.distributed import DistributedManager
    from raytrain_llm.models import GPT

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    group = DistributedManager()
    group.init_process_group("gloo", rank, 2, "127.0.0.1", port)
    torch.manual_seed(0)
    model = GPT(lm_config().model)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, MODEL["vocab_size"], (4, MODEL["seq_len"] + 1), generator=torch.Generator().manual_seed(rank))
    logits = model(tokens[:, :-1])[0]  # [B, T, vocab]
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    optimizer.step()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    assert type(model_state["blocks.0.attn.qkv.weight"]).__name__ == "DTensor"
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=os.path.join(folder, "sharded"))
    full = {k: v.full_tensor() for k, v in model_state.items()}  # collective: every rank
    reload_through_the_safe_reader(model, optimizer, os.path.join(folder, "sharded"))
    if rank == 0:
        torch.save(full, os.path.join(folder, "full_weights.pt"))
        torch.save({"model": None, "optimizer": None, "format": "sharded", "config": lm_config().to_dict(),
                    "progress": {"global_step": 1}}, os.path.join(folder, "state.pt"))
    # The sharded model holds the group: freed first, the group's destructor joins its threads
    # here (left to interpreter exit, a gloo thread releasing a tensor can abort the process).
    del model, optimizer, model_state, optimizer_state, full
    group.cleanup()


def reload_through_the_safe_reader(model, optimizer, path: str) -> None:
    """A fresh sharded model and optimizer, loaded by load_sharded over the process group (the
    collective path the engine takes), equal the saved ones shard for shard."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.fsdp import fully_shard

    from raytrain_llm.core.sharded.safe_reader import load_sharded
    from raytrain_llm.models import GPT

    torch.manual_seed(1)
    fresh = GPT(lm_config().model)
    for block in fresh.blocks:
        fully_shard(block)
    fully_shard(fresh)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    model_state, optimizer_state = get_state_dict(fresh, fresh_optimizer)
    load_sharded({"model": model_state, "optimizer": optimizer_state}, path)
    set_state_dict(fresh, fresh_optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
    for (name, got), want in zip(fresh.named_parameters(), model.parameters()):
        assert torch.equal(got.to_local(), want.to_local()), name
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(fresh_optimizer.state[got][key].to_local(), optimizer.state[want][key].to_local()), name


def write_fsdp_checkpoint(folder: str, timeout_s: float = 120.0) -> None:
    """Runs the two ranks; a rank's error is raised here, and ranks still running after
    timeout_s are killed (TimeoutError)."""
    from raytrain_llm.launchers.local.spawn import free_port

    context = mp.start_processes(save_from_two_ranks, args=(str(folder), free_port("127.0.0.1")), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the 2 ranks saving an FSDP2 checkpoint ran past {timeout_s:.0f} s")
