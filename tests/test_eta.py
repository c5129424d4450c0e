"""The ETA estimator on a fake clock: start-up and compilation are left out of the pace, and
after a few percent of a run the estimate is within 25% of the time that is really left."""
from __future__ import annotations

import pytest

from raytrain_llm.core.eta import EtaEstimator, format_duration
from rt_testing import ManualClock


def run(durations: list[float], clock: ManualClock, eta: EtaEstimator, start: int = 0) -> list:
    """Steps of the given durations; the estimate after each (None: none yet)."""
    total = start + len(durations)
    eta.start(start, total)
    out = []
    for i, seconds in enumerate(durations, start=start + 1):
        clock.now += seconds
        eta.step_done(i)
        out.append(eta.seconds_left(i, total))
    return out


def true_left(durations: list[float], i: int) -> float:
    return sum(durations[i:])


def test_start_up_and_compilation_do_not_count_in_the_pace():
    # 1000 steps of 0.1 s after a first step of 20 s (compilation) and two slow ones (warm caches);
    # a validation of 2 s every 100 steps.
    durations = [20.0, 1.0, 0.5] + [0.1] * 997
    for k in range(99, 1000, 100):
        durations[k] += 2.0
    clock = ManualClock()
    eta = EtaEstimator(clock)
    estimates = run(durations, clock, eta)
    assert estimates[:20] == [None] * 20 and estimates[20] is not None  # warm-up: 2% of the run (20 steps)
    for i in range(30, 999):  # from 3% of the run on, within 25% of the truth (or, in the last
        # seconds, of one validation: the pace spreads them evenly, the run has them in lumps)
        truth = true_left(durations, i + 1)
        assert abs(estimates[i] - truth) <= max(0.25 * truth, 2.0), i
    assert estimates[-1] is None
    # The old rule (the pace since the start) was off by 2x here at 3%:
    naive = sum(durations[:30]) / 30 * 970
    assert naive > 2 * true_left(durations, 30)


def test_a_resumed_segment_measures_its_own_pace():
    clock = ManualClock()
    eta = EtaEstimator(clock)
    durations = [15.0] + [0.2] * 99  # steps 101..200 of 200: a restart's first step is slow again
    estimates = run(durations, clock, eta, start=100)
    assert estimates[:2] == [None, None]  # at least 2 warm-up steps
    assert estimates[10] == pytest.approx(true_left(durations, 11), rel=0.01)


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.6, 61, 3600 * 25 + 62)] == ["0:00:00", "0:01:00", "0:01:01", "25:01:02"]
