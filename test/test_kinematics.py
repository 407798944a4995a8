"""SerialChain (FK, Jacobians, configuration vectors) and NeedleIk on the rig and on a
second, unrelated arm (Franka Panda from example-robot-data).
"""

from __future__ import annotations

import math
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pinocchio as pin
import pytest

from ir_guidance import config
from ir_guidance.kinematics import IkResult, NeedleIk, NeedlePose, SerialChain, UnreachableError
from ir_guidance.rig_description import rig_chain, rig_urdf

STAGE_JOINT = 'needle_insertion_joint'
PANDA_SUBPATH = 'panda_description/urdf/panda.urdf'
# Franka's "ready" pose, inside every joint's limits.
PANDA_HOME = np.array([0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4])

POS_TOL_M = 1e-5
AXIS_TOL_RAD = math.radians(1e-4)


def find_panda_urdf() -> Path | None:
    """The Panda URDF shipped by example-robot-data, or None if it is not installed."""
    try:
        import example_robot_data  # type: ignore[import-not-found]

        path = Path(example_robot_data.getModelPath(PANDA_SUBPATH)) / PANDA_SUBPATH
        if path.is_file():
            return path
    except Exception:
        pass  # module absent or its API differs: fall back to a search
    known = (Path(sysconfig.get_paths()['purelib']) / 'cmeel.prefix/share/example-robot-data'
             / 'robots' / PANDA_SUBPATH)
    if known.is_file():
        return known
    return next(iter(sorted(Path(sys.prefix).glob(f'**/{PANDA_SUBPATH}'))), None)


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def panda() -> SerialChain:
    path = find_panda_urdf()
    if path is None:
        pytest.skip(f'example-robot-data not installed: no {PANDA_SUBPATH} under {sys.prefix}')
    return SerialChain.from_urdf(path.read_text(encoding='utf-8'), 'panda_link0', 'panda_hand')


@pytest.fixture(scope='module')
def arm_only() -> SerialChain:
    """The rig with the needle stage welded at zero travel: the arm alone moves the tip."""
    xml = rig_urdf()
    marker = '<joint name="needle_insertion_joint" type="prismatic">'
    assert marker in xml
    welded = xml.replace(marker, '<joint name="needle_insertion_joint" type="fixed">')
    chain = SerialChain.from_urdf(welded, 'base_link', 'needle_tip')
    assert chain.dof == 6
    return chain


# -- independent UR DH forward kinematics -------------------------------------------------

UR5E_ALPHA = (math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0)
UR5E_A = (0.0, -0.425, -0.3922, 0.0, 0.0, 0.0)
UR5E_D = (0.1625, 0.0, 0.0, 0.1333, 0.0997, 0.0996)


def ur_dh_fk(theta) -> np.ndarray:
    """base_link -> tool0 by standard DH: T_i = Rz(theta) Tz(d) Tx(a) Rx(alpha).

    The DH base frame is base_link_inertia, i.e. base_link rotated by pi about z.
    """
    pose = np.diag([-1.0, -1.0, 1.0, 1.0])  # Rz(pi)
    for th, alpha, a, d in zip(theta, UR5E_ALPHA, UR5E_A, UR5E_D, strict=True):
        ct, st, ca, sa = math.cos(th), math.sin(th), math.cos(alpha), math.sin(alpha)
        pose = pose @ np.array([[ct, -st * ca, st * sa, a * ct],
                                [st, ct * ca, -ct * sa, a * st],
                                [0.0, sa, ca, d],
                                [0.0, 0.0, 0.0, 1.0]])
    return pose


def test_rig_chain_joints(rig):
    assert rig.joint_names == [*config.load()['robot']['arm_joints'], STAGE_JOINT]
    assert rig.dof == 7
    assert rig.base_link == 'base_link' and rig.tip_link == 'needle_tip'


def test_tool0_fk_matches_ur5e_dh(rig):
    rng = np.random.default_rng(11)
    worst = 0.0
    for _ in range(50):
        x = rng.uniform(rig.lower, rig.upper)
        pose = rig.fk(x, 'tool0')
        expected = ur_dh_fk(x[:6])
        worst = max(worst, float(np.max(np.abs(pose - expected))))
    assert worst < 1e-9, f'tool0 FK differs from the UR5e DH model by {worst}'


