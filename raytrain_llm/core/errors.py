"""The errors a user can cause, each mapped to an exit status by the CLI.

Usage and config mistakes exit 2, failures while training exit 1; both print one line.
"""
from __future__ import annotations


class RaytrainError(Exception):
    exit_code = 1


class UsageError(RaytrainError):
    """Bad command line or task name: exit 2."""

    exit_code = 2


class ConfigError(UsageError):
    """Every config problem at once, each naming its dotted key."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid config: " + "; ".join(self.problems))


class TrainingError(RaytrainError):
    """Training could not go on (non-finite loss, unusable checkpoint, failed workers): exit 1."""


class CheckpointError(TrainingError):
    """A checkpoint that cannot be read or trusted."""
