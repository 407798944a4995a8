"""A fixed-rate loop on a monotonic schedule, for the controller on a real rig.

Control layer, ROS-free. On hardware the guidance update does not run in a ROS executor
timer (the executor also carries every message callback, and rcl re-arms its timers from
whatever thread happens to spin). Like ros2_control's controller_manager, it runs on a
thread of its own: wait for the deadline -> ``update`` -> wait for the next one, with
overruns counted. The schedule is absolute: tick ``k``'s deadline is
``t0 + k * period`` on ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux), so errors
never accumulate. A tick whose update ends after the next deadline is an *overrun*; the
loop then skips to the first deadline still in the future and counts the skipped ticks
(it never runs late ticks back to back to "catch up", which would hand the controller a
burst of stale updates).

Waiting is as precise as CPython allows on Linux: ``time.sleep`` (``clock_nanosleep``
since 3.11) until ``deadline - busy_wait_s``, then a spin on ``perf_counter_ns`` until
the deadline. The kernel's timer slack (50 us by default for ordinary threads) is set
to 1 ns for the loop thread. Optionally the loop thread asks for ``SCHED_FIFO`` and is
pinned to one CPU; both need privileges a lab PC may not grant, so they are attempted,
reported in :meth:`FixedRateLoop.stats` and never required. The garbage collector can
be frozen for the run (``gc_freeze``): a full collection of a big heap is a
millisecond-scale pause at an unpredictable tick.

Measured numbers for this machine are in ``docs/control_timing.md``
(``ir_guidance.bench.control``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

_PR_SET_TIMERSLACK = 29
_PR_GET_TIMERSLACK = 30
# Longest single sleep: stop() is noticed within this even at low rates.
_MAX_SLEEP_NS = 50_000_000


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library('c') or None, use_errno=True)
    except OSError:  # pragma: no cover - no libc (not Linux)
        return None


def percentiles_us(samples_ns: np.ndarray) -> dict[str, float]:
    """``p50``, ``p99`` and ``max`` of nanosecond samples, in microseconds (NaN if empty)."""
    if samples_ns.size == 0:
        return {'p50': float('nan'), 'p99': float('nan'), 'max': float('nan')}
    p50, p99 = np.percentile(samples_ns, [50, 99]) / 1e3
    return {'p50': float(p50), 'p99': float(p99), 'max': float(samples_ns.max()) / 1e3}


def period_errors_ns(wakeups_ns: np.ndarray, period_ns: int) -> tuple[np.ndarray, int]:
    """Period error of consecutive wake-ups, and the ticks missed between them.

    The error of each interval between consecutive wake-ups is ``|dt - period|``; an
    interval spanning ``m`` periods (``m = round(dt / period)`` >= 2) means ``m - 1``
    ticks were missed. A missed tick is therefore seen twice: in the missed count and as
    a period error of about one period. This is the one definition used for the loop and
    for any baseline that exposes only its callback times (an rclpy timer).
    """
    dt = np.diff(wakeups_ns.astype(np.int64))
    errors = np.abs(dt - period_ns)
    spans = np.rint(dt / period_ns).astype(np.int64)
    missed = int(np.clip(spans - 1, 0, None).sum())
    return errors, missed


class FixedRateLoop:
    """Call ``update(t)`` at ``rate_hz`` on an absolute monotonic schedule.

    ``update`` gets ``t = k / rate_hz``: the nominal time of tick ``k`` in seconds since
    the loop started (deterministic; skipped ticks advance it). An exception raised by
    ``update`` stops the loop and propagates out of :meth:`run`.

    Arguments of the constructor:
        rate_hz: ticks per second (> 0).
        update: the work of one tick.
        busy_wait_s: how long before a deadline the loop stops sleeping and spins on
            ``perf_counter_ns`` (0: sleep only). Larger absorbs more wake-up latency of
            the kernel at the price of CPU.
        realtime_priority: ask for ``SCHED_FIFO`` at this priority (1..99) for the loop
            thread during :meth:`run`; None: do not ask.
        cpu: pin the loop thread to this CPU during :meth:`run`; None: do not pin.
        gc_freeze: collect once, freeze the heap and disable the cyclic GC during
            :meth:`run` (re-enabled after; cycles made meanwhile are collected then).
        history: ticks kept for the statistics (a ring: the latest ``history`` ticks).
        clock, sleep: the monotonic nanosecond clock and the sleep (seconds) the loop
            uses; ``time.perf_counter_ns`` and ``time.sleep`` unless a test or a
            simulated-time run passes its own.

    Scheduling and affinity are restored when :meth:`run` returns.
    """

    def __init__(self, rate_hz: float, update: Callable[[float], None],
                 busy_wait_s: float = 2e-4, *, realtime_priority: int | None = None,
                 cpu: int | None = None, gc_freeze: bool = False,
                 history: int = 1 << 18,
                 clock: Callable[[], int] = time.perf_counter_ns,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not (np.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f'rate_hz must be a positive finite number, got {rate_hz!r}')
        if not callable(update):
            raise TypeError(f'update must be callable, got {type(update).__name__}')
        self.period_ns = round(1e9 / rate_hz)
        if not (np.isfinite(busy_wait_s) and 0 <= busy_wait_s * 1e9 <= self.period_ns):
            raise ValueError(f'busy_wait_s must lie in [0, period = {self.period_ns / 1e9} s], '
                             f'got {busy_wait_s!r}')
        if realtime_priority is not None and not 1 <= realtime_priority <= 99:
            raise ValueError(f'realtime_priority must be 1..99, got {realtime_priority}')
        if history < 2:
            raise ValueError(f'history must be >= 2 ticks, got {history}')
        self.rate_hz = float(rate_hz)
        self.update = update
        self.busy_wait_ns = round(busy_wait_s * 1e9)
        self.realtime_priority = realtime_priority
        self.cpu = cpu
        self.gc_freeze = gc_freeze
        self._clock = clock
        self._sleep = sleep
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._history = history
        self._wake = np.zeros(history, dtype=np.int64)      # wake-up time of tick i
        self._late = np.zeros(history, dtype=np.int64)      # wake-up - deadline
        self._busy = np.zeros(history, dtype=np.int64)      # update duration
        self._count = 0          # ticks run (update called)
        self._overruns = 0
        self._skipped = 0
        self._granted: dict[str, Any] = {'rt_scheduling': False, 'affinity': None,
                                         'timer_slack_ns': None}

    # -- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to return after the current tick (safe from any thread)."""
        self._stop.set()

    def start(self, duration_s: float | None = None) -> threading.Thread:
        """Run the loop on a new daemon thread; returns the thread (join it after stop())."""
        thread = threading.Thread(target=self.run, args=(duration_s,), daemon=True,
                                  name='fixed_rate_loop')
        thread.start()
        return thread

    def run(self, duration_s: float | None = None) -> dict[str, Any]:
        """Run in the calling thread until :meth:`stop` or ``duration_s``; return stats().

        ``duration_s`` is the schedule's length: ticks with nominal time below it are run
        (``round(duration_s * rate_hz)`` ticks when none is skipped).
        """
        if duration_s is not None and not (np.isfinite(duration_s) and duration_s >= 0):
            raise ValueError(f'duration_s must be a finite number >= 0, got {duration_s!r}')
        end_tick = None if duration_s is None else round(duration_s * self.rate_hz)
        self._stop.clear()
        with self._lock:
            self._count = self._overruns = self._skipped = 0
        with self._thread_setup():
            self._loop(end_tick)
        return self.stats()

    # -- the loop --------------------------------------------------------------------------

    def _loop(self, end_tick: int | None) -> None:
        # Locals only in the hot path: attribute look-ups cost ~50 ns each in CPython.
        clock = self._clock
        sleep = self._sleep
        stop = self._stop.is_set
        update = self.update
        period = self.period_ns
        busy = self.busy_wait_ns
        wake_buf, late_buf, busy_buf = self._wake, self._late, self._busy
        size = self._history
        rate = self.rate_hz
        lock = self._lock
        k = 0
        t0 = clock() + period
        while not stop() and (end_tick is None or k < end_tick):
            deadline = t0 + k * period
            remaining = deadline - clock()
            while remaining > busy:
                sleep(min(remaining - busy, _MAX_SLEEP_NS) * 1e-9)
                remaining = deadline - clock()
            now = clock()
            while now < deadline:
                now = clock()
            update(k / rate)
            done = clock()
            k += 1
            with lock:
                i = self._count % size
                wake_buf[i] = now
                late_buf[i] = now - deadline
                busy_buf[i] = done - now
                self._count += 1
                if done >= t0 + k * period:
                    # Overrun: skip every deadline already passed; run the next future one.
                    next_k = (done - t0) // period + 1
                    self._overruns += 1
                    self._skipped += (next_k if end_tick is None else min(next_k, end_tick)) - k
                    k = next_k

    @contextlib.contextmanager
    def _thread_setup(self) -> Iterator[None]:
        """Apply timer slack, SCHED_FIFO, affinity and the GC setting; undo them after."""
        undo: list[Callable[[], None]] = []
        granted: dict[str, Any] = {'rt_scheduling': False, 'affinity': None,
                                   'timer_slack_ns': None}
        libc = _libc()
        if libc is not None and hasattr(libc, 'prctl'):
            old_slack = libc.prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)
            if old_slack >= 0 and libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0) == 0:
                granted['timer_slack_ns'] = libc.prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)
                undo.append(lambda: libc.prctl(_PR_SET_TIMERSLACK, old_slack, 0, 0, 0))
        if self.realtime_priority is not None and hasattr(os, 'sched_setscheduler'):
            old_policy = os.sched_getscheduler(0)
            old_param = os.sched_getparam(0)
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO,
                                      os.sched_param(self.realtime_priority))
                granted['rt_scheduling'] = True
                undo.append(lambda: os.sched_setscheduler(0, old_policy, old_param))
            except OSError as error:  # no rtprio grant: run anyway, say why in the stats
                granted['rt_scheduling_refused'] = str(error)
        if self.cpu is not None and hasattr(os, 'sched_setaffinity'):
            old_cpus = os.sched_getaffinity(0)
            try:
                os.sched_setaffinity(0, {self.cpu})
                granted['affinity'] = sorted(os.sched_getaffinity(0))
                undo.append(lambda: os.sched_setaffinity(0, old_cpus))
            except (OSError, ValueError) as error:  # e.g. that CPU is not ours
                granted['affinity_refused'] = str(error)
        if self.gc_freeze:
            was_enabled = gc.isenabled()
            gc.collect()
            gc.freeze()
            gc.disable()

            def restore_gc() -> None:
                gc.unfreeze()
                if was_enabled:
                    gc.enable()
            undo.append(restore_gc)
        self._granted = granted
        try:
            yield
        finally:
            for action in reversed(undo):
                with contextlib.suppress(OSError):
                    action()

    # -- results ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Timing of the latest ``history`` ticks, in microseconds, and the counters.

        - ``period_err_us_{p50,p99,max}``: ``|(wake_k - wake_{k-1}) - period|`` over
          consecutive ticks that ran, where ``wake`` is the ``perf_counter_ns`` reading
          at which ``update`` was called (see :func:`period_errors_ns`; a skipped tick
          makes one interval about one period too long).
        - ``wake_late_us_{p50,p99,max}``: ``wake_k - deadline_k`` (never negative: the
          loop never calls ``update`` early).
        - ``update_us_{p50,p99,max}``: duration of ``update``.
        - ``ticks``: updates run; ``overruns``: ticks whose update ended at or after the
          next deadline; ``skipped``: deadlines skipped after those overruns.
        - ``rt_scheduling`` (SCHED_FIFO granted), ``affinity`` (CPUs pinned to, or None),
          ``timer_slack_ns`` (the loop thread's slack, or None if it could not be set).

        Safe to call from another thread while the loop runs.
        """
        with self._lock:
            count, overruns, skipped = self._count, self._overruns, self._skipped
            n = min(count, self._history)
            order = (np.arange(count - n, count) % self._history)
            wake, late, busy = self._wake[order], self._late[order], self._busy[order]
        errors, _ = period_errors_ns(wake, self.period_ns)
        result: dict[str, Any] = {'ticks': count, 'overruns': overruns, 'skipped': skipped,
                                  'rate_hz': self.rate_hz}
        for name, samples in (('period_err_us', errors), ('wake_late_us', late),
                              ('update_us', busy)):
            for key, value in percentiles_us(samples).items():
                result[f'{name}_{key}'] = value
        result.update(self._granted)
        return result
