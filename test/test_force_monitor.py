"""ForceMonitor on the embedded simulator: punctures found at the ground truth's moments,
none while holding, stopping or touching down; tool-weight compensation; limits; bad input."""

import math
from dataclasses import replace

import mujoco
import numpy as np
import pytest
from test_sim_physics import probe_face_ik
from test_simulator import aligned_start

from ir_guidance import config, rig_description
from ir_guidance.force import ForceInputError, ForceMonitor, MonitorParams
from ir_guidance.sim.phantom import Phantom
from ir_guidance.sim.simulator import SimSettings, Simulator

FT = config.load()['frames']['ft_sensor']
HOME = np.array(config.load()['robot']['home'], dtype=float)
SPEED = 0.005
TRUTH_KINDS = {'skin_puncture': 'skin', 'wall_puncture': 'front_wall',
               'back_wall_puncture': 'back_wall'}


@pytest.fixture(scope='module')
def phantom() -> Phantom:
    return Phantom.from_yaml(config.share_dir() / 'sim' / 'phantoms' / 'default.yaml')


@pytest.fixture(scope='module')
def start(phantom):
    return aligned_start(phantom)[0]


def drive(sim, monitor, stage, seconds, arm=None, tare_at=0.2):
    """Run ``sim`` with the stage (and arm) following ``stage(t)`` (``arm(t)``); tare the
    monitor on the 100 readings before ``tare_at``; return truth events and the samples."""
    window, truth, samples = [], [], []
    for _ in range(round(seconds * 1000)):
        command = sim.last_command
        t = sim.time_s + sim.dt
        if arm is not None:
            command[:6] = arm(t)
        command[-1] = stage(t)
        sim.command(command)
        out = sim.step()
        rotation = sim.physics.frame_pose(FT)[:3, :3]
        window = [*window[-99:], out.wrench]
        if abs(out.time_s - tare_at) < 1e-9:
            monitor.tare(np.array(window), rotation)
        samples.append(monitor.update(out.time_s, out.wrench, rotation,
                                      float(out.joint_positions[-1])))
        truth += [(out.time_s, TRUTH_KINDS[e]) for e in out.truth.events if e in TRUTH_KINDS]
    return truth, samples


def ramp(t0, speed=SPEED, stop=None, restart=None, stop2=None):
    """Stage travel: in at ``speed`` from ``t0``; optionally held from travel time ``stop``
    to ``restart``, then in again up to travel time ``stop2``."""
    def travel(t):
        tt = max(0.0, t - t0)
        if stop is not None and tt > stop:
            tt = stop if restart is None or tt < restart else \
                min(stop + tt - restart, stop2 if stop2 is not None else math.inf)
        return min(0.04, speed * tt)
    return travel


def punctures(samples):
    return [e for s in samples for e in s.events if e.kind == 'puncture']


@pytest.fixture(scope='module', params=[0, 1])
def insertion(request, phantom, start):
    """5 mm/s through skin, front and back wall, then 0.5 s holding (seeded F/T noise)."""
    sim = Simulator(phantom, SimSettings(sensors=False, seed=request.param), initial=start)
    monitor = ForceMonitor.from_config()
    truth, samples = drive(sim, monitor, ramp(0.3, stop=0.0297 / SPEED), 7.3)
    return monitor, truth, samples


def test_punctures_match_the_ground_truth(insertion):
    monitor, truth, samples = insertion
    assert [m for _, m in truth] == ['skin', 'front_wall', 'back_wall']
    found = punctures(samples)
    assert [e.membrane for e in found] == ['skin', 'front_wall', 'back_wall']
    for (when, _), event in zip(truth, found, strict=True):
        delay = event.stamp_s - when
        # The drop shows in the F/T on the event's tick; the filter delays it ~5.6 ms.
        assert 0.0 <= delay <= monitor.delay_s + 0.004, (event, when)
        assert event.depth_m is not None and 0.01 < event.depth_m < 0.03
        assert event.drop_n >= 0.15
    assert found[0].peak_n == pytest.approx(1.5, abs=0.1)     # the skin's puncture force
    assert monitor.punctures == tuple(found)


def test_no_other_events_while_inserting_and_holding(insertion):
    _, truth, samples = insertion
    others = [e for s in samples for e in s.events if e.kind != 'puncture']
    assert others == []
    # Holding after the back wall: the force relaxes, nothing is declared.
    held = [s for s in samples if s.stamp_s > truth[-1][0] + 0.05]
    assert len(held) > 400 and not any(s.events for s in held)


def test_stopping_and_restarting_in_the_skin_is_not_a_puncture(phantom, start):
    """Stop 2 mm past the skin puncture, hold, restart, stop again after 80 ms (a jog):
    cutting force comes and goes at once. Only the skin puncture is declared."""
    sim = Simulator(phantom, SimSettings(sensors=False, seed=2), initial=start)
    monitor = ForceMonitor.from_config()
    truth, samples = drive(sim, monitor, ramp(0.3, stop=2.9, restart=3.3, stop2=2.98), 4.3)
    assert [m for _, m in truth] == ['skin']
    assert [e.membrane for e in punctures(samples)] == ['skin']


