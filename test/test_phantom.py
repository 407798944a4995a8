"""The forearm phantom: statistics, geometry, labels, deformation, YAML schema."""

import numpy as np
import pytest
import yaml

from ir_guidance import config
from ir_guidance.sim.phantom import (
    AIR,
    FAT,
    LUMEN,
    MUSCLE,
    SKIN,
    VEIN_DEPTH,
    VEIN_HEIGHT,
    VEIN_WIDTH,
    WALL,
    Phantom,
    Vein,
)


def _one_vein(**kw) -> Phantom:
    vein = dict(x=0.43, depth=4.8e-3, width=4.5e-3, height=3.0e-3)
    vein.update(kw)
    return Phantom(veins=(Vein(**vein),))


def test_random_phantoms_follow_published_statistics():
    veins = [v for seed in range(300) for v in Phantom.random(seed).veins]
    depth = np.array([v.depth - v.height / 2 for v in veins])  # to the top of the lumen
    height = np.array([v.height for v in veins])
    width = np.array([v.width for v in veins])
    # Clipping to physical ranges shifts the means a little; stay within 0.5 mm.
    assert abs(depth.mean() - VEIN_DEPTH[0]) < 0.5e-3
    assert abs(height.mean() - VEIN_HEIGHT[0]) < 0.3e-3
    assert abs(width.mean() - VEIN_WIDTH[0]) < 0.5e-3
    assert np.all(width > height)
    assert 1.5 < len(veins) / 300 < 2.5  # 1-3 veins, uniform


def test_random_is_deterministic_and_seed_dependent():
    assert Phantom.random(7) == Phantom.random(7)
    assert Phantom.random(7) != Phantom.random(8)


def test_labels_along_a_vertical_line_through_the_vein():
    p = _one_vein()
    top = p.axis_z + p.arm_radius
    depths = np.array([-1e-3, 1e-3, 2.5e-3, 3.1e-3, 4.8e-3, 6.6e-3, 12e-3])
    pts = np.column_stack((np.full(7, 0.43), np.full(7, p.center_y), top - depths))
    assert p.labels(pts).tolist() == [AIR, SKIN, FAT, WALL, LUMEN, WALL, MUSCLE]


def test_vein_centre_and_lumen_agree():
    p = _one_vein(slope=0.1, curvature=0.5)
    ys = np.linspace(0.05, 0.2, 9)
    centre = p.centerline(0, ys)
    idx, rho = p.vein_coordinates(centre)
    assert np.all(idx == 0) and np.allclose(rho, 0.0)
    assert np.all(p.labels(centre) == LUMEN)
    skin = p.skin_z(centre[:, 0], ys)
    np.testing.assert_allclose(skin - centre[:, 2], 4.8e-3, atol=1e-12)


def test_probe_force_compresses_and_widens_the_vein():
    p = _one_vein()
    state = p.new_state()
    free = p.vein_geometry(0, np.array([p.center_y]), state)
    state.probe_force_n, state.probe_xy = 4.0, (0.43, p.center_y)
    pressed = p.vein_geometry(0, np.array([p.center_y]), state)
    assert pressed['b'][0] < 0.6 * free['b'][0]
    assert pressed['a'][0] > free['a'][0]
    # The floor of the vein stays where it was.
    assert pressed['z'][0] - pressed['b'][0] == pytest.approx(free['z'][0] - free['b'][0])
    far = p.new_state()
    far.probe_force_n, far.probe_xy = 4.0, (0.43, p.center_y + 0.12)
    assert p.vein_geometry(0, np.array([p.center_y]), far)['b'][0] > 0.99 * free['b'][0]


def test_roll_and_motion_move_the_vein():
    p = _one_vein(roll_stiffness=500.0, max_roll=2e-3)
    assert p.roll_from_push(0, 0.5) == pytest.approx(1e-3)
    assert p.roll_from_push(0, -50.0) == pytest.approx(-2e-3)
    state = p.new_state()
    state.roll[0] = 1e-3
    assert p.vein_geometry(0, np.array([p.center_y]), state)['x'][0] == pytest.approx(0.431)
    moving = Phantom(veins=p.veins, motion_amplitude=2e-3, motion_period_s=4.0)
    s = moving.new_state()
    s.time_s = 1.0
    assert moving.vein_geometry(0, np.array([p.center_y]), s)['x'][0] == pytest.approx(0.432)


def test_yaml_round_trip(tmp_path):
    p = Phantom.random(3)
    path = tmp_path / 'p.yaml'
    path.write_text(yaml.safe_dump(p.to_dict()))
    assert Phantom.from_yaml(path) == p


def test_packaged_default_phantom_loads():
    p = Phantom.from_yaml(config.share_dir() / 'sim' / 'phantoms' / 'default.yaml')
    assert len(p.veins) >= 1


@pytest.mark.parametrize(('data', 'match'), [
    ({'veins': [{'x': 0.43, 'depth': 5e-3, 'width': 4e-3, 'height': 3e-3}], 'colour': 1},
     'unknown phantom keys'),
    ({'veins': [{'x': 0.43, 'depth': 5e-3, 'width': 4e-3, 'hieght': 3e-3}]}, 'unknown keys'),
    ({'veins': []}, 'at least one vein'),
    ({'veins': [{'x': 0.43, 'depth': 2e-3, 'width': 4e-3, 'height': 3e-3}]}, 'into the skin'),
    ({'veins': [{'x': float('nan'), 'depth': 5e-3, 'width': 4e-3, 'height': 3e-3}]},
     'not finite'),
    ({'veins': [{'x': 0.43, 'depth': 5e-3, 'width': -4e-3, 'height': 3e-3}]}, 'width'),
    ({'veins': [{'x': 0.43, 'depth': 5e-3, 'width': 4e-3, 'height': 3e-3}],
      'arm_radius': 0}, 'arm_radius'),
])
def test_bad_phantoms_are_rejected(data, match):
    with pytest.raises(ValueError, match=match):
        Phantom.from_dict(data)


def test_skin_is_absent_off_the_arm():
    p = _one_vein()
    assert np.isnan(p.skin_z(np.array([0.43 + 0.05]), np.array([p.center_y])))[0]
    assert np.isnan(p.skin_z(np.array([0.43]), np.array([p.center_y + 0.2])))[0]
    assert p.labels(np.array([[0.43, p.center_y + 0.2, 0.25]]))[0] == AIR
    assert p.labels(np.array([[0.43, p.center_y, 0.26]]))[0] in (FAT, MUSCLE)
