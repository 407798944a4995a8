"""Jerk-limited joint and Cartesian motions, sampled at a fixed period (planning layer).

Every trajectory the planner hands to the controller comes from here, so the motion
limits are enforced in one place. Time parametrization is ruckig's (community version:
one target state per call, no intermediate waypoints): a joint move is one synchronized
rest-to-rest ruckig profile over all joints; a Cartesian line is a 1-DoF ruckig profile
of the path length, mapped to joints by IK at every sample. IK along the line never
restarts, so the arm stays on one branch; if the joints of the line would exceed their
velocity, acceleration or jerk limits (near a singularity), the line is slowed down and
re-timed, and refused with a reason if that does not help. ROS-free: the node converts
a :class:`JointTrajectory` to ``trajectory_msgs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pinocchio as pin
from ruckig import DurationDiscretization, InputParameter, Result, Ruckig, Trajectory

from ir_guidance import config
from ir_guidance.kinematics import PoseIk, SerialChain, UnreachableError

_OK = (Result.Working, Result.Finished)
# Slack on limit checks of sampled trajectories: finite differences of IK samples.
LIMIT_SLACK = 1.02
# Jerk is a third difference of the samples (second of a ruckig velocity): more slack.
JERK_SLACK = 1.1
# A rotation counts as this many metres per radian of path length when a Cartesian move
# is (almost) a pure rotation, so that it still gets a finite, limited duration.
ROTATION_LENGTH_M_PER_RAD = 0.1
MAX_RETIMES = 6


@dataclass(frozen=True)
class MotionLimits:
    """Per-joint velocity, acceleration and jerk limits (chain order; rad or m based)."""

    velocity: np.ndarray
    acceleration: np.ndarray
    jerk: np.ndarray

    def __post_init__(self) -> None:
        arrays = [np.asarray(getattr(self, name), dtype=float)
                  for name in ('velocity', 'acceleration', 'jerk')]
        if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
            raise ValueError(f'limits need equal 1-D shapes, got {[a.shape for a in arrays]}')
        for name, a in zip(('velocity', 'acceleration', 'jerk'), arrays, strict=True):
            if not (np.all(np.isfinite(a)) and np.all(a > 0)):
                raise ValueError(f'{name} limits must be finite and > 0, got {a.tolist()}')
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    @classmethod
    def from_config(cls, chain: SerialChain, params: dict[str, Any] | None = None
                    ) -> MotionLimits:
        """Limits of ``chain`` from the ``planner`` config section (or ``params``).

        Velocities: the URDF limits times ``velocity_scale``; accelerations and jerks by
        joint type (revolute arm joints, prismatic stage).
        """
        p = config.load()['planner'] if params is None else params
        scale = float(p['velocity_scale'])
        if not 0.0 < scale <= 1.0:
            raise ValueError(f'velocity_scale must be in (0, 1], got {scale}')
        prismatic = prismatic_mask(chain)
        acc = np.where(prismatic, p['stage_acceleration_m_s2'], p['acceleration_rad_s2'])
        jerk = np.where(prismatic, p['stage_jerk_m_s3'], p['jerk_rad_s3'])
        return cls(chain.velocity_limit * scale, acc.astype(float), jerk.astype(float))

    @property
    def dof(self) -> int:
        return len(self.velocity)

    def with_velocity(self, index: int, velocity: float) -> MotionLimits:
        """A copy with joint ``index``'s velocity limit lowered to ``velocity``."""
        v = self.velocity.copy()
        v[index] = min(v[index], velocity)
        return MotionLimits(v, self.acceleration, self.jerk)


def prismatic_mask(chain: SerialChain) -> np.ndarray:
    """True for the chain's prismatic joints (pinocchio joint types P*, PrismaticUnaligned)."""
    kinds = [j.shortname() for j in chain.model.joints[1:]]
    return np.array([k in ('JointModelPX', 'JointModelPY', 'JointModelPZ')
                     or 'Prismatic' in k for k in kinds])


