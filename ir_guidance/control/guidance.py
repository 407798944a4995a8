"""The guidance state machine: one deterministic update per control tick (ROS-free).

``Guidance.update(inputs)`` is the whole controller: it reads only its argument (a
snapshot of the tick's inputs, assembled by the node) and its own state, and returns the
joint command for the tick plus requests (a map/plan request, a force tare) and the
phase. No clock, no I/O, no randomness: a lockstep simulation that feeds it the same
inputs gets the same commands, bit for bit.

Phases (docs/control.md)::

    IDLE -> SCAN -> MAP -> PLAN -> ALIGN -> INSERT -> VERIFY -> RETRACT -> DONE
                  any phase -> ABORT (retract the needle along its axis) -> SAFE
                  any phase -> SAFE (hold: the arm stays where it was last sent)

- SCAN: hold at home while the NIR camera looks (the mapper collects vein points).
- MAP: move the probe to a transverse hover over the forearm, touch down until the F/T
  feels the skin, sweep along the arm at constant height (the mapper builds the 3D map
  from the US cross-sections), settle, and ask for a plan from every observation up to
  then.
- PLAN: hold until the planner answers that request (a refused plan aborts with its
  reason).
- ALIGN: follow the planner's approach trajectory (lift, move, turn the probe along
  the vessel, set it down), settle, tare the force monitor.
- INSERT: drive the needle stage with an online jerk-limited profile (ruckig) toward
  the planned travel; servo that travel on the lumen depth the US sees in the needle's
  image plane; stop at the lumen centre, on wall-puncture plus tip-in-lumen evidence.
- VERIFY: hold and confirm the tip is in the lumen on US.
- RETRACT: stage back, then the planner's retraction (probe lifted). DONE.

The supervisor's checks (``control.supervisor``) run first on every tick; any failure
holds the last command and enters SAFE (bad or stale input, refused command) or ABORT
(operator abort, force limit, lost vessel) with the reason.
"""

from __future__ import annotations

import enum
import functools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ruckig import ControlInterface, InputParameter, OutputParameter, Result, Ruckig

from ir_guidance import config, rig_description
from ir_guidance.control import supervisor
from ir_guidance.force.monitor import ForceMonitor
from ir_guidance.kinematics.pose_ik import PoseIk
from ir_guidance.planning import motion, scan
from ir_guidance.planning.motion import JointTrajectory


class Phase(enum.StrEnum):
    IDLE = 'IDLE'
    SCAN = 'SCAN'
    MAP = 'MAP'
    PLAN = 'PLAN'
    ALIGN = 'ALIGN'
    INSERT = 'INSERT'
    VERIFY = 'VERIFY'
    RETRACT = 'RETRACT'
    DONE = 'DONE'
    ABORT = 'ABORT'
    SAFE = 'SAFE'


TERMINAL = (Phase.DONE, Phase.SAFE)
TARE_SAMPLES = 100  # the force tare averages the last 100 ms of readings (arm at rest)
NEEDLE_IN_TISSUE = (Phase.INSERT, Phase.VERIFY)


@dataclass(frozen=True)
class Section:
    """A US vessel cross-section in the image frame (m): see perception.us_vessels."""

    x: float
    y: float
    radius_major: float
    radius_minor: float
    confidence: float


@dataclass(frozen=True)
class UsFrame:
    """The segmenter's result for one US frame, by its capture stamp."""

    stamp_s: float
    sections: tuple[Section, ...]


@dataclass(frozen=True)
class PlanAnswer:
    """The planner's answer to a map/plan request (stamp = the request's stamp)."""

    stamp_s: float
    ok: bool
    reason: str
    approach: JointTrajectory | None = None
    retraction: JointTrajectory | None = None
    stage_travel: float = 0.0
    target: np.ndarray | None = None
    skin_travel: float | None = None   # stage travel at which the tip meets the skin


