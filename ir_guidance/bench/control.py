"""``ir-guidance bench control``: the guidance update at 1 kHz, fixed-rate loop vs rclpy timer.

Benchmark layer. Two runs of the same length, one after the other, call the same work
at ``rate_hz``:

1. :class:`ir_guidance.control.rate.FixedRateLoop` in real-time mode (its own thread
   schedule: sleep, then spin to an absolute monotonic deadline; SCHED_FIFO, a pinned
   CPU and a frozen GC when the machine allows them) -- what the controller runs on a rig;
2. the baseline: a plain rclpy timer (``create_timer(1 / rate_hz)``) spun by a
   ``SingleThreadedExecutor`` in a fresh ``rclpy.Context`` on a free domain id, with
   discovery on loopback (``ros_env.configure``). rclpy is imported only for this
   baseline; the loop and the workload are ROS-free.

Both are measured the same way: the period error is ``|dt - period|`` between
consecutive calls of ``update`` (``rate.period_errors_ns``), and a missed tick is an
interval spanning two or more periods (``overruns`` for the loop counts ticks whose
update ended after the next deadline; ``rclpy_overruns`` the ticks the timer missed).
Target (issue 6): ``period_err_us_p99 <= 50`` and ``ratio_p99 <= 0.25``. Results for
this machine: ``docs/control_timing.md``.

The workload (``update=None``, :class:`GuidanceWorkload`) is the real controller:
``control.guidance.Guidance.update`` closed-loop against the synthetic plant of
``bench.plant`` (joints follow the command, a 1 N/mm flat skin on the F/T, a straight
vein 4 mm deep seen by an ideal US segmenter at 30 Hz, the map request answered by the
real insertion planner). Long jobs run as on hardware (``nodes.controller``, realtime
mode): ``Guidance(inline_jobs=False)`` asks for them, a spawn ``ProcessPoolExecutor(1)``
warmed with ``control.guidance.warm_up`` computes them (the sweep line; here also the
plan, ~0.1 s) and a done-callback hands the result back (``Guidance.deliver``) while the
loop keeps ticking. The guidance's clock is the plant's tick count (tick ``k`` at
``k / rate_hz``; the loop's ``t`` is not used), so a late or skipped loop tick delays the
plant but never skips simulated time. When the guidance reaches DONE or SAFE the next
tick starts a fresh one (a copy of a pristine instance made at construction, ~0.3 ms)
on a fresh plant, so 30 s cover every phase once and the next cycle up to about the end
of ALIGN (a cycle is ~17.3 s of ticks: SCAN 0.3 s, MAP ~6 s, PLAN until the worker
answers, ALIGN ~5 s, INSERT ~3 s, VERIFY 0.3 s, RETRACT ~2.5 s). The results say which
phases a run covered: ``phases`` (and ``rclpy_phases``) = ``{PHASE: {ticks,
update_us_p50, update_us_p99, update_us_max}}`` for ``Guidance.update`` alone, by the
phase the tick started in; ``cycles`` how each finished cycle ended. ``update_us_*`` (the
loop's own measure) is the whole tick: plant, ``Guidance.update`` and job hand-off.

The worker is a *spawn* process: a script that calls :func:`run` needs the usual
``if __name__ == '__main__':`` guard (the ``ir-guidance`` command and ``python -c`` do
not).
"""

from __future__ import annotations

import contextlib
import copy
import math
import multiprocessing
import os
import time
from array import array
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np

from ir_guidance import config, ros_env
from ir_guidance.bench import plant as bench_plant
from ir_guidance.control.guidance import (
    TERMINAL,
    Guidance,
    Output,
    Phase,
    PlanAnswer,
    warm_up,
)
from ir_guidance.control.rate import FixedRateLoop, percentiles_us, period_errors_ns

WARM_UP_TICKS = 200  # ticks run before each timed run (caches, pinocchio data)


def _outcome(future: Future) -> Any:
    """A finished job's result, or its exception (as the controller node delivers it)."""
    return future.exception() or future.result()


