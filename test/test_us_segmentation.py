"""Ultrasound vein segmentation: data, committed model, classical baseline, vessels, tracker."""

import json
import math

import numpy as np
import pytest

from ir_guidance.perception import us_data, us_metrics
from ir_guidance.perception.us_classical import segment_classical
from ir_guidance.perception.us_vessels import CrossSection, VesselTracker, cross_sections
from ir_guidance.sim.phantom import LUMEN, Phantom, Vein
from ir_guidance.sim.ultrasound import UltrasoundConfig, UltrasoundSimulator

torch = pytest.importorskip('torch')
us_model = pytest.importorskip('ir_guidance.perception.us_model')

WEIGHTS = us_model.WEIGHTS_DIR / us_model.WEIGHTS_NAME


@pytest.fixture(scope='module')
def committed() -> dict:
    with open(WEIGHTS.with_suffix('.json'), encoding='utf-8') as stream:
        return json.load(stream)


@pytest.fixture(scope='module')
def segmenter():
    return us_model.UsSegmenter(WEIGHTS, backend='eager', threads=2)


@pytest.fixture(scope='module')
def held_out(committed):
    # 16 frames from phantoms that neither training nor the training script's test used.
    seeds = us_data.test_seeds(4, start=2000)
    lo, hi = committed['data']['train_seeds']
    assert not set(seeds) & set(range(lo, hi))
    t_lo, t_hi = committed['data']['test_seeds']
    assert not set(seeds) & set(range(t_lo, t_hi))
    return us_data.make_split(seeds, 4)


def _transverse_frame(depth_m: float = 0.04):
    phantom = Phantom(veins=(Vein(x=0.43, depth=5.5e-3, width=5.0e-3, height=3.5e-3),))
    state = phantom.new_state()
    pose = np.eye(4)
    x_img, y_img = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = x_img, y_img, np.cross(x_img, y_img)
    pose[:3, 3] = [0.43, 0.13, float(phantom.skin_z(0.43, 0.13))]
    sim = UltrasoundSimulator(phantom, UltrasoundConfig(depth_m=depth_m), seed=1)
    image = sim.render(pose, state)
    mask = (sim.labels(pose, state) == LUMEN).astype(np.uint8)
    g = phantom.vein_geometry(0, np.array([0.13]), state)
    centre = sim.world_to_image(pose, np.array([[g['x'][0], 0.13, g['z'][0]]]))[0, :2]
    return image, mask, centre, sim.config


# -- committed model ---------------------------------------------------------------------
def test_committed_weights_are_small_and_documented(committed):
    assert WEIGHTS.stat().st_size <= 5 * 1024 * 1024
    for key in ('architecture', 'input_size', 'threshold', 'normalize', 'data', 'training',
                'metrics', 'torch_version', 'inference'):
        assert key in committed
    hi = committed['data']['train_seeds'][1]
    assert hi <= us_data.TEST_SEED_BASE <= committed['data']['test_seeds'][0]
    assert committed['metrics']['test_dice'] >= 0.9
    assert committed['metrics']['test_dice'] > committed['metrics']['classical_dice']


def test_committed_model_beats_the_classical_baseline_on_held_out_frames(segmenter, held_out):
    images, masks, meta = held_out
    outs = [segmenter.segment(img) for img in images]
    net = us_metrics.evaluate([o.mask for o in outs], masks, meta,
                              [o.probability for o in outs])
    classical = us_metrics.evaluate(
        [segment_classical(img, m['width_m'], m['depth_m'])
         for img, m in zip(images, meta, strict=True)],
        masks, meta)
    assert net['dice'] >= 0.85, net
    assert net['dice'] > classical['dice'] + 0.05, (net, classical)
    assert net['centre_err_mm_p50'] <= 0.3, net
    assert net['detection_rate'] >= 0.8, net


