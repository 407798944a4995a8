"""FixedRateLoop: absolute schedule, overrun skipping, stop from another thread, stats.

The schedule tests run on a simulated clock, so they check the arithmetic exactly and
cannot be flaky on a loaded machine; the real-clock tests check only structure (counts,
keys, ordering), never timing thresholds (those belong in ir_guidance.bench.control).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ir_guidance.control.rate import FixedRateLoop, period_errors_ns

PERIOD_NS = 1_000_000  # 1 kHz


class FakeClock:
    """A nanosecond clock that moves 1 us per reading and by exactly what is slept."""

    STEP_NS = 1000

    def __init__(self, start: int = 10**12) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += self.STEP_NS
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0, round(seconds * 1e9))

    def work(self, seconds: float) -> None:
        self.now += round(seconds * 1e9)


def _fake_loop(clock: FakeClock, update, **kwargs) -> FixedRateLoop:
    return FixedRateLoop(1e9 / PERIOD_NS, update, clock=clock, sleep=clock.sleep, **kwargs)


def test_deadlines_are_absolute_so_the_schedule_does_not_drift():
    clock = FakeClock()
    wakes, times = [], []

    def update(t: float) -> None:
        wakes.append(clock.now)
        times.append(t)
        clock.work(0.0007)  # 70 % of a period, every tick: a relative sleep would drift

    loop = _fake_loop(clock, update)
    stats = loop.run(duration_s=2.0)
    assert stats['ticks'] == 2000 and stats['overruns'] == 0 and stats['skipped'] == 0
    offsets = np.array(wakes) - wakes[0] - PERIOD_NS * np.arange(len(wakes))
    # Each wake is within a few clock readings of t0 + k * period, at tick 2000 as at tick 1.
    assert np.abs(offsets).max() <= 3 * FakeClock.STEP_NS
    assert times == pytest.approx(np.arange(2000) / 1000.0)


def test_overrun_is_counted_and_the_loop_skips_to_the_next_future_deadline():
    clock = FakeClock()
    times = []

    def update(t: float) -> None:
        times.append(round(t * 1000))
        if len(times) == 4:
            clock.work(0.0025)  # tick 3 ends 2.5 periods later: deadlines 4 and 5 passed

    loop = _fake_loop(clock, update)
    stats = loop.run(duration_s=0.010)
    assert times == [0, 1, 2, 3, 6, 7, 8, 9]
    assert stats['overruns'] == 1 and stats['skipped'] == 2
    assert stats['ticks'] + stats['skipped'] == 10
    # The interval across the skip is three periods: two missed ticks, error ~2 periods.
    assert stats['period_err_us_max'] == pytest.approx(2000.0, abs=1.0)


def test_overruns_with_the_real_clock_are_skipped_not_caught_up():
    times = []
    period_s = 0.005

    def update(t: float) -> None:
        times.append(t)
        if len(times) % 3 == 0:
            time.sleep(2.5 * period_s)

    loop = FixedRateLoop(1 / period_s, update, busy_wait_s=0.0005)
    stats = loop.run(duration_s=0.3)
    # Every third call overruns by 2.5 periods: 5 deadlines per 3 calls, 2 of them skipped.
    assert stats['overruns'] >= 10
    assert stats['skipped'] >= 20
    assert stats['ticks'] + stats['skipped'] == 60
    ticks = np.rint(np.array(times) / period_s).astype(int)
    assert np.all(np.diff(ticks) >= 1)      # never runs a deadline twice
    assert np.any(np.diff(ticks) >= 3)      # skipped ones are not run late


def test_stop_from_another_thread_ends_an_unbounded_run():
    calls = []
    loop = FixedRateLoop(500.0, calls.append)
    thread = loop.start()  # duration None: runs until stopped
    deadline = time.monotonic() + 5.0
    while len(calls) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) >= 20, 'loop did not tick'
    loop.stop()
    thread.join(timeout=2.0)
    assert not thread.is_alive()
    stats = loop.stats()
    assert stats['ticks'] == len(calls)


def test_stats_keys_and_sane_values():
    loop = FixedRateLoop(1000.0, lambda t: sum(range(50)), realtime_priority=10, cpu=0,
                         gc_freeze=True)
    stats = loop.run(duration_s=0.2)
    for name in ('period_err_us', 'wake_late_us', 'update_us'):
        p50, p99, peak = (stats[f'{name}_{k}'] for k in ('p50', 'p99', 'max'))
        assert 0 <= p50 <= p99 <= peak, name
    assert stats['update_us_p50'] > 0
    assert stats['ticks'] + stats['skipped'] == 200
    assert stats['ticks'] > 1 and 0 <= stats['overruns'] <= stats['skipped']
    assert isinstance(stats['rt_scheduling'], bool)
    assert stats['affinity'] in (None, [0])
    assert stats['rate_hz'] == 1000.0


def test_settings_are_restored_after_run():
    import gc
    import os

    before = (os.sched_getscheduler(0), os.sched_getaffinity(0), gc.isenabled())
    FixedRateLoop(1000.0, lambda t: None, realtime_priority=10, cpu=0,
                  gc_freeze=True).run(duration_s=0.02)
    assert (os.sched_getscheduler(0), os.sched_getaffinity(0), gc.isenabled()) == before


def test_update_exception_stops_the_loop_and_propagates():
    calls = []

    def update(t: float) -> None:
        calls.append(t)
        if len(calls) == 4:
            raise RuntimeError('controller fault')

    loop = FixedRateLoop(1000.0, update)
    with pytest.raises(RuntimeError, match='controller fault'):
        loop.run(duration_s=1.0)
    assert loop.stats()['ticks'] == 3


def test_stats_from_another_thread_while_running():
    loop = FixedRateLoop(1000.0, lambda t: None)
    thread = loop.start(duration_s=0.3)
    seen = []
    while thread.is_alive():
        seen.append(loop.stats()['ticks'])
        time.sleep(0.02)
    thread.join()
    assert seen == sorted(seen)


@pytest.mark.parametrize('kwargs, match', [
    ({'rate_hz': 0.0}, 'rate_hz'),
    ({'rate_hz': float('nan')}, 'rate_hz'),
    ({'busy_wait_s': 0.01}, 'busy_wait_s'),
    ({'busy_wait_s': -1e-6}, 'busy_wait_s'),
    ({'realtime_priority': 0}, 'realtime_priority'),
    ({'history': 1}, 'history'),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    args = {'rate_hz': 1000.0, 'update': lambda t: None, **kwargs}
    with pytest.raises(ValueError, match=match):
        FixedRateLoop(**args)


def test_bad_duration_and_update_are_refused():
    with pytest.raises(TypeError, match='callable'):
        FixedRateLoop(1000.0, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='duration_s'):
        FixedRateLoop(1000.0, lambda t: None).run(float('inf'))


def test_period_errors_count_missed_ticks():
    wakes = np.array([0, 1000, 2010, 4990, 6000])
    errors, missed = period_errors_ns(wakes, 1000)
    assert errors.tolist() == [0, 10, 1980, 10]
    assert missed == 2


def test_loop_runs_on_its_own_thread_not_the_callers():
    names = set()
    loop = FixedRateLoop(1000.0, lambda t: names.add(threading.current_thread().name))
    loop.start(duration_s=0.01).join(timeout=2.0)
    assert names == {'fixed_rate_loop'}

