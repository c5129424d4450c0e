"""The errors a user can cause, each mapped to an exit status by the CLI.

Usage and config mistakes exit 2, failures while training exit 1; both print one line.
"""
from __future__ import annotations


class RaytrainError(Exception):
    exit_code = 1


class UsageError(RaytrainError):
    """Bad command line or task name: exit 2."""

    exit_code = 2
    # True when every rank raises it at the same point (it follows from the shared config or
    # checkpoint), so a launcher may end all ranks cleanly instead of handling a crashed worker.
    on_every_rank = False


class ConfigError(UsageError):
    """Every config problem at once, each naming its dotted key."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid config: " + "; ".join(self.problems))


def raised_on_every_rank(exc: UsageError) -> UsageError:
    exc.on_every_rank = True
    return exc


class TrainingError(RaytrainError):
    """Training could not go on (non-finite loss, unusable checkpoint, failed workers): exit 1."""


class CheckpointError(TrainingError):
    """A checkpoint that cannot be read or trusted."""
