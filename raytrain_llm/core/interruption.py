"""Graceful stop on SIGTERM / SIGINT: finish the step, save, write the summary, exit 143 / 130.

What spot VMs, Kubernetes and Slurm send before they kill a process is SIGTERM; Ctrl-C is SIGINT.
The first one only sets a flag (a signal handler must not touch the training state); the loop
reads it at the next optimizer-step boundary, where the ranks agree on it (core/step_agreement)
and the `GracefulStop` callback acts on what they agreed: every rank stops at the same step, and
the engine's end-of-run path saves a checkpoint and writes summary.json. A second signal ends
the process at once: every file the run writes is written atomically (temporary name, rename),
so nothing already saved is damaged; a half-written checkpoint is a `.tmp-step-*` folder that
the next run in that folder removes.

Handlers can only be installed from a process's main thread (Python runs them there): the
in-process launcher installs them around the run, spawn's workers at their start, Ray Train's
workers through a call on each worker's main thread. Nothing here knows which launcher called.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _State:
    signum = 0  # the first stop signal this process received (0: none)
    armed = False  # handlers installed and not yet restored: only then does `signum` stop a run
    agreed = 0  # the stop signal the ranks agreed on (record_agreed), 0 until they have
    requested = 0  # a stop signal received elsewhere and passed on by other means (`request`)
    # The signal a received one stands for (spawn's workers get SIGTERM for the parent's Ctrl-C)
    meaning: Optional[Callable[[int], int]] = None
    # What to do besides recording it (spawn's parent passes it on to its workers)
    forward: Optional[Callable[[int], None]] = None
    # Whether a notice of this node's coming preemption arrived (a launcher's, e.g. Ray's drain
    # notice): answered at each step boundary, so it must be cheap and not collective.
    notice: Optional[Callable[[], bool]] = None


_state = _State()


def exit_code(signum: int) -> int:
    """The shell's status for a process ended by `signum`: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def signal_number(name) -> int:
    """`signal_name`'s inverse; 0 for None or an empty name (a run that was not interrupted)."""
    return int(signal.Signals[name]) if name else 0


def received() -> int:
    """The stop signal this process received since `install`, or 0."""
    return _state.signum


def _handle(signum: int, frame) -> None:
    forward = _state.forward
    if _state.signum:  # the second one: at once
        if forward is not None:
            forward(signum)
        os.write(2, f"{signal_name(signum)} again: exiting now\n".encode())
        os._exit(exit_code(_state.signum))
    _state.signum = _state.meaning(signum) if _state.meaning is not None else signum
    if forward is not None:
        forward(signum)
    os.write(2, (f"{signal_name(signum)} received: finishing the current step, saving a checkpoint "
                 f"and the summary (send it again to exit at once)\n").encode())


def install(signals=STOP_SIGNALS, forward: Optional[Callable[[int], None]] = None,
            meaning: Optional[Callable[[int], int]] = None) -> bool:
    """Handle `signals` as stop requests from now on; False (nothing done) off the main thread.
    `meaning(signum)`: the signal to record for a received one. Clears an earlier run's flag.
    Handlers stay until `restore` or the process ends."""
    if threading.current_thread() is not threading.main_thread():
        return False
    _state.signum, _state.agreed, _state.forward, _state.armed = 0, 0, forward, True
    _state.meaning = meaning
    for sig in signals:
        signal.signal(sig, _handle)
    return True


@contextmanager
def handling(signals=STOP_SIGNALS, forward: Optional[Callable[[int], None]] = None) -> Iterator[bool]:
    """`install` for the duration of a block, the previous handlers restored after it."""
    on_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in signals} if on_main else {}
    try:
        yield install(signals, forward)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        _state.forward, _state.armed = None, False  # `received` still tells the launcher what arrived


def ignore(sig: int) -> None:
    """A process whose parent passes its stop signal on (spawn's workers) ignores the terminal's
    copy of it: Ctrl-C reaches the whole process group, and two copies would count as two."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(sig, signal.SIG_IGN)


def watch_notice(notice: Optional[Callable[[], bool]]) -> None:
    """Ask `notice()` at each step boundary whether this node will soon be taken away (None: stop asking)."""
    _state.notice = notice


def pending() -> tuple[int, bool]:
    """This process's own (stop signal since `install` or asked for by `request`, 0 if none;
    whether a preemption notice arrived): what it brings to the ranks' step agreement
    (core/step_agreement), which records the result with `record_agreed`."""
    signum = _state.signum if _state.armed else 0
    return signum or _state.requested, bool(_state.notice and _state.notice())


def request(signum: int) -> None:
    """A stop that reached this process other than as a signal (a Ray worker, when the run's
    driver received `signum`): counts at the next step boundary as if `signum` had arrived here."""
    _state.requested = _state.requested or int(signum)


def record_agreed(signum: int) -> None:
    """The stop signal the ranks agreed on after a step (the first one stands)."""
    _state.agreed = _state.agreed or signum


def agreed() -> int:
    """The stop signal the ranks of this process's run agreed on, or 0 (see `agree`)."""
    return _state.agreed


def forget_agreement() -> None:
    """A new run in this process starts from no agreed stop (a received signal still counts)."""
    _state.agreed = 0
