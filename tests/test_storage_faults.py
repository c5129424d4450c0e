"""Storage faults: a full disk during a save, stale temporaries, unwritable output folders, a
token file cut short while a run reads it, non-finite optimizer state."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from raytrain_llm.core.checkpointing import CheckpointManager
from raytrain_llm.core.errors import CheckpointError
from rt_testing import REPO, checkpoints, cli_env, run_cli, set_args, settings


@contextlib.contextmanager
def tmpfs(path, size: str, *options: str):
    """A small tmpfs at `path` (root only; skipped elsewhere), unmounted afterwards."""
    os.makedirs(path, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def tiny_state(n: int) -> dict:
    w = torch.arange(n, dtype=torch.float32)
    return {"model": {"w": w}, "optimizer": {"state": {0: {"exp_avg": w.clone()}}, "param_groups": []},
            "progress": {"global_step": 1}}


def fill(folder, leave: int) -> None:
    """Fill the file system of `folder` until `leave` bytes are free."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(os.path.join(folder, "filler"), "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


@pytest.mark.timeout(60)
def test_a_full_disk_during_a_save_names_it_removes_the_partial_and_keeps_earlier_ones(tmp_path):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        manager = CheckpointManager(str(disk / "checkpoints"), keep_last=0)
        manager.save(tiny_state(1000), step=1, epoch=0, metrics={})
        fill(disk, leave=16 * 1024)
        with pytest.raises(CheckpointError) as info:
            manager.save(tiny_state(100_000), step=2, epoch=0, metrics={})
        message = str(info.value)
        assert "no space left on device" in message and str(disk / "checkpoints" / "step-00000002") in message
        assert "\n" not in message
        assert sorted(os.listdir(disk / "checkpoints")) == ["step-00000001"]  # no partial folder left
        assert torch.equal(CheckpointManager.load(manager.latest_path())["model"]["w"], tiny_state(1000)["model"]["w"])


@pytest.mark.timeout(120)
def test_a_run_whose_disk_fills_exits_1_with_one_line(tmp_path):
    # The weights and Adam's moments (~0.8 MB) do not fit in 512 KB; the logs do.
    with tmpfs(tmp_path / "disk", "512k") as disk:
        s = settings(disk / "run", **{"model.hidden_dim": 256, "training.epochs": 1})
        p = run_cli(set_args(s), timeout=100)
        assert p.returncode == 1, p.stderr[-2000:]
        errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no space left on device" in errors[0], p.stderr[-2000:]
        assert str(disk / "run" / "checkpoints" / "step-00000016") in errors[0]
        assert os.listdir(disk / "run" / "checkpoints") == []


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_temporaries_are_cleaned_up_and_never_picked(tmp_path):
    folder = tmp_path / "checkpoints"
    manager = CheckpointManager(str(folder))
    for step in (2, 3):
        manager.save(tiny_state(10), step=step, epoch=0, metrics={})
    dead = _dead_pid()
    # A save killed while writing step 4; a swap of step 3 killed between its two renames (step-3
    # itself gone: its only copy is the .old one); a swap of step 2 killed after them.
    (folder / f".tmp-step-00000004-{dead}").mkdir()
    (folder / f".tmp-step-00000004-{dead}" / "state.pt").write_bytes(b"partial")
    os.replace(folder / "step-00000003", folder / f"step-00000003.old-{dead}")
    os.makedirs(folder / f"step-00000002.old-{dead}")
    assert [os.path.basename(m["path"]) for m in CheckpointManager(str(folder), is_main=False).checkpoints()] == \
        ["step-00000002"]  # never picked, even before the clean-up
    live = folder / f".tmp-step-00000005-{os.getppid()}"  # a live process's save is left alone
    live.mkdir()
    CheckpointManager(str(folder))  # a run starting in the folder
    assert sorted(os.listdir(folder)) == [live.name, "step-00000002", "step-00000003"]
    assert CheckpointManager.load(str(folder / "step-00000003"))["progress"]["global_step"] == 1


def test_non_finite_optimizer_state_is_refused_at_save(tmp_path):
    state = tiny_state(10)
    state["optimizer"]["state"][0]["exp_avg"][3] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite values in optimizer param 0 exp_avg"):
        CheckpointManager(str(tmp_path)).save(state, step=1, epoch=0, metrics={})
    assert checkpoints(tmp_path) == [] and os.listdir(tmp_path) == []


@pytest.mark.timeout(120)
def test_an_unwritable_output_folder_is_a_usage_error_before_the_first_step(tmp_path):
    # A read-only volume (what a Kubernetes pod mounts read-only; a non-root user's folder without
    # write permission fails the same check, with EACCES). Root ignores permission bits: not these.
    with tmpfs(tmp_path / "ro", "64k", "ro") as ro:
        p = run_cli(set_args(settings(ro / "run")), timeout=100)
        assert p.returncode == 2, p.stderr[-2000:]
        assert p.stderr.strip().splitlines()[-1] == \
            f"error: logging.dir: cannot write to {ro / 'run'} (Read-only file system)"
        run = tmp_path / "run"
        p = run_cli(set_args(settings(run, **{"checkpoint.dir": str(ro / "ckpt")})), timeout=100)
        assert p.returncode == 2, p.stderr[-2000:]
        assert "error: checkpoint.dir: cannot write to" in p.stderr and "Read-only file system" in p.stderr
        assert not (run / "metrics.jsonl").exists()  # nothing trained
        # Also where the run is not started by the CLI (a Ray worker, the Python API): every rank alike.
        from raytrain_llm.core.errors import UsageError
        from rt_testing import train

        with pytest.raises(UsageError, match="checkpoint.dir: cannot write to") as info:
            train(run, **{"checkpoint.dir": str(ro / "ckpt")})
        assert info.value.on_every_rank


def test_a_token_file_cut_short_during_a_run_is_an_error_naming_it(tmp_path):
    # In a child process: with a memory map this ended the process with SIGBUS.
    script = textwrap.dedent(f"""
        import os, numpy as np
        from raytrain_llm.core.errors import TrainingError
        from raytrain_llm.data.token_file import TokenFileDataset, write_tokens
        path = {str(tmp_path / "train.bin")!r}
        write_tokens(path, np.arange(1 << 20) % 50)
        ds = TokenFileDataset(path, "uint16", 16, 50, "data.train_tokens")
        ds.rows(np.array([0, ds.num_samples - 1]))
        os.truncate(path, 4096)
        try:
            ds.rows(np.array([ds.num_samples - 1]))
        except TrainingError as exc:
            print("error:", exc)
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert f"token file {tmp_path / 'train.bin'} changed while the run reads it: it is now 4096 bytes" in p.stdout