def test_fk_all_matches_fk(rig, home):
    frames = ['tool0', 'needle_tip', 'us_image_frame', 'nir_camera_optical_frame']
    poses = rig.fk_all(home, frames)
    assert set(poses) == set(frames)
    for frame in frames:
        np.testing.assert_allclose(poses[frame], rig.fk(home, frame), atol=1e-14)
    np.testing.assert_allclose(rig.fk(home), rig.fk(home, 'needle_tip'), atol=1e-14)


def test_fk_known_zero_pose(rig):
    """At zero the UR5e lies stretched along base_link +x (DH base is rotated by pi).

    The pendant shows (-817.2, -232.9, 62.8) mm in the DH base; base_link flips x and y.
    """
    pose = rig.fk(np.zeros(7), 'tool0')
    np.testing.assert_allclose(pose[:3, 3], [0.425 + 0.3922, 0.1333 + 0.0996,
                                             0.1625 - 0.0997], atol=1e-12)


# -- Jacobian vs finite differences -------------------------------------------------------

def _fd_jacobian(chain: SerialChain, x: np.ndarray, frame: str, h: float = 1e-6) -> np.ndarray:
    jac = np.zeros((6, chain.dof))
    for i in range(chain.dof):
        dx = np.zeros(chain.dof)
        dx[i] = h
        plus, minus = chain.fk(x + dx, frame), chain.fk(x - dx, frame)
        jac[:3, i] = (plus[:3, 3] - minus[:3, 3]) / (2 * h)
        # Angular velocity in base axes: R(+h) R(-h)^T = exp([w] 2h).
        jac[3:, i] = pin.log3(plus[:3, :3] @ minus[:3, :3].T) / (2 * h)
    return jac


def _check_jacobian(chain, configs, frames):
    for x in configs:
        for frame in frames:
            analytic = chain.jacobian(x, frame)
            assert analytic.shape == (6, chain.dof)
            numeric = _fd_jacobian(chain, x, frame)
            np.testing.assert_allclose(analytic[:3], numeric[:3], atol=1e-8,
                                       err_msg=f'linear part, {frame}')
            np.testing.assert_allclose(analytic[3:], numeric[3:], atol=1e-8,
                                       err_msg=f'angular part, {frame}')


def _interior_configs(chain, rng, n, margin=1e-3):
    return [rng.uniform(chain.lower + margin, chain.upper - margin) for _ in range(n)]


def test_rig_jacobian_matches_finite_differences(rig):
    rng = np.random.default_rng(5)
    _check_jacobian(rig, _interior_configs(rig, rng, 10),
                    ['needle_tip', 'tool0', 'us_image_frame'])


def test_rig_jacobian_stage_column_is_needle_axis(rig, home):
    jac = rig.jacobian(home)
    axis = rig.fk(home)[:3, 2]
    np.testing.assert_allclose(jac[:3, 6], axis, atol=1e-12)
    np.testing.assert_allclose(jac[3:, 6], 0.0, atol=1e-12)


def test_panda_jacobian_matches_finite_differences(panda):
    rng = np.random.default_rng(6)
    _check_jacobian(panda, _interior_configs(panda, rng, 10), ['panda_hand', 'panda_link5'])


# -- IK round trips ---------------------------------------------------------------------------

def _axis_angle(a: np.ndarray, b: np.ndarray) -> float:
    return math.atan2(float(np.linalg.norm(np.cross(a, b))), float(a @ b))


def _check_solution(chain: SerialChain, ik: NeedleIk, target: NeedlePose, result: IkResult):
    x = result.positions
    assert x.shape == (chain.dof,)
    assert np.all(x >= chain.lower) and np.all(x <= chain.upper), 'solution outside limits'
    assert result.position_error_m <= POS_TOL_M
    assert result.axis_error_rad <= AXIS_TOL_RAD
    pose = chain.fk(x)
    pos_err = float(np.linalg.norm(pose[:3, 3] - target.position))
    ang_err = _axis_angle(pose[:3, :3] @ ik.axis_local, target.axis)
    assert pos_err <= POS_TOL_M
    assert ang_err <= AXIS_TOL_RAD
    # The reported errors are the real ones.
    assert result.position_error_m == pytest.approx(pos_err, abs=1e-9)
    assert result.axis_error_rad == pytest.approx(ang_err, abs=1e-8)


