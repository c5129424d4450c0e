"""Keep freed host memory in the process during CPU training (glibc malloc tuning).

A training step frees and re-allocates the same large activation buffers every step. glibc
serves blocks above its mmap threshold with fresh mmaps and trims the heap top when enough is
free, so every step can hand memory back to the kernel and take it again, page fault by page
fault: on a 2-core machine that measured 0 to 165,000 minor faults per 30 steps of a small GPT,
up to ~10% of the step time, and most of the run-to-run noise (benchmarks/engine_overhead.py).
Raising the trim threshold and serving every block from the heap keeps the pages mapped. The
heap, not a higher mmap threshold: glibc caps that at 32 MiB, and a 32 MiB activation mapped
afresh each step made one GELU 4.5x slower (10.5 ms against 2.3 ms). PyTorch's CPU tuning
guide reaches the same end with jemalloc or tcmalloc; a user who preloads one, or sets glibc's
own MALLOC_* variables, keeps their choice.
"""
from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of free heap instead of returning it

_applied = False


def user_chose_allocator(environ=os.environ) -> bool:
    preload = environ.get("LD_PRELOAD", "")
    return ("jemalloc" in preload or "tcmalloc" in preload
            or any(k in environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_")))


def keep_freed_host_memory() -> bool:
    """Raise glibc's trim threshold and stop its use of mmap, once per process. True if that is
    in effect (now or from an earlier call); False where this is not glibc or the user chose
    otherwise."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or user_chose_allocator():
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    _applied = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(_M_MMAP_MAX, 0))
    return _applied