def test_fast_backends_agree_with_eager(segmenter, held_out, committed):
    images, masks, _ = held_out
    jit = us_model.UsSegmenter(WEIGHTS, backend='jit_channels_last', threads=2)
    for img in images[:4]:
        ref, got = segmenter.segment(img), jit.segment(img)
        assert np.abs(ref.logits - got.logits).max() < 1e-3
        assert us_metrics.dice(ref.mask, got.mask) > 0.99
    # The recorded backend (int8, calibrated on its own simulated frames) keeps the Dice.
    auto = us_model.UsSegmenter(WEIGHTS, threads=2)
    assert auto.backend == committed['inference']['backend']
    fp32 = us_metrics.mean_dice([segmenter(img) for img in images], masks)
    fast = us_metrics.mean_dice([auto(img) for img in images], masks)
    assert fast > fp32 - 0.01, (fast, fp32)


def test_segmenter_output_follows_the_frame(segmenter):
    image, mask, _, _ = _transverse_frame()
    out = segmenter.segment(image)
    assert out.mask.shape == out.probability.shape == image.shape
    assert out.mask.dtype == np.uint8 and set(np.unique(out.mask)) <= {0, 1}
    assert 0.0 <= out.probability.min() and out.probability.max() <= 1.0
    assert us_metrics.dice(out.mask, mask) > 0.85
    # A float frame on the 0-255 scale and an (H, W, 1) frame give the same answer.
    assert np.array_equal(segmenter(image.astype(np.float32)), out.mask)
    assert np.array_equal(segmenter(image[:, :, None]), out.mask)


@pytest.mark.parametrize('bad, match', [
    (np.zeros((256, 256), np.int16), 'dtype'),
    (np.zeros((256, 256, 3), np.uint8), '2-D'),
    (np.zeros((0, 0), np.uint8), 'empty'),
    (np.zeros((8, 256), np.uint8), 'small'),
    (np.full((256, 256), np.nan, np.float32), 'NaN'),
    (np.full((256, 256), 300.0), r'\[0, 255\]'),
    ([[0] * 64] * 64, 'numpy array'),
])
def test_segmenter_rejects_bad_frames(segmenter, bad, match):
    with pytest.raises(ValueError, match=match):
        segmenter(bad)
    with pytest.raises(ValueError, match=match):
        segment_classical(bad)


def test_segmenter_needs_its_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        us_model.UsSegmenter(tmp_path / 'missing.pt')
    with pytest.raises(ValueError, match='backend'):
        us_model.UsSegmenter(WEIGHTS, backend='fast')


# -- classical baseline ------------------------------------------------------------------
def test_classical_finds_an_obvious_vein():
    image, mask, centre, cfg = _transverse_frame()
    found = segment_classical(image, cfg.width_m, cfg.depth_m)
    assert us_metrics.dice(found, mask) > 0.75
    sections = cross_sections(found, cfg.width_m, cfg.depth_m)
    assert len(sections) == 1
    assert math.hypot(sections[0].x - centre[0], sections[0].y - centre[1]) < 0.3e-3


def test_classical_finds_nothing_in_plain_tissue():
    phantom = Phantom(veins=(Vein(x=0.47, depth=5.5e-3, width=5.0e-3, height=3.5e-3),))
    pose = np.eye(4)
    pose[:3, :3] = np.column_stack(([1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]))
    pose[:3, 3] = [0.43, 0.13, float(phantom.skin_z(0.43, 0.13))]
    sim = UltrasoundSimulator(phantom, seed=2)
    assert (sim.labels(pose) == LUMEN).sum() == 0
    assert segment_classical(sim.render(pose)).sum() == 0