def _round_trips(chain: SerialChain, start: np.ndarray, n: int, seed: int) -> None:
    ik = NeedleIk(chain)
    rng = np.random.default_rng(seed)
    failures = []
    for k in range(n):
        x_true = rng.uniform(chain.lower, chain.upper)
        target = NeedlePose.from_transform(chain.fk(x_true), ik.axis_local)
        result = ik.solve(target, start)  # never from x_true
        if not result.success:
            assert 'unreachable' in result.reason
            failures.append((k, result.reason))
            continue
        assert result.reason == 'converged'
        _check_solution(chain, ik, target, result)
    assert len(failures) <= 0.01 * n, f'{len(failures)}/{n} reachable targets failed: {failures}'


def test_rig_ik_round_trips(rig, home):
    _round_trips(rig, home, n=100, seed=21)


def test_panda_ik_round_trips(panda):
    assert panda.dof == 7
    assert np.all(PANDA_HOME >= panda.lower) and np.all(PANDA_HOME <= panda.upper)
    _round_trips(panda, PANDA_HOME, n=50, seed=22)


def test_ik_from_the_solution_is_immediate(rig, home):
    ik = NeedleIk(rig)
    target = NeedlePose.from_transform(rig.fk(home), ik.axis_local)
    result = ik.solve(target, home)
    assert result.success and result.restarts == 0
    np.testing.assert_allclose(result.positions, home, atol=1e-12)


def test_ik_honours_a_custom_axis_local(rig, home):
    """axis_local picks which tip axis is the needle: solve for tip x instead of z."""
    ik = NeedleIk(rig, axis_local=(2.0, 0.0, 0.0))
    rng = np.random.default_rng(4)
    x_true = rng.uniform(rig.lower, rig.upper)
    target = NeedlePose.from_transform(rig.fk(x_true), np.array([1.0, 0.0, 0.0]))
    result = ik.solve(target, home)
    assert result.success
    _check_solution(rig, ik, target, result)
    np.testing.assert_allclose(rig.fk(result.positions)[:3, 0], target.axis, atol=1e-5)


# -- unreachable targets and bad input ------------------------------------------------------

def test_unreachable_target(rig, home):
    ik = NeedleIk(rig)
    target = NeedlePose.make([2.0, 0.0, 0.3], [0.0, 0.0, -1.0])
    result = ik.solve(target, home)
    assert not result.success
    assert 'unreachable' in result.reason
    # The best attempt is reported, honestly: the arm (reach ~1 m) stays > 0.5 m short.
    assert result.position_error_m > 0.5
    assert rig.within_limits(result.positions)
    assert result.restarts == ik.restarts
    with pytest.raises(UnreachableError, match='unreachable'):
        ik.solve_or_raise(target, home)


def test_unreachable_target_panda(panda):
    ik = NeedleIk(panda)
    target = NeedlePose.make([0.0, 2.0, 0.5], [1.0, 0.0, 0.0])
    result = ik.solve(target, PANDA_HOME)
    assert not result.success and 'unreachable' in result.reason
    with pytest.raises(UnreachableError):
        ik.solve_or_raise(target, PANDA_HOME)


@pytest.mark.parametrize(('position', 'axis'), [
    ([math.nan, 0.0, 0.3], [0, 0, 1]),
    ([0.4, math.inf, 0.3], [0, 0, 1]),
    ([0.4, 0.0, 0.3], [0, math.nan, 1]),
    ([0.4, 0.0, 0.3], [0, 0, 0]),
    ([0.4, 0.0], [0, 0, 1]),
    ([0.4, 0.0, 0.3], [0, 0, 1, 0]),
])
def test_bad_needle_pose(position, axis):
    with pytest.raises(ValueError):
        NeedlePose.make(position, axis)


def test_needle_pose_normalises_axis():
    pose = NeedlePose.make([0.1, 0.2, 0.3], [0.0, 3.0, 4.0])
    np.testing.assert_allclose(pose.axis, [0.0, 0.6, 0.8], atol=1e-15)


