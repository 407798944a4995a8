"""B-mode synthesis: anatomy where the phantom puts it, artefacts, needle, determinism."""

import dataclasses
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from ir_guidance.sim.phantom import LUMEN, Phantom, Vein
from ir_guidance.sim.ultrasound import UltrasoundConfig, UltrasoundSimulator

Y0 = 0.13


def _phantom(fat_thickness: float = 8e-3, arm_radius: float = 0.04, **vein_kw) -> Phantom:
    vein = dict(x=0.43, depth=5.0e-3, width=5.0e-3, height=3.5e-3)
    vein.update(vein_kw)
    return Phantom(veins=(Vein(**vein),), fat_thickness=fat_thickness, arm_radius=arm_radius)


def _transverse_pose(phantom: Phantom, x: float, lift: float = 0.0) -> np.ndarray:
    """Probe face on the skin at (x, Y0), array along world x, depth pointing down."""
    pose = np.eye(4)
    x_img, y_img = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = x_img, y_img, np.cross(x_img, y_img)
    pose[:3, 3] = [x, Y0, float(phantom.skin_z(x, Y0)) + lift]
    return pose


def _gt(phantom: Phantom, state=None) -> dict:
    g = phantom.vein_geometry(0, np.array([Y0]), state)
    return {k: float(v[0]) for k, v in g.items()}


def _setup(seed: int = 3, fat_thickness: float = 8e-3, arm_radius: float = 0.04,
           **vein_kw) -> SimpleNamespace:
    """One-vein phantom, undeformed, the probe on the skin right over the vein."""
    phantom = _phantom(fat_thickness, arm_radius, **vein_kw)
    state = phantom.new_state()
    gt = _gt(phantom, state)
    pose = _transverse_pose(phantom, gt['x'])
    return SimpleNamespace(phantom=phantom, state=state, gt=gt, pose=pose,
                           sim=UltrasoundSimulator(phantom, seed=seed))


def _image_coords(sim: UltrasoundSimulator) -> tuple[np.ndarray, np.ndarray]:
    """Image-frame x, y (m) of every pixel."""
    cfg = sim.config
    rows, cols = np.meshgrid(np.arange(cfg.rows), np.arange(cfg.cols), indexing='ij')
    return sim.pixel_to_image(rows, cols)


def _gt_pixel(sim, pose, gt) -> tuple[float, float]:
    r, c, off = sim.world_to_pixel(pose, np.array([[gt['x'], Y0, gt['z']]]))
    assert abs(off[0]) < 1e-12
    return float(r[0]), float(c[0])


def _dark_blob(img: np.ndarray, near: tuple[float, float]) -> np.ndarray:
    """Mask of the dark connected component nearest to ``near`` (row, col)."""
    smooth = cv2.GaussianBlur(img, (0, 0), 1.0)
    dark = (smooth < 45).astype(np.uint8)
    count, comp = cv2.connectedComponents(dark, connectivity=8)
    best, best_dist = None, np.inf
    for k in range(1, count):
        rr, cc = np.nonzero(comp == k)
        if rr.size < 20:
            continue
        dist = np.hypot(rr.mean() - near[0], cc.mean() - near[1])
        if dist < best_dist:
            best, best_dist = k, dist
    assert best is not None, 'no dark blob'
    return comp == best


def test_pixel_geometry_round_trips_and_matches_the_config():
    cfg = UltrasoundConfig()
    assert cfg.mm_per_pixel == pytest.approx((38.0 / 256, 40.0 / 256))
    x, y = cfg.pixel_to_image(0, 0)
    assert x == pytest.approx(-0.019 + 0.5 * 0.038 / 256)
    assert y == pytest.approx(0.5 * 0.040 / 256)
    r, c = np.array([0.0, 17.3, 255.0]), np.array([3.0, 128.0, 255.0])
    rr, cc = cfg.image_to_pixel(*cfg.pixel_to_image(r, c))
    assert np.allclose(rr, r) and np.allclose(cc, c)
    # The image centre column lies on the probe axis.
    assert cfg.image_to_pixel(0.0, 0.02)[1] == pytest.approx(127.5)


