"""PoseIk: full 6-DoF pose IK of any chain frame (the planner's probe placement)."""

from __future__ import annotations

import numpy as np
import pinocchio as pin
import pytest

from ir_guidance.kinematics import PoseIk, SerialChain, UnreachableError

STAGE = 'needle_insertion_joint'


def rotation_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(pin.log3(a[:3, :3].T @ b[:3, :3])))


@pytest.mark.parametrize('frame', ['us_image_frame', 'tool0', 'needle_tip'])
def test_reaches_poses_of_random_configurations(rig: SerialChain, home: np.ndarray,
                                                frame: str) -> None:
    ik = PoseIk(rig, frame)
    rng = np.random.default_rng(3)
    for _ in range(25):
        q = home + rng.uniform(-0.4, 0.4, rig.dof)
        q[-1] = rng.uniform(0.0, 0.04)
        goal = rig.fk(q, frame)
        result = ik.solve(goal, home)
        assert result.success, result.reason
        reached = rig.fk(result.positions, frame)
        assert np.linalg.norm(reached[:3, 3] - goal[:3, 3]) < 2e-6
        assert rotation_error(reached, goal) < 2e-6
        assert rig.within_limits(result.positions)


def test_frozen_joint_keeps_its_start_value(rig: SerialChain, home: np.ndarray) -> None:
    ik = PoseIk(rig, 'us_image_frame')
    q = home.copy()
    q[:6] += 0.2
    start = home.copy()
    start[-1] = 0.013
    goal = rig.fk(q, 'us_image_frame')
    result = ik.solve(goal, start, frozen=[STAGE])
    assert result.success, result.reason
    assert result.positions[-1] == 0.013
    # The probe does not depend on the stage, so its pose is still reached exactly.
    assert np.abs(rig.fk(result.positions, 'us_image_frame') - goal).max() < 1e-5


def test_out_of_reach_pose_fails_with_reason(rig: SerialChain, home: np.ndarray) -> None:
    ik = PoseIk(rig, 'us_image_frame', restarts=4)
    goal = rig.fk(home, 'us_image_frame')
    goal[:3, 3] = (3.0, 0.0, 0.5)  # 3 m away: the UR5e reaches ~0.85 m
    result = ik.solve(goal, home)
    assert not result.success
    assert 'unreachable' in result.reason and 'us_image_frame' in result.reason
    with pytest.raises(UnreachableError, match='unreachable'):
        ik.solve_or_raise(goal, home)


def test_no_restarts_stays_on_the_start_branch(rig: SerialChain, home: np.ndarray) -> None:
    ik = PoseIk(rig, 'us_image_frame')
    goal = rig.fk(home, 'us_image_frame')
    goal[:3, 3] += (0.01, -0.02, 0.015)
    result = ik.solve(goal, home, frozen=[STAGE], restarts=0)
    assert result.success and result.restarts == 0
    assert np.abs(result.positions - home).max() < 0.2


@pytest.mark.parametrize('bad', [np.full((4, 4), np.nan), np.eye(3),
                                 np.diag([1.0, 1.0, -1.0, 1.0]),
                                 np.diag([2.0, 1.0, 1.0, 1.0])])
def test_bad_target_raises(rig: SerialChain, home: np.ndarray, bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        PoseIk(rig, 'us_image_frame').solve(bad, home)


def test_bad_inputs_raise(rig: SerialChain, home: np.ndarray) -> None:
    goal = rig.fk(home, 'us_image_frame')
    with pytest.raises(ValueError, match='unknown frame'):
        PoseIk(rig, 'no_such_frame')
    with pytest.raises(ValueError, match='unknown joint'):
        PoseIk(rig, 'us_image_frame').solve(goal, home, frozen=['nope'])
    with pytest.raises(ValueError, match='not finite'):
        PoseIk(rig, 'us_image_frame').solve(goal, np.full(rig.dof, np.nan))