@dataclass(frozen=True)
class JointTrajectory:
    """Joint positions and velocities sampled every ``dt`` from ``times[0] == 0``."""

    joint_names: tuple[str, ...]
    times: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray

    def __post_init__(self) -> None:
        names = tuple(self.joint_names)
        t = np.asarray(self.times, dtype=float)
        q = np.asarray(self.positions, dtype=float)
        v = np.asarray(self.velocities, dtype=float)
        n = len(names)
        if t.ndim != 1 or len(t) < 1 or q.shape != (len(t), n) or v.shape != (len(t), n):
            raise ValueError(f'trajectory shapes do not match: {len(names)} joints, times '
                             f'{t.shape}, positions {q.shape}, velocities {v.shape}')
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q)) and np.all(np.isfinite(v))):
            raise ValueError('trajectory has NaN or infinite samples')
        if t[0] != 0.0 or (len(t) > 1 and not np.all(np.diff(t) > 0)):
            raise ValueError('trajectory times must start at 0 and increase')
        for name, a in (('times', t), ('positions', q), ('velocities', v)):
            a.setflags(write=False)
            object.__setattr__(self, name, a)
        object.__setattr__(self, 'joint_names', names)

    @property
    def duration(self) -> float:
        return float(self.times[-1])

    @property
    def dt(self) -> float:
        return float(self.times[1] - self.times[0]) if len(self.times) > 1 else 0.0

    def sample(self, t: float) -> np.ndarray:
        """Positions at time ``t`` (linear between samples; clamped to the ends)."""
        if not np.isfinite(t):
            raise ValueError(f'sample time must be finite, got {t}')
        if t <= 0.0 or len(self.times) == 1:
            return self.positions[0].copy()
        if t >= self.duration:
            return self.positions[-1].copy()
        i = int(np.searchsorted(self.times, t, side='right')) - 1
        f = (t - self.times[i]) / (self.times[i + 1] - self.times[i])
        return (1.0 - f) * self.positions[i] + f * self.positions[i + 1]

    def accelerations(self) -> np.ndarray:
        """Finite-difference accelerations of the sampled velocities."""
        if len(self.times) < 2:
            return np.zeros_like(self.velocities)
        return np.gradient(self.velocities, self.times, axis=0)


def concatenate(parts: Sequence[JointTrajectory]) -> JointTrajectory:
    """Segments played one after the other (each must start where the last one ended)."""
    if not parts:
        raise ValueError('nothing to concatenate')
    names, dt = parts[0].joint_names, max(p.dt for p in parts)
    times, positions, velocities = [parts[0].times], [parts[0].positions], [parts[0].velocities]
    offset = parts[0].duration
    for part in parts[1:]:
        if part.joint_names != names:
            raise ValueError('segments have different joints')
        if len(part.times) > 1 and abs(part.dt - dt) > 1e-9:
            raise ValueError(f'segments have different sample periods ({part.dt}, {dt})')
        if np.abs(part.positions[0] - positions[-1][-1]).max() > 1e-6:
            raise ValueError('segment does not start where the previous one ended')
        times.append(part.times[1:] + offset)
        positions.append(part.positions[1:])
        velocities.append(part.velocities[1:])
        offset += part.duration
    t = np.concatenate(times)
    # Re-grid on exact multiples of dt (the offsets accumulate rounding).
    if len(t) > 1:
        t = np.arange(len(t)) * dt
    return JointTrajectory(names, t, np.concatenate(positions), np.concatenate(velocities))


