"""MuJoCo rig physics: frames, servos, gravity, skin contact, F/T sensor, determinism."""


import numpy as np
import pytest

from ir_guidance import config
from ir_guidance.rig_description import rig_chain
from ir_guidance.sim.phantom import Phantom
from ir_guidance.sim.physics import FRAMES, RigPhysics

HOME = np.array(config.load()['robot']['home'], dtype=float)
ARM = list(range(6))
STAGE = 6


@pytest.fixture(scope='module')
def chain():
    return rig_chain()


@pytest.fixture(scope='module')
def phantom() -> Phantom:
    # Defaults: the skin top (axis_z + arm_radius = 0.27 m) is ~1 cm below the probe face
    # at home, under the probe (axis at x = 0.43, centre y = 0.13).
    return Phantom.random(0)


@pytest.fixture(scope='module')
def sim(phantom) -> RigPhysics:
    return RigPhysics(phantom)


@pytest.fixture(scope='module')
def free_sim() -> RigPhysics:
    """A rig whose forearm is far out of reach: nothing touches the probe."""
    return RigPhysics(Phantom.random(0, axis_x=-1.0, axis_z=-0.5))


def probe_face_ik(chain, z: float, start: np.ndarray = HOME) -> np.ndarray:
    """Arm joints that put the probe face at height z, same x, y and orientation as home."""
    target = chain.fk(start, 'us_image_frame').copy()
    target[2, 3] = z
    q = start.copy()
    for _ in range(30):
        pose = chain.fk(q, 'us_image_frame')
        err_rot = 0.5 * sum(np.cross(pose[:3, i], target[:3, i]) for i in range(3))
        err = np.concatenate((target[:3, 3] - pose[:3, 3], err_rot))
        q[:6] += np.linalg.solve(chain.jacobian(q, 'us_image_frame')[:, :6], err)
    assert np.allclose(chain.fk(q, 'us_image_frame'), target, atol=1e-10)
    return q


def skin_top(phantom: Phantom) -> float:
    return phantom.axis_z + phantom.arm_radius


# -- frames ----------------------------------------------------------------------------
def test_frame_poses_match_pinocchio(free_sim, chain):
    rng = np.random.default_rng(3)
    configs = [HOME, np.zeros(7), np.array([0.3, -1.2, 1.4, -1.9, -1.2, 0.7, 0.025])]
    configs += [np.append(HOME[:6] + rng.uniform(-0.8, 0.8, 6), rng.uniform(0.0, 0.04))
                for _ in range(4)]
    for q in configs:
        free_sim.reset(q)
        np.testing.assert_array_equal(free_sim.joint_positions(), q)
        for frame in FRAMES:
            np.testing.assert_allclose(free_sim.frame_pose(frame), chain.fk(q, frame),
                                       rtol=0, atol=1e-6, err_msg=f'{frame} at {q}')


def test_frame_pose_follows_motion(free_sim, chain):
    free_sim.reset(HOME)
    target = HOME.copy()
    target[2] += 0.05
    target[STAGE] = 0.01
    free_sim.set_command(target)
    free_sim.step(1500)
    q = free_sim.joint_positions()
    np.testing.assert_allclose(q, target, atol=1e-4)
    np.testing.assert_allclose(free_sim.frame_pose('needle_tip'), chain.fk(q, 'needle_tip'),
                               atol=1e-6)


def test_unknown_frame_raises(free_sim):
    with pytest.raises(ValueError, match='unknown frame'):
        free_sim.frame_pose('no_such_link')


