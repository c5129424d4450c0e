"""The errors a user can cause, each mapped to an exit status by the CLI.

Usage and config mistakes exit 2, failures while training exit 1; both print one line.
"""
from __future__ import annotations

import reprlib
from typing import Any


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


QUOTE_LIMIT = 200  # characters of one quoted value in an error message


class _BoundedRepr(reprlib.Repr):
    """repr() for error messages: the same text for everyday values, a bounded one for huge or
    deeply nested values (their middle or tail cut with "..."). Dicts keep their own order."""

    def __init__(self):
        super().__init__()
        self.maxlevel = 4
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = self.maxdict = 16
        self.maxstring = self.maxlong = self.maxother = QUOTE_LIMIT - 4

    def repr_dict(self, x, level):
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                 for k, v in list(x.items())[:self.maxdict]]
        return "{" + ", ".join(items) + (", ..." if len(x) > self.maxdict else "") + "}"

    def repr_int(self, x, level):
        try:
            return super().repr_int(x, level)
        except ValueError:  # over Python's 4300-digit limit for int -> str
            return f"<an integer of {x.bit_length()} bits>"


_REPR = _BoundedRepr()


def clip(text: str) -> str:
    """`text` (a key a user gave) cut to QUOTE_LIMIT characters with "..."."""
    return text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT - 3] + "..."


def quote(value: Any) -> str:
    """`repr(value)` for an error message, at most QUOTE_LIMIT characters: a value a user gave
    can be megabytes long, and the message is one line on a terminal."""
    return clip(_REPR.repr(value))
