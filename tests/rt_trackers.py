"""Test helpers for the tracker callbacks: metrics.jsonl as per-metric series, the same read
back from MLflow's API, and a real `mlflow server` on 127.0.0.1."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rt_testing import read_jsonl

BOOKKEEPING = ("step", "epoch", "split")


def jsonl_series(log_dir) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} of every number in metrics.jsonl, in file order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in read_jsonl(Path(log_dir) / "metrics.jsonl"):
        for k, v in r.items():
            if k not in BOOKKEEPING and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(k, []).append((r["step"], float(v)))
    return out


def mlflow_series(client, run_id: str, names) -> dict[str, list[tuple[int, float]]]:
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in names}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path, startup_timeout_s: float = 90.0):
    """`mlflow server` with a SQLite backend and an artifact folder under `root`; yields its URI.
    Killed (with its workers: its own process group) on exit."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield uri, proc
    finally:
        stop_server(proc)
        log.close()


def stop_server(proc) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(timeout=30)
