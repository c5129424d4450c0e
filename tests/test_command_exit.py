"""Every command's last line of defence (core/command_exit.py): exit codes and one stderr line."""
import pytest

from raytrain_llm.core.command_exit import run_command
from raytrain_llm.core.errors import CheckpointError, ConfigError, UsageError


def _raising(exc):
    def body():
        raise exc
    return body


@pytest.mark.parametrize("exc, code, line", [
    (UsageError("--out: exists"), 2, "error: --out: exists"),
    (ConfigError(["training.lr: must be > 0"]), 2, "error: invalid config: training.lr: must be > 0"),
    (CheckpointError("cannot save step 3"), 1, "error: cannot save step 3"),
    (KeyboardInterrupt(), 130, "stopped: rerun to finish"),
    (ValueError("bad shape\nsecond line"), 1, "error: ValueError: bad shape (RAYTRAIN_DEBUG=1 shows the traceback)"),
])
def test_each_outcome_is_one_line_and_its_exit_code(capsys, monkeypatch, exc, code, line):
    monkeypatch.delenv("RAYTRAIN_DEBUG", raising=False)
    assert run_command(_raising(exc), interrupted="stopped: rerun to finish") == code
    assert capsys.readouterr().err.splitlines() == [line]


@pytest.mark.parametrize("value, traceback_shown", [("1", True), ("true", True), ("0", False), ("off", False)])
def test_raytrain_debug_is_read_as_a_flag(capsys, monkeypatch, value, traceback_shown):
    monkeypatch.setenv("RAYTRAIN_DEBUG", value)
    assert run_command(_raising(RuntimeError("boom"))) == 1
    err = capsys.readouterr().err
    assert ("Traceback (most recent call last)" in err) == traceback_shown
    assert err.splitlines()[-1].startswith("error: RuntimeError: boom")


def test_a_body_that_returns_gives_its_code(capsys):
    assert run_command(lambda: 0) == 0 and run_command(lambda: 3) == 3
    assert capsys.readouterr().err == ""
