"""glibc malloc tuning for CPU training: freed memory stays in the process (no page faults to take
it back each step), the engine applies it from the config, and the user's choice wins.

Checked through glibc's own accounting (mallinfo2) in a fresh process: whether a 64 MiB block is
served by a fresh mmap, whether the heap keeps it after free, and whether touching it again
faults. These are properties of the allocator, not of the machine's speed or kernel (how many
faults glibc's defaults cost a step is a measurement: benchmarks/engine_overhead.py).
"""
from __future__ import annotations

import ast
import platform
import subprocess
import sys

import pytest

from raytrain_llm.core.host_memory import user_chose_allocator
from rt_testing import REPO

# argv[1]: "none" (glibc as it starts), "direct" (keep_freed_host_memory()), or "engine:<bool>"
# (a tiny CPU run with optimization.keep_host_memory=<bool>). Then two rounds of malloc, write
# and free of a 64 MiB block; prints [applied, [(bytes newly mmapped while it is held, minor
# faults, heap bytes after free) per round]].
PROBE = """
import ctypes, resource, sys, tempfile

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
SIZE = 64 << 20
applied = None
if sys.argv[1] == "direct":
    from raytrain_llm.core.host_memory import keep_freed_host_memory
    applied = keep_freed_host_memory()
elif sys.argv[1].startswith("engine:"):
    from raytrain_llm.core import host_memory
    from raytrain_llm.core.config_loader import load_config
    from raytrain_llm.core.engine import TrainingEngine
    from raytrain_llm.tasks.regression_task import RegressionTask

    sets = ["training.max_steps=2", "training.validate=false", "checkpoint.enabled=false", "training.device=cpu",
            "logging.tensorboard=false", "logging.progress_bar=off", "logging.level=WARNING",
            "logging.dir=" + tempfile.mkdtemp(), "optimization.keep_host_memory=" + sys.argv[1].split(":")[1]]
    cfg = load_config(overrides=sets, environ={}, task="regression")
    TrainingEngine(cfg, RegressionTask(cfg)).fit()
    applied = host_memory._applied
rounds = []
for _ in range(2):
    faults, mapped = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, libc.mallinfo2().hblkhd
    block = libc.malloc(SIZE)
    mapped = libc.mallinfo2().hblkhd - mapped
    ctypes.memset(block, 1, SIZE)
    libc.free(block)
    rounds.append((mapped, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, libc.mallinfo2().arena))
print([applied, rounds])
"""
SIZE = 64 << 20
PAGES = SIZE // 4096


def _probe(mode: str, **env_extra):
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env_extra}
    p = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return ast.literal_eval(p.stdout.strip().splitlines()[-1])


glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc malloc only")


def _kept(rounds) -> None:
    """The block came from the heap, stayed there after free, and its second use faults no page in."""
    for mapped, _, heap in rounds:
        assert mapped == 0 and heap >= SIZE, rounds
    assert rounds[1][1] < PAGES // 100, rounds


def _returned(rounds) -> None:
    """glibc's defaults: each use of a 64 MiB block is a fresh mmap (unmapped at free)."""
    for mapped, _, _ in rounds:
        assert mapped >= SIZE, rounds


@glibc_only
@pytest.mark.timeout(120)
def test_keeping_host_memory_serves_blocks_from_a_heap_that_keeps_them():
    applied, rounds = _probe("none")
    assert applied is None
    _returned(rounds)
    applied, rounds = _probe("direct")
    assert applied is True
    _kept(rounds)


@glibc_only
@pytest.mark.timeout(180)
def test_the_engine_applies_it_on_cpu_as_configured_and_a_users_choice_wins():
    applied, rounds = _probe("engine:true")
    assert applied is True
    _kept(rounds)
    applied, rounds = _probe("engine:false")
    assert applied is False
    _returned(rounds)
    applied, rounds = _probe("engine:true", MALLOC_TRIM_THRESHOLD_="131072")  # the user tuned glibc
    assert applied is False
    _returned(rounds)


def test_a_preloaded_allocator_or_glibc_variables_are_left_alone():
    assert user_chose_allocator({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})
    assert user_chose_allocator({"LD_PRELOAD": "libtcmalloc_minimal.so.4"})
    assert user_chose_allocator({"MALLOC_TRIM_THRESHOLD_": "0"})
    assert not user_chose_allocator({"LD_PRELOAD": "", "HOME": "/root"})
