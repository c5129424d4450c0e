"""`make train` under Ray, as a user runs it: the console is the project's (at least 80% of its
lines), Ray's own lines are in the log files the run names once, the run ends with the common
block naming existing paths, and each checkpoint is stored once (Ray holds pointers)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent
# The project's console lines: its logger's format, the end-of-run block, the result line, the
# line naming Ray's log files, and its one-line warnings and errors.
PROJECT_LINE = re.compile(r"^(\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) \[rank \d+\] |run (finished|stopped) at |  \S"
                          r"|result: |Ray's own log lines: |warning: |error: |\[[# ]+\] \d+/\d+ )")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def console_lines(text: str) -> list[str]:
    """Non-blank lines as a terminal shows them: a carriage return redraws the line (a bar's
    frames are one line, its last frame)."""
    lines = []
    for raw in text.split("\n"):
        frames = [f for f in ANSI.sub("", raw).split("\r") if f.strip()]
        if frames:
            lines.append(frames[-1].rstrip())
    return lines


def project_share(text: str) -> tuple[int, int]:
    lines = console_lines(text)
    return sum(1 for line in lines if PROJECT_LINE.match(line)), len(lines)


def test_the_classifier_counts_rays_lines_as_rays():
    sample = ("\x1b[36m(RayTrainWorker pid=1)\x1b[0m 23:22:33 INFO [rank 0] step 20/192 epoch 1 loss 3.8\n"
              "2026-12-05 23:22:07,094\tWARNING authentication_token_setup.py:85 -- Token authentication\n"
              "23:22:33 INFO [rank 0] step 20/192 epoch 1 loss 3.8\n"
              "\r[#    ] 1/192 ep 1\r[##   ] 2/192 ep 1 \x1b[K\r\n"
              "run finished at step 192, epoch 3/3\r\n  run folder   runs/x\nresult: {}\n\n")
    assert project_share(sample) == (5, 7)


@pytest.mark.timeout(420)
def test_make_train_under_ray_prints_the_projects_lines_and_keeps_rays_in_files(tmp_path):
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYTRAIN_")}
    env.update(PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]), RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2")
    # `make train`'s command (TRAIN_ARGS), shortened to 48 steps with a train record every 4
    # (the config's 20 would leave room for 3 progress lines only).
    p = subprocess.run([sys.executable, "train.py", "--task", "lm", "--config", "examples/lm_moe_tiny.yaml",
                        "--set", f"logging.dir={run}", "--set", "training.max_steps=48",
                        "--set", "logging.log_every_n_steps=4"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    console = p.stderr + p.stdout
    ours, total = project_share(console)
    print(f"console: {ours} of {total} lines are the project's\n{console}")
    assert ours >= 0.8 * total, console
    # Progress: the start, a line every tenth of the run, the end, and each validation.
    steps = [int(m) for m in re.findall(r"\] step (\d+)/48 epoch 1 loss", console)]
    assert steps == [4, 12, 20, 28, 36, 44, 48], steps
    # Ray's own lines are not lost: in the files the run names once.
    named = re.findall(r"^Ray's own log lines: (\S+) and (\S+) ", console, re.M)
    assert len(named) == 1, console
    driver_log, ray_logs = (Path(REPO, p) for p in named[0])
    assert driver_log.exists()
    ray_text = "".join(f.read_text(errors="replace") for f in Path(ray_logs).rglob("*")
                       if f.is_file() and f.suffix in (".log", ".out", ".err"))
    assert "Reporting training result" in ray_text and "Reporting training result" not in console
    # A private node starts no preemption watcher (cluster._private_node_env); the worker is there.
    actors = re.findall(r"^:actor_name:(\w+)$", ray_text, re.M)
    assert "RayTrainWorker" in actors and "PreemptionWatcher" not in actors, actors
    # The block names the run's own files, which exist.
    assert "run finished at step 48, epoch 1/3" in console
    block = {line[2:15].strip(): line[15:].split("  (")[0] for line in console.splitlines() if line.startswith("  ")}
    assert Path(REPO, block["last"]) == run / "checkpoints" / "step-00000048"
    assert (run / "checkpoints" / "step-00000048" / "state.pt").exists()
    assert Path(REPO, block["best"]).is_dir() and Path(REPO, block["run folder"]) == run
    # Stored once: every state.pt is in the project's checkpoint folders, Ray's run folder has pointers.
    states = [f for f in run.rglob("state.pt")]
    assert states and all(f.parent.parent == run / "checkpoints" for f in states)
    assert list((run / "ray").rglob("raytrain_checkpoint.json"))


@pytest.fixture
def rays_console_handler_restored():
    """Ray's console handler keeps the stderr it was created with: when `import ray` first ran under
    capfd, that is capfd's file, closed after the test; later tests' Ray lines would then fail."""
    import logging

    yield
    for handler in logging.getLogger("ray").handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            handler.stream = sys.__stderr__  # not setStream: it flushes the old stream, maybe closed


def test_rays_driver_lines_go_to_the_file_and_rank_0s_console_is_relayed(tmp_path, capfd,
                                                                          rays_console_handler_restored):
    import logging

    import ray  # noqa: F401 - its import gives the "ray" logger its console handler
    from raytrain_llm.core.config_loader import load_config
    from raytrain_llm.launchers.ray_train.console import ray_console

    config = load_config(None, [f"logging.dir={tmp_path}"], environ={}, task="regression")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "console.log").write_text("an earlier segment's line\n")

    def start_ray() -> bool:  # what ray.init logs in the driver, e.g. its token-auth warning
        logging.getLogger("ray._private.authentication").warning("Token authentication is enabled")
        return True

    with ray_console(config, start_ray) as started:
        assert started
        with open(tmp_path / "logs" / "console.log", "a") as fh:  # rank 0, as a worker writes it
            fh.write("12:00:00 INFO [rank 0] step 1/4 epoch 1 loss 1.0\n\r[###   ] 2/4")
        logging.getLogger("ray.train").error("a worker group failed")
    out = capfd.readouterr()
    assert "Token authentication" not in out.err + out.out
    assert "Token authentication is enabled" in (tmp_path / "logs" / "ray-driver.log").read_text()
    assert out.err.splitlines()[0].startswith(f"Ray's own log lines: {tmp_path}/logs/ray-driver.log")
    assert "12:00:00 INFO [rank 0] step 1/4 epoch 1 loss 1.0\n\r[###   ] 2/4" in out.err
    assert "an earlier segment's line" not in out.err and "a worker group failed" in out.err
    logging.getLogger("ray").warning("after the run")  # Ray's handler has its own stream back
    assert "after the run" in capfd.readouterr().err
