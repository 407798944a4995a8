"""Jerk-limited joint and Cartesian motions (planning.motion) and the sweep poses (scan)."""

from __future__ import annotations

import numpy as np
import pinocchio as pin
import pytest

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
from ir_guidance.planning.scan import sweep_poses

STAGE = 'needle_insertion_joint'
DT = 0.01


@pytest.fixture(scope='module')
def limits(rig: SerialChain) -> MotionLimits:
    return MotionLimits.from_config(rig)


def jerk(traj: JointTrajectory) -> np.ndarray:
    return np.gradient(traj.accelerations(), traj.times, axis=0)


def test_limits_from_config(rig: SerialChain, limits: MotionLimits) -> None:
    p = config.load()['planner']
    assert np.allclose(limits.velocity, rig.velocity_limit * p['velocity_scale'])
    assert np.allclose(limits.acceleration[:6], p['acceleration_rad_s2'])
    assert limits.acceleration[6] == p['stage_acceleration_m_s2']
    assert limits.jerk[6] == p['stage_jerk_m_s3']
    with pytest.raises(ValueError, match='velocity_scale'):
        MotionLimits.from_config(rig, {**p, 'velocity_scale': 1.5})
    with pytest.raises(ValueError, match='> 0'):
        MotionLimits(np.ones(2), np.zeros(2), np.ones(2))


def test_joint_move_is_limited_synchronized_rest_to_rest(rig: SerialChain, home: np.ndarray,
                                                        limits: MotionLimits) -> None:
    goal = home + np.array([0.6, -0.3, 0.2, 0.1, 0.05, -0.4, 0.03])
    traj = joint_move(home, goal, limits, DT, rig.joint_names)
    assert traj.times[0] == 0.0 and np.allclose(np.diff(traj.times), DT)
    assert np.array_equal(traj.positions[0], home)
    assert np.array_equal(traj.positions[-1], goal)
    assert not traj.velocities[0].any() and not traj.velocities[-1].any()
    assert check_limits(rig, traj, limits) == ''
    assert np.all(np.abs(jerk(traj)) <= limits.jerk * 1.05)
    # Synchronized: every joint is still moving until the end (none finishes early).
    moving = np.abs(traj.velocities[-3]) > 0
    assert moving.all()
    # Time-optimal for the limiting joint: some joint reaches its velocity limit.
    assert np.any(np.abs(traj.velocities).max(axis=0) > 0.95 * limits.velocity)


def test_joint_move_to_the_same_place_is_one_sample(rig: SerialChain, home: np.ndarray,
                                                    limits: MotionLimits) -> None:
    traj = joint_move(home, home, limits, DT, rig.joint_names)
    assert traj.duration == 0.0 and len(traj.times) == 1


def test_joint_move_rejects_bad_input(rig: SerialChain, home: np.ndarray,
                                      limits: MotionLimits) -> None:
    bad = home.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match='not finite'):
        joint_move(home, bad, limits, DT, rig.joint_names)
    with pytest.raises(ValueError):
        joint_move(home, home[:6], limits, DT, rig.joint_names)
    with pytest.raises(ValueError, match='dt'):
        joint_move(home, home, limits, 0.0, rig.joint_names)


def test_cartesian_line_is_straight_and_limited(rig: SerialChain, home: np.ndarray,
                                                limits: MotionLimits) -> None:
    ik = PoseIk(rig, 'us_image_frame')
    start = rig.fk(home, 'us_image_frame')
    goal = start.copy()
    goal[:3, 3] += (0.02, -0.03, 0.04)
    goal[:3, :3] = goal[:3, :3] @ pin.exp3(np.array([0.0, 0.2, 0.0]))
    traj = cartesian_line(rig, ik, home, goal, 0.02, DT, limits, frozen=[STAGE])
    assert check_limits(rig, traj, limits) == ''
    assert np.all(traj.positions[:, -1] == home[-1])
    poses = [rig.fk(q, 'us_image_frame') for q in traj.positions]
    direction = (goal[:3, 3] - start[:3, 3]) / np.linalg.norm(goal[:3, 3] - start[:3, 3])
    for pose in poses:
        offset = pose[:3, 3] - start[:3, 3]
        assert np.linalg.norm(offset - (offset @ direction) * direction) < 1e-5
    assert np.abs(poses[-1] - goal).max() < 1e-5
    # Cartesian speed never exceeds the requested one (finite differences of the samples).
    speed = np.linalg.norm(np.diff([p[:3, 3] for p in poses], axis=0), axis=1) / DT
    assert speed.max() <= 0.02 * 1.01
    assert not traj.velocities[0].any() and not traj.velocities[-1].any()


