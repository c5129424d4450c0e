"""Ray launcher overhead: the same training config in-process, with spawn, and through Ray Train.

    .venv/bin/python benchmarks/ray_overhead.py [--model tiny|medium] [--steps 60] [--repeat 1]
        [--before DIR] [--timeline]

Each run is `train.py` in a fresh subprocess (what a user types). Reported per run:
- `to_first_step_s`: from starting the command to the first optimizer step's record in
  metrics.jsonl (imports, Ray start-up, worker group, process group, first batch);
- `step_ms`: median step time over steps after the first 10 (steady state), from the engine's
  monitor, with every step logged (log_every_n_steps=1) in all runs alike;
- `data_wait_share`: mean share of step time spent waiting for the batch after warm-up;
- `wall_s`: the whole command; `load_1m`: the 1-minute load average when the run started;
- `cpu_s_to_first_step`: CPU seconds that the command's processes (driver, Ray's node processes,
  actors, tasks; those still alive) had used at the first step, and `cpu_s_by_process` the same
  per process kind: on a machine of C cores the start-up cannot take less than this / C, and it
  moves far less with other users' load than the wall-clock figures.
Pairs to compare: local x1 vs ray x1 (batch 2B), spawn x2 vs ray x2 (batch B per worker). The
runs of one repeat are side by side; odd repeats run the plan in reverse order, so that a load
that drifts during a repeat does not always favour the same launcher. The last lines are the
ratios, Ray over its baseline, per repeat and their median.
`--before DIR`: also run the Ray runs from another checkout (e.g. `git worktree add DIR main`),
as `ray-x1-before`/`ray-x2-before`, to compare a change side by side.
`--timeline`: the runs use `benchmarks/timed_lm.py`'s task, and each line gets the start-up
stages in seconds from the command's start (see `stages`).
Every run gets OMP_NUM_THREADS=--threads (default 1, what Ray gives a worker with a fractional
CPU): otherwise in-process runs use all cores' threads and the comparison measures thread
oversubscription rather than the launcher.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tiny: ~15-20 ms a step on this project's 2-core machine; medium: >= 50 ms (issue 23).
MODELS = {
    "tiny": ["model.vocab_size=64", "model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.seq_len=64"],
    "medium": ["model.vocab_size=256", "model.d_model=128", "model.n_layers=2", "model.n_heads=4",
               "model.seq_len=64"],
}
LM_DATA = ["data.num_train_samples=8192", "data.num_val_samples=64"]
REGRESSION = ["model.hidden_dim=256", "data.num_train_samples=8192", "data.num_val_samples=64"]
TIMED_TASK = "benchmarks.timed_lm:TimedLM"


def stages(marks: list[dict], t0: float) -> dict[str, float]:
    """Start-up stages, seconds from the command's start: the driver's task (imports, ray.init),
    the first worker's task (worker group placed, processes started, process group), its data
    module and model built, its first batch in hand."""
    driver_pid = marks[0]["pid"] if marks else None
    several = len({m["pid"] for m in marks}) > 1  # in-process: one process is driver and worker
    out = {}
    for m in marks:
        who = "driver" if several and m["pid"] == driver_pid else "worker"
        out.setdefault(f"{who}_{m['event']}", round(m["t"] - t0, 2))
    return out


RUN_ENV = "RTO_RUN"  # set to the run's folder in the command's environment, inherited by every process it starts


def cpu_seconds(run_dir: str) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each live process of the run (found by RUN_ENV
    in its environment: the driver, Ray's node processes, actors, tasks), summed by process kind:
    Ray's process title (e.g. `ray::TrainController`) or the program's file name."""
    tick, tag, out = os.sysconf("SC_CLK_TCK"), f"{RUN_ENV}={run_dir}".encode(), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if tag not in fh.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        title = argv[0].decode(errors="replace").strip()
        if not title.startswith("ray::"):
            scripts = [a.decode(errors="replace") for a in argv[1:] if a.endswith(b".py")]
            title = os.path.basename(scripts[0] if scripts else title.split()[0] if title else "?")
        kind = title.split(".")[0] if title.startswith("ray::") else title  # ray::RayTrainWorker.run -> the actor
        out[kind] = round(out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick, 2)
    return out