def _profile(start: np.ndarray, goal: np.ndarray, velocity: np.ndarray,
             acceleration: np.ndarray, jerk: np.ndarray, dt: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synchronized rest-to-rest ruckig profile sampled every ``dt``: (t, pos, vel)."""
    n = len(start)
    otg = Ruckig(n, dt)
    inp = InputParameter(n)
    inp.current_position = start.tolist()
    inp.target_position = goal.tolist()
    inp.max_velocity = velocity.tolist()
    inp.max_acceleration = acceleration.tolist()
    inp.max_jerk = jerk.tolist()
    inp.duration_discretization = DurationDiscretization.Discrete
    traj = Trajectory(n)
    result = otg.calculate(inp, traj)
    if result not in _OK:
        raise ValueError(f'ruckig could not time the move ({result})')
    steps = round(traj.duration / dt)
    times = np.arange(steps + 1) * dt
    pos = np.empty((steps + 1, n))
    vel = np.empty((steps + 1, n))
    for k, t in enumerate(times):
        p, v, _ = traj.at_time(min(float(t), traj.duration))
        pos[k], vel[k] = p, v
    pos[-1], vel[-1] = goal, 0.0  # exact end state, at rest
    return times, pos, vel


def _check_dt(dt: float) -> None:
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f'sample period dt must be finite and > 0, got {dt}')


def joint_move(q0: np.ndarray, q1: np.ndarray, limits: MotionLimits, dt: float,
               joint_names: Sequence[str]) -> JointTrajectory:
    """Synchronized, jerk-limited, rest-to-rest move from ``q0`` to ``q1`` (ruckig)."""
    _check_dt(dt)
    a = np.asarray(q0, dtype=float)
    b = np.asarray(q1, dtype=float)
    if a.shape != (limits.dof,) or b.shape != (limits.dof,) or len(joint_names) != limits.dof:
        raise ValueError(f'joint_move needs {limits.dof} positions and names, got '
                         f'{a.shape}, {b.shape}, {len(joint_names)}')
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f'joint_move positions not finite: {a.tolist()} -> {b.tolist()}')
    if np.array_equal(a, b):
        return JointTrajectory(tuple(joint_names), np.zeros(1), a[None], np.zeros((1, len(a))))
    times, pos, vel = _profile(a, b, limits.velocity, limits.acceleration, limits.jerk, dt)
    return JointTrajectory(tuple(joint_names), times, pos, vel)


def interpolate_pose(start: np.ndarray, goal: np.ndarray, fraction: float) -> np.ndarray:
    """Pose at ``fraction`` of the way: straight line in position, slerp in rotation."""
    out = np.eye(4)
    out[:3, 3] = (1.0 - fraction) * start[:3, 3] + fraction * goal[:3, 3]
    delta = pin.log3(start[:3, :3].T @ goal[:3, :3])
    out[:3, :3] = start[:3, :3] @ pin.exp3(fraction * delta)
    return out


def cartesian_line(chain: SerialChain, ik: PoseIk, q0: np.ndarray, target: np.ndarray,
                   speed: float, dt: float, limits: MotionLimits, frozen: Sequence[str] = (),
                   acceleration: float | None = None, jerk: float | None = None
                   ) -> JointTrajectory:
    """``ik.frame`` on a straight line from its pose at ``q0`` to ``target`` (4x4, base).

    The path length gets a 1-DoF jerk-limited ruckig profile (max ``speed``, and
    ``acceleration``/``jerk`` along the path, defaults from the ``planner`` config); each
    sample is solved by IK from the previous one without restarts. Joint velocities are
    finite differences of the samples and are checked against ``limits`` (velocity,
    acceleration, jerk); the line is slowed down until they hold. Raises
    :class:`UnreachableError` (a sample has no IK solution on this branch, or a joint
    leaves its limits) or ValueError (bad input, limits not met even when slowed).
    """
    _check_dt(dt)
    q_start = chain.check_positions(q0)
    goal = np.asarray(target, dtype=float)
    if goal.shape != (4, 4) or not np.all(np.isfinite(goal)):
        raise ValueError(f'cartesian_line target must be a finite 4x4 pose, got {goal.shape}')
    if not (np.isfinite(speed) and speed > 0):
        raise ValueError(f'cartesian speed must be finite and > 0, got {speed}')
    p = config.load()['planner']
    acc = float(p['cartesian_acceleration_m_s2'] if acceleration is None else acceleration)
    jrk = float(p['cartesian_jerk_m_s3'] if jerk is None else jerk)
    start = chain.fk(q_start, ik.frame)
    length = float(np.linalg.norm(goal[:3, 3] - start[:3, 3]))
    angle = float(np.linalg.norm(pin.log3(start[:3, :3].T @ goal[:3, :3])))
    length = max(length, angle * ROTATION_LENGTH_M_PER_RAD)
    names = tuple(chain.joint_names)
    if length < 1e-9:
        return JointTrajectory(names, np.zeros(1), q_start[None], np.zeros((1, chain.dof)))
    vmax, amax, jmax = speed, acc, jrk
    for _ in range(MAX_RETIMES):
        times, s, _ = _profile(np.zeros(1), np.array([length]), np.array([vmax]),
                               np.array([amax]), np.array([jmax]), dt)
        fractions = np.clip(s[:, 0] / length, 0.0, 1.0)
        path = np.empty((len(times), chain.dof))
        path[0] = q_start
        for k in range(1, len(times)):
            pose = goal if k == len(times) - 1 else interpolate_pose(start, goal, fractions[k])
            result = ik.solve(pose, path[k - 1], frozen, restarts=0)
            if not result.success:
                raise UnreachableError(f'{ik.frame} line blocked at {fractions[k]:.0%}: '
                                       f'{result.reason}')
            path[k] = result.positions
        if not chain.within_limits(path):
            raise UnreachableError(f'{ik.frame} line leaves the joint limits')
        vel = np.gradient(path, times, axis=0) if len(times) > 1 else np.zeros_like(path)
        vel[0] = vel[-1] = 0.0
        acc_j = np.gradient(vel, times, axis=0) if len(times) > 1 else np.zeros_like(path)
        jerk_j = np.gradient(acc_j, times, axis=0) if len(times) > 1 else acc_j
        ratio = max(float(np.max(np.abs(vel) / limits.velocity)),
                    float(np.sqrt(np.max(np.abs(acc_j) / limits.acceleration))),
                    float(np.cbrt(np.max(np.abs(jerk_j) / limits.jerk))))
        if ratio <= 1.0:
            return JointTrajectory(names, times, path, vel)
        # Joint speed scales with path speed, acceleration with its square, jerk its cube.
        factor = 1.0 / (ratio * 1.05)
        vmax, amax, jmax = vmax * factor, amax * factor ** 2, jmax * factor ** 3
    raise ValueError(f'{ik.frame} line cannot meet the joint motion limits even at '
                     f'{vmax * 1e3:.2f} mm/s (a singularity on the way?)')


def check_limits(chain: SerialChain, trajectory: JointTrajectory, limits: MotionLimits,
                 slack: float = LIMIT_SLACK) -> str:
    """What ``trajectory`` violates (position, velocity, acceleration, jerk limits), or ''.

    Used by the tests and by the planner before it answers.
    """
    if not chain.within_limits(trajectory.positions):
        return 'position limits'
    if np.any(np.abs(trajectory.velocities) > limits.velocity * slack):
        worst = int(np.argmax(np.max(np.abs(trajectory.velocities) / limits.velocity, axis=0)))
        return f'velocity limit of {trajectory.joint_names[worst]}'
    acc = trajectory.accelerations()
    if np.any(np.abs(acc) > limits.acceleration * slack):
        worst = int(np.argmax(np.max(np.abs(acc) / limits.acceleration, axis=0)))
        return f'acceleration limit of {trajectory.joint_names[worst]}'
    jerk = np.gradient(acc, trajectory.times, axis=0) if len(acc) > 1 else acc
    if np.any(np.abs(jerk) > limits.jerk * JERK_SLACK):
        worst = int(np.argmax(np.max(np.abs(jerk) / limits.jerk, axis=0)))
        return f'jerk limit of {trajectory.joint_names[worst]}'
    return ''
