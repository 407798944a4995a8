"""NIR vein detection on simulated frames: recall, rejection, precision, 3D, validation."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ir_guidance import config
from ir_guidance.perception import nir_metrics
from ir_guidance.perception.nir_veins import (
    NirDetection,
    NirParams,
    NirVeinDetector,
    back_project,
)
from ir_guidance.sim.nir import NirSimulator
from ir_guidance.sim.phantom import Phantom, Vein

X0 = 0.43
HEIGHT = 3.0e-3


def _phantom(vein_top: float, x: float = X0, slope: float = 0.0) -> Phantom:
    """One vein whose lumen top is ``vein_top`` under the skin (thin skin allows 2 mm)."""
    vein = Vein(x=x, depth=vein_top + HEIGHT / 2, width=4.5e-3, height=HEIGHT, slope=slope)
    return Phantom(veins=(vein,), skin_thickness=1.2e-3)


def _frame(phantom: Phantom, seed: int = 0, height: float = 0.10):
    """A frame from 0.10 m above the skin, looking straight down (as test_sim_nir)."""
    pose = nir_metrics.looking_down_pose(phantom, height)
    sim = NirSimulator(phantom, seed=seed)
    ir, depth = sim.render(pose, phantom.new_state(), seed)
    return sim, pose, ir, depth


@pytest.fixture(scope='module')
def detector() -> NirVeinDetector:
    return NirVeinDetector(NirParams())


@pytest.mark.parametrize('x, slope', [(X0, 0.0), (X0 + 0.006, 0.1)])
def test_shallow_vein_is_found_and_lies_on_the_skin_above_it(detector, x, slope):
    phantom = _phantom(2.0e-3, x=x, slope=slope)
    sim, pose, ir, depth = _frame(phantom, seed=1)
    k = sim.camera_info()['K']
    detection, points = detector.detect_points(ir, depth, k, sim.config.depth_scale)
    truth = nir_metrics.true_veins(phantom, sim, pose)
    score = nir_metrics.score(detection, truth, ir.shape)
    assert len(truth) == 1 and len(truth[0].pixels) > 500
    assert score.veins[0].recall >= 0.9, score
    assert score.precision >= 0.95, score
    assert len(detection.centerlines) == 1
    assert detection.confidence[0] > 0.5
    # The mask covers the centreline.
    line = np.rint(detection.centerlines[0]).astype(int)
    assert detection.mask[line[:, 1], line[:, 0]].mean() > 0.95 * 255
    # 3D: on the skin straight above the vein, in the optical frame (the depth camera sees
    # the skin, not the vein under it).
    cloud = np.concatenate(points)
    assert cloud.shape[1] == 3 and np.all(np.isfinite(cloud))
    ys = np.arange(phantom.center_y - 0.1, phantom.center_y + 0.1, 1e-4)
    centre = phantom.centerline(0, ys)
    skin = np.column_stack((centre[:, 0], ys, phantom.skin_z(centre[:, 0], ys)))
    skin_cam = (skin - pose[:3, 3]) @ pose[:3, :3]
    distance, _ = cKDTree(skin_cam).query(cloud)
    assert distance.max() < 2.0e-3, distance.max()
    # ... all along the visible vein (about 75 mm of it at 0.1 m), about 0.1 m away.
    assert np.ptp(cloud[:, 1]) > 0.06
    assert np.all(np.abs(cloud[:, 2] - 0.10) < 0.005)


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('x, slope', [(X0, 0.0), (X0 + 0.006, 0.1)])
def test_deep_vein_is_not_reported(detector, seed, x, slope):
    _, _, ir, _ = _frame(_phantom(7.0e-3, x=x, slope=slope), seed=seed)
    detection = detector.detect(ir)
    assert detection.centerlines == []
    assert len(detection.confidence) == 0
    assert not detection.mask.any()
    # Not for want of looking: the arm was found and the vesselness map is there.
    assert detection.roi.mean() > 0.2 * 255
    assert detection.vesselness.max() < NirParams().hysteresis[1]


def test_precision_on_random_phantoms():
    result = nir_metrics.evaluate_random(range(500, 540), NirParams(), repeats=1)
    assert result['detected_points'] > 200
    assert result['precision'] >= 0.8, result
    assert result['shallow_veins'] >= 5
    assert result['shallow_recall_mean'] >= 0.75, result
    assert result['deep_found'] < result['deep_veins'] / 3


def test_detection_is_deterministic():
    sim, _, ir, depth = _frame(_phantom(2.5e-3, x=X0 - 0.004, slope=-0.08), seed=3)
    k = sim.camera_info()['K']
    first = NirVeinDetector().detect_points(ir, depth, k)
    assert first[0].centerlines and len(first[1][0]) > 10
    detector = NirVeinDetector()
    for det, pts in (detector.detect_points(ir, depth, k), detector.detect_points(ir, depth, k),
                     first):
        assert np.array_equal(det.mask, first[0].mask)
        assert np.array_equal(det.vesselness, first[0].vesselness)
        assert np.array_equal(det.confidence, first[0].confidence)
        assert len(det.centerlines) == len(first[0].centerlines)
        for a, b in zip(det.centerlines, first[0].centerlines, strict=True):
            assert np.array_equal(a, b)
        for a, b in zip(pts, first[1], strict=True):
            assert np.array_equal(a, b)


def test_output_types_and_shapes(detector):
    _, _, ir, _ = _frame(_phantom(2.0e-3))
    detection = detector.detect(ir)
    assert isinstance(detection, NirDetection)
    assert detection.mask.dtype == np.uint8 and detection.mask.shape == ir.shape
    assert set(np.unique(detection.mask)) <= {0, 255}
    assert detection.vesselness.dtype == np.float32 and detection.vesselness.shape == ir.shape
    assert 0.0 <= detection.vesselness.min() and detection.vesselness.max() < 1.0
    assert len(detection.confidence) == len(detection.centerlines)
    assert np.all((detection.confidence > 0) & (detection.confidence < 1))
    for line in detection.centerlines:
        assert line.ndim == 2 and line.shape[1] == 2 and np.all(np.isfinite(line))
        # Ordered: consecutive points a few pixels apart, starting at the top end.
        steps = np.linalg.norm(np.diff(line, axis=0), axis=1)
        assert steps.max() < 12.0
        assert line[0, 1] <= line[-1, 1]


@pytest.mark.parametrize('bad, match', [
    (np.zeros((480, 640), np.uint16) + 5, 'uint8'),
    (np.zeros((480, 640), np.float32) + 5, 'uint8'),
    (np.zeros((480, 640, 3), np.uint8) + np.arange(3, dtype=np.uint8), '2-D'),
    (np.arange(640, dtype=np.uint8), '2-D'),
    (np.zeros((0, 640), np.uint8), 'empty'),
    (np.zeros((0, 0), np.uint8), 'empty'),
    (np.zeros((16, 640), np.uint8) + np.arange(640, dtype=np.uint8)[None, :] % 7, 'small'),
    (np.full((480, 640), 128, np.uint8), 'constant'),
    ([[1, 2], [3, 4]], 'numpy'),
])
def test_bad_images_are_rejected(detector, bad, match):
    with pytest.raises(ValueError, match=match):
        detector.detect(bad)


def test_bad_depth_is_rejected(detector):
    sim, _, ir, depth = _frame(_phantom(2.0e-3))
    k = sim.camera_info()['K']
    with pytest.raises(ValueError, match='uint16'):
        detector.detect_points(ir, depth.astype(np.float32), k)
    with pytest.raises(ValueError, match='does not match'):
        detector.detect_points(ir, depth[:-2], k)
    with pytest.raises(ValueError, match='3x3'):
        detector.detect_points(ir, depth, np.eye(4))
    line = [np.array([[10.0, 10.0], [20.0, 10.0]])]
    with pytest.raises(ValueError, match='uint16'):
        back_project(line, depth.astype(np.int32), k)
    with pytest.raises(ValueError, match='outside'):
        back_project([np.array([[700.0, 10.0]])], depth, k)
    with pytest.raises(ValueError, match=r'\(N, 2\)'):
        back_project([np.zeros((4, 3))], depth, k)
    with pytest.raises(ValueError, match='finite'):
        back_project([np.array([[np.nan, 10.0]])], depth, k)
    with pytest.raises(ValueError, match='depth_scale'):
        back_project(line, depth, k, depth_scale=0.0)
    with pytest.raises(ValueError, match='focal'):
        back_project(line, depth, np.diag([0.0, 615.0, 1.0]))


def test_back_project_is_the_pinhole_and_skips_missing_depth():
    k = np.array([[600.0, 0.0, 320.0], [0.0, 610.0, 240.0], [0.0, 0.0, 1.0]])
    depth = np.full((480, 640), 250, np.uint16)        # a plane 0.25 m away
    depth[:, 300:340] = 0                              # a band with no depth
    depth[100, 250] = 0                                # a hole the median ignores
    line = np.column_stack((np.arange(200.0, 440.0), np.full(240, 100.0)))
    out = back_project([line, np.zeros((0, 2))], depth, k)
    assert len(out) == 2 and out[1].shape == (0, 3)
    pts = out[0]
    assert np.all(np.isfinite(pts))
    # Points whose 5x5 window is all in the band are skipped; the rest are kept.
    kept = (line[:, 0] <= 301) | (line[:, 0] >= 338)
    assert len(pts) == kept.sum()
    expected = np.column_stack(((line[kept, 0] - 320.0) / 600.0 * 0.25,
                                (100.0 - 240.0) / 610.0 * 0.25 * np.ones(kept.sum()),
                                np.full(kept.sum(), 0.25)))
    np.testing.assert_allclose(pts, expected, atol=1e-9)
    # The median of the valid neighbours only: the 5 x 5 window holds 10 zeros, 5 at
    # 200 mm and 10 at 300 mm (counting the zeros, the median would be 200 mm).
    depth2 = np.zeros((50, 50), np.uint16)
    depth2[:, 25] = 200
    depth2[:, 26:] = 300
    z = back_project([np.array([[25.0, 25.0]])], depth2, k, depth_scale=0.001)[0][0, 2]
    assert z == pytest.approx(0.3)
    # A scale of 0.1 mm per unit.
    z = back_project([np.array([[10.0, 10.0]])], depth, k, depth_scale=1e-4)[0][0, 2]
    assert z == pytest.approx(0.025)
    assert back_project([], depth, k) == []


def test_back_project_of_simulated_depth_never_has_nan(detector):
    phantom = _phantom(2.0e-3, x=X0 + 0.006, slope=0.1)
    sim, _, ir, depth = _frame(phantom)
    depth = depth.copy()
    depth[:, ::3] = 0                                  # drop-outs everywhere
    depth[200:280] = 0                                 # and a band with none at all
    detection = detector.detect(ir)
    pts = back_project(detection.centerlines, depth, sim.camera_info()['K'])
    cloud = np.concatenate(pts)
    assert len(cloud) > 10 and np.all(np.isfinite(cloud)) and np.all(cloud[:, 2] > 0.05)
    # No point from inside the band without depth (its window cannot reach valid pixels).
    v = cloud[:, 1] / cloud[:, 2] * sim.config.fy + sim.config.cy
    assert not np.any((v > 201.5) & (v < 277.5))


def test_params_from_config():
    section = config.load()['nir']
    params = NirParams.from_config(section)
    assert params.scales_px == tuple(sorted(float(s) for s in section['scales_px']))
    assert params.hysteresis == tuple(float(h) for h in section['hysteresis'])
    assert params.clahe_clip == float(section['clahe_clip'])
    assert params.min_length_px == float(section['min_length_px'])
    custom = NirParams.from_config({'source': 'topic', 'realsense': {}, 'scales_px': [20, 10],
                                    'frangi_c': 3, 'clahe_tile': 4})
    assert custom.scales_px == (10.0, 20.0) and custom.frangi_c == 3.0
    assert custom.clahe_tile == 4 and custom.hysteresis == NirParams().hysteresis
    for bad in ({'scales_px': []}, {'scales_px': [0.1]}, {'hysteresis': [0.5, 0.2]},
                {'hysteresis': [0.1]}, {'clahe_tile': 2.5}, {'clahe_clip': -1},
                {'frangi_c': 0}, {'depth_window_px': 4}, {'roi_level': 1.5},
                {'scales_px': 'abc'}, {'min_length_px': float('nan')}):
        with pytest.raises(ValueError):
            NirParams.from_config(bad)
    with pytest.raises(ValueError):
        NirParams.from_config([('scales_px', [3.0])])


def test_config_scales_run_at_full_resolution_and_defaults_at_quarter():
    assert NirVeinDetector(NirParams()).level == 2
    assert NirVeinDetector(NirParams(scales_px=(3.0, 5.0, 8.0))).level == 0
    assert NirVeinDetector(NirParams(scales_px=(8.0, 12.0))).level == 1


def test_score_of_exact_and_shifted_detections():
    phantom = _phantom(2.0e-3, slope=0.1)
    sim, pose, ir, _ = _frame(phantom)
    truth = nir_metrics.true_veins(phantom, sim, pose)
    exact = nir_metrics.score([t.pixels for t in truth], truth, ir.shape)
    assert exact.precision == 1.0 and exact.veins[0].recall == 1.0
    shifted = [t.pixels + np.array([10.0, 0.0]) for t in truth]
    far = nir_metrics.score(shifted, truth, ir.shape)
    assert far.precision == 0.0 and far.veins[0].recall == 0.0
    half = [truth[0].pixels[: len(truth[0].pixels) // 2]]
    part = nir_metrics.score(half, truth, ir.shape)
    assert part.precision == 1.0 and 0.45 < part.veins[0].recall < 0.56
    none = nir_metrics.score([], truth, ir.shape)
    assert np.isnan(none.precision) and none.veins[0].recall == 0.0
    summary = nir_metrics.summarize([exact, far, none])
    assert summary['precision'] == pytest.approx(0.5)
    assert summary['shallow_veins'] == 3 and summary['deep_veins'] == 0
    assert summary['frames_without_detection'] == 1
    # The truth is the skin over the vein: 2 mm deep here, so shallow.
    assert truth[0].top_depth_m == pytest.approx(2.0e-3, abs=1e-4)


@pytest.mark.parametrize('shape', [(480, 640), (481, 643), (240, 320)])
def test_centerlines_stay_inside_odd_and_small_images(detector, shape):
    # Dark bands crossing the whole image, one of them along its last columns.
    h, w = shape
    u = np.arange(w)[None, :]
    band = np.exp(-0.5 * ((u - (w - 3)) / 12.0) ** 2) + np.exp(-0.5 * ((u - w / 3) / 12.0) ** 2)
    ir = np.clip(170.0 - 40.0 * band + np.zeros((h, 1)), 0, 255).astype(np.uint8)
    depth = np.full(shape, 100, np.uint16)
    detection, points = detector.detect_points(ir, depth, np.array(
        [[615.0, 0.0, w / 2], [0.0, 615.0, h / 2], [0.0, 0.0, 1.0]]))
    assert detection.centerlines
    for line, pts in zip(detection.centerlines, points, strict=True):
        assert line[:, 0].min() >= 0 and line[:, 0].max() <= w - 1
        assert line[:, 1].min() >= 0 and line[:, 1].max() <= h - 1
        assert len(pts) == len(line)
    # The band in the middle is found where it is.
    found = [np.median(line[:, 0]) for line in detection.centerlines]
    assert min(abs(f - w / 3) for f in found) < 2.0


@pytest.mark.parametrize('height', [0.07, 0.075])
def test_saturated_skin_is_not_searched(detector, height):
    # Close to the camera the skin clips at 255; the rim of the clipped plateau is a
    # dark-looking curve that must not be taken for a vein (the only vein is 7 mm deep).
    _, _, ir, _ = _frame(_phantom(7.0e-3), seed=0, height=height)
    assert (ir >= 250).mean() > 0.1
    detection = detector.detect(ir)
    assert detection.centerlines == []
    assert not detection.roi[ir >= 250].any()
    # Without the saturation rule the rim is reported.
    assert NirVeinDetector(NirParams(saturation_dn=256)).detect(ir).centerlines


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_depth_shading_finds_a_vein_on_the_arms_flank(seed):
    # A 2.5 mm vein 20 mm off the arm's axis lies on the steep, darkening flank. The
    # image's own background (no depth) is biased there and hides it (measured recall 0
    # for these seeds); the shading predicted from the depth image's shape does not.
    phantom = _phantom(2.5e-3, x=X0 + 0.020)
    sim, pose, ir, depth = _frame(phantom, seed=seed)
    k = sim.camera_info()['K']
    truth = nir_metrics.true_veins(phantom, sim, pose)
    assert len(truth) == 1
    with_depth = NirVeinDetector().detect(ir, depth, k, sim.config.depth_scale)
    score = nir_metrics.score(with_depth, truth, ir.shape)
    assert score.veins[0].recall >= 0.9, score
    assert score.precision >= 0.9, score
    image_only = NirVeinDetector().detect(ir)
    assert nir_metrics.score(image_only, truth, ir.shape).veins[0].recall < 0.5


def test_depth_shading_keeps_deep_veins_out_and_falls_back_without_depth():
    phantom = _phantom(7.0e-3, x=X0 + 0.006, slope=0.1)
    sim, _, ir, depth = _frame(phantom, seed=4)
    k = sim.camera_info()['K']
    detector = NirVeinDetector()
    detection = detector.detect(ir, depth, k, sim.config.depth_scale)
    assert detection.centerlines == [] and not detection.mask.any()
    # The arm region: a good part of the image, all of it skin above the arm's axis (the
    # camera is 0.10 m above the top of the arm, of radius 0.04 m), none on the table.
    roi = detection.roi > 0
    assert 0.25 < roi.mean() < 0.75
    assert np.all((depth[roi] > 0) & (depth[roi] < 1e3 * (0.10 + 0.04)))
    # No valid depth: the image's own background, exactly as without depth.
    empty = detector.detect(ir, np.zeros_like(depth), k)
    plain = detector.detect(ir)
    assert np.array_equal(empty.vesselness, plain.vesselness)
    assert np.array_equal(empty.roi, plain.roi)
    # Switched off: the same.
    off = NirVeinDetector(NirParams(shading_from_depth=False)).detect(ir, depth, k)
    assert np.array_equal(off.vesselness, plain.vesselness)


def test_depth_shading_inputs_are_checked(detector):
    sim, _, ir, depth = _frame(_phantom(2.0e-3))
    k = sim.camera_info()['K']
    with pytest.raises(ValueError, match='intrinsics'):
        detector.detect(ir, depth)
    with pytest.raises(ValueError, match='does not match'):
        detector.detect(ir, depth[:, :-1], k)
    with pytest.raises(ValueError, match='uint16'):
        detector.detect(ir, depth.astype(np.float32), k)
    with pytest.raises(ValueError, match='focal'):
        detector.detect(ir, depth, np.diag([-615.0, 615.0, 1.0]))
    custom = NirParams.from_config({'shading_from_depth': False, 'illumination_order': 2,
                                    'ambient_dn': 0, 'roi_cos': 0.5})
    assert custom.shading_from_depth is False and custom.illumination_order == 2
    assert custom.ambient_dn == 0.0 and custom.roi_cos == 0.5
    for bad in ({'shading_from_depth': 'yes'}, {'illumination_order': 1.5},
                {'illumination_order': 7}, {'roi_cos': 1.0}, {'ambient_dn': -1},
                {'fill_px': 0}):
        with pytest.raises(ValueError):
            NirParams.from_config(bad)


def test_quadric_fit_recovers_the_arms_shading():
    # The view cosine of the fitted quadric against the exact cylinder's, on a frame of
    # the simulator (depth quantised to millimetres), at the detector's working grid.
    from ir_guidance.perception import nir_veins

    phantom = _phantom(2.0e-3)
    sim, pose, _, depth = _frame(phantom, seed=2)
    k = sim.camera_info()['K']
    z = depth.astype(np.float32) * 1e-3
    valid = (depth > 0).astype(np.float32)
    h, w = depth.shape[0] // 4, depth.shape[1] // 4
    import cv2
    zz, vv = z * valid, valid
    for _ in range(2):
        zz, vv = cv2.pyrDown(zz), cv2.pyrDown(vv)
    zz = zz / np.maximum(vv, 1e-6)
    a = ((np.arange(w) * 4 - k[0, 2]) / k[0, 0]).astype(np.float32)[None, :]
    b = ((np.arange(h) * 4 - k[1, 2]) / k[1, 1]).astype(np.float32)[:, None]
    # Exact: the ray against the cylinder (axis along world y), in the world frame.
    rays = np.stack(np.broadcast_arrays(a, b, np.ones((h, w))), -1) @ pose[:3, :3].T
    o = pose[:3, 3] - np.array([phantom.axis_x, 0.0, phantom.axis_z])
    qa = rays[..., 0] ** 2 + rays[..., 2] ** 2
    qb = rays[..., 0] * o[0] + rays[..., 2] * o[2]
    disc = qb * qb - qa * (o[0] ** 2 + o[2] ** 2 - phantom.arm_radius ** 2)
    cos_true = np.sqrt(np.maximum(disc, 0)) / (phantom.arm_radius
                                               * np.linalg.norm(rays, axis=-1))
    arm = (vv > 0.99) & (cos_true > 0.3)
    zq, cos = nir_veins._fit_quadric(zz, a, b, arm)
    facing = arm & (cos_true >= 0.45)
    assert facing.sum() > 3000
    assert np.abs(cos - cos_true)[facing].max() < 0.02
    t_true = -(qb + np.sqrt(np.maximum(disc, 0))) / qa
    assert np.abs(zq - t_true)[facing].max() < 1e-3