@pytest.mark.parametrize('start', [np.zeros(6), np.zeros(8), np.zeros((1, 7)),
                                   np.array([0, 0, 0, 0, 0, math.nan, 0])])
def test_bad_start_raises(rig, start):
    ik = NeedleIk(rig)
    target = NeedlePose.make([0.4, 0.1, 0.3], [0, 0, -1])
    with pytest.raises(ValueError):
        ik.solve(target, start)
    with pytest.raises(ValueError):
        rig.fk(start)
    with pytest.raises(ValueError):
        rig.jacobian(start)


def test_unknown_frame_in_fk(rig, home):
    with pytest.raises(ValueError):
        rig.fk(home, 'no_such_frame')


# -- straight lines along the needle ---------------------------------------------------------

def test_straight_line_with_stage(rig, home):
    ik = NeedleIk(rig)
    distance, steps = 0.03, 12
    path = ik.straight_line(home, distance, steps, stage_joint=STAGE_JOINT)
    assert path.shape == (steps + 1, rig.dof)
    i = rig.joint_names.index(STAGE_JOINT)
    others = np.delete(path, i, axis=1)
    np.testing.assert_array_equal(others, np.repeat(np.delete(home, i)[None], steps + 1, 0))
    np.testing.assert_allclose(path[:, i], home[i] + np.linspace(0, distance, steps + 1),
                               atol=1e-15)
    start = rig.fk(path[0])
    axis = start[:3, 2]
    for k, x in enumerate(path):
        pose = rig.fk(x)
        expected = start[:3, 3] + distance * k / steps * axis
        np.testing.assert_allclose(pose[:3, 3], expected, atol=1e-12)
        np.testing.assert_allclose(pose[:3, :3], start[:3, :3], atol=1e-12)
    moved = rig.fk(path[-1])[:3, 3] - start[:3, 3]
    assert np.linalg.norm(moved) == pytest.approx(distance, abs=1e-12)


@pytest.mark.parametrize(('stage0', 'distance'), [(0.0, 0.041), (0.03, 0.02), (0.0, -0.001),
                                                  (0.02, -0.03)])
def test_stage_travel_beyond_limit_raises(rig, home, stage0, distance):
    ik = NeedleIk(rig)
    start = home.copy()
    start[rig.joint_names.index(STAGE_JOINT)] = stage0
    with pytest.raises(UnreachableError):
        ik.straight_line(start, distance, 5, stage_joint=STAGE_JOINT)


def test_straight_line_rejects_bad_arguments(rig, home):
    ik = NeedleIk(rig)
    with pytest.raises(ValueError):
        ik.straight_line(home, 0.01, 0, stage_joint=STAGE_JOINT)
    with pytest.raises(ValueError):
        ik.straight_line(home, math.nan, 5, stage_joint=STAGE_JOINT)
    with pytest.raises(ValueError):
        ik.straight_line(home, 0.01, 5, stage_joint='no_such_joint')
    with pytest.raises(ValueError):
        ik.straight_line(home[:6], 0.01, 5)


def _check_arm_line(chain: SerialChain, start: np.ndarray, distance: float, steps: int,
                    frozen: tuple[str, ...] = ()):
    ik = NeedleIk(chain)
    path = ik.straight_line(start, distance, steps, frozen=frozen)
    assert path.shape == (steps + 1, chain.dof)
    np.testing.assert_array_equal(path[0], start)
    origin = chain.fk(start)
    axis = origin[:3, :3] @ ik.axis_local
    for k, x in enumerate(path):
        assert np.all(x >= chain.lower) and np.all(x <= chain.upper)
        pose = chain.fk(x)
        expected = origin[:3, 3] + distance * k / steps * axis
        assert np.linalg.norm(pose[:3, 3] - expected) <= POS_TOL_M, f'waypoint {k}'
        assert _axis_angle(pose[:3, :3] @ ik.axis_local, axis) <= AXIS_TOL_RAD, f'waypoint {k}'
    # Consecutive waypoints are close in joint space: no jump to another IK branch.
    assert np.max(np.abs(np.diff(path, axis=0))) < 0.1
    return path


def test_straight_line_with_the_arm(rig, home):
    start = home.copy()
    start[rig.joint_names.index(STAGE_JOINT)] = 0.01
    _check_arm_line(rig, start, 0.02, 10)


