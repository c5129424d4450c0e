"""Environment variables the project reads that are not config fields, checked like config values.

A bad value is a `ConfigError` naming the variable (exit 2, one line), found when the config is
loaded (config_loader.env_errors) rather than ignored or turned into a traceback mid-run.

- RAYTRAIN_PEAK_TFLOPS: the accelerator's peak TFLOP/s for MFU, for a GPU the table in
  core/monitoring.py does not know (a number > 0).
- RAYTRAIN_DEBUG: print an unexpected error's traceback on stderr (true/false, 1/0, yes/no, on/off;
  empty is false).
- RAYTRAIN_RAY_LOGS: under the Ray launcher, show Ray's own log lines on the console too (a flag,
  as RAYTRAIN_DEBUG); they are always in Ray's log files.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Optional

from raytrain_llm.core.errors import ConfigError, quote

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _positive_number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


def _flag(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(text)


# name -> (parser raising ValueError, what a valid value is)
ENV_SETTINGS: dict[str, tuple[Callable[[str], Any], str]] = {
    "RAYTRAIN_PEAK_TFLOPS": (_positive_number, "a number > 0 (the accelerator's peak TFLOP/s)"),
    "RAYTRAIN_DEBUG": (_flag, "true/false (1/0, yes/no, on/off)"),
    "RAYTRAIN_RAY_LOGS": (_flag, "true/false (1/0, yes/no, on/off)"),
}


def env_setting_errors(environ: Mapping[str, str]) -> list[str]:
    """One message per variable of ENV_SETTINGS set to a value its parser refuses."""
    errors = []
    for name, (parse, expected) in ENV_SETTINGS.items():
        if name in environ:
            try:
                parse(environ[name])
            except ValueError:
                errors.append(f"${name}: expected {expected}, got {quote(environ[name])}")
    return errors


def env_setting(name: str, environ: Optional[Mapping[str, str]] = None) -> Any:
    """The parsed value of `name` (None when unset or empty); a bad value is a ConfigError."""
    environ = os.environ if environ is None else environ
    text = environ.get(name, "")
    if not text.strip():
        return None
    errors = env_setting_errors({name: text})
    if errors:
        raise ConfigError(errors)
    return ENV_SETTINGS[name][0](text)
