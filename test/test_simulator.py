"""The whole embedded simulator: a straight insertion into a phantom vein, scored
against the phantom's geometry; determinism; bad commands; image timing."""

import math

import numpy as np
import pytest

from ir_guidance import config, rig_description
from ir_guidance.kinematics import NeedleIk, NeedlePose
from ir_guidance.sim.needle_tissue import TissueParameters
from ir_guidance.sim.phantom import Phantom
from ir_guidance.sim.simulator import SimCommandError, SimSettings, Simulator, stream_hash

NEEDLE_ANGLE = math.radians(20.0)  # the rig's stage angle (urdf/rig.urdf.xacro)
STAGE = config.load()['robot']['stage_joint']
SPEED = 0.005  # m/s


@pytest.fixture(scope='module')
def phantom() -> Phantom:
    return Phantom.from_yaml(config.share_dir() / 'sim' / 'phantoms' / 'default.yaml')


def aligned_start(phantom: Phantom, press: float = 0.0005) -> tuple[np.ndarray, np.ndarray]:
    """Arm pose putting the needle line through vein 0's centre, stage retracted.

    The needle travels along the vein (towards -y), 20 deg below the skin; with the stage
    at the travel that reaches the centre, the probe face is ``press`` into the skin.
    """
    chain = rig_description.rig_chain()
    y = phantom.center_y
    centre = phantom.centerline(0, np.array([y - 1e-3, y, y + 1e-3]))
    along = centre[0] - centre[2]
    along /= np.linalg.norm(along)
    axis = math.cos(NEEDLE_ANGLE) * along + math.sin(NEEDLE_ANGLE) * np.array([0, 0, -1.0])
    depth = float(phantom.skin_z(centre[1:2, 0], centre[1:2, 1])[0] - centre[1, 2])
    start = np.array(config.load()['robot']['home'], dtype=float)
    start[-1] = (depth + 0.003 + press) / math.sin(NEEDLE_ANGLE)
    q = NeedleIk(chain).solve_or_raise(NeedlePose.make(centre[1], axis), start,
                                       frozen=(STAGE,))
    q[-1] = 0.0
    return q, axis


@pytest.fixture(scope='module')
def insertion(phantom):
    """A 5 mm/s stage insertion until the back wall is punctured (sensors off)."""
    q, axis = aligned_start(phantom)
    sim = Simulator(phantom, SimSettings(sensors=False), initial=q)
    sim.run(0.3)
    outputs, rho = [], []
    for i in range(9000):
        command = sim.last_command
        command[-1] = min(0.04, SPEED * (i + 1) * sim.dt)
        sim.command(command)
        out = sim.step()
        outputs.append(out)
        rho.append(sim.phantom.vein_coordinates(out.truth.needle_tip[:3, 3], sim.state)[1][0])
        if 'back_wall_puncture' in out.truth.events:
            break
    axial = np.array([-(o.truth.needle_force @ axis) for o in outputs])
    events = [(i, e) for i, o in enumerate(outputs) for e in o.truth.events]
    return {'sim': sim, 'outputs': outputs, 'axial': axial, 'events': events,
            'rho': np.array(rho), 'axis': axis}


def _event_tick(run, name):
    ticks = [i for i, e in run['events'] if e == name]
    assert len(ticks) == 1, f'{name}: {run["events"]}'
    return ticks[0]


def test_events_happen_once_in_order(insertion):
    names = [e for _, e in insertion['events']]
    assert names == ['skin_puncture', 'wall_puncture', 'back_wall_puncture']


def test_skin_peak_and_drop(insertion):
    params = TissueParameters()
    axial = insertion['axial']
    k = _event_tick(insertion, 'skin_puncture')
    peak = axial[k - 20:k + 1].max()
    assert peak == pytest.approx(params.skin_puncture_n, rel=0.1)
    assert axial[k + 1:k + 6].max() < 0.5 * peak  # the drop that follows puncture


def test_wall_peak_and_drop(insertion):
    params = TissueParameters()
    wall = np.array([o.truth.needle.stiffness_n for o in insertion['outputs']])
    k = _event_tick(insertion, 'wall_puncture')
    # The wall's own resistance (the membrane term) reaches its puncture force, then is
    # gone at once; shaft friction and cutting go on on both sides of the event.
    assert wall[k - 5:k].max() == pytest.approx(params.wall_puncture_n, rel=0.05)
    assert wall[k:k + 5].max() == 0.0
    axial = insertion['axial']
    assert axial[k - 5:k].max() - axial[k + 1:k + 6].max() > 0.5 * params.wall_puncture_n
    assert axial[k - 5:k].max() < params.skin_puncture_n  # a smaller peak than the skin's


def test_tip_in_lumen_agrees_with_geometry(insertion):
    inside = np.array([o.truth.tip_in_lumen for o in insertion['outputs']])
    rho = insertion['rho']
    wall = _event_tick(insertion, 'wall_puncture')
    back = _event_tick(insertion, 'back_wall_puncture')
    assert not inside[:wall].any()
    assert inside[wall:back].sum() > 0.5 * (back - wall)  # ~1.3 s of the ~2 s in the vein
    assert np.all(rho[inside] < 1.0)
    # Once the front wall is open, every tick deep inside the lumen is reported as such.
    deep = (rho < 0.9) & (np.arange(len(rho)) > wall) & (np.arange(len(rho)) < back)
    assert deep.any() and inside[deep].all()


