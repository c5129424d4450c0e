"""The Ray launcher's console: the project's lines (progress, results) as an in-process run
prints them; Ray's own lines in log files, whose folder is printed once.

- Workers' output is not forwarded to the driver (`log_to_driver=False`): Ray keeps it in its
  session's log files (`worker-*.out/err`, `train/`, `ray-data.log`), as it always does.
- Rank 0 writes its console (the project's log lines and, when the driver's console is a
  terminal, the live progress bar) to `<logging.dir>/logs/console.log`; the driver relays what
  is appended there to its own stderr as it comes (`ConsoleRelay`).
- Ray's Python log lines in the driver go to `<logging.dir>/logs/ray-driver.log`; errors among
  them also reach the console.

`logging.level=debug` or RAYTRAIN_RAY_LOGS=1 shows Ray's lines on the console instead, as Ray
prints them (workers' lines prefixed by their actor), with no relay.
"""
from __future__ import annotations

import codecs
import contextlib
import logging
import os
import sys
import threading
from typing import Any, Callable, Iterator, Optional

from raytrain_llm.core.config import Config
from raytrain_llm.core.env_settings import env_setting
from raytrain_llm.launchers.run_report import shown_path

CONSOLE_FILE = "console.log"  # under <logging.dir>/logs: rank 0's console under Ray
DRIVER_LOG_FILE = "ray-driver.log"  # under <logging.dir>/logs: Ray's Python logging in the driver
POLL_S = 0.1


def shows_ray_logs(config: Config) -> bool:
    """Ray's own lines on the console: logging.level=debug or RAYTRAIN_RAY_LOGS=1."""
    return config.logging.level.upper() == "DEBUG" or bool(env_setting("RAYTRAIN_RAY_LOGS"))


def worker_console(config: Config, stream=None) -> dict[str, Any]:
    """What rank 0's console is, for the train loop config: the file the driver relays (None
    when Ray forwards the workers' output itself) and whether the driver's console is a terminal
    (the worker's own stdout never is)."""
    stream = stream or sys.stderr
    if shows_ray_logs(config):
        return {"console_file": None, "console_is_terminal": False}
    return {"console_file": os.path.join(config.logging.dir, "logs", CONSOLE_FILE),
            "console_is_terminal": bool(getattr(stream, "isatty", lambda: False)())}


def open_worker_console(loop_config: dict[str, Any], is_main: bool):
    """Rank 0's console stream under the relay (appended to: a restarted group goes on in the
    same file), or None for the worker's own stderr."""
    path = loop_config.get("console_file")
    if not (path and is_main):
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return open(path, "a", encoding="utf-8", buffering=1)


@contextlib.contextmanager
def ray_console(config: Config, start_ray: Callable[[], bool]) -> Iterator[bool]:
    """The Ray session's console: the driver's "ray" logger writes to logs/ray-driver.log while
    `start_ray()` (ray.init) and the body (fit, and ray.shutdown) run; Ray's errors also reach
    the console, and rank 0's console file is relayed. Yields what `start_ray` returned."""
    if shows_ray_logs(config):
        yield start_ray()
        return
    logs = os.path.join(config.logging.dir, "logs")
    os.makedirs(logs, exist_ok=True)
    ray_logger = logging.getLogger("ray")
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    with open(os.path.join(logs, DRIVER_LOG_FILE), "a", encoding="utf-8") as fh:
        # Ray's console handler of the "ray" logger holds the stderr of `import ray`; Python's
        # warnings and logging's last resort write to sys.stderr: both to the file.
        swapped = [(h, h.stream) for h in ray_logger.handlers
                   if type(h) is not logging.FileHandler and isinstance(h, logging.StreamHandler)]
        for handler, _ in swapped:
            handler.setStream(fh)
        try:
            with contextlib.redirect_stderr(fh):
                started = start_ray()
            ray_logger.addHandler(errors)
            folder = ray_logs_folder()
            print(f"Ray's own log lines: {shown_path(os.path.join(logs, DRIVER_LOG_FILE))}"
                  + (f" and {folder}" if folder else "") + " (logging.level=debug or RAYTRAIN_RAY_LOGS=1 shows them "
                  "here)", file=sys.stderr, flush=True)
            with ConsoleRelay(os.path.join(logs, CONSOLE_FILE)):
                yield started
        finally:
            ray_logger.removeHandler(errors)
            for handler, stream in swapped:
                handler.setStream(stream)


def ray_logs_folder() -> Optional[str]:
    """This Ray session's log folder (on the head node for a cluster), if Ray says."""
    try:
        import ray

        return ray._private.worker.global_worker.node.get_logs_dir_path()  # noqa: SLF001 - no public API
    except Exception:  # noqa: BLE001 - only for a message
        return None


class ConsoleRelay:
    """Copies what is appended to `path` after `start()` to `out`, as it comes (progress-bar
    frames included: bytes are passed on as they are, carriage returns too)."""

    def __init__(self, path: str, out=None):
        self.path, self.out = path, out or sys.stderr
        self._offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raytrain-console-relay", daemon=True)

    def start(self) -> "ConsoleRelay":
        # What an earlier segment of this run wrote (a resume into the same folder) was shown then.
        self._offset = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self.pump()
        self.pump()

    def pump(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:  # not created yet (workers starting), or logging.dir not on this node
            return
        if data:
            self._offset += len(data)
            self.out.write(self._decoder.decode(data))
            self.out.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __enter__(self) -> "ConsoleRelay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