def run(name: str, launcher: str, workers: int, batch: int, args, env_extra: dict, src: str = ROOT) -> dict:
    log_dir = tempfile.mkdtemp(prefix=f"rto-{name}-")
    task = args.task
    if args.timeline and task == "lm":
        task = TIMED_TASK
        env_extra = {**env_extra, "RTO_TIMELINE": os.path.join(log_dir, "timeline.jsonl"), "PYTHONPATH": src}
    sets = ((MODELS[args.model] + LM_DATA) if args.task == "lm" else REGRESSION) + [
        f"distributed.launcher={launcher}", f"distributed.num_workers={workers}",
        f"training.batch_size={batch}", f"training.max_steps={args.steps}", "training.epochs=1",
        "training.device=cpu", "logging.log_every_n_steps=1", "logging.progress_bar=off",
        "logging.tensorboard=false", f"logging.dir={log_dir}", "checkpoint.keep_last=1"]
    cmd = [sys.executable, os.path.join(src, "train.py"), "--task", task]
    for s in sets:
        cmd += ["--set", s]
    metrics = os.path.join(log_dir, "metrics.jsonl")
    env = {**os.environ, **env_extra, RUN_ENV: log_dir}
    if src != ROOT:
        env["PYTHONPATH"] = src
    load = os.getloadavg()[0]
    t_wall0, t0 = time.time(), time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=src)
    first, cpu = None, {}
    while proc.poll() is None:
        if first is None and os.path.exists(metrics) and os.path.getsize(metrics) > 0:
            first = time.perf_counter() - t0
            cpu = cpu_seconds(log_dir)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{out[-3000:]}")
    records = [json.loads(line) for line in open(metrics) if line.strip()]
    train = [r for r in records if r.get("split") == "train" and r["step"] > 10]
    line = {"run": name, "launcher": launcher, "workers": workers, "batch_per_worker": batch,
            "to_first_step_s": round(first or float("nan"), 2),
            "step_ms": round(1000 * statistics.median(r["step_time"] for r in train), 2),
            "data_wait_share": round(statistics.mean(r["data_wait_share"] for r in train), 3),
            "wall_s": round(wall, 2), "load_1m": round(load, 1),
            "cpu_s_to_first_step": round(sum(cpu.values()), 1), "cpu_s_by_process": cpu}
    timeline = os.path.join(log_dir, "timeline.jsonl")
    if os.path.exists(timeline):
        line["stages"] = stages([json.loads(x) for x in open(timeline) if x.strip()], t_wall0)
    return line


def ratios(lines: list[dict]) -> dict[str, float]:
    """Ray's step time over its baseline's, for each Ray run of one repeat."""
    by = {x["run"]: x["step_ms"] for x in lines}
    base = {"1": by.get("local-x1"), "2": by.get("spawn-x2")}
    return {f"{name}/{'local' if name[5] == '1' else 'spawn'}": round(ms / base[name[5]], 3)
            for name, ms in by.items() if name.startswith("ray-x") and base.get(name[5])}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="lm", choices=["lm", "regression"])
    p.add_argument("--model", default="tiny", choices=sorted(MODELS), help="lm: the model's size")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=8, help="per-worker batch B of the 2-worker runs")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every run")
    p.add_argument("--workers", default="1,2", help="which pairs to run: 1, 2 or 1,2")
    p.add_argument("--before", default="", help="a checkout whose Ray runs go side by side with this one's")
    p.add_argument("--timeline", action="store_true", help="record start-up stages (lm only)")
    args = p.parse_args()
    b, before = args.batch, os.path.abspath(args.before) if args.before else ""
    if before and args.timeline:  # the other checkout may predate the timed task
        shutil.copy(os.path.join(ROOT, "benchmarks", "timed_lm.py"), os.path.join(before, "benchmarks"))
    plan = []
    for w in args.workers.split(","):
        base = ("local-x1", "local", 1, 2 * b) if w == "1" else ("spawn-x2", "spawn", 2, b)
        plan += [(*base, ROOT), (f"ray-x{w}", "ray", int(w), base[3], ROOT)]
        if before:
            plan.append((f"ray-x{w}-before", "ray", int(w), base[3], before))
    summary: dict[str, list[float]] = {}
    for rep in range(args.repeat):
        lines = []
        for name, launcher, workers, batch, src in (plan if rep % 2 == 0 else plan[::-1]):
            env = {"OMP_NUM_THREADS": str(args.threads)}
            line = {**run(name, launcher, workers, batch, args, env, src), "task": args.task, "repeat": rep,
                    "cpus": os.cpu_count()}
            if args.task == "lm":
                line["model"] = args.model
            lines.append(line)
            print(json.dumps(line), flush=True)
        r = ratios(lines)
        for k, v in r.items():
            summary.setdefault(k, []).append(v)
        print(json.dumps({"ratios": r, "repeat": rep}), flush=True)
    print(json.dumps({"median_ratios": {k: round(statistics.median(v), 3) for k, v in summary.items()},
                      "repeats": args.repeat, "model": args.model, "steps": args.steps}), flush=True)


if __name__ == "__main__":
    main()