class GuidanceWorkload:
    """One control tick per call: ``Guidance.update`` against ``bench.plant`` (see module).

    ``rate_hz``: the guidance's rate (config ``controller`` with ``rate_hz`` replaced).
    ``wait_for_jobs``: block in the requesting tick until the worker's result is back and
    deliver it at once; the ticks are then a deterministic sequence (tests), but such a
    tick is as long as the job, so the timed runs never set it. Call :meth:`close` (or use
    ``with``) to stop the worker process.
    """

    def __init__(self, rate_hz: float = 1000.0, *, wait_for_jobs: bool = False,
                 vein: bench_plant.Vein | None = None) -> None:
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f'rate_hz must be a positive finite number, got {rate_hz!r}')
        params = dict(config.load()['controller'], rate_hz=float(rate_hz))
        self.wait_for_jobs = wait_for_jobs
        self.vein = bench_plant.default_vein() if vein is None else vein
        self._pristine = Guidance(params, inline_jobs=False)
        g = self._pristine
        # Shared, never changed by an update: the copies need not duplicate them.
        self._shared = (g.chain, g.probe_ik, g.limits, g.workspace)
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'))
        try:
            self._pool.submit(warm_up).result()
        except BaseException:
            self._pool.shutdown(cancel_futures=True)
            raise
        self.plant = self._fresh()
        self._restart = False
        self._update_ns = {phase: array('q') for phase in Phase}
        self.cycles: list[dict[str, Any]] = []
        self.jobs = 0

    def _fresh(self) -> bench_plant.Plant:
        guidance = copy.deepcopy(self._pristine, {id(x): x for x in self._shared})
        return bench_plant.Plant(guidance, self.vein, record=False)

    def reset(self) -> None:
        """A fresh guidance and plant, and no statistics (after a warm-up)."""
        self.plant = self._fresh()
        self._restart = False
        for samples in self._update_ns.values():
            del samples[:]
        self.cycles.clear()
        self.jobs = 0

    def __call__(self, t: float | None = None) -> Output:
        """One tick (``t`` is ignored: the plant keeps its own tick clock)."""
        if self._restart:
            self.plant = self._fresh()
            self._restart = False
        plant = self.plant
        g = plant.g
        phase = g.phase
        inputs = plant.inputs()
        start = time.perf_counter_ns()
        out = g.update(inputs)
        self._update_ns[phase].append(time.perf_counter_ns() - start)
        plant.apply(out)
        for key, fn, args in g.take_jobs():
            self._submit(fn, args, lambda result, g=g, key=key: g.deliver(key, result))
        if out.map_request_s is not None:
            self._submit(bench_plant.plan_answer, (self.vein, inputs.joints, out.map_request_s),
                         lambda result, plant=plant, stamp=out.map_request_s:
                         self._answer(plant, stamp, result))
        if out.phase in TERMINAL:
            self.cycles.append({'end': str(out.phase), 'reason': out.reason,
                                'success': g.success, 'sim_s': inputs.time_s})
            self._restart = True
        return out

    @staticmethod
    def _answer(plant: bench_plant.Plant, stamp_s: float, result: Any) -> None:
        """The plan answer for ``plant`` (a failed job is a refused plan, with its reason)."""
        if isinstance(result, BaseException):
            result = PlanAnswer(stamp_s, False, f'planner: {type(result).__name__}: {result}')
        plant.plan = result

    def _submit(self, fn: Callable[..., Any], args: tuple,
                deliver: Callable[[Any], None]) -> None:
        self.jobs += 1
        future = self._pool.submit(fn, *args)
        if self.wait_for_jobs:
            deliver(_outcome(future))
        else:
            future.add_done_callback(lambda f: deliver(_outcome(f)))

    def summary(self) -> dict[str, Any]:
        """``phases`` (ticks and ``Guidance.update`` times per phase), ``cycles``, totals."""
        phases: dict[str, dict[str, Any]] = {}
        for phase, samples in self._update_ns.items():
            if len(samples):
                stats = percentiles_us(np.array(samples, dtype=np.int64))
                phases[str(phase)] = {'ticks': len(samples), 'update_us_p50': stats['p50'],
                                      'update_us_p99': stats['p99'],
                                      'update_us_max': stats['max']}
        everything = np.concatenate([np.array(s, dtype=np.int64)
                                     for s in self._update_ns.values()])
        total = percentiles_us(everything)
        return {'phases': phases, 'cycles': list(self.cycles), 'jobs': self.jobs,
                'phase_now': str(self.plant.g.phase),
                'guidance_update_us_p50': total['p50'], 'guidance_update_us_p99': total['p99'],
                'guidance_update_us_max': total['max']}

    def close(self) -> None:
        """Stop the worker: queued jobs are cancelled, a running one (a plan) finishes."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> GuidanceWorkload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def guidance_workload(rate_hz: float = 1000.0) -> GuidanceWorkload:
    """The default workload of :func:`run` (see :class:`GuidanceWorkload`)."""
    return GuidanceWorkload(rate_hz)


def _loop_run(update: Callable[[float], None], seconds: float, rate_hz: float,
              busy_wait_s: float, realtime_priority: int | None, cpu: int | None,
              gc_freeze: bool) -> dict[str, Any]:
    loop = FixedRateLoop(rate_hz, update, busy_wait_s, realtime_priority=realtime_priority,
                         cpu=cpu, gc_freeze=gc_freeze,
                         history=max(2, round(seconds * rate_hz) + 1))
    # A thread of its own, as on the rig (the executor never runs the loop).
    thread = loop.start(seconds)
    thread.join()
    return loop.stats()


def _rclpy_run(update: Callable[[float], None], seconds: float, rate_hz: float,
               realtime_priority: int | None = None) -> dict[str, Any]:
    """The baseline: a plain rclpy timer at ``rate_hz`` calling ``update``.

    ``realtime_priority``: spin it under SCHED_FIFO too (an ablation, not the baseline).
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    domain_id = ros_env.free_domain_id()
    ros_env.configure(domain_id=domain_id)
    context = rclpy.Context()
    rclpy.init(args=[], context=context, domain_id=domain_id)
    period_ns = round(1e9 / rate_hz)
    wakes = np.zeros(round(seconds * rate_hz) + 1, dtype=np.int64)
    busy = np.zeros_like(wakes)
    count = [0]
    clock = time.perf_counter_ns
    try:
        node = rclpy.create_node('bench_control_timer', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        start = [0]

        def on_timer() -> None:
            now = clock()
            i = count[0]
            if i == 0:
                start[0] = now
            update((now - start[0]) * 1e-9)
            wakes[i] = now
            busy[i] = clock() - now
            count[0] = i + 1

        timer = node.create_timer(period_ns * 1e-9, on_timer)
        end = time.monotonic() + seconds + 1.0
        old = (os.sched_getscheduler(0), os.sched_getparam(0))
        if realtime_priority is not None:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime_priority))
        try:
            while count[0] < wakes.size and time.monotonic() < end:
                executor.spin_once(timeout_sec=0.1)
        finally:
            os.sched_setscheduler(0, *old)
        timer.cancel()
        executor.shutdown()
        node.destroy_node()
    finally:
        context.try_shutdown()
    n = count[0]
    errors, missed = period_errors_ns(wakes[:n], period_ns)
    result = {'ticks': n, 'overruns': missed}
    for key, value in percentiles_us(errors).items():
        result[f'period_err_us_{key}'] = value
    for key, value in percentiles_us(busy[:n]).items():
        result[f'update_us_{key}'] = value
    return result