# -- servos ----------------------------------------------------------------------------
@pytest.mark.parametrize('joint', [1, 2, 3, 5])
def test_step_command_is_tracked(free_sim, joint):
    free_sim.reset(HOME)
    target = HOME.copy()
    target[joint] += 0.1
    free_sim.set_command(target)
    dt = free_sim.timestep
    trace = []
    for _ in range(int(0.6 / dt)):
        free_sim.step()
        trace.append(free_sim.joint_positions())
    trace = np.array(trace)
    progress = (trace[:, joint] - HOME[joint]) / 0.1
    t90 = (np.argmax(progress >= 0.9) + 1) * dt
    assert progress.max() >= 0.9
    assert 0.02 <= t90 <= 0.2, t90
    assert progress.max() < 1.2
    # Settled: within 1 % after 0.3 s, at rest at the end; the other joints barely move.
    assert np.all(np.abs(progress[int(0.3 / dt):] - 1.0) < 0.01)
    assert np.all(np.abs(free_sim.joint_velocities()[:6]) < 1e-3)
    others = [j for j in ARM if j != joint]
    assert np.abs(trace[:, others] - HOME[others]).max() < 0.01


@pytest.mark.parametrize(('joint', 'amplitude'), [(2, 1e-3), (4, 1e-3), (STAGE, 5e-5)])
def test_closed_loop_bandwidth(free_sim, joint, amplitude):
    """Small sinusoids: gain ~1 well below the design bandwidth, ~-3 dB at it."""
    start = HOME.copy()
    start[STAGE] = 0.02
    gains = {}
    bandwidth = free_sim.bandwidth_hz[joint]
    for hz in (bandwidth / 5, bandwidth):
        free_sim.reset(start)
        dt = free_sim.timestep
        out = []
        times = np.arange(int(1.0 / dt)) * dt
        for t in times:
            cmd = start.copy()
            cmd[joint] += amplitude * np.sin(2 * np.pi * hz * t)
            free_sim.set_command(cmd)
            free_sim.step()
            out.append(free_sim.joint_positions()[joint] - start[joint])
        half = len(times) // 2
        basis = np.column_stack((np.sin(2 * np.pi * hz * (times[half:] + dt)),
                                 np.cos(2 * np.pi * hz * (times[half:] + dt))))
        coef = np.linalg.lstsq(basis, np.array(out[half:]), rcond=None)[0]
        gains[hz] = np.hypot(*coef) / amplitude
    low, high = gains[bandwidth / 5], gains[bandwidth]
    assert 0.9 < low < 1.1, gains
    assert 0.6 < high < 0.8, gains


def test_stage_moves_at_its_speed_limit_without_overshoot(free_sim):
    free_sim.reset(HOME)
    target = HOME.copy()
    target[STAGE] = 0.01
    free_sim.set_command(target)
    trace = []
    for _ in range(1000):
        free_sim.step()
        trace.append(free_sim.joint_positions()[STAGE])
    trace = np.array(trace)
    speed = np.diff(trace) / free_sim.timestep
    assert speed.max() < free_sim.velocity_limit[STAGE] * 1.05
    assert trace[400] < 0.009              # 10 mm at 20 mm/s takes 0.5 s
    assert abs(trace[-1] - 0.01) < 1e-5
    assert trace.max() < 0.01 + 1e-4


def test_commands_beyond_joint_limits_are_clipped(free_sim):
    free_sim.reset(HOME)
    target = HOME.copy()
    target[STAGE] = 0.5
    free_sim.set_command(target)
    assert free_sim.command[STAGE] == pytest.approx(0.04)


def test_holding_home_does_not_sag(free_sim):
    for pose in (HOME, np.array([0.0, -0.3, 0.3, -1.57, -1.57, 0.0, 0.0])):
        free_sim.reset(pose)
        free_sim.step(1000)
        assert np.abs(free_sim.joint_positions() - pose).max() < 1e-3


def test_bad_commands_raise_and_keep_the_last_one(free_sim):
    free_sim.reset(HOME)
    good = HOME.copy()
    good[0] += 0.05
    free_sim.set_command(good)
    bad = good.copy()
    bad[3] = np.nan
    for command in (bad, good[:6], np.append(good, 0.0), np.full(7, np.inf), 'abc', None,
                    good.reshape(7, 1)):
        with pytest.raises(ValueError):
            free_sim.set_command(command)
        np.testing.assert_array_equal(free_sim.command, good)
    free_sim.step(500)
    np.testing.assert_allclose(free_sim.joint_positions(), good, atol=1e-4)
    for force in (np.array([1.0, np.nan, 0.0]), np.zeros(2)):
        with pytest.raises(ValueError):
            free_sim.apply_needle_force(force)
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            free_sim.step(n)


