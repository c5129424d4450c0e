"""A documented training command can be run twice (each run gets its own folder, as `make train`
does), and the documented way to continue the latest run continues it."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from rt_testing import REPO, checkpoints, ckpt_step, cli_env

WALKTHROUGH = (REPO / "examples" / "RAY_WALKTHROUGH.md").read_text()


def _first_command() -> str:
    """The walkthrough's first command (in-process), joined across its `\\` continuations."""
    block = re.search(r"## 1\. In-process.*?```bash\n(.*?)```", WALKTHROUGH, re.S).group(1)
    command = re.match(r"((?:.*\\\n)*.*)\n", block).group(1)
    return command.replace("\\\n", " ")


def _continue_flags() -> str:
    return re.search(r"`(--set logging\.dir=\$\(ls -d runs/reg_ray/\*/ \| tail -n 1\) "
                     r"--set checkpoint\.resume=auto)`", WALKTHROUGH).group(1)


def _bash(command: str, cwd) -> subprocess.CompletedProcess:
    # As typed in a shell from the repo root, with this Python for .venv/bin/python.
    command = command.replace(".venv/bin/python", sys.executable).replace("examples/", f"{REPO}/examples/")
    command = command.replace("train.py", f"{REPO}/train.py", 1)
    return subprocess.run(["bash", "-c", command + " --set logging.progress_bar=off --set logging.tensorboard=false"],
                          cwd=cwd, env=cli_env(PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=150)


@pytest.mark.timeout(300)
def test_a_documented_command_runs_twice_and_the_latest_run_continues(tmp_path):
    command = _first_command()
    assert "--set logging.dir=runs/reg_local/$(date +%Y%m%d-%H%M%S)" in command
    for _ in range(2):  # each run takes over a second: the second gets a new folder
        p = _bash(command, tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
    runs = sorted((tmp_path / "runs" / "reg_local").iterdir())
    assert len(runs) == 2 and all(checkpoints(r) for r in runs)
    # The documented continuation, with more epochs: it resumes the latest folder, not a new one.
    flags = _continue_flags().replace("reg_ray", "reg_local")
    p = _bash(f"{command} {flags} --set training.epochs=3", tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert sorted((tmp_path / "runs" / "reg_local").iterdir()) == runs
    assert "resum" in (runs[-1] / "logs" / "rank0.log").read_text().lower()
    assert ckpt_step(checkpoints(runs[-1])[-1]) > ckpt_step(checkpoints(runs[0])[-1])  # 3 epochs, not 2