def test_config_rejects_bad_values():
    for bad in ({'cols': 0}, {'depth_m': -1.0}, {'speckle_decorrelation': 1.5},
                {'echo_db': (0.0,) * 5}, {'attenuation_factor': (-1.0,) * 6},
                {'frequency_mhz': float('nan')}):
        with pytest.raises(ValueError):
            UltrasoundConfig(**bad)
    sim = UltrasoundSimulator(_phantom())
    with pytest.raises(ValueError):
        sim.render(np.eye(3))
    with pytest.raises(ValueError):
        sim.render(np.diag([1.0, 1.0, -1.0, 1.0]))
    with pytest.raises(ValueError):
        sim.render(_transverse_pose(sim.phantom, 0.43), needle=(np.zeros(3), np.zeros(3)))


@pytest.mark.parametrize('tilt', [0.0, 0.6])
def test_labels_match_the_phantom(tilt):
    phantom = Phantom.random(11)
    sim = UltrasoundSimulator(phantom)
    pose = _transverse_pose(phantom, phantom.veins[0].x)
    # Tilt the probe about its depth axis: an oblique cut through the arm.
    c, s = np.cos(tilt), np.sin(tilt)
    pose[:3, :3] = pose[:3, :3] @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    state = phantom.new_state()
    x, y = _image_coords(sim)
    pts = pose[:3, 3] + np.column_stack((x.ravel(), y.ravel(), np.zeros(x.size))) \
        @ pose[:3, :3].T
    expected = phantom.labels(pts, state).reshape(x.shape)
    got = sim.labels(pose, state)
    assert (got == expected).mean() > 0.999
    assert (got == LUMEN).sum() > 50


def test_lumen_is_dark_at_the_ground_truth_centre():
    s = _setup()
    phantom, state, gt, pose, sim = s.phantom, s.state, s.gt, s.pose, s.sim
    img = sim.render(pose, state, None, 0).astype(float)
    r, c = _gt_pixel(sim, pose, gt)
    ri, ci = round(r), round(c)
    centre = img[ri - 2:ri + 3, ci - 2:ci + 3].mean()
    # Annulus around the vein, outside the wall, in image coordinates.
    x, y = _image_coords(sim)
    xc, yc = sim.pixel_to_image(r, c)
    wall = phantom.veins[0].wall
    rho = np.hypot((x - xc) / (gt['a'] + wall), (y - yc) / (gt['b'] + wall))
    annulus = img[(rho > 1.6) & (rho < 2.6)].mean()
    assert centre / annulus < 0.5, (centre, annulus)
    # The lumen is genuinely anechoic, the surroundings mid-grey.
    assert centre < 20 and annulus > 50


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_gt_centre_lands_on_the_dark_blob(seed):
    s = _setup(seed=seed, x=0.432, depth=6.0e-3)
    state, gt, pose, sim = s.state, s.gt, s.pose, s.sim
    img = sim.render(pose, state, None, seed)
    r, c = _gt_pixel(sim, pose, gt)
    blob = _dark_blob(img, (r, c))
    rr, cc = np.nonzero(blob)
    lateral, axial = sim.mm_per_pixel
    assert abs(cc.mean() - c) * lateral < 0.5
    assert abs(rr.mean() - r) * axial < 0.5
    # The blob is the lumen, not a merged shadow: the GT size less the blooming of the
    # bright walls (a few tenths of a millimetre per side).
    width_mm = (cc.max() - cc.min() + 1) * lateral
    height_mm = (rr.max() - rr.min() + 1) * axial
    assert 2 * gt['a'] * 1e3 - 1.0 < width_mm < 2 * gt['a'] * 1e3 + 0.3
    assert 2 * gt['b'] * 1e3 - 1.0 < height_mm < 2 * gt['b'] * 1e3 + 0.3