# -- cross-sections and tracking ---------------------------------------------------------
def test_cross_sections_of_a_disc_in_metres():
    # Anisotropic pixels (50 mm deep): a 2 mm disc is an ellipse in pixels.
    cfg = UltrasoundConfig(width_m=0.038, depth_m=0.050)
    rows, cols = np.meshgrid(np.arange(256), np.arange(256), indexing='ij')
    x, y = cfg.pixel_to_image(rows, cols)
    xc, yc, radius = -4.3e-3, 12.7e-3, 2.0e-3
    mask = (np.hypot(x - xc, y - yc) < radius).astype(np.uint8)
    mask[200:202, 200:202] = 1                      # 4 px: below min_area, dropped
    prob = np.where(mask > 0, 0.8, 0.1).astype(np.float32)
    (s,) = cross_sections(mask, cfg.width_m, cfg.depth_m, probability=prob, min_area_mm2=1.0)
    assert s.x == pytest.approx(xc, abs=0.02e-3)
    assert s.y == pytest.approx(yc, abs=0.02e-3)
    assert s.radius_major == pytest.approx(radius, rel=0.03)
    assert s.radius_minor == pytest.approx(radius, rel=0.03)
    assert s.radius == pytest.approx(radius, rel=0.03)
    assert s.area == pytest.approx(math.pi * radius ** 2, rel=0.03)
    assert s.confidence == pytest.approx(0.8)
    assert cross_sections(np.zeros((64, 64), np.uint8), 0.038, 0.04) == []
    with pytest.raises(ValueError):
        cross_sections(np.zeros(5), 0.038, 0.04)
    with pytest.raises(ValueError):
        cross_sections(mask, -1.0, 0.04)


def test_cross_sections_of_a_tilted_ellipse():
    cfg = UltrasoundConfig()
    rows, cols = np.meshgrid(np.arange(256), np.arange(256), indexing='ij')
    x, y = cfg.pixel_to_image(rows, cols)
    a, b, angle = 3.0e-3, 1.5e-3, math.radians(25.0)
    u = (x - 1e-3) * math.cos(angle) + (y - 15e-3) * math.sin(angle)
    v = -(x - 1e-3) * math.sin(angle) + (y - 15e-3) * math.cos(angle)
    mask = ((u / a) ** 2 + (v / b) ** 2 < 1).astype(np.uint8)
    (s,) = cross_sections(mask, cfg.width_m, cfg.depth_m)
    assert s.radius_major == pytest.approx(a, rel=0.03)
    assert s.radius_minor == pytest.approx(b, rel=0.05)
    assert s.angle == pytest.approx(angle, abs=math.radians(2.0))


def _section(x: float, y: float = 8e-3) -> CrossSection:
    return CrossSection(x=x, y=y, radius_major=2e-3, radius_minor=1.5e-3, angle=0.0,
                        area=math.pi * 3e-6, confidence=0.9)


def test_tracker_keeps_ids_of_a_moving_vessel_and_starts_new_ones():
    tracker = VesselTracker(gate_mm=2.0, max_missed=3)
    ids = [tracker.update([_section(-2e-3 + 0.3e-3 * k)])[0].id for k in range(20)]
    assert len(set(ids)) == 1
    # A second vessel appears 8 mm away: a new id; the first keeps its own.
    both = tracker.update([_section(3.7e-3), _section(12e-3)])
    assert both[0].id == ids[0] and both[1].id not in ids
    # The second one vanishes: kept for max_missed frames, then dropped.
    for _ in range(3):
        tracker.update([_section(3.8e-3)])
        assert both[1].id in {t.id for t in tracker.tracks}
    tracker.update([_section(3.9e-3)])
    assert {t.id for t in tracker.tracks} == {ids[0]}
    # A jump beyond the gate is a new vessel, and the old id is not reused.
    far = tracker.update([_section(9e-3)])[0]
    assert far.id not in (ids[0], both[1].id)


def test_tracker_smooths_and_can_follow_velocity():
    tracker = VesselTracker(gate_mm=2.0, alpha=0.5)
    tracker.update([_section(0.0)])
    track = tracker.update([_section(1e-3)])[0]
    assert track.x == pytest.approx(0.5e-3)
    assert track.filtered.x == pytest.approx(0.5e-3) and track.section.x == 1e-3
    moving = VesselTracker(gate_mm=1.0, alpha=1.0, beta=0.5)
    for k in range(10):
        moving.update([_section(0.8e-3 * k)])     # 0.8 mm per frame: needs the velocity
    assert len({t.id for t in moving.tracks}) == 1
    assert moving.tracks[0].vx == pytest.approx(0.8e-3, rel=0.05)
    with pytest.raises(ValueError):
        VesselTracker(gate_mm=0.0)
    with pytest.raises(TypeError):
        tracker.update([(0.0, 0.0)])