@dataclass(frozen=True)
class Inputs:
    """Everything one tick may use. Built by the node; nothing else is read."""

    time_s: float
    joints: np.ndarray | None
    joints_stamp_s: float | None
    wrench: np.ndarray | None
    wrench_stamp_s: float | None
    us_frames: tuple[UsFrame, ...] = ()
    plan: PlanAnswer | None = None
    start: bool = False
    estop: bool = False
    abort: str | None = None      # operator abort, with its reason
    fault: str | None = None      # a stream the node declared lost or stalled


@dataclass(frozen=True)
class Output:
    command: np.ndarray
    phase: Phase
    reason: str
    map_request_s: float | None = None
    events: tuple[str, ...] = ()


@dataclass
class Trace:
    """What happened, for the run report: phase changes, events, the insertion."""

    phases: list[tuple[float, str, str]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    insertion: list[tuple[float, float, float, float]] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)


class StageProfile:
    """Online jerk-limited stage motion (ruckig, one DoF): a new target any tick."""

    def __init__(self, dt: float, velocity: float, acceleration: float, jerk: float,
                 position: float) -> None:
        self._otg = Ruckig(1, dt)
        self._in = InputParameter(1)
        self._out = OutputParameter(1)
        self._in.current_position = [position]
        self._in.current_velocity = [0.0]
        self._in.current_acceleration = [0.0]
        self._in.target_position = [position]
        self._in.max_velocity = [velocity]
        self._in.max_acceleration = [acceleration]
        self._in.max_jerk = [jerk]
        self.position = position
        self.done = True
        self._limits = (acceleration, jerk)

    def limit_velocity(self, velocity: float) -> None:
        """A new speed limit from this tick on (ruckig brakes smoothly if above it)."""
        self._in.max_velocity = [float(velocity)]

    def step(self, target: float) -> float:
        """One tick toward ``target`` under the profile's limits."""
        self._in.control_interface = ControlInterface.Position
        self._in.max_acceleration, self._in.max_jerk = ([v] for v in self._limits)
        self._in.target_position = [float(target)]
        return self._update()

    def brake(self, acceleration: float, jerk: float) -> float:
        """One tick of a stop to rest under a hold's stronger limits.

        The velocity interface stops without moving back to a point; ``step`` resumes
        from wherever the stage stopped.
        """
        self._in.control_interface = ControlInterface.Velocity
        self._in.max_acceleration, self._in.max_jerk = [float(acceleration)], [float(jerk)]
        self._in.target_velocity = [0.0]
        self._in.target_acceleration = [0.0]
        return self._update()

    def _update(self) -> float:
        result = self._otg.update(self._in, self._out)
        if result not in (Result.Working, Result.Finished):
            raise RuntimeError(f'stage profile failed: {result}')
        self._out.pass_to_input(self._in)
        self.position = float(self._out.new_position[0])
        self.done = result == Result.Finished
        return self.position


@functools.cache
def _probe_kit() -> tuple[Any, PoseIk, motion.MotionLimits, str]:
    """Chain, probe IK and limits of this process (built once; workers build their own)."""
    cfg = config.load()
    chain = rig_description.rig_chain()
    kin = cfg['kinematics']
    ik = PoseIk(chain, cfg['frames']['us_image'], pos_tol=kin['pos_tol'],
                rot_tol=kin['axis_tol'], max_iters=kin['max_iters'],
                restarts=kin['restarts'], seed=kin['seed'])
    return chain, ik, motion.MotionLimits.from_config(chain), cfg['robot']['stage_joint']


def probe_line(q0: np.ndarray, target: np.ndarray, speed: float, dt: float
               ) -> JointTrajectory | BaseException:
    """The probe on a straight line to ``target`` (stage held): a job for a worker.

    Returns the error instead of raising it, so that a worker process hands it back.
    """
    chain, ik, limits, stage = _probe_kit()
    try:
        return motion.cartesian_line(chain, ik, q0, target, speed, dt, limits, frozen=(stage,))
    except (ValueError, RuntimeError) as error:
        return error