def test_constructor_validates_parameters(phantom):
    with pytest.raises(ValueError, match='timestep'):
        RigPhysics(phantom, timestep=0.0)
    with pytest.raises(ValueError, match='ft_noise_n'):
        RigPhysics(phantom, ft_noise_n=-1.0)


# -- contact and force sensing ---------------------------------------------------------
def test_free_tool_reads_zero_within_noise_and_bias(sim, free_sim):
    for rig in (sim, free_sim):
        rig.reset(HOME)
        rig.step(200)
        assert rig.probe_contact().count == 0
        np.testing.assert_array_equal(rig.probe_contact_force(), np.zeros(3))
        # Tared: the 0.72 kg end effector's weight does not show.
        assert np.abs(rig.ft_wrench_true()).max() < 1e-6
        bound = np.abs(rig.ft_bias) + 5 * rig.ft_noise_std
        assert np.all(np.abs(rig.ft_wrench()) <= bound)
    # Other orientations too: the tare follows the sensor's attitude.
    free_sim.reset(np.array([0.4, -1.2, 1.0, -0.5, 0.8, 1.0, 0.03]))
    free_sim.step(100)
    assert np.abs(free_sim.ft_wrench_true()).max() < 1e-6


def test_ft_noise_and_bias_statistics(free_sim):
    free_sim.reset(HOME)
    readings = []
    for _ in range(3000):
        free_sim.step()
        readings.append(free_sim.ft_wrench())
    readings = np.array(readings)
    std = free_sim.ft_noise_std
    np.testing.assert_allclose(readings.std(axis=0), std, rtol=0.1)
    assert np.all(np.abs(readings.mean(axis=0) - free_sim.ft_bias) < 4 * std / np.sqrt(3000))
    assert np.all(np.abs(free_sim.ft_bias) <= [0.05] * 3 + [2e-3] * 3)
    assert np.abs(free_sim.ft_bias[:3]).max() > 0.0
    # One reading per tick: asking twice gives the same sample.
    np.testing.assert_array_equal(free_sim.ft_wrench(), free_sim.ft_wrench())


def test_pressing_the_probe_into_the_skin(sim, chain, phantom):
    face = chain.fk(HOME, 'us_image_frame')[:3, 3]
    gap = face[2] - skin_top(phantom)
    assert 0.008 < gap < 0.012
    sim.reset(HOME)
    sim.set_command(probe_face_ik(chain, skin_top(phantom) - 0.003))
    sim.step(1000)
    contact = sim.probe_contact()
    force = contact.force
    assert contact.count >= 1
    assert 1.5 < force[2] < 5.0, force                    # a few newtons ...
    assert force[2] > 0.98 * np.linalg.norm(force)        # ... pushing the probe up
    assert 0.002 < contact.depth < 0.0035                 # millimetres into the skin
    assert np.hypot(*(contact.point[:2] - face[:2])) < 0.005
    # The F/T sensor feels the push: same magnitude, and in world axes the same direction.
    wrench = sim.ft_wrench()
    assert np.linalg.norm(wrench[:3]) == pytest.approx(np.linalg.norm(force), rel=0.15)
    rot = sim.frame_pose('ft_sensor_frame')[:3, :3]
    assert np.linalg.norm(rot @ wrench[:3] - force) < 0.15 * np.linalg.norm(force)
    # The contact sits below the sensor: the torque is r x F about the sensor origin.
    lever = contact.point - sim.frame_pose('ft_sensor_frame')[:3, 3]
    np.testing.assert_allclose(rot @ sim.ft_wrench_true()[3:], np.cross(lever, force),
                               atol=0.05 * np.linalg.norm(lever) * np.linalg.norm(force))