def test_arm_drift_and_vein_roll_move_the_lumen():
    phantom = Phantom(veins=(Vein(x=0.43, depth=5.0e-3, width=5.0e-3, height=3.5e-3),),
                      motion_amplitude=3e-3, motion_period_s=8.0)
    state = phantom.new_state()
    pose = _transverse_pose(phantom, 0.43)      # fixed probe; the arm moves under it
    state.time_s = 2.0                          # a quarter period: +3 mm along x
    state.roll = [1.0e-3]
    gt = _gt(phantom, state)
    assert gt['x'] == pytest.approx(0.434)
    sim = UltrasoundSimulator(phantom, seed=1)
    img = sim.render(pose, state, None, 0)
    r, c = _gt_pixel(sim, pose, gt)
    rr, cc = np.nonzero(_dark_blob(img, (r, c)))
    lateral, axial = sim.mm_per_pixel
    assert abs(cc.mean() - c) * lateral < 0.5 and abs(rr.mean() - r) * axial < 0.5
    assert (c - 127.5) * lateral == pytest.approx(4.0, abs=0.05)


def _enhancement(sim, pose, state, gt, wall) -> float:
    """Mean grey level below the lumen minus beside it at the same depths.

    Averaged over a few probe positions along the (straight) vein, so that the fat's
    septa, which differ from place to place, average out.
    """
    x, y = _image_coords(sim)
    r, c = _gt_pixel(sim, pose, gt)
    xc, yc = sim.pixel_to_image(r, c)
    top = yc + gt['b'] + wall + 0.8e-3
    rows = (y > top) & (y < top + 5.0e-3)
    below = rows & (np.abs(x - xc) < 0.6 * gt['a'])
    beside = rows & (np.abs(x - xc) > gt['a'] + 3e-3) & (np.abs(x - xc) < gt['a'] + 9e-3)
    diffs = []
    for k in range(4):
        moved = pose.copy()
        moved[1, 3] += k * 3e-3
        img = sim.render(moved, state, None, k).astype(float)
        diffs.append(img[below].mean() - img[beside].mean())
    return float(np.mean(diffs))


@pytest.mark.parametrize('seed', [0, 3])
def test_posterior_enhancement_below_the_lumen(seed):
    # A thick, flat arm: below and beside the vein the band is fat alone, at the same
    # depth under the skin (a curved arm puts the tissue beside the probe centre deeper).
    s = _setup(seed=seed, fat_thickness=16e-3, arm_radius=0.08, width=7.0e-3, height=5.0e-3,
               depth=6.0e-3)
    phantom, state, gt, pose, sim = s.phantom, s.state, s.gt, s.pose, s.sim
    wall = phantom.veins[0].wall
    gain = _enhancement(sim, pose, state, gt, wall)
    assert gain > 8.0, gain
    # Control: blood attenuating like fat gives no enhancement; the measurement sees it.
    factors = list(sim.config.attenuation_factor)
    factors[LUMEN] = factors[2]
    flat = UltrasoundSimulator(phantom, dataclasses.replace(
        sim.config, attenuation_factor=tuple(factors)), seed=seed)
    assert abs(_enhancement(flat, pose, state, gt, wall)) < gain / 2


