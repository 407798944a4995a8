"""controller: the guidance loop as a ROS 2 node (thin adapter around control.guidance).

The node gathers inputs, builds one :class:`Inputs` snapshot per tick, calls
``Guidance.update`` and sends the command. Two ways to tick:

- ``lockstep`` (simulation): per tick the sim publishes one joint state (on
  ``lockstep_joint_states``) and one wrench (reliable, in order), so the k-th of each is
  tick k (stamped with its sim time; no ``/clock`` needed). US results of a frame
  captured at ``s`` are used from ``s + lockstep.us_latency_s`` on, and the node does
  not answer a tick until every scheduled frame up to then has its result
  (``ir_guidance.lockstep``); in PLAN it does not answer until the mapper and planner
  have answered its request. The answer (the ack) carries the command. So every run of a
  seed sends the same commands. A result missing for ``lockstep.stall_timeout_s`` of
  wall time is a fault: SAFE.
- realtime (hardware): ``control.rate.FixedRateLoop`` ticks at ``rate_hz`` on its own
  thread on a monotonic schedule (not an executor timer); inputs are the latest
  messages; commands go to ``/arm/joint_command`` (arm_interface checks them again).

Services ``/guidance/start`` and ``/guidance/abort`` (std_srvs/Trigger), topic
``/guidance/estop`` (std_msgs/Bool, stop within one tick), state on ``/guidance/state``
(``PHASE t=<sim s>: reason``). ``log`` (a path) gets the trace as JSON at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node

from ir_guidance import config
from ir_guidance.control.guidance import (
    TERMINAL,
    Guidance,
    Inputs,
    Phase,
    PlanAnswer,
    Section,
    UsFrame,
    warm_up,
)
from ir_guidance.lockstep import StreamBarrier, tick_key
from ir_guidance.nodes import runner
from ir_guidance.nodes.conversions import (
    cloud_array,
    contract_publisher,
    contract_subscription,
    message_class,
    stamp_seconds,
)
from ir_guidance.planning.motion import JointTrajectory

NODE_NAME = 'controller'


def trajectory_from_msg(msg: Any) -> JointTrajectory:
    """A trajectory_msgs/JointTrajectory as the planner's JointTrajectory."""
    times = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9
                      for p in msg.points])
    positions = np.array([list(p.positions) for p in msg.points], dtype=float)
    velocities = np.array([list(p.velocities) if len(p.velocities) else
                           [0.0] * len(msg.joint_names) for p in msg.points], dtype=float)
    return JointTrajectory(tuple(msg.joint_names), times, positions, velocities)