# -- data --------------------------------------------------------------------------------
def test_dataset_is_deterministic_and_splits_are_disjoint():
    a = us_data.make_split([3, 4], 2)
    b = us_data.make_split([3, 4], 2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert a[0].shape == a[1].shape == (4, 256, 256) and a[0].dtype == np.uint8
    assert not np.array_equal(a[0][0], a[0][1])
    assert not set(us_data.train_seeds(5000)) & set(us_data.test_seeds(5000))
    shifted = us_data.make_split([3], 1, shifted=True)
    assert not np.array_equal(shifted[0][0], a[0][0])
    assert shifted[2][0]['depth_m'] in us_data.SHIFTED_DEPTHS_M and shifted[2][0]['shadow']
    for m in a[2]:
        assert m['mm_per_pixel'][1] == pytest.approx(m['depth_m'] * 1e3 / 256)
    with pytest.raises(ValueError):
        us_data.make_split([], 2)
    with pytest.raises(ValueError):
        us_data.train_seeds(us_data.TEST_SEED_BASE)


def test_ground_truth_centres_are_the_vein_centres():
    _, mask, centre, cfg = _transverse_frame(depth_m=0.03)
    centres, areas = us_data.lumen_centres(mask, cfg.width_m, cfg.depth_m)
    assert centres.shape == (1, 2)
    assert np.hypot(*(centres[0] - centre)) < 0.05e-3
    assert areas[0] == pytest.approx(mask.sum() * cfg.pixel_m[0] * cfg.pixel_m[1])


def test_metrics():
    a = np.zeros((40, 40), np.uint8)
    a[10:20, 10:20] = 1
    assert us_metrics.dice(a, a) == 1.0
    assert us_metrics.dice(a, np.roll(a, 15, axis=0)) == 0.0
    assert us_metrics.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert us_metrics.pooled_dice([a, a], [a, np.zeros_like(a)]) == pytest.approx(2 / 3)
    pairs, dist = us_metrics.match_centres(np.array([[0.0, 0.0], [5e-3, 0.0]]),
                                           np.array([[5.1e-3, 0.0]]))
    assert pairs == [(1, 0)] and dist[0] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        us_metrics.dice(a, a[:10])


# -- training script ---------------------------------------------------------------------
def test_training_script_runs_end_to_end(tmp_path):
    from ir_guidance.perception import train_us

    assert train_us.main(['--out', str(tmp_path), '--train-seeds', '1',
                          '--frames-per-seed', '4', '--test-seeds', '1',
                          '--test-frames-per-seed', '1', '--epochs', '1', '--batch', '4',
                          '--backend', 'eager', '--quiet']) == 0
    weights = tmp_path / 'us_unet.pt'
    meta = json.loads((tmp_path / 'us_unet.json').read_text())
    assert weights.stat().st_size <= 5 * 1024 * 1024
    assert meta['data']['train_seeds'] == [0, 1]
    assert meta['data']['test_seeds'] == [us_data.TEST_SEED_BASE, us_data.TEST_SEED_BASE + 1]
    assert meta['training']['epochs'] == 1 and meta['torch_version'] == torch.__version__
    assert meta['input_size'] == 128 and meta['threshold'] == 0.5
    assert meta['inference']['backend'] == 'eager'
    for key in ('test_dice', 'classical_dice', 'shifted_dice', 'test_centre_err_mm_p50'):
        assert key in meta['metrics']
    seg = us_model.UsSegmenter(weights, backend='eager', threads=None)
    assert seg(np.zeros((256, 256), np.uint8)).shape == (256, 256)
    with pytest.raises(SystemExit):
        train_us.main(['--epochs', '0'])
