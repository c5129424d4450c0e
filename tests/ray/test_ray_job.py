"""`ray job submit` against a real head (`ray start --head` on 127.0.0.1), as a user would run it.

The head runs with its own --temp-dir and free ports, started with --block in its own process
group and stopped by that group's id: `ray stop` would also kill the shared in-process session
and anyone else's Ray on this machine.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
EXCLUDES = [".venv", ".git", "runs", "*.egg-info", "__pycache__"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def ray_head():
    temp = tempfile.mkdtemp(prefix="rtj", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    gcs, dash, client, agent, agent_grpc, metrics, rt_agent = _free_ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAYTRAIN_"))}
    env.update(RAY_AUTH_MODE="token", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    log = open(os.path.join(temp, "head.log"), "w")
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_agent}",
         "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode}: {open(log.name).read()[-2000:]}")
            if _run([RAY, "job", "list", "--address", address], env, timeout=60).returncode == 0:
                break
            if time.time() > deadline:
                pytest.fail(f"the job server at {address} did not come up: {open(log.name).read()[-2000:]}")
            time.sleep(2)
        yield address, env, gcs
    finally:
        # SIGTERM to the group we started (ray start and the head processes it launched), then
        # SIGKILL to whatever of that group is left: `ray start --block` can take long to exit.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _submit_and_wait(address: str, env: dict, args: list[str], timeout: float, entry: tuple = ("train.py",)) -> str:
    job_id = f"raytrain-test-{uuid.uuid4().hex[:8]}"
    runtime_env = {"excludes": EXCLUDES, "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}}
    submit = _run([RAY, "job", "submit", "--address", address, "--submission-id", job_id, "--no-wait",
                   "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
                   "--", sys.executable, *entry, *args], env)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    deadline = time.time() + timeout
    status = ""
    while time.time() < deadline:
        status = _run([RAY, "job", "status", job_id, "--address", address], env).stdout.lower()
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    logs = _run([RAY, "job", "logs", job_id, "--address", address], env).stdout
    assert "succeeded" in status, f"job {job_id}: {status}\n{logs[-4000:]}"
    return logs


def _check_run(log_dir: Path, steps: int) -> None:
    summary = json.loads((log_dir / "summary.json").read_text())
    assert summary["global_step"] == steps
    assert (log_dir / "metrics.jsonl").read_text().strip()
    assert any((log_dir / "tensorboard").iterdir())
    assert sorted(p.name for p in (log_dir / "checkpoints").iterdir() if p.name.startswith("step-"))[-1] \
        == f"step-{steps:08d}"
    run_dirs = list((log_dir / "ray").iterdir())
    # Checkpoints are stored once: Ray's run folder holds pointers to the engine's folders.
    pointers = [p for p in run_dirs[0].iterdir() if p.is_dir() and p.name.startswith("checkpoint_")]
    assert len(run_dirs) == 1 and pointers
    assert all(sorted(q.name for q in p.iterdir()) == ["raytrain_checkpoint.json"] for p in pointers)


COMMON = ["--set", "logging.progress_bar=off", "--set", "training.device=cpu", "--set", "training.max_steps=6",
          "--set", "training.epochs=1"]


@pytest.mark.timeout(420)
def test_job_submit_regression_and_lm(ray_head, tmp_path):
    address, env, _ = ray_head
    reg_dir = tmp_path / "regression"
    logs = _submit_and_wait(address, env, [
        "--task", "regression", *COMMON, "--set", f"logging.dir={reg_dir}", "--set", "distributed.num_workers=2",
        "--set", "data.num_train_samples=128", "--set", "data.num_val_samples=32", "--set", "training.batch_size=8",
        "--set", "model.input_dim=8", "--set", "model.hidden_dim=16"], timeout=240)
    assert "run finished at step 6" in logs and "result:" in logs
    _check_run(reg_dir, 6)

    lm_dir = tmp_path / "lm"
    _submit_and_wait(address, env, [
        "--task", "lm", *COMMON, "--set", f"logging.dir={lm_dir}", "--set", "model.d_model=32",
        "--set", "model.n_layers=1", "--set", "model.n_heads=2", "--set", "model.seq_len=16",
        "--set", "data.num_train_samples=64", "--set", "data.num_val_samples=16",
        "--set", "training.batch_size=4"], timeout=180)
    _check_run(lm_dir, 6)


@pytest.mark.timeout(180)
def test_a_client_without_the_clusters_token_exits_2(ray_head, tmp_path):
    # The head runs with token auth (the default for new clusters); a client started without
    # RAY_AUTH_MODE=token is refused by the GCS: a usage error naming the fix, not a traceback.
    _, env, gcs = ray_head
    client = {**env, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": f"127.0.0.1:{gcs}"}
    proc = _run([sys.executable, "train.py", "--task", "regression", *COMMON,
                 "--set", f"logging.dir={tmp_path / 'run'}"], client, timeout=150)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last.startswith(f"error: RAY_ADDRESS: the Ray cluster at 127.0.0.1:{gcs} refused this client's "
                           "authentication token") and "RAY_AUTH_MODE=token" in last, last
    assert not (tmp_path / "run" / "error.log").exists()


@pytest.mark.timeout(180)
def test_job_submit_prepare_writes_the_bytes_of_the_local_path(ray_head, tmp_path):
    # The workers of the cluster write the shards (into --out on storage they share with the
    # driver: one machine here); the result is byte for byte the local path's.
    from prep_testing import prepare_args, stdlib_corpus
    from raytrain_llm.prepare.__main__ import main

    address, env, _ = ray_head
    corpus = stdlib_corpus(tmp_path / "src", count=12)
    out = tmp_path / "data"
    args = prepare_args([corpus[0].parent / "*.py"], out, "--tokenizer", "train:400", "--val-fraction", "0.25",
                        "--seed", "2", "--shard-tokens", "15000", "--workers", "2")
    assert main(args) == 0  # local processes, no Ray
    local = {p.name: p.read_bytes() for p in out.iterdir()}
    os.replace(out, tmp_path / "local")
    logs = _submit_and_wait(address, env, [*args, "--launcher", "ray"], timeout=150,
                            entry=("-m", "raytrain_llm.prepare"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == local, logs[-3000:]
    assert len([n for n in local if n.startswith("train-")]) >= 2 and not (tmp_path / "data.tmp-prepare").exists()