def _warm(update: Callable[[float], Any], rate_hz: float) -> None:
    """Warm caches and pinocchio's data before a timed run."""
    for i in range(WARM_UP_TICKS):
        update(i / rate_hz)


def _guidance_run(timed: Callable[[Callable[[float], Any]], dict[str, Any]],
                  rate_hz: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """``timed(update)`` on a fresh :class:`GuidanceWorkload`, warmed and reset."""
    with guidance_workload(rate_hz) as work:
        _warm(work, rate_hz)
        work.reset()
        return timed(work), work.summary()


def run(seconds: float = 30.0, rate_hz: float = 1000.0,
        update: Callable[[float], Any] | None = None, *, cpu: int | None = None,
        baseline: bool = True, baseline_realtime: bool = False,
        **loop_settings: Any) -> dict[str, Any]:
    """Run the loop, then the rclpy timer baseline, each for ``seconds``; flat results.

    ``update``: the tick's work. None (the default): the guidance controller
    (:class:`GuidanceWorkload`), a fresh instance for each run, each warmed by
    ``WARM_UP_TICKS`` ticks and then reset to IDLE; the results then carry ``phases``,
    ``cycles``, ``jobs`` and ``guidance_update_us_*`` of the loop run and the same with an
    ``rclpy_`` prefix for the baseline. A callable given here is called by both runs
    (warmed once; those keys are then absent). The loop is built as the controller node
    builds it, from config ``controller.loop`` (``realtime_priority``, ``busy_wait_s``,
    ``gc_freeze``); ``loop_settings`` override those, ``cpu`` pins it (see
    ``FixedRateLoop``). ``baseline=False`` skips the rclpy run (its keys are then NaN);
    ``baseline_realtime=True`` spins the rclpy timer under SCHED_FIFO as well (an
    ablation: how much of the gain is priority alone).
    """
    if not (np.isfinite(seconds) and seconds > 0):
        raise ValueError(f'seconds must be a positive finite number, got {seconds!r}')
    settings = dict(config.load()['controller']['loop'])
    unknown = set(loop_settings) - set(settings)
    if unknown:
        raise TypeError(f'unknown loop settings {sorted(unknown)}; known: {sorted(settings)}')
    settings.update(loop_settings)
    busy_wait_s, gc_freeze = float(settings['busy_wait_s']), bool(settings['gc_freeze'])
    realtime_priority = settings['realtime_priority']
    nan = float('nan')

    def loop(work: Callable[[float], Any]) -> dict[str, Any]:
        return _loop_run(work, seconds, rate_hz, busy_wait_s, realtime_priority, cpu,
                         gc_freeze)

    def timer(work: Callable[[float], Any]) -> dict[str, Any]:
        return _rclpy_run(work, seconds, rate_hz,
                          realtime_priority if baseline_realtime else None)

    skipped = {'ticks': 0, 'overruns': 0, 'period_err_us_p50': nan,
               'period_err_us_p99': nan, 'period_err_us_max': nan, 'update_us_p50': nan}
    extra: dict[str, Any] = {}
    if update is None:
        ours, summary = _guidance_run(loop, rate_hz)
        extra.update(summary)
        if baseline:
            base, summary = _guidance_run(timer, rate_hz)
            extra.update({f'rclpy_{key}': value for key, value in summary.items()})
        else:
            base = skipped
    else:
        _warm(update, rate_hz)
        ours = loop(update)
        base = timer(update) if baseline else skipped
    result: dict[str, Any] = {
        key: ours[key] for key in (
            'period_err_us_p50', 'period_err_us_p99', 'period_err_us_max', 'overruns',
            'skipped', 'ticks', 'wake_late_us_p50', 'wake_late_us_p99', 'wake_late_us_max',
            'update_us_p50', 'update_us_p99', 'rt_scheduling', 'affinity', 'timer_slack_ns')}
    result.update({
        'rclpy_period_err_us_p50': base['period_err_us_p50'],
        'rclpy_period_err_us_p99': base['period_err_us_p99'],
        'rclpy_period_err_us_max': base['period_err_us_max'],
        'rclpy_overruns': base['overruns'],
        'rclpy_ticks': base['ticks'],
        'rclpy_update_us_p50': base['update_us_p50'],
        'ratio_p99': (ours['period_err_us_p99'] / base['period_err_us_p99']
                      if base['period_err_us_p99'] > 0 else nan),
        'busy_wait_us': busy_wait_s * 1e6,
        'gc_freeze': gc_freeze,
        'seconds': float(seconds),
        'rate_hz': float(rate_hz),
        'workload': 'guidance' if update is None else 'custom',
    })
    result.update(extra)
    return result
