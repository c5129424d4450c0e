"""BackgroundSender: in order, records batched, a failure stops sending and everything after it
is counted as not logged, and close() never waits longer than its timeout."""
from __future__ import annotations

import threading

from raytrain_llm.core.callbacks.tracker_sender import BackgroundSender


def test_sends_in_order_and_batches_the_records_waiting_together():
    calls, gate = [], threading.Event()
    sender = BackgroundSender("t", on_failure=lambda *a: None, send_records=lambda batch: calls.append(list(batch)))
    sender.submit(gate.wait, "start")  # holds the thread while the records queue up
    for step in range(1, 6):
        sender.submit_record(step, "train", step)
    sender.submit(lambda: calls.append("end"), "end")
    gate.set()
    assert sender.close(timeout_s=30)
    assert calls == [[1, 2, 3, 4, 5], "end"] and not sender.not_logged


def test_after_a_failure_nothing_more_is_tried_and_the_warning_lists_it():
    failures, tried = [], []

    def send(batch):
        tried.append(batch)
        raise ConnectionError("server gone")

    sender = BackgroundSender("t", on_failure=lambda what, exc: failures.append((what, str(exc))), send_records=send)
    gate = threading.Event()
    sender.submit(gate.wait, "start")
    sender.submit_record(1, "train", 1)
    sender.submit_record(2, "val", 2)
    sender.submit(lambda: tried.append("summary"), "the summary")
    gate.set()
    assert sender.close(timeout_s=30)
    sender.submit_record(3, "train", 3)  # after the failure: counted without a try
    assert tried == [[1, 2]] and failures == [("train record", "server gone")]
    assert sender.not_logged.describe() == "train records of steps 1, 3, val records of step 2, the summary"


def test_close_gives_up_after_its_timeout_and_counts_what_is_still_queued():
    gate = threading.Event()
    sender = BackgroundSender("t", on_failure=lambda *a: None, send_records=lambda batch: None)
    sender.submit(gate.wait, "start")  # a server that never answers
    for step in (1, 2):
        sender.submit_record(step, "train", step)
    try:
        assert sender.close(timeout_s=0.2) is False
        assert sender.not_logged.describe() == "train records of steps 1-2"
    finally:
        gate.set()