class Guidance:
    """The controller's state and its per-tick update (see the module docstring)."""

    def __init__(self, params: dict | None = None, home: np.ndarray | None = None,
                 force_monitor: ForceMonitor | None = None, inline_jobs: bool = True) -> None:
        cfg = config.load()
        self.p = dict(params or cfg['controller'])
        self.chain = rig_description.rig_chain()
        self.names = config.joint_names()
        if list(self.chain.joint_names) != self.names:
            raise ValueError(f'chain joints {self.chain.joint_names} are not the command '
                             f'order {self.names}')
        self.dt = 1.0 / float(self.p['rate_hz'])
        self.path_dt = float(cfg['planner']['dt_s'])  # samples of the motions it plans
        self.lower, self.upper = np.asarray(self.chain.lower), np.asarray(self.chain.upper)
        self.max_step = np.asarray(self.chain.velocity_limit) * self.dt
        self.stage = self.names.index(cfg['robot']['stage_joint'])
        self.frames = cfg['frames']
        self.workspace = supervisor.Workspace.from_config(self.p)
        self.force = force_monitor or ForceMonitor.from_config()
        self.limits = motion.MotionLimits.from_config(self.chain)
        self.probe_ik = _probe_kit()[1]
        self.home = np.array(cfg['robot']['home'] if home is None else home, dtype=float)
        self.phase = Phase.IDLE
        self.reason = 'waiting for start'
        self.step_name = ''
        self.command: np.ndarray | None = None
        self.trace = Trace()
        self.success: bool | None = None
        self._since = 0.0
        self._traj: JointTrajectory | None = None
        self._traj_t0 = 0.0
        self._stage: StageProfile | None = None
        self._stage_target = 0.0
        self._plan: PlanAnswer | None = None
        self._request_s: float | None = None
        self._punctures = 0
        self._last_us_s: float | None = None
        self._last_match_s: float | None = None
        self._us_matched = True  # the newest US frame showed the target vessel
        self._depths: list[float] = []
        self._tip_evidence = False
        self._tared = False
        self._sweep_end: np.ndarray | None = None
        self._hover: np.ndarray | None = None
        self._wrench = np.zeros(6)
        self._sensor_rotation = np.eye(3)
        self._contact_n = 0.0
        self._recent: deque[np.ndarray] = deque(maxlen=TARE_SAMPLES)
        self.inline_jobs = inline_jobs
        self.requested_jobs: list[str] = []
        self._jobs: dict[str, tuple[Any, tuple]] = {}
        self._results: dict[str, Any] = {}
        self._contact_q: np.ndarray | None = None
        self._prepare_scan()

    # -- public -------------------------------------------------------------------------
    def update(self, inputs: Inputs) -> Output:
        """One tick: supervise, advance the phase, return the command to send."""
        t = inputs.time_s
        events: list[str] = []
        request = None
        q = None if inputs.joints is None else np.asarray(inputs.joints, dtype=float)
        if self.command is None and q is not None and np.all(np.isfinite(q)):
            self.command = q.copy()
        reason = self._check_inputs(inputs)
        if self.phase in TERMINAL:
            reason = None  # DONE and SAFE hold their last command whatever comes in
        elif reason:
            self._enter(Phase.SAFE, reason, t)
        elif inputs.estop:
            self._enter(Phase.SAFE, 'emergency stop', t)
        else:
            try:
                self._wrench = np.asarray(inputs.wrench, dtype=float)
                self._sensor_rotation = self.chain.fk(q, self.frames['ft_sensor'])[:3, :3]
                self._recent.append(self._wrench)
                sample = self.force.update(t, self._wrench, self._sensor_rotation,
                                           depth_m=float(q[self.stage]))
                self._contact_n = float(np.linalg.norm(sample.wrench[:3]))
                self._on_force(sample, t, events)
                if inputs.abort and self.phase != Phase.ABORT:
                    self._abort(f'abort requested: {inputs.abort}', t)
                for frame in inputs.us_frames:
                    self._on_us(frame, q)
                proposed, request = self._advance(inputs, q, t, events)
                refused = self._check_command(proposed)
                if refused:
                    self._enter(Phase.SAFE, f'command refused: {refused}', t)
                else:
                    self.command = proposed
            except (ValueError, RuntimeError) as error:
                self._enter(Phase.SAFE, f'{type(error).__name__}: {error}', t)
        if self.command is None:
            # No valid joint state ever: there is nothing safe to send but "stay".
            raise RuntimeError(f'no valid joint state to hold ({self.reason})')
        return Output(self.command.copy(), self.phase, self.reason, request, tuple(events))

    # -- supervision --------------------------------------------------------------------
    def _check_inputs(self, inputs: Inputs) -> str | None:
        if inputs.fault:
            return inputs.fault
        watchdog = self.p['watchdog']
        return (supervisor.check_joints(inputs.joints, self.lower, self.upper, self.names)
                or supervisor.check_fresh('joint state', inputs.joints_stamp_s,
                                          inputs.time_s, watchdog['joint_states_s'])
                or supervisor.check_vector('F/T wrench', inputs.wrench, 6)
                or supervisor.check_fresh('F/T wrench', inputs.wrench_stamp_s,
                                          inputs.time_s, watchdog['ft_wrench_s'])
                or self._check_us(inputs.time_s))

    def _check_us(self, t: float) -> str | None:
        if self.phase not in NEEDLE_IN_TISSUE or self._last_us_s is None:
            return None
        age = t - self._last_us_s
        if age > self.p['watchdog']['us_s']:
            return f'ultrasound stale: last frame {age * 1e3:.0f} ms old during {self.phase}'
        return None

    def _check_command(self, command: np.ndarray) -> str | None:
        bad = supervisor.check_command(command, self.command, self.lower, self.upper,
                                       self.max_step * 1.5, self.names)
        if bad:
            return bad
        tip = self.chain.fk(command, self.frames['needle_tip'])[:3, 3]
        return self.workspace.violation(tip)

    def _on_force(self, sample: Any, t: float, events: list[str]) -> None:
        for event in sample.events:
            if event.kind == 'invalid':
                raise ValueError(f'force monitor: {event.detail}')
            if event.kind in ('force_limit', 'rate_limit'):
                self._abort(f'{event.kind}: {event.detail}', t)
            elif event.kind == 'puncture' and self.phase in NEEDLE_IN_TISSUE and self._tared:
                self._punctures += 1
                text = (f'{event.membrane} puncture (peak {event.peak_n:.2f} N, drop '
                        f'{event.drop_n:.2f} N at {event.depth_m * 1e3:.2f} mm)')
                events.append(text)
                self.trace.events.append((t, text))
                if self._punctures >= 3 or event.membrane == 'back_wall':
                    self._abort('third puncture: possible back-wall puncture', t)
        if self.phase == Phase.INSERT:
            self.trace.insertion.append((t, float(self.command[self.stage]),
                                         float(self._stage.position if self._stage else 0.0),
                                         float(sample.axial_n)))

    def _on_us(self, frame: UsFrame, q: np.ndarray) -> None:
        self._last_us_s = frame.stamp_s
        if self._plan is None or self.phase not in (Phase.ALIGN, *NEEDLE_IN_TISSUE):
            return
        image = self.chain.fk(q, self.frames['us_image'])
        target = np.linalg.solve(image, np.append(self._plan.target, 1.0))[:3]
        tip = np.linalg.solve(image, np.append(
            self.chain.fk(q, self.frames['needle_tip'])[:3, 3], 1.0))[:3]
        gate = self.p['servo']['gate_m']
        best = None
        for s in frame.sections:
            if s.confidence < self.p['servo']['min_confidence']:
                continue
            if abs(s.y - target[1]) < max(s.radius_minor, gate) and (
                    abs(s.x - target[0]) < s.radius_major + gate):
                if best is None or abs(s.y - target[1]) < abs(best.y - target[1]):
                    best = s
        self._us_matched = best is not None
        if best is None:
            return
        self._last_match_s = frame.stamp_s
        self._depths = [*self._depths[-4:], best.y - target[1]]
        inside = (abs(tip[1] - best.y) < self.p['servo']['lumen_fraction'] * best.radius_minor
                  and abs(tip[0] - best.x) < best.radius_major)
        self._tip_evidence = bool(inside)

    # -- phases -------------------------------------------------------------------------
    def _enter(self, phase: Phase, reason: str, t: float) -> None:
        if phase != self.phase or reason != self.reason:
            self.trace.phases.append((t, str(phase), reason))
        self.phase, self.reason, self._since = phase, reason, t
        self.step_name = ''

    def _abort(self, reason: str, t: float) -> None:
        if self.phase in (Phase.ABORT, *TERMINAL):
            return
        self.success = False
        speeds = self.p['retract']
        self._stage = StageProfile(self.dt, speeds['speed_m_s'], speeds['accel_m_s2'],
                                   speeds['jerk_m_s3'], float(self.command[self.stage]))
        self._enter(Phase.ABORT, reason, t)

    def _follow(self, t: float) -> tuple[np.ndarray, bool]:
        """The current trajectory's sample at ``t`` and whether it has ended."""
        elapsed = t - self._traj_t0
        return self._traj.sample(elapsed), elapsed >= self._traj.duration

    def _start(self, trajectory: JointTrajectory, t: float, step: str) -> None:
        self._traj, self._traj_t0, self.step_name = trajectory, t, step

    def _advance(self, inputs: Inputs, q: np.ndarray, t: float, events: list[str]
                 ) -> tuple[np.ndarray, float | None]:
        hold = self.command.copy()
        request = None
        phase = self.phase
        if phase == Phase.IDLE:
            if inputs.start:
                self._enter(Phase.SCAN, 'NIR scan', t)
        elif phase == Phase.SCAN:
            if t - self._since >= self.p['scan_s']:
                self._begin_map(q, t)
        elif phase == Phase.MAP:
            return self._map_step(q, t, inputs)
        elif phase == Phase.PLAN:
            return self._plan_step(inputs, t)
        elif phase == Phase.ALIGN:
            return self._align_step(t), None
        elif phase == Phase.INSERT:
            return self._insert_step(t, events), None
        elif phase == Phase.VERIFY:
            if self._tip_evidence:
                self.success = True
            if t - self._since >= self.p['verify_s']:
                ok = bool(self.success)
                self.trace.events.append((t, f'verify: tip in lumen on US = {ok}'))
                self._begin_retract(t, 'needle in the vein' if ok else 'no US evidence of '
                                    'the tip in the lumen')
        elif phase == Phase.RETRACT:
            return self._retract_step(t), None
        elif phase == Phase.ABORT:
            cmd = hold
            cmd[self.stage] = self._stage.step(0.0)
            if self._stage.done:
                self._enter(Phase.SAFE, f'aborted: {self.reason}', t)
            return cmd, None
        return hold, request

    def _prepare_scan(self) -> None:
        """Hover over the sweep start and the touch-down line, computed once here.

        Both are fixed by home, so no control tick has to wait for them.
        """
        probe = self.chain.fk(self.home, self.frames['us_image'])
        start, self._sweep_end = scan.sweep_poses(probe, self.p['sweep']['length_m'],
                                                  probe[2, 3])
        result = self.probe_ik.solve(start, self.home, frozen=(self.names[self.stage],))
        if not result.success:
            raise RuntimeError(f'sweep start unreachable: {result.reason}')
        self._hover = result.positions
        down = start.copy()
        down[2, 3] -= self.p['sweep']['touchdown_max_m']
        self._touchdown = probe_line(self._hover, down, self.p['sweep']['touchdown_speed_m_s'],
                                     self.path_dt)

    def _begin_map(self, q: np.ndarray, t: float) -> None:
        self._start(motion.joint_move(q, self._hover, self.limits, self.path_dt, self.names),
                    t, 'to hover')
        self._enter(Phase.MAP, 'moving to the sweep start', t)
        self.step_name = 'to hover'

    def _job(self, key: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` now (inline), or later from a worker (None until delivered).

        Inline (simulation, tests) keeps a run deterministic. On hardware the node hands
        the job to a worker process while the loop holds, so that no tick waits for a long
        computation; :meth:`deliver` brings the result.
        """
        if key in self._results:
            return self._results.pop(key)
        if self.inline_jobs:
            return fn(*args)
        if key not in self._jobs:
            self._jobs[key] = (fn, args)
            self.requested_jobs.append(key)
        return None

    def take_jobs(self) -> list[tuple[str, Any, tuple]]:
        """The jobs requested since the last call, as ``(key, fn, args)`` for a worker."""
        taken = [(key, *self._jobs[key]) for key in self.requested_jobs]
        self.requested_jobs.clear()
        return taken

    def deliver(self, key: str, result: Any) -> None:
        """A worker's result for job ``key`` (an exception is re-raised in the next tick)."""
        self._jobs.pop(key, None)
        self._results[key] = result

    def _map_step(self, q: np.ndarray, t: float, inputs: Inputs
                  ) -> tuple[np.ndarray, float | None]:
        sweep = self.p['sweep']
        if self.step_name == 'to hover':
            cmd, ended = self._follow(t)
            if ended:
                self._start(self._touchdown, t, 'touchdown')
            return cmd, None
        if self.step_name == 'touchdown':
            if self._contact_n >= sweep['contact_force_n']:
                contact = self.chain.fk(self.command, self.frames['us_image'])
                self.trace.events.append((t, f'skin contact at z = {contact[2, 3]:.4f} m'))
                self.step_name, self.reason = 'contact', 'planning the sweep'
                self._contact_q = self.command.copy()
            else:
                cmd, ended = self._follow(t)
                if ended:
                    raise RuntimeError(f'no skin contact within '
                                       f'{sweep["touchdown_max_m"] * 1e3:.0f} mm of the hover')
                return cmd, None
        if self.step_name == 'contact':
            end = self._sweep_end.copy()
            end[2, 3] = self.chain.fk(self._contact_q, self.frames['us_image'])[2, 3]
            line = self._job('sweep', probe_line, self._contact_q, end, sweep['speed_m_s'],
                             self.path_dt)
            if isinstance(line, BaseException):
                raise RuntimeError(f'sweep not possible: {line}')
            if line is not None:
                self._start(line, t, 'sweep')
                self.reason = 'US sweep'
            return self.command.copy(), None
        if self.step_name == 'sweep':
            cmd, ended = self._follow(t)
            if ended:
                self.step_name, self._since = 'settle', t
            return cmd, None
        if self.step_name == 'settle' and t - self._since >= self.p['settle_s']:
            self._request_s = round((t - self.p['map_request_lag_s']) / self.dt) * self.dt
            self.trace.events.append((t, f'map + plan requested for observations up to '
                                         f'{self._request_s:.3f} s'))
            self._enter(Phase.PLAN, 'waiting for the map and the plan', t)
            return self.command.copy(), self._request_s
        return self.command.copy(), None

    def _plan_step(self, inputs: Inputs, t: float) -> tuple[np.ndarray, float | None]:
        plan = inputs.plan
        if plan is None or abs(plan.stamp_s - self._request_s) > 0.5 * self.dt:
            return self.command.copy(), None
        if not plan.ok:
            self._abort(f'no plan: {plan.reason}', t)
            return self.command.copy(), None
        self._plan = plan
        self.trace.plan = {'stamp_s': plan.stamp_s, 'stage_travel_m': plan.stage_travel,
                           'target': [float(v) for v in plan.target]}
        self._start(plan.approach, t, 'approach')
        self._enter(Phase.ALIGN, 'approach', t)
        self.step_name = 'approach'
        return plan.approach.sample(0.0), None

    def _align_step(self, t: float) -> np.ndarray:
        if self.step_name == 'approach':
            cmd, ended = self._follow(t)
            if ended:
                self.step_name, self._since = 'settle', t
            return cmd
        if t - self._since >= self.p['settle_s']:
            self.force.tare(np.array(self._recent), self._sensor_rotation)
            self._tared = True
            ins = self.p['insert']
            self._stage = StageProfile(self.dt, ins['speed_m_s'], ins['accel_m_s2'],
                                       ins['jerk_m_s3'], float(self.command[self.stage]))
            self._stage_target = self._plan.stage_travel
            self._last_match_s = t
            self._enter(Phase.INSERT, 'inserting', t)
        return self.command.copy()

    def _insert_step(self, t: float, events: list[str]) -> np.ndarray:
        servo = self.p['servo']
        if self._last_match_s is not None and t - self._last_match_s > servo['lost_s']:
            self._abort(f'lost the vessel on US for {t - self._last_match_s:.2f} s', t)
            return self.command.copy()
        if self._depths:
            # Lumen centre measured below (+) or above (-) the planned target, along the
            # image's depth axis: move the stop along the needle by that over sin(angle).
            offset = float(np.median(self._depths))
            angle = np.deg2rad(self.p['needle_angle_deg'])
            correction = float(np.clip(offset / np.sin(angle), -servo['max_correction_m'],
                                       servo['max_correction_m']))
            self._stage_target = self._plan.stage_travel + correction
        self._stage_target = min(self._stage_target, float(self.upper[self.stage]))
        ins = self.p['insert']
        skin = self._plan.skin_travel
        in_air = skin is not None and self._stage.position < skin - ins['skin_margin_m']
        self._stage.limit_velocity(ins['air_speed_m_s'] if in_air else ins['speed_m_s'])
        cmd = self.command.copy()
        if not self._us_matched:
            # The newest frame does not show the vessel where the plan has it (moved, or
            # lost for a frame): stop now, go on if it is back before lost_s.
            if self.step_name != 'hold':
                self.step_name = 'hold'
                text = (f'holding at {self._stage.position * 1e3:.2f} mm: the vessel is not '
                        'where the plan has it on the last US frame')
                events.append(text)
                self.trace.events.append((t, text))
            cmd[self.stage] = self._stage.brake(servo['hold_accel_m_s2'],
                                                servo['hold_jerk_m_s3'])
            return cmd
        self.step_name = ''
        cmd[self.stage] = self._stage.step(self._stage_target)
        if self._stage.done:
            evidence = 'wall puncture' if self._punctures >= 2 else 'no wall puncture felt'
            tip = 'tip in lumen on US' if self._tip_evidence else 'tip not seen in lumen'
            events.append(f'insertion stopped at {cmd[self.stage] * 1e3:.2f} mm: '
                          f'{evidence}, {tip}')
            self.trace.events.append((t, events[-1]))
            self._enter(Phase.VERIFY, f'{evidence}, {tip}', t)
            self.success = self._tip_evidence or None
        return cmd

    def _begin_retract(self, t: float, reason: str) -> None:
        r = self.p['retract']
        self._stage = StageProfile(self.dt, r['speed_m_s'], r['accel_m_s2'], r['jerk_m_s3'],
                                   float(self.command[self.stage]))
        self._enter(Phase.RETRACT, reason, t)
        self.step_name = 'stage'

    def _retract_step(self, t: float) -> np.ndarray:
        cmd = self.command.copy()
        if self.step_name == 'stage':
            cmd[self.stage] = self._stage.step(0.0)
            if self._stage.done:
                tail = self._plan.retraction
                stage = tail.positions[:, self.stage]
                first = int(np.argmax(stage <= 1e-9)) if np.any(stage <= 1e-9) else 0
                self._start(JointTrajectory(tail.joint_names, tail.times[first:] - tail.times[
                    first], tail.positions[first:], tail.velocities[first:]), t, 'lift')
            return cmd
        cmd, ended = self._follow(t)
        if ended:
            self._enter(Phase.DONE, self.reason, t)
        return cmd


def warm_up() -> bool:
    """Build a worker process's kinematics once, before its first real job.

    Submitted first to the worker that runs :meth:`Guidance._job` work off the control
    thread (the controller node on hardware, ``bench.control``), so the first sweep line
    does not pay for building the chain and the IK.
    """
    _probe_kit()
    return True