def _needle(pose: np.ndarray, lateral: float, depth: float, angle_deg: float,
            off_plane: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A needle in the image plane (plus an offset along image z), pointing to +x, down."""
    a = np.radians(angle_deg)
    tip_img = np.array([lateral, depth, off_plane])
    axis_img = np.array([np.cos(a), np.sin(a), 0.0])
    return pose[:3, 3] + pose[:3, :3] @ tip_img, pose[:3, :3] @ axis_img


def test_needle_is_a_bright_line_in_plane_only():
    s = _setup()
    state, pose, sim = s.state, s.pose, s.sim
    base = sim.render(pose, state, None, 7).astype(float)
    tip_x, tip_y, angle = -5e-3, 3.5e-3, 20.0
    # Points on the upper surface of the shaft, over the 6 mm behind the tip.
    a = np.radians(angle)
    s = np.linspace(0.5e-3, 6e-3, 20)
    radius = sim.config.needle_diameter_m / 2
    line_x = tip_x - s * np.cos(a)
    line_y = tip_y - s * np.sin(a) - radius
    r, c = sim.image_to_pixel(line_x, line_y)
    ri, ci = np.rint(r).astype(int), np.rint(c).astype(int)

    img = sim.render(pose, state, _needle(pose, tip_x, tip_y, angle), 7).astype(float)
    assert img[ri, ci].mean() > 170
    assert (img[ri, ci] - base[ri, ci]).mean() > 60
    # Comet tail: the first reverberation one diameter below the line is bright too.
    spacing = round(sim.config.needle_diameter_m / sim.config.pixel_m[1])
    assert (img[ri + spacing, ci] - base[ri + spacing, ci]).mean() > 30
    # Beyond the tip the tissue is unchanged.
    r_t, c_t = sim.image_to_pixel(tip_x + 2e-3 * np.cos(a), tip_y + 2e-3 * np.sin(a))
    patch = (slice(round(float(r_t)) - 2, round(float(r_t)) + 3),
             slice(round(float(c_t)) - 2, round(float(c_t)) + 3))
    assert np.array_equal(img[patch], base[patch])

    out = sim.render(pose, state, _needle(pose, tip_x, tip_y, angle, off_plane=3e-3), 7)
    assert np.array_equal(out, base.astype(np.uint8))
    # Half a millimetre off the plane it is still seen, fainter (beam elevation profile).
    near = sim.render(pose, state, _needle(pose, tip_x, tip_y, angle, off_plane=0.5e-3),
                      7).astype(float)
    assert base[ri, ci].mean() + 10 < near[ri, ci].mean() < img[ri, ci].mean()


def test_needle_across_the_plane_is_a_dot():
    s = _setup()
    state, pose, sim = s.state, s.pose, s.sim
    base = sim.render(pose, state, None, 2).astype(float)
    # Needle along world +y (out of the transverse plane), crossing it 3 mm deep.
    tip = pose[:3, 3] + np.array([-4e-3, 10e-3, -3e-3])
    img = sim.render(pose, state, (tip, np.array([0.0, 1.0, 0.0])), 2).astype(float)
    diff = img - base
    r, c = sim.image_to_pixel(-4e-3, 3e-3 - sim.config.needle_diameter_m / 2)
    assert diff[round(float(r)), round(float(c))] > 60
    lateral = sim.mm_per_pixel[0]
    changed = np.nonzero((diff > 30).any(axis=0))[0]
    assert (changed.max() - changed.min() + 1) * lateral < 2.0


def test_probe_force_compresses_the_lumen():
    extents = []
    for force in (0.0, 4.0):
        phantom = _phantom(compliance=0.12)
        state = phantom.new_state()
        gt0 = _gt(phantom, state)
        state.probe_force_n = force
        state.probe_xy = (gt0['x'], Y0)
        gt = _gt(phantom, state)
        pose = _transverse_pose(phantom, gt['x'])
        sim = UltrasoundSimulator(phantom, seed=4)
        img = sim.render(pose, state, None, 0)
        blob = _dark_blob(img, _gt_pixel(sim, pose, gt))
        rr = np.nonzero(blob)[0]
        extents.append((rr.max() - rr.min() + 1) * sim.mm_per_pixel[1])
        assert 2 * gt['b'] * 1e3 - 1.0 < extents[-1] < 2 * gt['b'] * 1e3 + 0.3
    assert extents[1] < 0.75 * extents[0], extents


def test_frames_are_deterministic_and_noise_varies_with_the_frame():
    s = _setup()
    phantom, state, pose, sim = s.phantom, s.state, s.pose, s.sim
    a = sim.render(pose, state, None, 5)
    b = UltrasoundSimulator(phantom, seed=3).render(pose, state, None, 5)
    assert a.dtype == np.uint8 and a.shape == (256, 256)
    assert np.array_equal(a, b)
    c = sim.render(pose, state, None, 6)
    assert not np.array_equal(a, c)
    # Speckle is mostly tissue-fixed: a still probe sees it again next frame; another
    # seed draws other scatterers. Compared over a patch of deep muscle.
    d = UltrasoundSimulator(phantom, seed=4).render(pose, state, None, 5)
    patch = (slice(150, 200), slice(100, 160))

    def corr(u, v):
        return np.corrcoef(u[patch].ravel(), v[patch].ravel())[0, 1]

    assert corr(a, c) > 0.6
    assert abs(corr(a, d)) < 0.2


def test_speckle_moves_with_the_tissue():
    s = _setup()
    # Only tissue-fixed scatterers (no part redrawn per frame).
    cfg = dataclasses.replace(s.sim.config, speckle_decorrelation=0.0)
    sim = UltrasoundSimulator(s.phantom, cfg, seed=3)
    a = sim.render(s.pose, s.state, None, 0).astype(float)
    # Slide the probe by exactly 8 columns (1.2 mm, more than the speckle grain) along the
    # array: the picture of the same tissue moves 8 columns the other way.
    moved = s.pose.copy()
    moved[:3, 3] += s.pose[:3, 0] * 8 * cfg.pixel_m[0]
    b = sim.render(moved, s.state, None, 1).astype(float)
    rows = slice(40, 200)
    same_tissue = np.corrcoef(a[rows, 8:].ravel(), b[rows, :-8].ravel())[0, 1]
    same_pixels = np.corrcoef(a[rows].ravel(), b[rows].ravel())[0, 1]
    assert same_tissue > 0.95
    assert same_pixels < 0.5


def test_speckle_is_rayleigh_in_homogeneous_tissue():
    # Deep muscle: below the fascia, where only the striations modulate the echo.
    s = _setup()
    phantom, state, pose, sim = s.phantom, s.state, s.pose, s.sim
    cfg = dataclasses.replace(sim.config, dynamic_range_db=80.0, white_db=0.0)
    sim = UltrasoundSimulator(phantom, cfg, seed=1)
    img = sim.render(pose, state, None, 0).astype(float)
    level_db = img / 255.0 * 80.0 - 80.0
    patch = level_db[150:200, 100:160]
    env = 10 ** (patch / 20)
    # Rayleigh: mean/std of the envelope ~ 1.91 (SNR of fully developed speckle);
    # striations add some spread on top.
    snr = env.mean() / env.std()
    assert 1.2 < snr < 2.3, snr


def test_lifted_probe_shows_dark_gel_above_the_skin():
    s = _setup()
    phantom, state, gt, sim = s.phantom, s.state, s.gt, s.sim
    lifted = _transverse_pose(phantom, gt['x'], lift=5e-3)
    img = sim.render(lifted, state, None, 0).astype(float)
    rows_above = int(sim.image_to_pixel(0.0, 4.5e-3)[0])
    centre = slice(100, 156)
    assert img[:rows_above, centre].mean() < 5
    # The gel bridges 5 mm: the skin and the vein are seen below it.
    r_skin = int(sim.image_to_pixel(0.0, 5.5e-3)[0])
    assert img[r_skin:r_skin + 5, centre].mean() > 120
    # Lifted beyond what the gel bridges, coupling is lost: the whole image is dark.
    far = sim.render(_transverse_pose(phantom, gt['x'], lift=12e-3), state, None, 0)
    assert far.mean() < 5


def test_off_the_arm_is_dark_and_below_the_arm_is_shadow():
    s = _setup()
    phantom, state, pose, sim = s.phantom, s.state, s.pose, s.sim
    # Probe beyond the end of the arm (it ends at y = 0.28): nothing but air.
    off = pose.copy()
    off[1, 3] = 0.35
    img = sim.render(off, state, None, 0)
    # Only electronic noise, amplified by the TGC at depth.
    assert img[:128].max() < 10 and img.mean() < 5
    # Probe on the side of the arm, looking down past it: columns beyond the side are
    # air all the way, those over the arm show tissue.
    side = _transverse_pose(phantom, phantom.axis_x + phantom.arm_radius - 0.01)
    img = sim.render(side, state, None, 0).astype(float)
    lab = sim.labels(side, state)
    air_cols = ~(lab > 0).any(axis=0)
    assert air_cols.sum() > 20
    assert img[:192, air_cols].max() < 10
    assert img[:, ~air_cols].mean() > 40


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_no_invalid_arithmetic_for_random_phantoms_and_poses(seed):
    # Any NaN, division by zero or overflow on the way raises here.
    phantom = Phantom.random(seed)
    rng = np.random.default_rng(seed)
    sim = UltrasoundSimulator(phantom, seed=seed)
    state = phantom.new_state()
    state.probe_force_n = 3.0
    state.probe_xy = (phantom.veins[0].x, Y0)
    with np.errstate(invalid='raise', divide='raise', over='raise'):
        for k in range(4):
            pose = _transverse_pose(phantom, phantom.veins[0].x + rng.uniform(-0.01, 0.01))
            yaw = rng.uniform(-np.pi, np.pi)
            c, s = np.cos(yaw), np.sin(yaw)
            pose[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ pose[:3, :3]
            needle = _needle(pose, -4e-3, 3e-3, rng.uniform(0, 45), rng.uniform(-1e-3, 1e-3))
            img = sim.render(pose, state, needle, k)
            assert img.dtype == np.uint8 and img.shape == (256, 256)
            assert 20 < img.mean() < 200


# -- scene cache and per-frame noise -------------------------------------------------------

def _needle_in_view(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _needle(pose, -5e-3, 3.5e-3, 20.0)


def test_a_cached_scene_renders_exactly_as_a_fresh_simulator():
    s = _setup(compliance=0.12)
    phantom, state, pose, sim = s.phantom, s.state, s.pose, s.sim
    state.probe_force_n, state.probe_xy = 2.0, (s.gt['x'], Y0)
    other = pose.copy()
    other[1, 3] += 2e-3
    needle = _needle_in_view(pose)

    def fresh(p, k, n=None):
        return UltrasoundSimulator(phantom, seed=3).render(p, state, n, k)

    first = sim.render(pose, state, None, 0)
    assert sim.scene_updates == 1
    assert np.array_equal(first, fresh(pose, 0))
    # Same scene, other frames, with and without the needle: no new scene, same images
    # as a simulator that has never seen it.
    for k, n in ((1, None), (2, needle), (0, None)):
        img = sim.render(pose.copy(), state, n, k)
        assert np.array_equal(img, fresh(pose, k, n))
    assert np.array_equal(sim.render(pose, state, None, 0), first)
    assert sim.scene_updates == 1
    # Two scenes are kept: alternating between them computes nothing new.
    for k in range(3, 7):
        p = pose if k % 2 else other
        assert np.array_equal(sim.render(p, state, None, k), fresh(p, k))
    assert sim.scene_updates == 2
    # A third scene evicts the least recently used (``pose``: ``other`` came last);
    # coming back to it recomputes it, exactly.
    third = pose.copy()
    third[0, 3] += 1e-3
    sim.render(third, state, None, 7)
    assert sim.scene_updates == 3
    assert np.array_equal(sim.render(other, state, needle, 8), fresh(other, 8, needle))
    assert sim.scene_updates == 3
    assert np.array_equal(sim.render(pose, state, needle, 9), fresh(pose, 9, needle))
    assert sim.scene_updates == 4


def _motion_phantom() -> Phantom:
    return Phantom(veins=(Vein(x=0.43, depth=5.0e-3, width=5.0e-3, height=3.5e-3,
                               compliance=0.12),),
                   motion_amplitude=3e-3, motion_period_s=8.0)


def _changes():
    """Name, and a change of the pose or the state that moves tissue in the image."""

    def pose_nm(pose, state):
        pose[0, 3] += 1e-9

    def force(pose, state):
        state.probe_force_n += 0.5

    def roll(pose, state):
        state.roll[0] += 1e-3

    def time(pose, state):
        state.time_s += 0.5

    return [('pose by 1 nm', pose_nm), ('probe force', force), ('vein roll', roll),
            ('time with motion', time)]


@pytest.mark.parametrize('name, change', _changes())
def test_any_change_of_the_scene_invalidates_the_cache(name, change):
    phantom = _motion_phantom()
    state = phantom.new_state()
    state.time_s = 1.0
    state.probe_force_n, state.probe_xy = 1.0, (0.43, Y0)
    pose = _transverse_pose(phantom, 0.43)
    sim = UltrasoundSimulator(phantom, seed=2)
    before = sim.render(pose, state, None, 4)
    assert sim.scene_updates == 1
    change(pose, state)
    after = sim.render(pose, state, None, 4)
    assert sim.scene_updates == 2, name
    assert np.array_equal(after, UltrasoundSimulator(phantom, seed=2).render(pose, state, None, 4))
    if name != 'pose by 1 nm':      # a nanometre need not change a single pixel
        assert not np.array_equal(after, before), name


def test_what_does_not_move_tissue_keeps_the_cached_scene():
    s = _setup()
    phantom, state, pose, sim = s.phantom, s.state, s.pose, s.sim
    sim.render(pose, state, None, 0)
    # No drift: time changes nothing; no force: nor does where the probe is.
    state.time_s += 3.0
    state.probe_xy = (0.1, 0.2)
    state.probe_force_n = 0.0
    img = sim.render(pose, state, None, 1)
    assert sim.scene_updates == 1
    assert np.array_equal(img, UltrasoundSimulator(phantom, seed=3).render(pose, state, None, 1))
    # The same pose values in another array hit too.
    sim.render(np.array(pose.tolist()), state, None, 2)
    assert sim.scene_updates == 1


def test_noise_is_a_function_of_seed_and_frame_index():
    s = _setup()
    phantom, state, pose, sim = s.phantom, s.state, s.pose, s.sim
    frames = [sim.render(pose, state, None, k) for k in range(64)]
    # Every frame differs from every other (the fresh noise is new in each).
    assert len({f.tobytes() for f in frames}) == len(frames)
    # Rendering order and history do not matter; the seed does.
    other = UltrasoundSimulator(phantom, seed=3)
    for k in (63, 5, 0, 17):
        assert np.array_equal(other.render(pose, state, None, k), frames[k])
    assert not np.array_equal(UltrasoundSimulator(phantom, seed=4).render(pose, state, None, 5),
                              frames[5])


def test_consecutive_frames_have_uncorrelated_fresh_noise():
    # Off the end of the arm the image is electronic noise alone, all of it fresh: a wide
    # dynamic range shows it everywhere. Residuals about the mean of n frames correlate
    # by -1 / (n - 1) when the frames are independent.
    s = _setup()
    cfg = dataclasses.replace(s.sim.config, dynamic_range_db=110.0)
    sim = UltrasoundSimulator(s.phantom, cfg, seed=1)
    off = s.pose.copy()
    off[1, 3] = 0.35
    n = 16
    frames = np.stack([sim.render(off, s.state, None, k) for k in range(n)]).astype(float)
    assert frames.mean() > 30 and (frames == 0).mean() < 0.01
    residual = frames - frames.mean(axis=0)
    corr = [np.corrcoef(residual[k].ravel(), residual[k + 1].ravel())[0, 1]
            for k in range(n - 1)]
    assert abs(np.mean(corr) + 1 / (n - 1)) < 0.02, corr
    assert max(abs(c + 1 / (n - 1)) for c in corr) < 0.06, corr