def test_straight_line_with_the_arm_keeps_a_frozen_stage(rig, home):
    start = home.copy()
    i = rig.joint_names.index(STAGE_JOINT)
    start[i] = 0.01
    path = _check_arm_line(rig, start, 0.02, 10, frozen=(STAGE_JOINT,))
    np.testing.assert_array_equal(path[:, i], 0.01)
    assert np.max(np.abs(path[-1, :6] - path[0, :6])) > 1e-3  # the arm did the moving


def test_frozen_unknown_joint_raises(rig, home):
    with pytest.raises(ValueError, match='unknown joint'):
        NeedleIk(rig).solve(NeedlePose.from_transform(rig.fk(home), np.array([0, 0, 1.0])),
                            home, frozen=('no_such_joint',))


def test_needle_pose_constructor_validates():
    """The plain constructor is as strict as make(): no NaN reaches a solver."""
    with pytest.raises(ValueError):
        NeedlePose(np.array([math.nan, 0.0, 0.3]), np.array([0.0, 0.0, 1.0]))
    pose = NeedlePose(np.array([0.1, 0.2, 0.3]), np.array([0.0, 0.0, 2.0]))
    np.testing.assert_allclose(pose.axis, [0.0, 0.0, 1.0])


def test_straight_line_with_the_arm_alone(arm_only, home):
    """With the stage welded, only the arm can follow the line."""
    path = _check_arm_line(arm_only, home[:6], 0.03, 10)
    assert np.max(np.abs(path[-1] - path[0])) > 1e-3  # the arm really moved


def test_straight_line_panda(panda):
    _check_arm_line(panda, PANDA_HOME, -0.05, 10)


# -- building chains ------------------------------------------------------------------------

@pytest.mark.parametrize(('base', 'tip'), [
    ('needle_tip', 'tool0'),                 # reversed
    ('needle_carriage', 'us_image_frame'),   # a side branch
    ('no_such_link', 'needle_tip'),
    ('base_link', 'no_such_link'),
    ('tool0', 'us_image_frame'),              # no joint in between
])
def test_from_urdf_rejects_bad_frames(base, tip):
    with pytest.raises(ValueError):
        SerialChain.from_urdf(rig_urdf(), base, tip)


def test_from_urdf_sub_chain(home):
    """A chain may start above the root: joints before the base are locked."""
    chain = SerialChain.from_urdf(rig_urdf(), 'upper_arm_link', 'tool0')
    assert chain.joint_names == ['elbow_joint', 'wrist_1_joint', 'wrist_2_joint', 'wrist_3_joint']
    full = rig_chain()
    # Pose of tool0 in upper_arm_link with the locked joints at zero.
    x = np.zeros(7)
    x[2:6] = home[2:6]
    expected = np.linalg.inv(full.fk(x, 'upper_arm_link')) @ full.fk(x, 'tool0')
    np.testing.assert_allclose(chain.fk(home[2:6]), expected, atol=1e-12)


def test_from_urdf_rejects_a_sibling_branch(panda):
    """Two fingers: each is reached through its own joint, neither is the other's ancestor."""
    xml = find_panda_urdf().read_text(encoding='utf-8')
    with pytest.raises(ValueError, match='ancestor'):
        SerialChain.from_urdf(xml, 'panda_leftfinger', 'panda_rightfinger')
    with pytest.raises(ValueError, match='ancestor'):
        SerialChain.from_urdf(xml, 'panda_hand', 'panda_link3')
    with pytest.raises(ValueError, match='not in the URDF'):
        SerialChain.from_urdf(xml, 'panda_link0', 'gripper_of_theseus')


