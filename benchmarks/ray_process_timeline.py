"""Which processes a Ray run starts, when, and what each had used by the first step.

    python benchmarks/ray_process_timeline.py [--workers 2] [--src CHECKOUT]

Runs `train.py --task lm` (the tiny model of ray_overhead.py, 5 steps) and samples /proc every
50 ms: each process the run starts, when it appears, each title Ray gives it as it takes on an
actor or task (`ray::SplitCoordinator.start_epoch`, ...) with the CPU seconds it had used by
then, and its CPU seconds at the first step. A reading aid for BENCHMARKS.md's start-up
critical path (issue 23); ray_overhead.py is the benchmark.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ray_overhead  # noqa: E402 - the same model and data settings

TICK = os.sysconf("SC_CLK_TCK")


def title(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return None
    if not args:
        return None
    if args[0].startswith("ray::"):
        return args[0].strip()
    name = os.path.basename(args[0].split()[0])
    return os.path.basename(args[1]) if name.startswith("python") and len(args) > 1 else name


def _stat(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def cpu_s(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICK if fields else 0.0


def descends_from(pid: int, root: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        fields = _stat(pid)
        pid = int(fields[1]) if fields else 0
    return False


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--src", default=ray_overhead.ROOT, help="the checkout whose train.py runs")
    args = p.parse_args()
    log_dir = tempfile.mkdtemp(prefix="ray-timeline-")
    sets = ray_overhead.MODELS["tiny"] + ray_overhead.LM_DATA + [
        "distributed.launcher=ray", f"distributed.num_workers={args.workers}",
        f"training.batch_size={16 // args.workers}", "training.max_steps=5", "training.epochs=1",
        "training.device=cpu", "logging.log_every_n_steps=1", "logging.progress_bar=off",
        "logging.tensorboard=false", f"logging.dir={log_dir}"]
    cmd = [sys.executable, os.path.join(args.src, "train.py"), "--task", "lm"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": args.src}
    metrics, first, seen, ours = os.path.join(log_dir, "metrics.jsonl"), None, {}, {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=args.src)
    try:
        while proc.poll() is None and first is None:
            now = round(time.perf_counter() - t0, 2)
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) < proc.pid:
                    continue
                if int(entry) not in ours:  # a process keeps its parent while the run lasts
                    ours[int(entry)] = descends_from(int(entry), proc.pid)
                if not ours[int(entry)]:
                    continue
                if name := title(int(entry)):
                    events = seen.setdefault(int(entry), [])
                    if not events or events[-1][1] != name:
                        events.append((now, name, round(cpu_s(int(entry)), 2)))
            if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
                first = now
            time.sleep(0.05)
        at_first = {pid: round(cpu_s(pid), 2) for pid in seen}
    finally:
        proc.wait(timeout=300)
    print(f"first step at {first} s")
    for pid, events in sorted(seen.items(), key=lambda kv: kv[1][0][0]):
        print(pid, " | ".join(f"{t} s {name} ({c} CPU-s)" for t, name, c in events), f"| {at_first[pid]} CPU-s at the first step")


if __name__ == "__main__":
    main()
