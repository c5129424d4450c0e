"""How the project's commands end: one line on stderr and an exit code, never a traceback for a
user's mistake.

- `RaytrainError`: `error: <message>`, its `exit_code` (2 usage/config, 1 training/checkpoint);
- Ctrl-C (`KeyboardInterrupt`): the command's own line, 130 (the shell's code for SIGINT);
- anything else is a bug: `error: <Type>: <first line>`, 1; the traceback on stderr with
  RAYTRAIN_DEBUG set true (parsed as every RAYTRAIN_ variable is: "0" and "false" are off).

`train.py` (`cli.py`) adds to this what only a training run has (error.log in the run folder, the
resume command on Ctrl-C); `sample`/`evaluate`/`export`/`consolidate` and `prepare` use
`run_command` as it is.
"""
from __future__ import annotations

import sys
import traceback
from typing import Callable

from raytrain_llm.core.errors import RaytrainError

INTERRUPTED_EXIT = 130


def debug_enabled() -> bool:
    """RAYTRAIN_DEBUG as a flag; a malformed value counts as off here (the config check reports it)."""
    from raytrain_llm.core.env_settings import env_setting

    try:
        return bool(env_setting("RAYTRAIN_DEBUG"))
    except RaytrainError:
        return False


def unexpected_line(exc: BaseException) -> str:
    """`error: <Type>: <first line of the message>` for an exception that is not a user's mistake."""
    text = str(exc).strip()
    return f"error: {type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip()


def run_command(body: Callable[[], int], interrupted: str = "error: interrupted") -> int:
    """`body()`'s exit code, or the code and one stderr line for what it raised (see the module).
    `interrupted`: the line printed on Ctrl-C."""
    try:
        return body()
    except RaytrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, the traceback on request
        if debug_enabled():
            traceback.print_exc()
        print(f"{unexpected_line(exc)} (RAYTRAIN_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
