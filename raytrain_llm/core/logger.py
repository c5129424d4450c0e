"""Rank-aware logging: console on rank 0 only, one file per rank under `<logging.dir>/logs`."""
from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)s [rank %(rank)d] %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


class Logger:
    """A thin wrapper so engine code writes `self.logger.info(...)` without caring about ranks."""

    def __init__(self, name: str = "raytrain_llm", level: str = "INFO", log_dir: str | None = None,
                 rank: int = 0, console=None):
        """`console`: the stream rank 0's lines go to (default stderr; a file the Ray driver relays)."""
        self.rank = rank
        self._log = logging.getLogger(f"{name}.rank{rank}")
        self._log.setLevel(getattr(logging, level.upper(), logging.INFO))
        self._log.propagate = False
        for h in list(self._log.handlers):
            self._log.removeHandler(h)
            h.close()
        fmt = logging.Formatter(_FORMAT, datefmt="%H:%M:%S")
        if rank == 0:
            console = logging.StreamHandler(console or sys.stderr)
            console.setFormatter(fmt)
            console.addFilter(_RankFilter(rank))
            self._log.addHandler(console)
        if log_dir:
            os.makedirs(os.path.join(log_dir, "logs"), exist_ok=True)
            fh = logging.FileHandler(os.path.join(log_dir, "logs", f"rank{rank}.log"))
            fh.setFormatter(fmt)
            fh.addFilter(_RankFilter(rank))
            self._log.addHandler(fh)

    def debug(self, msg: str, *args) -> None:
        self._log.debug(msg, *args)

    def info(self, msg: str, *args) -> None:
        self._log.info(msg, *args)

    def warning(self, msg: str, *args) -> None:
        self._log.warning(msg, *args)

    def error(self, msg: str, *args) -> None:
        self._log.error(msg, *args)

    def close(self) -> None:
        for h in list(self._log.handlers):
            self._log.removeHandler(h)
            h.close()