def test_probe_touch_down_is_not_a_puncture(phantom):
    """The probe lowered onto the skin (3 mm deep) over 1 s: a rising axial reading
    (the probe's push along the needle axis), no puncture, no limit."""
    chain = rig_description.rig_chain()
    skin = phantom.axis_z + phantom.arm_radius
    target = probe_face_ik(chain, skin - 0.003)
    sim = Simulator(phantom, SimSettings(sensors=False, seed=3), initial=HOME)
    monitor = ForceMonitor.from_config()

    def arm(t):
        s = min(1.0, max(0.0, (t - 0.3) / 1.2))
        s = s * s * (3 - 2 * s)                        # smooth start and stop
        return HOME[:6] + s * (target[:6] - HOME[:6])

    _, samples = drive(sim, monitor, lambda t: 0.0, 2.0, arm=arm)
    assert sim.state.probe_force_n > 2.0                 # the probe presses the skin
    assert samples[-1].axial_n > 0.5                     # and the needle axis feels it
    assert [e for s in samples for e in s.events] == []


# -- gravity -------------------------------------------------------------------------------
def raw_reading(physics):
    """What an uncompensated sensor reads: MuJoCo's F/T sensors, weight and all."""
    model, data = physics.model, physics.data
    values = []
    for name in ('ft_force', 'ft_torque'):
        adr = model.sensor_adr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SENSOR, name)]
        values.append(-data.sensordata[adr:adr + 3])
    return np.concatenate(values)


def test_tool_mass_matches_the_simulated_tool():
    monitor = ForceMonitor.from_config()
    free = Simulator(Phantom.random(0, axis_x=-1.0, axis_z=-0.5), SimSettings(sensors=False))
    assert monitor.tool_mass_kg == pytest.approx(free.physics.ee_mass, rel=1e-9)
    sensor = free.physics.frame_pose(FT)
    tip = free.physics.frame_pose(config.load()['frames']['needle_tip'])
    np.testing.assert_allclose(monitor.needle_axis, sensor[:3, :3].T @ tip[:3, 2], atol=1e-4)


def test_rotating_the_wrist_leaves_the_compensated_force_near_zero():
    """wrist_1 +30 deg after the tare, free tool: the raw reading changes by the tool's
    weight turning (~3.5 N); with compensation the residual is what the sim's F/T noise
    and the servo's motion leave."""
    sim = Simulator(Phantom.random(0, axis_x=-1.0, axis_z=-0.5), SimSettings(sensors=False))
    base = ForceMonitor.from_config()
    on = ForceMonitor(replace(base.params, gravity_compensation=True), base.needle_axis,
                      base.tool_mass_kg, base.tool_com)
    off = ForceMonitor(replace(base.params, gravity_compensation=False), base.needle_axis,
                       base.tool_mass_kg, base.tool_com)
    sim.run(0.2)
    rotation = sim.physics.frame_pose(FT)[:3, :3]
    on.tare(raw_reading(sim.physics), rotation)
    off.tare(raw_reading(sim.physics), rotation)
    tared = ForceMonitor.from_config()             # the sim's own (weight-free) F/T
    tared.tare(sim.step().wrench, rotation)
    goal = HOME.copy()
    goal[3] += math.radians(30.0)
    residual = {'on': [], 'off': [], 'sim': []}
    for k in range(1500):
        s = min(1.0, k / 800)
        sim.command(HOME + s * s * (3 - 2 * s) * (goal - HOME))
        out = sim.step()
        rotation = sim.physics.frame_pose(FT)[:3, :3]
        raw = raw_reading(sim.physics)
        for key, monitor, wrench in (('on', on, raw), ('off', off, raw),
                                     ('sim', tared, out.wrench)):
            sample = monitor.update(out.time_s, wrench, rotation)
            if k >= 1300:                          # settled at the new attitude
                residual[key].append(np.linalg.norm(sample.wrench[:3]))
    assert np.mean(residual['off']) > 2.0          # uncompensated: the weight turned
    assert np.mean(residual['on']) < 0.05
    assert np.mean(residual['sim']) < 0.05


# -- limits and bad input --------------------------------------------------------------------
def synthetic_monitor(**overrides):
    params = replace(MonitorParams.from_dict(config.load()['force_monitor']), **overrides)
    return ForceMonitor(params, np.array([0.0, 0.0, 1.0]), 0.0, np.zeros(3))


def axial_wrench(axial_n):
    return np.array([0.0, 0.0, -axial_n, 0.0, 0.0, 0.0])   # along the axis, resisting


