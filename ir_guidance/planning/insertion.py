"""In-plane needle insertion planning: probe pose, stage travel and the three motions.

Planning layer, ROS-free. The needle rides on a prismatic stage fixed to the ultrasound
probe, in the image plane, at a mechanical angle (20 deg) below the probe face and
coming from the probe's -x side. An in-plane insertion along a vein therefore fixes
almost everything:

- the image plane must contain the vein, so the probe x axis lies along the horizontal
  projection of the vein direction (sign: the one whose probe orientation is closer to
  the current one, i.e. the smaller wrist turn), image y = world -z (face level);
- an insertion angle other than the mechanical one tilts the probe about its image z
  axis by the difference (config ``insertion_angle_deg``, 15-25 deg);
- the face centre sits ``press_depth_m`` below the skin height, and the needle line
  must pass through the vein centre: with the needle axis n and the stage-zero tip
  offset t (both fixed in the probe frame), ``o + R t + u n = target`` and
  ``o_z = skin - press`` give the stage travel ``u`` and the probe origin ``o`` in
  closed form. Only the arm configuration needs a solver (PoseIk on the probe frame,
  stage frozen at 0); the result is checked by forward kinematics of the needle tip.

The motions: ``approach`` = retract the stage if it is out, lift the probe straight up
to ``clearance_m`` above the skin, a jerk-limited joint move to the pose above the
contact, a straight descent onto the skin; ``insertion`` = the stage alone to ``u`` at
``insertion_speed_m_s``; ``retraction`` = the stage back to 0, then the probe straight
up by the clearance. The lift and the descent are vertical lines by construction; the
joint move in between is checked by forward kinematics: probe face, flange and needle
tip stay above the skin height, or the plan is refused ('no clear path').

Failures are answers, not exceptions (``ok`` False and a ``reason`` starting with one
of :data:`FAILURES`), because an unreachable or too deep vein is an ordinary outcome
of target selection. Bad configuration (an angle outside 15-25 deg, a wrong joint
vector) raises ValueError.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ir_guidance import config
from ir_guidance.kinematics import PoseIk, SerialChain, UnreachableError
from ir_guidance.planning.motion import (
    JointTrajectory,
    MotionLimits,
    cartesian_line,
    check_limits,
    concatenate,
    joint_move,
)

FAILURES = ('unreachable', 'too deep', 'too small', 'no clear path', 'invalid target')
ANGLE_RANGE_DEG = (15.0, 25.0)
# Transfer moves are checked by FK at this many evenly spaced samples at least.
CLEARANCE_SAMPLES = 50


@dataclass(frozen=True)
class InsertionPlan:
    """A planned insertion (base frame, SI units).

    On failure ``ok`` is False, ``reason`` says why (it starts with one of
    :data:`FAILURES`), the trajectories hold ``q_start`` and the numbers are NaN.
    """

    ok: bool
    reason: str
    target: np.ndarray
    axis: np.ndarray
    entry: np.ndarray
    stage_travel: float
    q_contact: np.ndarray
    approach: JointTrajectory
    insertion: JointTrajectory
    retraction: JointTrajectory
    plan_ms: float = 0.0
    details: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _RigGeometry:
    """Fixed needle geometry in the probe frame, measured by FK (valid for any rig)."""

    tip_offset: np.ndarray   # needle tip at stage 0, probe frame
    needle_axis: np.ndarray  # unit, probe frame; the stage moves the tip along it
    stage_index: int
    probe: str
    tip: str
    flange: str


def _geometry(chain: SerialChain, q: np.ndarray) -> _RigGeometry:
    frames = config.load()['frames']
    stage = config.load()['robot']['stage_joint']
    probe, tip, flange = frames['us_image'], frames['needle_tip'], frames['flange']
    i = chain.joint_names.index(stage)
    q0 = q.copy()
    q0[i] = 0.0
    probe_inv = np.linalg.inv(chain.fk(q0, probe))
    tip0 = (probe_inv @ chain.fk(q0, tip))[:3]
    q1 = q0.copy()
    q1[i] = 0.01
    tip1 = (probe_inv @ chain.fk(q1, tip))[:3, 3]
    axis = tip0[:3, 2]
    moved = (tip1 - tip0[:, 3]) / 0.01
    if np.linalg.norm(moved - axis) > 1e-6:
        raise ValueError('the needle stage does not move the tip along the needle axis')
    return _RigGeometry(tip0[:, 3].copy(), axis / np.linalg.norm(axis), i, probe, tip, flange)


def probe_rotation(direction: np.ndarray, sign: float, tilt_rad: float) -> np.ndarray:
    """Probe rotation: x along ``sign`` x horizontal ``direction``, y down, tilted about z."""
    horizontal = np.array([direction[0], direction[1], 0.0])
    x = sign * horizontal / np.linalg.norm(horizontal)
    y = np.array([0.0, 0.0, -1.0])
    level = np.column_stack((x, y, np.cross(x, y)))
    c, s = math.cos(tilt_rad), math.sin(tilt_rad)
    return level @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _failure(chain: SerialChain, q_start: np.ndarray, reason: str, target: np.ndarray,
             started: float) -> InsertionPlan:
    hold = JointTrajectory(tuple(chain.joint_names), np.zeros(1), q_start[None],
                           np.zeros((1, chain.dof)))
    nan3 = np.full(3, np.nan)
    return InsertionPlan(False, reason, np.array(target, dtype=float).reshape(-1)[:3], nan3,
                         nan3, math.nan, np.full(chain.dof, np.nan), hold, hold, hold,
                         (time.perf_counter() - started) * 1e3)


def _vector(value: Any, name: str) -> np.ndarray:
    v = np.asarray(value, dtype=float)
    if v.shape != (3,):
        raise _InvalidError(f'{name} must be a 3-vector, got shape {v.shape}')
    if not np.all(np.isfinite(v)):
        raise _InvalidError(f'{name} is not finite: {v.tolist()}')
    return v


class _InvalidError(ValueError):
    """A NaN/inf or malformed input: the plan's reason becomes 'invalid target'."""