def test_rotated_base_chain(home):
    """A base that is not the world: FK, Jacobian and IK all stay in the base frame."""
    full = rig_chain()
    chain = SerialChain.from_urdf(rig_urdf(), 'base_link_inertia', 'needle_tip')
    assert chain.joint_names == full.joint_names
    rz_pi = np.diag([-1.0, -1.0, 1.0, 1.0])
    rng = np.random.default_rng(13)
    configs = _interior_configs(chain, rng, 5)
    for x in configs:
        np.testing.assert_allclose(chain.fk(x), rz_pi @ full.fk(x), atol=1e-12)
        np.testing.assert_allclose(chain.jacobian(x),
                                   np.vstack((rz_pi[:3, :3] @ full.jacobian(x)[:3],
                                              rz_pi[:3, :3] @ full.jacobian(x)[3:])),
                                   atol=1e-12)
    _check_jacobian(chain, configs[:3], ['needle_tip'])
    _round_trips(chain, home, n=20, seed=23)
    # A base rotated about x, part-way up the arm.
    upper = SerialChain.from_urdf(rig_urdf(), 'upper_arm_link', 'needle_tip')
    assert not np.allclose(upper.world_to_base().rotation, np.eye(3))
    _check_jacobian(upper, _interior_configs(upper, rng, 3), ['needle_tip', 'us_image_frame'])


def test_panda_fingers_are_locked(panda):
    assert panda.joint_names == [f'panda_joint{i}' for i in range(1, 8)]
    assert all('finger' not in name for name in panda.joint_names)


# -- continuous joints ----------------------------------------------------------------------

TINY_URDF = """<?xml version="1.0"?>
<robot name="tiny">
  <link name="base"/>
  <link name="l1"/>
  <link name="l2"/>
  <link name="l3"/>
  <link name="tip"/>
  <joint name="j1" type="continuous">
    <parent link="base"/><child link="l1"/>
    <origin xyz="0 0 0.1" rpy="0 0 0"/><axis xyz="0 0 1"/>
  </joint>
  <joint name="j2" type="revolute">
    <parent link="l1"/><child link="l2"/>
    <origin xyz="0 0 0.2" rpy="0 0 0"/><axis xyz="0 1 0"/>
    <limit lower="-1.5" upper="1.5" effort="1" velocity="1"/>
  </joint>
  <joint name="j3" type="continuous">
    <parent link="l2"/><child link="l3"/>
    <origin xyz="0.3 0 0" rpy="0 0 0"/><axis xyz="1 0 0"/>
  </joint>
  <joint name="j4" type="fixed">
    <parent link="l3"/><child link="tip"/>
    <origin xyz="0 0.1 0" rpy="0 0 0"/>
  </joint>
</robot>
"""


def test_continuous_joints_round_trip():
    chain = SerialChain.from_urdf(TINY_URDF, 'base', 'tip')
    assert chain.joint_names == ['j1', 'j2', 'j3']
    assert chain.dof == 3 and chain.model.nq == 5
    assert np.isinf(chain.lower[[0, 2]]).all() and np.isinf(chain.upper[[0, 2]]).all()
    np.testing.assert_allclose(chain.lower[1], -1.5)
    np.testing.assert_allclose(chain.upper[1], 1.5)
    rng = np.random.default_rng(9)
    for _ in range(20):
        x = np.array([rng.uniform(-math.pi, math.pi), rng.uniform(-1.5, 1.5),
                      rng.uniform(-math.pi, math.pi)])
        q = chain.to_q(x)
        assert q.shape == (5,)
        np.testing.assert_allclose(chain.from_q(q), x, atol=1e-12)
        # A continuous angle is stored as (cos, sin).
        j1 = chain.model.joints[1]
        np.testing.assert_allclose(q[j1.idx_q:j1.idx_q + 2], [math.cos(x[0]), math.sin(x[0])])
        # Whole turns wrap back into (-pi, pi] and give the same pose.
        turned = x + np.array([2 * math.pi, 0.0, -4 * math.pi])
        np.testing.assert_allclose(chain.from_q(chain.to_q(turned)), x, atol=1e-12)
        np.testing.assert_allclose(chain.fk(turned), chain.fk(x), atol=1e-12)
    # The Jacobian agrees with finite differences through the (cos, sin) encoding.
    _check_jacobian(chain, [np.array([0.3, -0.7, 2.5]), np.array([-3.0, 1.2, -0.1])], ['tip'])


def test_continuous_joint_pose_is_right():
    chain = SerialChain.from_urdf(TINY_URDF, 'base', 'tip')
    pose = chain.fk([math.pi / 2, 0.0, 0.0])
    # j1 turns the arm (along +x at zero) to +y; the tip offset +y turns to -x.
    np.testing.assert_allclose(pose[:3, 3], [-0.1, 0.3, 0.3], atol=1e-12)
