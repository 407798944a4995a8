"""``ir-guidance bench control``: timing of the controller's fixed-rate loop vs an rclpy timer.

Benchmark layer. Two runs of the same length, one after the other, call the same
``update`` at ``rate_hz``:

1. :class:`ir_guidance.control.rate.FixedRateLoop` in real-time mode (its own thread
   schedule: sleep, then spin to an absolute monotonic deadline; SCHED_FIFO, a pinned
   CPU and a frozen GC when the machine allows them) -- what the controller runs on a rig;
2. the baseline: a plain rclpy timer (``create_timer(1 / rate_hz)``) spun by a
   ``SingleThreadedExecutor`` in a fresh ``rclpy.Context`` on a free domain id, with
   discovery on loopback (``ros_env.configure``). rclpy is imported only for this
   baseline; the loop itself is ROS-free.

Both are measured the same way: the period error is ``|dt - period|`` between
consecutive calls of ``update`` (``rate.period_errors_ns``), and a missed tick is an
interval spanning two or more periods (``overruns`` for the loop counts ticks whose
update ended after the next deadline; ``rclpy_overruns`` the ticks the timer missed).
Target (issue 6): ``period_err_us_p99 <= 50`` and ``ratio_p99 <= 0.25``. Results for
this machine: ``docs/control_timing.md``.

The default workload (``update=None``) stands in for the guidance controller's update
until it is plugged in: per tick, forward kinematics of the needle tip on the rig's
pinocchio chain (``rig_description.rig_chain``) at a slowly moving joint state, and a
``joint_guard.CommandGuard`` check of a one-step command against that state: the
state -> kinematics -> guarded command path of one control tick. Its inputs are
precomputed so the tick allocates little beyond what pinocchio and the guard do.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ir_guidance import config, ros_env
from ir_guidance.control.rate import FixedRateLoop, percentiles_us, period_errors_ns

# SCHED_FIFO priority asked for the loop thread (ros2_control's controller_manager uses 50).
RT_PRIORITY = 50


def default_workload() -> Callable[[float], None]:
    """Needle-tip FK + a guarded command per tick (see the module docstring)."""
    from ir_guidance.joint_guard import make_guards
    from ir_guidance.rig_description import rig_chain

    cfg = config.load()
    chain = rig_chain()
    names = config.joint_names()
    _, command_guard = make_guards(chain, cfg['arm_interface'], names)
    home = np.asarray(cfg['robot']['home'], dtype=float)
    tip = chain.frame_id(cfg['frames']['needle_tip'])
    # One second of states: every joint oscillating by 1 mrad (1 um on the stage).
    phase = np.linspace(0.0, 2.0 * np.pi, 1000, endpoint=False)[:, None]
    amplitude = np.where(np.arange(len(names)) < len(names) - 1, 1e-3, 1e-6)
    states = home + amplitude * np.sin(phase + np.arange(len(names)))
    states[:, -1] = np.abs(states[:, -1])  # the stage stays inside [0, 40 mm]
    qs = [chain.to_q(s) for s in states]
    rows = len(states)

    def update(t: float) -> None:
        i = int(t * 1000.0) % rows
        chain.fk_q(qs[i], tip)
        command_guard.update_state(states[i], t)
        command_guard.validate(names, states[(i + 1) % rows], t)

    return update


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


def run(seconds: float = 30.0, rate_hz: float = 1000.0,
        update: Callable[[float], None] | None = None, *, busy_wait_s: float = 2e-4,
        realtime_priority: int | None = RT_PRIORITY, cpu: int | None = None,
        gc_freeze: bool = True, baseline: bool = True,
        baseline_realtime: bool = False) -> dict[str, Any]:
    """Run the loop, then the rclpy timer baseline, each for ``seconds``; flat results.

    ``update`` is the tick's work (default: :func:`default_workload`). The keyword
    arguments are the loop's knobs (see ``FixedRateLoop``); ``baseline=False`` skips
    the rclpy run (its keys are then NaN); ``baseline_realtime=True`` spins the rclpy
    timer under SCHED_FIFO as well (an ablation: how much of the gain is priority alone).
    """
    if not (np.isfinite(seconds) and seconds > 0):
        raise ValueError(f'seconds must be a positive finite number, got {seconds!r}')
    update = update or default_workload()
    for i in range(200):  # warm caches and pinocchio's data before either run
        update(i / rate_hz)
    ours = _loop_run(update, seconds, rate_hz, busy_wait_s, realtime_priority, cpu, gc_freeze)
    nan = float('nan')
    base = (_rclpy_run(update, seconds, rate_hz,
                       realtime_priority if baseline_realtime else None) if baseline else
            {'ticks': 0, 'overruns': 0, 'period_err_us_p50': nan, 'period_err_us_p99': nan,
             'period_err_us_max': nan, 'update_us_p50': nan})
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
    })
    return result