def test_force_limit_fires_once_and_rearms():
    monitor = synthetic_monitor()
    profile = np.concatenate([np.linspace(0, 4, 2000), np.full(200, 4.0),
                              np.linspace(4, 1, 500), np.linspace(1, 4, 500)])
    events = [e for k, f in enumerate(profile)
              for e in monitor.update(k * 1e-3, axial_wrench(f), np.eye(3)).events]
    limits = [e for e in events if e.kind == 'force_limit']
    assert len(limits) == 2                                # crossing, re-armed, crossing
    assert all(e.peak_n > 3.0 for e in limits)
    assert 'axial force' in limits[0].detail
    lateral = synthetic_monitor()
    sideways = [lateral.update(k * 1e-3, np.array([20.0, 0, 0, 0, 0, 0]), np.eye(3))
                for k in range(50)]
    assert [e.kind for s in sideways for e in s.events] == ['force_limit']


def test_rate_limit_fires_on_a_spike_not_on_a_fall():
    monitor = synthetic_monitor()
    profile = np.zeros(400)
    profile[100:] = 1.0                                    # a 1 N step: ~115 N/s filtered
    profile[300:] = 0.0                                    # and back: a fall is no limit
    events = [e for k, f in enumerate(profile)
              for e in monitor.update(k * 1e-3, axial_wrench(f), np.eye(3)).events]
    rates = [e for e in events if e.kind == 'rate_limit']
    assert len(rates) == 1 and rates[0].peak_n > 60.0
    assert 0.100 <= rates[0].stamp_s < 0.110


@pytest.mark.parametrize(('wrench', 'match'), [
    (np.array([0, 0, math.nan, 0, 0, 0]), 'NaN or infinite'),
    (np.array([0, 0, math.inf, 0, 0, 0]), 'NaN or infinite'),
    (np.zeros(5), r'shape \(6,\)'),
    (np.zeros((2, 6)), r'shape \(6,\)'),
])
def test_bad_wrench_raises_an_invalid_event_and_changes_nothing(wrench, match):
    monitor = synthetic_monitor()
    first = monitor.update(0.001, axial_wrench(0.5), np.eye(3))
    with pytest.raises(ForceInputError, match=match) as error:
        monitor.update(0.002, wrench, np.eye(3))
    assert isinstance(error.value, ValueError)
    assert error.value.event.kind == 'invalid' and error.value.event.stamp_s == 0.002
    assert monitor.last is first
    monitor.update(0.002, axial_wrench(0.5), np.eye(3))     # the stream goes on


def test_bad_stamp_rotation_depth_and_gap():
    monitor = synthetic_monitor(gravity_compensation=True)
    monitor.update(1.0, np.zeros(6), np.eye(3))
    for stamp in (1.0, 0.5, math.nan):
        with pytest.raises(ForceInputError, match='stamp'):
            monitor.update(stamp, np.zeros(6), np.eye(3))
    for rotation, match in ((np.eye(3) * 2, 'not a rotation'), (np.diag([1, 1, -1.0]),
                            'not a rotation'), (np.full((3, 3), math.nan), 'NaN'),
                            (np.eye(4), '3x3')):
        with pytest.raises(ForceInputError, match=match):
            monitor.update(1.001, np.zeros(6), rotation)
    with pytest.raises(ForceInputError, match='depth'):
        monitor.update(1.001, np.zeros(6), np.eye(3), depth_m=math.inf)
    # A 50 ms hole in the stream: the sample is processed, with an 'invalid' event.
    sample = monitor.update(1.051, np.zeros(6), np.eye(3))
    assert [e.kind for e in sample.events] == ['invalid'] and 'ms without' in \
        sample.events[0].detail
    assert monitor.update(1.052, np.zeros(6), np.eye(3)).events == ()


def test_tare_averages_and_restarts_the_puncture_count():
    monitor = synthetic_monitor()
    rng = np.random.default_rng(0)
    readings = np.array([1.0, -2.0, 0.5, 0.01, 0.02, -0.03]) + rng.normal(0, 0.02, (100, 6))
    monitor.tare(readings, np.eye(3))
    np.testing.assert_allclose(monitor.bias, readings.mean(axis=0))
    sample = monitor.update(0.001, readings[0], np.eye(3))
    assert abs(sample.axial_n) < 0.01                      # filter restarted at rest on 0
    with pytest.raises(ForceInputError, match='tare wrench'):
        monitor.tare(np.zeros(4), np.eye(3))
    with pytest.raises(ForceInputError, match='NaN'):
        monitor.tare(np.full(6, math.nan), np.eye(3))
    np.testing.assert_allclose(monitor.bias, readings.mean(axis=0))
    monitor.expect('front_wall')
    assert monitor.punctures == ()


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match='max_axial_force_n'):
        synthetic_monitor(max_axial_force_n=-1.0)
    with pytest.raises(ValueError, match='gravity_compensation'):
        MonitorParams(gravity_compensation='yes')
    with pytest.raises(ValueError, match='unit'):
        ForceMonitor({}, np.array([0.0, 0.0, 2.0]), 0.5, np.zeros(3))
