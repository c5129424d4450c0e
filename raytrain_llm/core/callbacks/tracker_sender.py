"""`BackgroundSender`: runs a tracker's network calls on one background thread, in order.

The training loop only enqueues (microseconds); a slow or unreachable server delays the thread,
never a step. The queue is bounded: when it is full (the server is far slower than the loop)
an item is dropped and counted rather than blocking. After the first failed call the tracker
is considered gone: later items are not attempted (each would wait out the client's retries)
but counted, so the warning at the end can say what was not logged. Records waiting in the
queue together go out in one call (`send_records`): one request per batch to a remote server
instead of one per record.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, NamedTuple, Optional

MAX_QUEUED = 10_000  # items (one per logged record, plus a few at start and end)
MAX_RECORDS_PER_SEND = 50  # records sent in one call (MLflow takes at most 1000 metrics per request)
_STOP = object()
_RECORD = object()


class Item(NamedTuple):
    fn: Any  # a callable, or _RECORD (payload goes to send_records) or _STOP
    what: str  # names it in the warning if it is not sent
    split: Optional[str] = None
    step: Optional[int] = None
    payload: Any = None


class NotLogged:
    """What a tracker did not log: record steps per split, and other named items."""

    def __init__(self):
        self.steps: dict[str, list[int]] = {}
        self.items: list[str] = []

    def add(self, what: str, split: Optional[str] = None, step: Optional[int] = None) -> None:
        if split is not None and step is not None:
            self.steps.setdefault(split, []).append(step)
        else:
            self.items.append(what)

    def __bool__(self) -> bool:
        return bool(self.steps or self.items)

    def describe(self) -> str:
        parts = [f"{split} records of {_span(steps)}" for split, steps in sorted(self.steps.items())]
        return ", ".join(parts + self.items)


def _span(steps: list[int]) -> str:
    """Steps as text: step 4; steps 5-32 (every one); steps 1, 3; 40 steps between 1 and 90."""
    steps = sorted(set(steps))
    if len(steps) == 1:
        return f"step {steps[0]}"
    if steps[-1] - steps[0] + 1 == len(steps):
        return f"steps {steps[0]}-{steps[-1]}"
    if len(steps) <= 6:
        return "steps " + ", ".join(map(str, steps))
    return f"{len(steps)} steps between {steps[0]} and {steps[-1]}"


class BackgroundSender:
    """Calls enqueued functions in order on a daemon thread; `close` waits a bounded time."""

    def __init__(self, name: str, on_failure: Callable[[str, BaseException], None],
                 send_records: Optional[Callable[[list], None]] = None):
        self.name = name
        self._send_records = send_records
        self.not_logged = NotLogged()
        self.error: Optional[BaseException] = None
        self._on_failure = on_failure
        self._queue: queue.Queue = queue.Queue(maxsize=MAX_QUEUED)
        self._lock = threading.Lock()  # guards not_logged (the loop and the thread both add)
        self._thread = threading.Thread(target=self._run, name=f"raytrain-{name}", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], None], what: str, split: Optional[str] = None,
               step: Optional[int] = None) -> None:
        """Queue `fn`; `what` (with split and step for a record) names it in the warning if it is not sent."""
        self._put(Item(fn, what, split, step))

    def submit_record(self, payload: Any, split: str, step: int) -> None:
        """Queue a record for `send_records`, batched with the records queued after it."""
        self._put(Item(_RECORD, f"{split} record", split, step, payload))

    def _put(self, item: Item) -> None:
        if self.error is not None:
            self._skip([item])
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._skip([item])

    def close(self, timeout_s: float) -> bool:
        """Sends what is queued, waiting at most `timeout_s`; False if the thread is still busy
        (its remaining items are then reported as not logged; the daemon thread dies with the process)."""
        try:
            self._queue.put(Item(_STOP, ""), timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            return True
        with self._lock:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item.fn is not _STOP:
                    self.not_logged.add(item.what, item.split, item.step)
        return False

    def _skip(self, items: list[Item]) -> None:
        with self._lock:
            for item in items:
                self.not_logged.add(item.what, item.split, item.step)

    def _run(self) -> None:
        carry: Optional[Item] = None  # an item taken while gathering a batch of records
        while True:
            item, carry = carry or self._queue.get(), None
            if item.fn is _STOP:
                return
            batch = [item]
            if item.fn is _RECORD:
                while len(batch) < MAX_RECORDS_PER_SEND:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt.fn is not _RECORD:
                        carry = nxt
                        break
                    batch.append(nxt)
            self._call(batch)

    def _call(self, batch: list[Item]) -> None:
        if self.error is not None:
            self._skip(batch)
            return
        try:
            if batch[0].fn is _RECORD:
                self._send_records([item.payload for item in batch])
            else:
                batch[0].fn()
        except Exception as exc:  # noqa: BLE001 - any client error means the tracker is gone
            self.error = exc
            self._skip(batch)
            self._on_failure(batch[0].what, exc)