def _clearance_violation(chain: SerialChain, traj: JointTrajectory, frames: Sequence[str],
                         floor: float) -> str:
    """'' if every frame stays at or above ``floor`` along ``traj``, else which does not."""
    step = max(1, len(traj.times) // CLEARANCE_SAMPLES)
    indices = [*range(0, len(traj.times), step), len(traj.times) - 1]
    for k in indices:
        poses = chain.fk_all(traj.positions[k], frames)
        for frame in frames:
            z = poses[frame][2, 3]
            if z < floor:
                return (f'{frame} {(floor - z) * 1e3:.1f} mm below the skin height at '
                        f't = {traj.times[k]:.2f} s of the transfer')
    return ''


def plan_insertion(chain: SerialChain, q_start: np.ndarray, target_position: np.ndarray,
                   vessel_direction: np.ndarray, skin_height_m: float,
                   params: dict[str, Any] | None = None, vessel_radius: float | None = None
                   ) -> InsertionPlan:
    """Plan probe placement, stage travel and the approach/insertion/retraction motions.

    ``target_position``: vessel centre (base frame); ``vessel_direction``: along the
    vessel (its horizontal part sets the image plane; either sign); ``skin_height_m``:
    skin z at the site; ``params``: the ``planner`` config section (default: config);
    ``vessel_radius``: equivalent radius, checked against ``min_vessel_diameter_m``.
    """
    started = time.perf_counter()
    p = config.load()['planner'] if params is None else params
    q_start = chain.check_positions(q_start)
    alpha_deg = float(p['insertion_angle_deg'])
    if not ANGLE_RANGE_DEG[0] <= alpha_deg <= ANGLE_RANGE_DEG[1]:
        raise ValueError(f'insertion_angle_deg must be within {ANGLE_RANGE_DEG} deg, got '
                         f'{alpha_deg}')
    try:
        target = _vector(target_position, 'target position')
        direction = _vector(vessel_direction, 'vessel direction')
        if not math.isfinite(skin_height_m):
            raise _InvalidError(f'skin height is not finite: {skin_height_m}')
        if vessel_radius is not None and not (math.isfinite(vessel_radius)
                                              and vessel_radius > 0):
            raise _InvalidError(f'vessel radius must be finite and > 0, got {vessel_radius}')
        if math.hypot(direction[0], direction[1]) < 1e-3 * np.linalg.norm(direction) or \
                np.linalg.norm(direction) == 0.0:
            raise _InvalidError(f'vessel direction {direction.tolist()} has no horizontal part')
        if target[2] >= skin_height_m - p['press_depth_m']:
            raise _InvalidError(f'vessel centre z {target[2]:.4f} m is not below the pressed '
                                f'skin ({skin_height_m - p["press_depth_m"]:.4f} m)')
    except _InvalidError as error:
        return _failure(chain, q_start, f'invalid target: {error}', target_position, started)
    if vessel_radius is not None and 2.0 * vessel_radius < p['min_vessel_diameter_m']:
        return _failure(chain, q_start, f'too small: diameter {2e3 * vessel_radius:.2f} mm < '
                        f'{p["min_vessel_diameter_m"] * 1e3:.2f} mm', target, started)

    geo = _geometry(chain, q_start)
    limits = MotionLimits.from_config(chain, p)
    dt = float(p['dt_s'])
    names = tuple(chain.joint_names)
    face_z = skin_height_m - p['press_depth_m']
    mechanical = math.atan2(geo.needle_axis[1], geo.needle_axis[0])
    tilt = math.radians(alpha_deg) - mechanical
    current = chain.fk(q_start, geo.probe)[:3, :3]

    # Both needle directions along the vessel; the closer probe orientation first.
    candidates = []
    for sign in (1.0, -1.0):
        rot = probe_rotation(direction, sign, tilt)
        turn = float(np.arccos(np.clip((np.trace(current.T @ rot) - 1) / 2, -1, 1)))
        candidates.append((turn, sign, rot))
    candidates.sort(key=lambda c: c[0])

    rot = candidates[0][2]
    needle = rot @ geo.needle_axis
    tip_offset = rot @ geo.tip_offset
    travel = (target[2] - face_z - tip_offset[2]) / needle[2]
    travel_max = chain.upper[geo.stage_index] - p['stage_travel_margin_m']
    if travel > travel_max:
        depth = skin_height_m - target[2]
        return _failure(chain, q_start, f'too deep: {depth * 1e3:.1f} mm below the skin needs '
                        f'{travel * 1e3:.1f} mm of stage travel > {travel_max * 1e3:.1f} mm',
                        target, started)

    ik = PoseIk(chain, geo.probe, **_ik_params())
    frozen = (names[geo.stage_index],)
    errors = []
    for _, _, rot in candidates:
        needle = rot @ geo.needle_axis
        origin = target - travel * needle - rot @ geo.tip_offset
        contact = np.eye(4)
        contact[:3, :3], contact[:3, 3] = rot, origin
        above = contact.copy()
        above[2, 3] = skin_height_m + p['clearance_m']
        try:
            plan = _motions(chain, ik, geo, limits, p, q_start, contact, above, travel,
                            skin_height_m, dt, frozen)
        except UnreachableError as error:
            errors.append(f'unreachable: {error}')
            continue
        except _NoClearPathError as error:
            errors.append(f'no clear path: {error}')
            continue
        approach, insertion, retraction, q_contact = plan
        q_tip = q_contact.copy()
        q_tip[geo.stage_index] = travel
        tip = chain.fk(q_tip, geo.tip)
        tip_error = float(np.linalg.norm(tip[:3, 3] - target))
        if tip_error > p['tip_tolerance_m']:
            errors.append(f'unreachable: planned tip {tip_error * 1e3:.3f} mm from the target')
            continue
        entry = target + (skin_height_m - target[2]) / needle[2] * needle
        return InsertionPlan(True, 'ok', target, needle, entry, float(travel), q_contact,
                             approach, insertion, retraction,
                             (time.perf_counter() - started) * 1e3,
                             {'tip_error_m': tip_error, 'probe_turn_rad': candidates[0][0]})
    # Report the first direction's reason (the preferred one); the kinds agree mostly.
    reason = errors[0] if len(errors) == 1 else f'{errors[0]} (other direction: {errors[1]})'
    return _failure(chain, q_start, reason, target, started)


class _NoClearPathError(RuntimeError):
    """The probe or flange would pass below the skin: reason 'no clear path'."""


def _ik_params() -> dict[str, Any]:
    k = config.load()['kinematics']
    return {'pos_tol': k['pos_tol'], 'rot_tol': k['axis_tol'], 'max_iters': k['max_iters'],
            'restarts': k['restarts'], 'seed': k['seed']}


def _motions(chain: SerialChain, ik: PoseIk, geo: _RigGeometry, limits: MotionLimits,
             p: dict[str, Any], q_start: np.ndarray, contact: np.ndarray, above: np.ndarray,
             travel: float, skin: float, dt: float, frozen: tuple[str, ...]
             ) -> tuple[JointTrajectory, JointTrajectory, JointTrajectory, np.ndarray]:
    names = tuple(chain.joint_names)
    i = geo.stage_index
    speed = float(p['cartesian_speed_m_s'])
    cart = {'acceleration': float(p['cartesian_acceleration_m_s2']),
            'jerk': float(p['cartesian_jerk_m_s3'])}
    segments = []
    # 1. Needle in: the stage back to 0, arm still.
    q = q_start.copy()
    if q[i] != 0.0:
        q[i] = 0.0
        retract_limits = limits.with_velocity(i, float(p['retraction_speed_m_s']))
        segments.append(joint_move(q_start, q, retract_limits, dt, names))
    # 2. Lift straight up to the clearance height (if lower).
    probe = chain.fk(q, geo.probe)
    if probe[2, 3] < above[2, 3]:
        lifted = probe.copy()
        lifted[2, 3] = above[2, 3]
        segments.append(cartesian_line(chain, ik, q, lifted, speed, dt, limits, frozen, **cart))
        q = segments[-1].positions[-1].copy()
    # 3. Transfer to above the contact: a joint move, checked for clearance.
    result = ik.solve(above, q, frozen, restarts=0)
    if not result.success:
        result = ik.solve(above, q, frozen)
    if not result.success:
        raise UnreachableError(f'probe pose above the contact: {result.reason}')
    transfer = joint_move(q, result.positions, limits, dt, names)
    violation = _clearance_violation(chain, transfer, (geo.probe, geo.flange, geo.tip), skin)
    if violation:
        raise _NoClearPathError(violation)
    segments.append(transfer)
    # 4. Descend straight onto the skin.
    segments.append(cartesian_line(chain, ik, result.positions, contact, speed, dt, limits,
                                   frozen, **cart))
    approach = concatenate(segments)
    q_contact = approach.positions[-1].copy()
    # Insertion: the stage alone, at the insertion speed.
    q_in = q_contact.copy()
    q_in[i] = travel
    insert_limits = limits.with_velocity(i, float(p['insertion_speed_m_s']))
    insertion = joint_move(q_contact, q_in, insert_limits, dt, names)
    # Retraction: the stage back, then the probe straight up by the clearance.
    retract_limits = limits.with_velocity(i, float(p['retraction_speed_m_s']))
    back = joint_move(q_in, q_contact, retract_limits, dt, names)
    up = cartesian_line(chain, ik, q_contact, above, speed, dt, limits, frozen, **cart)
    retraction = concatenate([back, up])
    for name, traj, lim in (('approach', approach, limits), ('insertion', insertion,
                                                             insert_limits),
                            ('retraction', retraction, limits)):
        broken = check_limits(chain, traj, lim)
        if broken:
            raise UnreachableError(f'{name} violates the {broken}')
    return approach, insertion, retraction, q_contact


def needs_replan(plan: InsertionPlan, new_target_position: np.ndarray,
                 tolerance_m: float) -> bool:
    """True if the target moved further than ``tolerance_m`` (or the plan failed)."""
    new = np.asarray(new_target_position, dtype=float)
    if new.shape != (3,) or not np.all(np.isfinite(new)):
        raise ValueError(f'new target must be a finite 3-vector, got {new!r}')
    if not (math.isfinite(tolerance_m) and tolerance_m > 0):
        raise ValueError(f'replan tolerance must be finite and > 0, got {tolerance_m}')
    if not plan.ok:
        return True
    return bool(np.linalg.norm(new - plan.target) > tolerance_m)
