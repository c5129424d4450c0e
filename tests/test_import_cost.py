"""What a replicated (DDP) run's processes import: not torch's compiler, DTensor, FSDP or distributed
checkpoint (about 1.7 s of imports in every driver, worker and Ray data task; BENCHMARKS.md, issue
23). Those load where used: FSDP, sharded checkpoints, expert parallelism, torch.compile. And what
unpickling the slot datasets imports where no slot is generated (Train's dataset manager, Ray
Data's split coordinator): not torch."""
import subprocess
import sys

HEAVY = ("torch._dynamo", "torch.distributed.tensor", "torch.distributed.fsdp", "torch.distributed.checkpoint")


def test_a_replicated_runs_modules_leave_the_heavy_ones_unloaded():
    code = ("import sys\n"
            "import raytrain_llm.tasks.lm_task, raytrain_llm.tasks.regression_task\n"
            "import raytrain_llm.core.engine, raytrain_llm.core.resume, raytrain_llm.core.parallel.strategy\n"
            "import raytrain_llm.launchers.worker\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "[]"


def test_the_slot_datasets_map_function_loads_without_torch():
    """What a pickled SlotGenerator (the plan of every slot dataset) imports when unpickled."""
    code = ("import pickle, sys\n"
            "gen = pickle.loads(sys.stdin.buffer.read())\n"
            "print(type(gen).__name__, 'torch' in sys.modules)\n")
    make = ("import pickle, sys\n"
            "from raytrain_llm.core.config_loader import load_config\n"
            "from raytrain_llm.launchers.ray_train.data_shards import SlotGenerator\n"
            "gen = SlotGenerator(load_config(environ={}, task='lm'), 'train', 64, batch_size=4, world_size=2,\n"
            "                    batches_per_epoch=8, total_batches=8, seed=0, shuffle=True)\n"
            "sys.stdout.buffer.write(pickle.dumps(gen))\n")
    pickled = subprocess.run([sys.executable, "-c", make], capture_output=True, timeout=120, check=True).stdout
    p = subprocess.run([sys.executable, "-c", code], input=pickled, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:].decode()
    assert p.stdout.decode().split() == ["SlotGenerator", "False"]
