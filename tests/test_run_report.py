"""The end-of-run block every launcher prints: the run's folder, its best and last checkpoints
(the project's own folders, as summary.json names them), final metrics, and commands that work."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from rt_testing import REPO, checkpoints, cli_env, read_json, run_cli, set_args, settings


def block(stdout: str) -> tuple[str, dict[str, str]]:
    """(headline, {label: text}) of the block in a run's stdout."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run "))
    rows = {}
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        label, _, text = line.strip().partition(" ")
        rows[label if label != "run" else "run folder"] = text.strip().removeprefix("folder").strip()
    return lines[start], rows


def in_repo(path: str) -> Path:
    return (REPO / path).resolve()  # the block's paths are relative to where the command ran


def check_block(stdout: str, run: Path, steps: int) -> dict[str, str]:
    headline, rows = block(stdout)
    summary = read_json(run / "summary.json")
    assert headline.startswith(f"run finished at step {steps}, epoch "), headline
    assert in_repo(rows["run folder"].split("  (")[0]) == run.resolve()
    assert in_repo(rows["best"].split("  (")[0]) == Path(summary["best_checkpoint"]).resolve()
    assert f"(val/loss {summary['best']['value']:.4g})" in rows["best"]
    assert in_repo(rows["last"]) == Path(summary["latest_checkpoint"]).resolve() == checkpoints(run)[-1].resolve()
    assert (in_repo(rows["last"]) / "meta.json").exists()
    val = summary["final"]["val"]
    assert rows["final"] == (f"train loss {summary['final']['train']['loss']:.4g}  "
                             f"val/loss {val['val/loss']:.4g} val/mae {val['val/mae']:.4g}")
    tensorboard = shlex.split(rows["tensorboard"])
    assert tensorboard[1:3] == ["--logdir", tensorboard[2]] and any(in_repo(tensorboard[2]).iterdir())
    return rows


@pytest.mark.timeout(240)
def test_in_process_block_names_the_runs_files_and_its_resume_command_continues_it(tmp_path):
    run = tmp_path / "run"
    p = run_cli(set_args(settings(run, **{"logging.tensorboard": True, "checkpoint.every_n_steps": 8})))
    assert p.returncode == 0, p.stderr[-2000:]
    rows = check_block(p.stdout, run, 16)
    # The printed command, run as printed (plus a longer run): it continues this run from step 16.
    resume = shlex.split(rows["resume"]) + ["--set", "training.epochs=2"]
    assert resume[-4:-2] == ["--set", "checkpoint.resume=auto"]
    again = subprocess.run(resume, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stderr and "at step 16 " in again.stderr
    assert read_json(run / "summary.json")["global_step"] == 32
    check_block(again.stdout, run, 32)


@pytest.mark.timeout(240)
def test_spawn_prints_the_same_block(tmp_path):
    run = tmp_path / "run"
    s = settings(run, **{"logging.tensorboard": True, "distributed.launcher": "spawn",
                         "distributed.num_workers": 2, "distributed.backend": "gloo", "training.batch_size": 8})
    p = run_cli(set_args(s), timeout=200)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = check_block(p.stdout, run, 16)
    resume = shlex.split(rows["resume"])
    assert in_repo(resume[resume.index("--config") + 1]) == (run / "config.yaml").resolve()
    assert read_json(run / "summary.json")["global_step"] == 16


def test_without_checkpoints_the_block_says_so_and_offers_no_resume(tmp_path):
    from raytrain_llm.launchers.run_report import end_of_run_lines
    from rt_testing import train

    _, cfg = train(tmp_path, **{"checkpoint.enabled": False})
    lines = end_of_run_lines(cfg)
    assert lines[0].startswith("run finished at step 16")
    assert any(line.split() == ["checkpoints", "none", "(checkpoint.enabled=false)"] for line in lines)
    assert not any(line.strip().startswith(("resume", "best", "tensorboard")) for line in lines)


@pytest.mark.timeout(240)
def test_ctrl_c_says_the_step_the_checkpoint_and_the_command_that_resumes(tmp_path):
    run = tmp_path / "run"
    task = "rt_helpers:SignalAtStepTask"
    p = run_cli(["--task", task, *set_args(settings(run, **{"training.epochs": 2}))],
                env=cli_env(RT_SIGNAL_AT_STEP="13", RT_SIGNAL="INT"))
    assert p.returncode == 130, p.stderr[-2000:]
    headline, rows = block(p.stdout)
    assert headline == "run stopped at step 13, epoch 1/2: interrupted by SIGINT, checkpoint saved"
    message = p.stderr.strip().splitlines()[-1]
    saved = run / "checkpoints" / "step-00000013"
    assert message.startswith(f"interrupted by SIGINT at step 13; checkpoint of step 13 in {saved}; resume with: ")
    resume = message.partition("resume with: ")[2]
    assert resume == rows["resume"]
    again = subprocess.run(shlex.split(resume), cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "at step 13 (epoch 1, batch 13)" in again.stderr and read_json(run / "summary.json")["global_step"] == 32


def test_the_interrupted_line_without_a_checkpoint_or_a_run(tmp_path):
    from raytrain_llm.launchers.run_report import interrupted_line
    from rt_testing import make_config, train

    assert interrupted_line(None, "SIGINT") == "interrupted by SIGINT before the run started"
    _, cfg = train(tmp_path, **{"checkpoint.enabled": False, "training.max_steps": 3})
    assert interrupted_line(cfg, "SIGINT") == (f"interrupted by SIGINT at step 3; no checkpoint saved, nothing to "
                                               f"resume (run folder {tmp_path})")
    assert interrupted_line(make_config(tmp_path / "new"), "SIGTERM").startswith("interrupted by SIGTERM; no checkpoint")