@pytest.mark.parametrize('stiffness', [1000.0, 2500.0])
def test_skin_is_a_linear_spring(phantom, chain, stiffness):
    rig = RigPhysics(phantom, skin_stiffness=stiffness)
    for depth in (0.001, 0.004):
        start = probe_face_ik(chain, skin_top(phantom) - depth)
        rig.reset(start)
        rig.step(600)
        contact = rig.probe_contact()
        assert contact.force[2] / contact.depth == pytest.approx(stiffness, rel=0.1)


def test_needle_force_reaches_the_ft_sensor(free_sim, chain):
    start = HOME.copy()
    start[STAGE] = 0.02
    free_sim.reset(start)
    tip = free_sim.frame_pose('needle_tip')
    axis = tip[:3, 2]
    force = -2.0 * axis + np.array([0.3, -0.4, 0.2])      # tissue resists, pushes sideways
    free_sim.apply_needle_force(force)
    np.testing.assert_array_equal(free_sim.needle_force, force)
    free_sim.step(500)
    sensor = free_sim.frame_pose('ft_sensor_frame')
    rot = sensor[:3, :3]
    reading = free_sim.ft_wrench()
    assert np.linalg.norm(rot @ reading[:3] - force) < 0.1 * np.linalg.norm(force)
    tip = free_sim.frame_pose('needle_tip')[:3, 3]
    moment = np.cross(tip - sensor[:3, 3], force)
    assert np.linalg.norm(rot @ reading[3:] - moment) < 0.1 * np.linalg.norm(moment)
    # The servos hold the pose against it (the stage's lead screw is stiff).
    assert abs(free_sim.joint_positions()[STAGE] - 0.02) < 1e-4
    np.testing.assert_allclose(free_sim.joint_positions()[:6], start[:6], atol=2e-3)
    # Taking the force away (or a reset) brings the reading back to ~0.
    free_sim.apply_needle_force(np.zeros(3))
    free_sim.step(300)
    assert np.abs(free_sim.ft_wrench_true()).max() < 1e-3
    free_sim.apply_needle_force(force)
    free_sim.reset(start)
    np.testing.assert_array_equal(free_sim.needle_force, np.zeros(3))
    assert free_sim.time == 0.0


# -- determinism and speed -------------------------------------------------------------
def _run(rig: RigPhysics, query: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(11)
    rig.reset(HOME)
    readings = []
    for k in range(1000):
        if k % 50 == 0:
            target = HOME + np.append(rng.uniform(-0.03, 0.03, 6), rng.uniform(0, 0.01))
            rig.set_command(target)
        if k == 300:
            rig.apply_needle_force(np.array([0.5, -1.0, 1.5]))
        if k == 700:
            rig.apply_needle_force(np.zeros(3))
        rig.step()
        if query:
            rig.frame_pose('needle_tip')
            rig.probe_contact()
            readings.append(rig.ft_wrench())
    return rig.data.qpos.copy(), readings


def test_same_seed_same_trajectory_and_readings(phantom):
    first, second = RigPhysics(phantom, seed=5), RigPhysics(phantom, seed=5)
    qpos_a, readings_a = _run(first, query=True)
    qpos_b, readings_b = _run(second, query=True)
    np.testing.assert_array_equal(qpos_a, qpos_b)
    np.testing.assert_array_equal(np.array(readings_a), np.array(readings_b))
    # Reading sensors and poses does not perturb the motion.
    qpos_c, _ = _run(second, query=False)
    np.testing.assert_array_equal(qpos_a, qpos_c)
    # Another seed: the same motion, other sensor errors.
    qpos_d, readings_d = _run(RigPhysics(phantom, seed=6), query=True)
    np.testing.assert_array_equal(qpos_a, qpos_d)
    assert not np.array_equal(np.array(readings_a), np.array(readings_d))
    assert not np.allclose(qpos_a, HOME)