def test_cartesian_line_slows_down_for_joint_limits(rig: SerialChain, home: np.ndarray
                                                    ) -> None:
    ik = PoseIk(rig, 'us_image_frame')
    slow = MotionLimits(np.full(rig.dof, 0.05), np.full(rig.dof, 0.5), np.full(rig.dof, 5.0))
    goal = rig.fk(home, 'us_image_frame')
    goal[2, 3] += 0.05
    traj = cartesian_line(rig, ik, home, goal, 0.05, DT, slow, frozen=[STAGE])
    assert check_limits(rig, traj, slow) == ''
    fast = cartesian_line(rig, ik, home, goal, 0.05, DT, MotionLimits.from_config(rig),
                          frozen=[STAGE])
    assert traj.duration > 1.5 * fast.duration


def test_cartesian_line_out_of_reach_raises(rig: SerialChain, home: np.ndarray,
                                            limits: MotionLimits) -> None:
    ik = PoseIk(rig, 'us_image_frame')
    goal = rig.fk(home, 'us_image_frame')
    goal[0, 3] += 1.0
    with pytest.raises(UnreachableError, match='line blocked'):
        cartesian_line(rig, ik, home, goal, 0.05, DT, limits, frozen=[STAGE])
    with pytest.raises(ValueError, match='speed'):
        cartesian_line(rig, ik, home, goal, -1.0, DT, limits)


def test_sample_and_concatenate(rig: SerialChain, home: np.ndarray,
                                limits: MotionLimits) -> None:
    mid = home + 0.1
    mid[-1] = 0.01
    a = joint_move(home, mid, limits, DT, rig.joint_names)
    b = joint_move(mid, home, limits, DT, rig.joint_names)
    both = concatenate([a, b])
    assert np.isclose(both.duration, a.duration + b.duration)
    assert np.allclose(np.diff(both.times), DT)
    assert np.allclose(both.sample(a.duration), mid)
    assert np.array_equal(both.sample(-1.0), home) and np.array_equal(both.sample(1e9), home)
    t = 0.5 * (a.times[3] + a.times[4])
    assert np.allclose(a.sample(t), 0.5 * (a.positions[3] + a.positions[4]))
    with pytest.raises(ValueError, match='does not start'):
        concatenate([a, a])
    with pytest.raises(ValueError, match='finite'):
        a.sample(np.nan)


def test_sweep_poses_are_transverse_level_and_centred(rig: SerialChain, home: np.ndarray
                                                      ) -> None:
    probe = rig.fk(home, 'us_image_frame')
    start, end = sweep_poses(probe, 0.1, 0.265)
    for pose in (start, end):
        x, y = pose[:3, 0], pose[:3, 1]
        assert np.allclose(np.abs(x), (1, 0, 0)) and np.allclose(y, (0, 0, -1))
        assert np.allclose(np.cross(x, y), pose[:3, 2])
        assert pose[2, 3] == 0.265
    assert np.allclose(0.5 * (start[:2, 3] + end[:2, 3]), probe[:2, 3])
    assert np.allclose(end[:3, 3] - start[:3, 3], (0.0, 0.1, 0.0))
    # Both ends are reachable by the rig on the home branch.
    ik = PoseIk(rig, 'us_image_frame')
    for pose in (start, end):
        assert ik.solve(pose, home, frozen=[STAGE], restarts=0).success
    with pytest.raises(ValueError):
        sweep_poses(probe, np.nan, 0.26)


def test_check_limits_reports_what_is_violated(rig: SerialChain, home: np.ndarray,
                                              limits: MotionLimits) -> None:
    goal = home + 0.3
    goal[-1] = 0.01
    traj = joint_move(home, goal, limits, DT, rig.joint_names)
    assert check_limits(rig, traj, limits) == ''
    v, a, j = limits.velocity, limits.acceleration, limits.jerk
    assert check_limits(rig, traj, MotionLimits(v * 0.5, a, j)).startswith('velocity')
    assert check_limits(rig, traj, MotionLimits(v, a * 0.5, j)).startswith('acceleration')
    assert check_limits(rig, traj, MotionLimits(v, a, j * 0.5)).startswith('jerk')
    beyond = JointTrajectory(traj.joint_names, traj.times, traj.positions + 10.0,
                             traj.velocities)
    assert check_limits(rig, beyond, limits) == 'position limits'
