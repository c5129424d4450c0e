"""What a replicated (DDP) run's processes import: not torch's compiler, DTensor, FSDP or distributed
checkpoint (about 1.7 s of imports in every driver, worker and Ray data task; BENCHMARKS.md, issue
23). Those load where used: FSDP, sharded checkpoints, expert parallelism, torch.compile."""
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
