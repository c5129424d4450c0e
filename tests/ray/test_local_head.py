"""cluster/start_local_head.sh on a fresh account (an empty HOME): it creates the auth token once,
owner-only, the head starts with token auth on loopback, and a job client with that token gets in."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from netstat import descendants, is_loopback, listening

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.mark.timeout(300)
def test_the_local_head_starts_on_a_fresh_account_with_an_owner_only_token():
    home = Path(tempfile.mkdtemp(prefix="rth", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
    gcs, dash, client, agent, agent_grpc, metrics, rt_agent = _free_ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYTRAIN_"))}
    env.update(HOME=str(home), VENV=str(BIN.parent), NUM_CPUS="1")
    log = open(home / "head.log", "w")
    # --block keeps `ray start` in the foreground, in its own process group: stopped by that group's
    # id below (`ray stop` would stop every Ray of this user here, other tests' included).
    proc = subprocess.Popen(
        ["bash", "cluster/start_local_head.sh", "--block", f"--port={gcs}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_agent}", f"--temp-dir={home}/ray"],
        env={**env, "DASHBOARD_PORT": str(dash)}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        cwd=REPO)
    client_env = {**env, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
    try:
        token = home / ".ray" / "auth_token"
        deadline, listed = time.time() + 150, None
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"start_local_head.sh exited {proc.returncode}: {(home / 'head.log').read_text()[-3000:]}")
            listed = subprocess.run([str(BIN / "ray"), "job", "list", "--address", f"http://127.0.0.1:{dash}"],
                                    env=client_env, capture_output=True, text=True, timeout=60)
            if listed.returncode == 0:
                break
            time.sleep(2)
        assert listed is not None and listed.returncode == 0, (home / "head.log").read_text()[-3000:]
        assert token.exists() and len(token.read_text()) == 64
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert stat.S_IMODE(token.parent.stat().st_mode) & 0o077 == 0
        assert "created a Ray auth token" in (home / "head.log").read_text()
        # Without the token the job server refuses the client.
        refused = subprocess.run([str(BIN / "ray"), "job", "list", "--address", f"http://127.0.0.1:{dash}"],
                                 env={**client_env, "HOME": str(home / "another-account")},
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        exposed = [s for s in listening(descendants(proc.pid)) if not is_loopback(s[2])]
        assert not exposed, f"the local head listens beyond loopback: {exposed}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        log.close()
        shutil.rmtree(home, ignore_errors=True)
