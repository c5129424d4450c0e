"""Core tests: tests/ goes on sys.path so `rt_testing` (helpers) and `rt_helpers` (test tasks,
used as `--task rt_helpers:Name`) import the same way in-process and in the CLI subprocesses."""
from __future__ import annotations

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
