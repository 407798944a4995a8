"""VesselMap on synthetic transverse sweeps: centrelines, radius, several vessels,
outliers, NIR (lateral only), order independence, recency and bad input."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from ir_guidance import config
from ir_guidance.mapping import VesselMap

# Transverse probe: image x = world +x, image y (depth) = world -z, z = world +y.
R = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
FACE_Z = 0.27
X0 = 0.43


def pose(y: float, x0: float = X0) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = R
    t[:3, 3] = (x0, y, FACE_Z)
    return t


def vein(y: float, k: int = 0) -> np.ndarray:
    """True centre of vein k at y: sloped laterally and in depth."""
    return np.array([X0 - 0.006 + 0.012 * k + 0.1 * (y - 0.13), y,
                     0.262 - 0.002 * k - 0.02 * (y - 0.13)])


def section(centre, x0=X0, ra=0.002, rb=0.0012, conf=0.9, tid=1, noise=None):
    dx, dy = (noise.normal(0.0, 1e-4, 2) if noise is not None else (0.0, 0.0))
    return SimpleNamespace(x=centre[0] - x0 + dx, y=FACE_Z - centre[2] + dy,
                           radius_major=ra, radius_minor=rb, confidence=conf, id=tid)


def sweep(frames=90, veins=(0, 1), seed=0):
    """Stamped frames of a 30 mm sweep at 10 mm/s: (stamp, pose, sections)."""
    rng = np.random.default_rng(seed)
    out = []
    for f in range(frames):
        y = 0.115 + f * (0.03 / frames)
        out.append((f / 30.0, pose(y), [section(vein(y, k), tid=k + 1, noise=rng,
                                                rb=0.0012 + 0.0004 * k) for k in veins]))
    return out


def distance_to_truth(points, k):
    return np.array([np.linalg.norm(p - vein(p[1], k)) for p in points])


def params(**overrides):
    p = dict(config.load()['vessel_mapper'])
    p.update(overrides)
    return p


def build(frames, order=None):
    m = VesselMap(params())
    for i in (order if order is not None else range(len(frames))):
        m.add_us(*frames[i])
    return m


def test_two_vessels_centrelines_and_radius():
    m = build(sweep())
    vessels = m.vessels()
    assert len(vessels) == 2
    for k, v in enumerate(sorted(vessels, key=lambda v: v.points[:, 0].mean())):
        err = distance_to_truth(v.points, k)
        assert np.median(err) < 1e-4 and err.max() < 3e-4
        # Equivalent radius sqrt(a * b) of the sections.
        np.testing.assert_allclose(v.radius, math.sqrt(0.002 * (0.0012 + 0.0004 * k)),
                                   rtol=1e-6)
        assert v.observations == 90 and 0.5 < v.confidence <= 1.0
        assert np.all(v.sigma > 0) and np.median(v.sigma) < 2e-4
        # Ordered along the vessel, spanning the sweep.
        assert np.all(np.diff(v.points[:, 1]) > 0)
        assert v.points[-1, 1] - v.points[0, 1] > 0.028
    assert len(m.skin_points()) == 90
    np.testing.assert_allclose(m.skin_points()[:, 2], FACE_Z)


def test_outliers_do_not_make_vessels_or_bend_them():
    frames = sweep()
    for f in range(0, 90, 9):  # isolated false detections, a low-confidence blob, a band
        stamp, p, secs = frames[f]
        secs = [*secs, section(vein(p[1, 3], 0) + np.array([0.0, 0.0, -0.01]), tid=50 + f),
                section(vein(p[1, 3], 0) + np.array([0.004, 0.0, 0.0]), conf=0.1, tid=90),
                section(vein(p[1, 3], 1) + np.array([0.0, 0.0, -0.005]), ra=0.008, rb=0.001,
                        tid=91)]
        frames[f] = (stamp, p, secs)
    vessels = build(frames).vessels()
    assert len(vessels) == 2
    for v in vessels:
        k = int(np.argmin([np.median(distance_to_truth(v.points, k)) for k in (0, 1)]))
        assert np.median(distance_to_truth(v.points, k)) < 1e-4


def test_tracker_id_hint_bridges_a_jump_beyond_the_gate():
    frames = sweep(veins=(0,))
    jumped = []
    for stamp, p, secs in frames:
        s = secs[0]
        if stamp > 1.5:  # the section jumps 3 mm sideways; the tracker kept its id
            s = SimpleNamespace(**{**s.__dict__, 'x': s.x + 0.003})
        jumped.append((stamp, p, [s]))
    assert len(build(jumped).vessels()) == 1
    for stamp, _, secs in jumped:
        if stamp > 1.5:
            secs[0].id = 7  # a new id: a new vessel
    assert len(build(jumped).vessels()) == 2


def _equal(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert u.id == v.id and u.observations == v.observations
        for name in ('points', 'radius', 'sigma'):
            np.testing.assert_array_equal(getattr(u, name), getattr(v, name))
        assert u.confidence == v.confidence


def _nir(stamp, ys, k=0, depth_offset=0.005):
    pts = np.array([vein(y, k) + np.array([0.0, 0.0, depth_offset]) for y in ys])
    return stamp, [pts], [0.8]


def _fill(m, items):
    for kind, data in items:
        (m.add_us if kind == 'us' else m.add_nir)(*data)
    return m


def test_same_map_whatever_the_arrival_order():
    frames = sweep(frames=30)
    nir = [_nir(f / 30.0 + 0.001, np.linspace(0.11, 0.15, 16)) for f in range(0, 30, 3)]
    items = [('us', f) for f in frames] + [('nir', n) for n in nir]
    reference = _fill(VesselMap(params()), items)
    assert len(reference.vessels()) == 2
    _equal(reference.vessels(), _fill(VesselMap(params()), items).vessels())  # deterministic
    # Any order (and a replay window shorter than the lateness: rebuilt from scratch).
    rng = np.random.default_rng(3)
    shuffled = _fill(VesselMap(params(replay_window=8)),
                     [items[i] for i in rng.permutation(len(items))])
    _equal(reference.vessels(), shuffled.vessels())
    np.testing.assert_array_equal(reference.skin_points(), shuffled.skin_points())
    # NIR results arrive late (a few frames behind the US ones), as they do in the node.
    late = sorted(items, key=lambda it: it[1][0] + (0.1 if it[0] == 'nir' else 0.0))
    _equal(reference.vessels(), _fill(VesselMap(params()), late).vessels())


def test_map_until_a_stamp():
    frames = sweep()
    full = build(frames)
    part = build(frames[:45])
    _equal(part.vessels(), full.vessels(until_s=frames[44][0]))
    np.testing.assert_array_equal(part.skin_points(), full.skin_points(until_s=frames[44][0]))
    assert full.vessels(until_s=-1.0) == []


def test_nir_constrains_lateral_position_not_depth():
    # NIR points on the skin 5 mm above the vein and 0.5 mm to the side: the depth stays
    # the US depth; the lateral position moves towards NIR only by its small weight.
    frames = sweep(veins=(0,))
    m = VesselMap(params())
    for f in range(90):  # in stamp order: each NIR frame 1 ms after a US frame
        m.add_us(*frames[f])
        if f % 3 == 0:
            stamp, lines, conf = _nir(f / 30.0 + 0.001, np.linspace(0.11, 0.15, 80))
            m.add_nir(stamp, [lines[0] + np.array([0.0005, 0.0, 0.0])], conf)
    (v,) = m.vessels()
    truth = np.array([vein(p[1], 0) for p in v.points])
    np.testing.assert_allclose(v.points[:, 2], truth[:, 2], atol=1e-4)
    shift = np.median(v.points[:, 0] - truth[:, 0])
    assert 0.0 < shift < 0.00025
    # A vein seen only by NIR has no depth: not reported.
    only = VesselMap(params())
    for f in range(0, 30):
        only.add_nir(*_nir(f / 30.0, np.linspace(0.11, 0.15, 80)))
    assert only.vessels() == []


def test_follows_a_vessel_that_rolls_under_a_held_probe():
    m = VesselMap(params())
    y = 0.13
    for f in range(150):  # 5 s at 30 Hz: still, rolls 2 mm in 0.5 s, then holds
        t = f / 30.0
        shift = float(np.clip((t - 1.0) / 0.5, 0.0, 1.0)) * 0.002
        m.add_us(t, pose(y), [section(vein(y) + np.array([shift, 0.0, 0.0]), tid=1)])
    (v,) = m.vessels()
    assert abs(np.median(v.points[:, 0]) - (vein(y)[0] + 0.002)) < 1e-4
    # Without forgetting (a huge time constant) the map would lag far behind.
    m = VesselMap(params(forget_s=1e6))
    for f in range(150):
        t = f / 30.0
        shift = float(np.clip((t - 1.0) / 0.5, 0.0, 1.0)) * 0.002
        m.add_us(t, pose(y), [section(vein(y) + np.array([shift, 0.0, 0.0]), tid=1)])
    (v,) = m.vessels()
    assert abs(np.median(v.points[:, 0]) - (vein(y)[0] + 0.002)) > 3e-4


@pytest.mark.parametrize('bad', ['x', 'radius_minor', 'confidence'])
def test_nan_section_is_refused_and_nothing_added(bad):
    m = build(sweep(frames=20))
    before = m.vessels()
    s = section(vein(0.13), tid=1)
    setattr(s, bad, float('nan'))
    with pytest.raises(ValueError, match='NaN'):
        m.add_us(1.0, pose(0.13), [section(vein(0.13), tid=2), s])
    assert m.observation_count == 20
    _equal(before, m.vessels())


def test_bad_pose_stamp_and_nir_are_refused():
    m = VesselMap(params())
    p = pose(0.13)
    p[0, 3] = np.nan
    with pytest.raises(ValueError, match='image_pose'):
        m.add_us(0.0, p, [])
    with pytest.raises(ValueError, match='stamp'):
        m.add_us(float('nan'), pose(0.13), [])
    with pytest.raises(ValueError, match='NaN'):
        m.add_nir(0.0, [np.array([[0.4, 0.1, np.nan], [0.4, 0.2, 0.27]])], [0.5])
    with pytest.raises(ValueError, match=r'\(N, 3\)'):
        m.add_nir(0.0, [np.zeros((4, 2))], [0.5])
    with pytest.raises(ValueError, match='must be a finite number'):
        VesselMap({'gate_m': -1.0})
    assert m.observation_count == 0


def test_update_cost_is_bounded():
    import time

    frames = sweep(frames=300)
    m = VesselMap(params())
    times = []
    for f in frames:
        start = time.perf_counter()
        m.add_us(*f)
        times.append(time.perf_counter() - start)
    # The last frames cost about what the first ones did (no growth with history).
    assert np.median(times[-50:]) < 5 * np.median(times[20:70]) + 1e-3


def test_batched_prediction_equals_the_single_one():
    """NIR association predicts many bins at once; it must agree with _predict exactly."""
    vmap = VesselMap()
    rng = np.random.default_rng(0)
    pose = np.eye(4)
    pose[:3, :3] = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]]).T
    for i in range(60):
        pose = pose.copy()
        pose[1, 3], pose[2, 3] = 0.1 + i * 0.0005, 0.27
        vmap.add_us(i * 0.033, pose, [SimpleNamespace(
            x=0.001 + 1e-4 * rng.normal(), y=0.005 + 1e-4 * rng.normal(), radius_major=0.002,
            radius_minor=0.0015, confidence=0.9, id=1)])
    (vessel,) = vmap._state.vessels.values()
    n = vessel.bins.shape[0]
    margin = vmap.p['extend_m'] / vmap.p['bin_m'] + 5
    positions = (vessel.first_bin + np.linspace(-margin, n + margin, 97)) * vmap.p['bin_m']
    many, known, valid = vmap._predict_many(vessel, positions)
    assert valid.any() and not valid.all()  # the ends (+ extend_m) are outside
    for j, s in enumerate(positions):
        one = vmap._predict(vessel, s)
        assert (one is not None) == valid[j]
        if one is not None:
            assert one[1] == known[j]
            np.testing.assert_allclose(many[j], one[0], atol=1e-12)
