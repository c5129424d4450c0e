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


# ---------------------------------------------------------------- W&B offline run files
WANDB_BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log: 32 KiB blocks of framed chunks
WANDB_HEADER = 7  # file header "<4sHB": b":W&B", magic 0xBEE1, version; chunk header "<IHB": crc, length, type


def wandb_records(path) -> list:
    """Every `wandb_internal_pb2.Record` of a .wandb file, parsed with W&B's own protobuf
    definitions (wandb 0.31 ships no Python reader for the framing; it is LevelDB's log format)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:WANDB_HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, (ident, magic)
    records, pending, pos = [], b"", WANDB_HEADER
    while pos + WANDB_HEADER <= len(data):
        if WANDB_BLOCK - pos % WANDB_BLOCK < WANDB_HEADER:  # too little room left: padding
            pos += WANDB_BLOCK - pos % WANDB_BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + WANDB_HEADER])
        chunk = data[pos + WANDB_HEADER:pos + WANDB_HEADER + length]
        pos += WANDB_HEADER + length
        if kind == 0 and length == 0:
            break  # zero-filled tail
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST start, MIDDLE/LAST continue
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} from the history records of a .wandb file (W&B's own
    keys, `_step`, `_runtime`, `_timestamp`, left out)."""
    import json

    out: dict[str, list[tuple[int, float]]] = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in record.history.item}
        step = int(items.get("_step", record.history.step.num))
        for key, value in items.items():
            if not key.startswith("_"):
                out.setdefault(key, []).append((step, float(value)))
    return out


def wandb_config(path) -> dict:
    """The run's config as W&B stored it (the last config record wins, key by key)."""
    import json

    config: dict = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif record.WhichOneof("record_type") == "run":
            for item in record.run.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config
