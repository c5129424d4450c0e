"""What the sample/evaluate/export commands share with train.py: argparse that reports a mistake
in one line (exit 2), and a runner that maps errors to exit codes without a traceback."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, Optional, Sequence

from raytrain_llm.core.errors import RaytrainError, UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def run(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
        argv: Optional[Sequence[str]] = None) -> int:
    """parse, run, and report: exit 0, 2 for a user mistake, 1 for anything else (one line each;
    the traceback with RAYTRAIN_DEBUG=1)."""
    try:
        return main(parser.parse_args(argv))
    except RaytrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence, as in train.py
        if os.environ.get("RAYTRAIN_DEBUG"):
            traceback.print_exc()
        text = str(exc).strip()
        print(f"error: {type(exc).__name__}: {text.splitlines()[0] if text else ''} "
              "(RAYTRAIN_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value