def _plain(value: Any) -> Any:
    """JSON values for numpy scalars and arrays."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def _ok(status: Any) -> bool:
    """A diagnostic_msgs/DiagnosticStatus at level OK (rclpy gives the level as bytes)."""
    level = status.level
    return (level[0] if isinstance(level, bytes) else int(level)) == 0


class ControllerNode(Node):
    """Wires :class:`Guidance` to topics; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        cfg = config.load()
        self.declare_parameter('lockstep', bool(cfg['lockstep']['enabled']))
        self.declare_parameter('autostart', bool(cfg['controller']['autostart']))
        self.declare_parameter('log', '')
        self.lockstep = bool(self.get_parameter('lockstep').value)
        self.autostart = bool(self.get_parameter('autostart').value)
        self.log_path = str(self.get_parameter('log').value)
        self.names = config.joint_names()
        # Lockstep runs compute long jobs (a sweep line) inside the tick: deterministic,
        # and the sim waits anyway. On hardware a worker process does them.
        self.guidance = Guidance(inline_jobs=self.lockstep)
        self._pool = None
        if not self.lockstep:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'))
            self._pool.submit(warm_up).result()
        sim = cfg['sim']
        ls = cfg['lockstep']
        self.physics_hz = float(sim['physics_hz'])
        self.stall_timeout_s = float(ls['stall_timeout_s'])
        self.us_barrier = StreamBarrier(float(sim['us_hz']), self.physics_hz,
                                        float(ls['us_latency_s']))
        self._us_needed = False
        self._us_results: dict[int, UsFrame] = {}
        self._us_given: set[int] = set()
        self._joints: deque[tuple[float, np.ndarray]] = deque()
        self._wrenches: deque[tuple[float, np.ndarray]] = deque()
        self._answers: dict[int, dict[str, Any]] = {}
        self._start = self.autostart
        self._estop = False
        self._abort: str | None = None
        self._fault: str | None = None
        self._waiting_since: float | None = None
        self._last_state = ''
        self._hash = hashlib.sha256()
        self._commands = 0
        self._finished = False
        self._lock = threading.Lock()
        self._pub = {key: contract_publisher(self, key) for key in (
            'guidance_state', 'vessel_map_request', 'joint_command', 'lockstep_register',
            'lockstep_ack')}
        # Lockstep: the state of every tick (the sim's /joint_states is decimated).
        contract_subscription(self, 'lockstep_joint_states' if self.lockstep else 'joint_states',
                              self._on_joints, self.lockstep)
        contract_subscription(self, 'ft_wrench', self._on_wrench, self.lockstep)
        self._inputs = [contract_subscription(self, 'us_vessels', self._on_us, self.lockstep)]
        for key in ('vessel_map_status', 'vessel_map_target', 'planner_status',
                    'planner_approach', 'planner_retraction'):
            self._inputs.append(contract_subscription(
                self, key, lambda msg, key=key: self._on_answer(key, msg), lockstep=True))
        self._mapper_ready = False
        contract_subscription(self, 'guidance_estop', self._on_estop)
        trigger = message_class('std_srvs/srv/Trigger')
        self.create_service(trigger, '/guidance/start', self._on_start)
        self.create_service(trigger, '/guidance/abort', self._on_abort)
        if self.lockstep:
            # Wall-clock timers: sim time stands still until the controller answers.
            steady = Clock(clock_type=ClockType.STEADY_TIME)
            self._register_timer = self.create_timer(0.2, self._register, clock=steady)
            self._stall_timer = self.create_timer(0.2, self._check_stall, clock=steady)
        else:
            from ir_guidance.control.rate import FixedRateLoop

            self._loop = FixedRateLoop(float(cfg['controller']['rate_hz']), self._realtime_tick,
                                       **cfg['controller']['loop'])
            self._thread = threading.Thread(target=self._loop.run, daemon=True)
            self._thread.start()
            self._loop_report = self.create_timer(1.0, self._report_loop)
        self.get_logger().info(f'controller up ({"lockstep" if self.lockstep else "realtime"})')

    def _report_loop(self) -> None:
        """Say once what the real-time loop was granted (SCHED_FIFO decides its jitter)."""
        self._loop_report.cancel()
        stats = self._loop.stats()
        if stats['rt_scheduling']:
            self.get_logger().info(f"control loop: SCHED_FIFO {self._loop.realtime_priority}, "
                                   f"timer slack {stats['timer_slack_ns']} ns")
        else:
            why = stats.get('rt_scheduling_refused', 'not asked for (controller.loop)')
            self.get_logger().warning(f'control loop without SCHED_FIFO: {why}; expect '
                                      'millisecond jitter (docs/control_timing.md)')

    # -- inputs -------------------------------------------------------------------------
    def _on_joints(self, msg: Any) -> None:
        by_name = dict(zip(msg.name, msg.position, strict=False))
        q = np.array([by_name.get(n, np.nan) for n in self.names], dtype=float)
        with self._lock:
            self._joints.append((stamp_seconds(msg.header.stamp), q))
            if not self.lockstep:
                while len(self._joints) > 1:
                    self._joints.popleft()
        self._try_tick()

    def _on_wrench(self, msg: Any) -> None:
        f, t = msg.wrench.force, msg.wrench.torque
        w = np.array([f.x, f.y, f.z, t.x, t.y, t.z], dtype=float)
        with self._lock:
            self._wrenches.append((stamp_seconds(msg.header.stamp), w))
            if not self.lockstep:
                while len(self._wrenches) > 1:
                    self._wrenches.popleft()
        self._try_tick()

    def _on_us(self, msg: Any) -> None:
        stamp = stamp_seconds(msg.header.stamp)
        points = cloud_array(msg)
        sections = tuple(Section(float(p['x']), float(p['y']), float(p['radius']),
                                 float(p['radius_minor']), float(p['confidence']))
                         for p in points)
        with self._lock:
            self._us_results[tick_key(stamp, self.physics_hz)] = UsFrame(stamp, sections)
            self.us_barrier.received(stamp)
        self._try_tick()

    def _on_answer(self, key: str, msg: Any) -> None:
        stamp = stamp_seconds(msg.header.stamp)
        if key == 'vessel_map_status' and stamp == 0.0:
            self._mapper_ready = self._mapper_ready or (
                bool(msg.status) and msg.status[0].message == 'READY')
            return
        with self._lock:
            self._answers.setdefault(tick_key(stamp, self.physics_hz), {})[key] = msg
        self._try_tick()

    def _on_estop(self, msg: Any) -> None:
        if msg.data:
            self._estop = True
            self._try_tick()

    def _on_start(self, request: Any, response: Any) -> Any:
        self._start = True
        response.success, response.message = True, 'starting'
        return response

    def _on_abort(self, request: Any, response: Any) -> Any:
        self._abort = 'operator'
        response.success, response.message = True, 'aborting: retracting along the needle'
        return response

    def _register(self) -> None:
        """Register with the simulator once the whole pipeline can hear (lockstep)."""
        if self._joints or self._commands:
            self._register_timer.cancel()
            return
        if not self._mapper_ready or any(s.get_publisher_count() == 0 for s in self._inputs):
            return  # discovery is still going on: a first frame could be lost
        msg = message_class('std_msgs/msg/String')()
        msg.data = NODE_NAME
        self._pub['lockstep_register'].publish(msg)

    # -- the plan answer ------------------------------------------------------------------
    def _plan_answer(self, request_s: float) -> PlanAnswer | None:
        parts = self._answers.get(tick_key(request_s, self.physics_hz), {})
        status = parts.get('vessel_map_status')
        if status is not None and status.status and not _ok(status.status[0]):
            return PlanAnswer(request_s, False, f'map: {status.status[0].message}')
        planned = parts.get('planner_status')
        if planned is not None and planned.status and not _ok(planned.status[0]):
            return PlanAnswer(request_s, False, f'planner: {planned.status[0].message}')
        needed = ('vessel_map_target', 'planner_status', 'planner_approach',
                  'planner_retraction')
        if any(k not in parts for k in needed):
            return None
        values = {kv.key: kv.value for kv in planned.status[0].values}
        p = parts['vessel_map_target'].pose.position
        target = np.array([p.x, p.y, p.z])
        travel = float(values['stage_travel'])
        skin = None
        if 'entry' in values:  # the needle meets the skin this far before the target
            entry = np.array([float(v) for v in values['entry'].split()])
            skin = travel - float(np.linalg.norm(target - entry))
        return PlanAnswer(
            request_s, True, 'planned',
            approach=trajectory_from_msg(parts['planner_approach']),
            retraction=trajectory_from_msg(parts['planner_retraction']),
            stage_travel=travel, target=target, skin_travel=skin)

    # -- ticking --------------------------------------------------------------------------
    def _try_tick(self) -> None:
        if not self.lockstep:
            return
        while True:
            with self._lock:
                # A tick is the k-th joint state with the k-th wrench: the sim publishes
                # exactly one of each per tick, reliably and in order.
                if not self._joints or not self._wrenches:
                    if self._joints or self._wrenches:
                        self._wait()
                    return
                t = self._joints[0][0]
                frames: tuple[UsFrame, ...] = ()
                if self._us_needed:
                    missing = self.us_barrier.missing(t)
                    if missing:
                        self._wait(f'US results for frames captured at '
                                   f'{[round(s, 3) for s in missing[:3]]}', missing)
                        return
                    due = [k for k in sorted(self._us_results) if k not in self._us_given
                           and k / self.physics_hz <= t - self.us_barrier.latency_s + 1e-9]
                    self._us_given.update(due)
                    frames = tuple(self._us_results[k] for k in due)
                plan = None
                if self.guidance.phase == Phase.PLAN and self.guidance._request_s is not None:
                    plan = self._plan_answer(self.guidance._request_s)
                    if plan is None and self._fault is None:
                        # The mapper answers a stall of its own inputs after
                        # stall_timeout_s with its reason: give it time to say so.
                        self._wait('the map and plan answer', None, 2.0)
                        return
                js_t, q = self._joints.popleft()
                w_t, w = self._wrenches.popleft()
                self._waiting_since = None
            inputs = Inputs(time_s=t, joints=q, joints_stamp_s=js_t, wrench=w,
                            wrench_stamp_s=w_t, us_frames=frames, plan=plan,
                            start=self._start, estop=self._estop, abort=self._abort,
                            fault=self._fault)
            out = self._update(inputs)
            ack = message_class('sensor_msgs/msg/JointState')()
            ack.header.frame_id = NODE_NAME
            ack.header.stamp = self._stamp(t)
            ack.name = self.names
            ack.position = [float(v) for v in out.command]
            self._pub['lockstep_ack'].publish(ack)

    def _wait(self, what: str = 'the tick inputs', missing: list[float] | None = None,
              factor: float = 1.0) -> None:
        """Note that the tick waits for ``what``; past ``factor`` stall timeouts: fault."""
        now = time.monotonic()
        self._waiting_for = (what, missing, factor)
        timeout = factor * self.stall_timeout_s
        if self._waiting_since is None:
            self._waiting_since = now
        elif now - self._waiting_since > timeout:
            self._fault = f'stalled: no {what} for {timeout:.0f} s'
            if missing:
                self.us_barrier.declare_lost(missing)
            self._waiting_since = None

    def _check_stall(self) -> None:
        if self._waiting_since is not None:
            with self._lock:
                self._wait(*self._waiting_for)
            self._try_tick()

    def _realtime_tick(self, now_s: float) -> None:
        with self._lock:
            if not self._joints or not self._wrenches:
                return
            js_t, q = self._joints[-1]
            w_t, w = self._wrenches[-1]
            due = [k for k in sorted(self._us_results) if k not in self._us_given]
            self._us_given.update(due)
            frames = tuple(self._us_results[k] for k in due)
            plan = None
            if self.guidance.phase == Phase.PLAN and self.guidance._request_s is not None:
                plan = self._plan_answer(self.guidance._request_s)
        t = self.get_clock().now().nanoseconds * 1e-9
        out = self._update(Inputs(t, q, js_t, w, w_t, frames, plan, self._start, self._estop,
                                  self._abort, self._fault))
        msg = message_class('sensor_msgs/msg/JointState')()
        msg.header.stamp = self._stamp(t)
        msg.name = self.names
        msg.position = [float(v) for v in out.command]
        self._pub['joint_command'].publish(msg)

    def _update(self, inputs: Inputs) -> Any:
        out = self.guidance.update(inputs)
        for key, fn, args in self.guidance.take_jobs():
            future = self._pool.submit(fn, *args)
            future.add_done_callback(
                lambda f, key=key: self.guidance.deliver(key, f.exception() or f.result()))
        self._us_needed = out.phase in (Phase.ALIGN, Phase.INSERT, Phase.VERIFY)
        if self._us_needed and self.us_barrier.since_s == 0.0:
            self.us_barrier.restart(inputs.time_s)
        self._hash.update(np.ascontiguousarray(out.command, dtype='<f8').tobytes())
        self._commands += 1
        if out.map_request_s is not None:
            header = message_class('std_msgs/msg/Header')()
            header.stamp = self._stamp(out.map_request_s)
            header.frame_id = config.load()['frames']['base']
            self._pub['vessel_map_request'].publish(header)
        if out.phase in TERMINAL and not self._finished:
            # Before the state goes out: whoever waits for DONE/SAFE may stop us at once.
            self.write_log()
            self._finished = True
        text = f'{out.phase} t={inputs.time_s:.3f}: {out.reason}'
        if out.phase != self._last_state.split(' ')[0] or out.events:
            self._publish_state(text if not out.events else f'{text} | {"; ".join(out.events)}')
            self._last_state = text
        return out

    def _publish_state(self, text: str) -> None:
        msg = message_class('std_msgs/msg/String')()
        msg.data = text
        self._pub['guidance_state'].publish(msg)
        self.get_logger().info(text)

    def _stamp(self, seconds: float) -> Any:
        msg = message_class('builtin_interfaces/msg/Time')()
        msg.sec, msg.nanosec = divmod(round(seconds * 1e9), 1_000_000_000)
        return msg

    @property
    def command_hash(self) -> str:
        return self._hash.hexdigest()

    def write_log(self) -> None:
        """The trace, outcome and command hash as JSON at ``log`` (if set)."""
        if not self.log_path:
            return
        g = self.guidance
        data = {'phase': str(g.phase), 'reason': g.reason, 'success': g.success,
                'command_hash': self.command_hash, 'commands': self._commands,
                'phases': g.trace.phases, 'events': g.trace.events,
                'insertion': g.trace.insertion, 'plan': g.trace.plan}
        # Atomic: a reader (or a stop in the middle) never sees half a log.
        path = Path(self.log_path)
        partial = path.with_name(path.name + '.partial')
        partial.write_text(json.dumps(data, default=_plain), encoding='utf-8')
        os.replace(partial, path)

    def destroy_node(self) -> None:
        if not self.lockstep:
            self._loop.stop()
            self._pool.shutdown(cancel_futures=True)
        if not self._finished:
            self.write_log()
        super().destroy_node()


NODE_CLASS = ControllerNode  # for in-process runs (ir-guidance sim --single-process)


def main(args: list[str] | None = None) -> int:
    """Run the controller until Ctrl-C."""
    return runner.spin(ControllerNode, NODE_NAME, args, startup_errors=(ValueError, OSError,
                                                                        RuntimeError))