def test_ft_sensor_feels_the_needle(insertion):
    """Along the needle axis the tared F/T reading follows the needle's axial force."""
    outputs, axial = insertion['outputs'], insertion['axial']
    k = _event_tick(insertion, 'skin_puncture')
    sim = insertion['sim']
    ft = sim.physics.frame_pose(config.load()['frames']['ft_sensor'])[:3, :3]
    axis_ft = ft.T @ insertion['axis']
    measured = np.array([-(o.wrench[:3] @ axis_ft) for o in outputs[k - 40:k]])
    baseline = np.median([-(o.wrench[:3] @ axis_ft) for o in outputs[:100]])
    assert np.median(measured - baseline) == pytest.approx(np.median(axial[k - 40:k]), rel=0.15)


def test_same_seed_same_stream(phantom):
    hashes = []
    for seed in (3, 3, 4):
        sim = Simulator(phantom, SimSettings(seed=seed))
        hashes.append(stream_hash(sim.run(0.25)))
    assert hashes[0] == hashes[1]
    assert hashes[0] != hashes[2]


def test_images_arrive_late_with_their_capture_time(phantom):
    sim = Simulator(phantom, SimSettings(us_hz=30.0, nir_hz=15.0, image_latency_s=0.02))
    outputs = sim.run(0.3)
    us = [(o.tick, o.us_time_s, o.frames['us']) for o in outputs if o.us_image is not None]
    nir = [(o.tick, o.nir_time_s) for o in outputs if o.nir_image is not None]
    assert [k for _, _, k in us] == list(range(len(us)))
    assert len(us) == 9 and len(nir) == 5  # frames captured by 0.28 s arrive by 0.3 s
    for tick, captured, _ in us:
        assert tick * sim.dt - captured == pytest.approx(0.02)
    for o in outputs:
        if o.us_image is not None:
            assert o.us_image.dtype == np.uint8 and o.us_image.shape == (256, 256)
        if o.nir_image is not None:
            assert o.depth_image.dtype == np.uint16 and o.nir_image.shape == (480, 640)


@pytest.mark.parametrize('bad', [
    [0.0] * 6,
    [0.0, -1.7, 1.9, -1.77, -1.5708, 0.0, math.nan],
    [0.0, -1.7, 1.9, -1.77, -1.5708, 0.0, 0.05],       # stage beyond its 40 mm
    [0.0, -1.7, 4.0, -1.77, -1.5708, 0.0, 0.0],        # elbow beyond pi
])
def test_bad_command_is_refused_and_the_arm_holds(phantom, bad):
    sim = Simulator(phantom, SimSettings(sensors=False))
    sim.run(0.05)
    held = sim.last_command
    before = sim.step().joint_positions
    with pytest.raises(SimCommandError):
        sim.command(bad)
    np.testing.assert_array_equal(sim.last_command, held)
    after = sim.run(0.2)[-1].joint_positions
    assert np.max(np.abs(after - before)) < 1e-4


def test_lumen_is_dark_in_the_simulated_ultrasound(phantom):
    """In the image the sim delivers, the vein centre is darker than the fat above it."""
    q, _ = aligned_start(phantom, press=0.001)
    sim = Simulator(phantom, SimSettings(image_latency_s=0.0), initial=q)
    outputs = sim.run(0.2)
    out = [o for o in outputs if o.us_image is not None][-1]
    y = phantom.center_y
    centre = phantom.centerline(0, np.array([y]), sim.state)
    r, c, off_plane = sim.us.world_to_pixel(out.us_pose, centre)
    assert abs(off_plane[0]) < 1e-3
    r, c = round(float(r[0])), round(float(c[0]))
    px = 1.0 / sim.us.config.mm_per_pixel[1]  # rows per mm of depth
    lumen = out.us_image[r - 2:r + 3, c - 5:c + 6].mean()
    fat = out.us_image[round(r - 3.5 * px):round(r - 2.5 * px), c - 5:c + 6].mean()
    assert lumen < 0.5 * fat


def test_arm_drift_moves_the_forearm_and_the_veins_together(phantom):
    """With motion on, MuJoCo's forearm and the phantom's geometry drift as one."""
    drifting = Phantom(veins=phantom.veins, motion_amplitude=2e-3, motion_period_s=0.4)
    sim = Simulator(drifting, SimSettings(sensors=False))
    rest = sim.physics.frame_pose('forearm')[:3, 3]
    for _ in range(100):  # a quarter period: the largest lateral offset
        sim.step()
    moved = sim.physics.frame_pose('forearm')[:3, 3] - rest
    np.testing.assert_allclose(moved, drifting.offset(sim.state), atol=1e-12)
    assert moved[0] == pytest.approx(2e-3)
