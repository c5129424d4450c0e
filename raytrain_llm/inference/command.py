"""What the sample/evaluate/export commands share with train.py: argparse that reports a mistake
in one line (exit 2), and a runner that maps errors to exit codes without a traceback."""
from __future__ import annotations

import argparse
from typing import Callable, Optional, Sequence

from raytrain_llm.core.command_exit import run_command
from raytrain_llm.core.errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def run(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
        argv: Optional[Sequence[str]] = None) -> int:
    """parse, run, and report (`core/command_exit.py`): exit 0, 2 for a user mistake, 1 for anything
    else, one line each."""
    return run_command(lambda: main(parser.parse_args(argv)))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value
