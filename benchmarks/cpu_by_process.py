"""Share of a core each process (and each thread name in it) used over a window, from /proc.

    python benchmarks/cpu_by_process.py [SECONDS]

Run during a training run's steady state (e.g. beside `train.py --set distributed.launcher=ray`)
to see what competes with the training processes: Ray's raylet, GCS, actors, Ray Data tasks.
Every process on the machine is counted (other users' too). Linux only; lists processes above
0.5% of a core, busiest first.
"""
from __future__ import annotations

import os
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def snapshot() -> dict[str, tuple[str, dict[str, tuple[str, float]]]]:
    """pid -> (command line, tid -> (thread name, CPU seconds so far))."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")[:120]
            threads = {}
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                    stat = fh.read()
                fields = stat[stat.rindex(")") + 2:].split()  # utime, stime: fields 14, 15 of stat
                threads[tid] = (stat[stat.index("(") + 1:stat.rindex(")")], (int(fields[11]) + int(fields[12])) / HZ)
            out[pid] = (cmd, threads)
        except (OSError, ValueError):  # the process ended meanwhile
            pass
    return out


def shares(before: dict, after: dict, seconds: float) -> list[tuple[float, str, str, int, list[tuple[float, str]]]]:
    """(share of a core, pid, command, thread count, [(share, thread name)]) per busy process."""
    rows = []
    for pid, (cmd, threads) in after.items():
        if pid not in before:
            continue
        per_name: dict[str, float] = {}
        for tid, (name, cpu) in threads.items():
            per_name[name] = per_name.get(name, 0.0) + cpu - before[pid][1].get(tid, (name, 0.0))[1]
        total = sum(per_name.values())
        if total > 0.005 * seconds:
            names = sorted(((v / seconds, k) for k, v in per_name.items() if v > 0.002 * seconds), reverse=True)
            rows.append((total / seconds, pid, cmd, len(threads), names[:8]))
    return sorted(rows, reverse=True)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    first = snapshot()
    time.sleep(seconds)
    for share, pid, cmd, n, names in shares(first, snapshot(), seconds):
        print(f"{share * 100:6.1f}% pid {pid} threads {n:3d} {cmd[:90]}")
        print("        " + ", ".join(f"{k}:{v * 100:.1f}%" for v, k in names))


if __name__ == "__main__":
    main()
