"""NIR + depth synthesis: vein contrast against depth, depth values, intrinsics."""

import itertools

import cv2
import numpy as np
import pytest

from ir_guidance.sim.nir import CameraConfig, NirSimulator
from ir_guidance.sim.phantom import Phantom, Vein

X0, Y0 = 0.43, 0.13
HEIGHT = 3.0e-3


def _phantom(vein_top: float, x: float = X0, **kw) -> Phantom:
    """One vein whose lumen top is ``vein_top`` under the skin (thin skin allows 2 mm)."""
    vein = Vein(x=x, depth=vein_top + HEIGHT / 2, width=4.5e-3, height=HEIGHT)
    return Phantom(veins=(vein,), skin_thickness=1.2e-3, **kw)


def _looking_down(phantom: Phantom, height: float, x: float = X0, y: float = Y0
                  ) -> np.ndarray:
    """Optical frame ``height`` above the skin top, z down, image x along world x."""
    pose = np.eye(4)
    z = np.array([0.0, 0.0, -1.0])
    x_axis = np.array([1.0, 0.0, 0.0])
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = x_axis, np.cross(z, x_axis), z
    pose[:3, 3] = [x, y, phantom.axis_z + phantom.arm_radius + height]
    return pose


def _contrast(vein_top: float, seed: int = 0, frame: int = 0) -> tuple[float, float]:
    """Contrast of the band over the vein against the skin 8-12 mm beside it.

    The image is divided by a smoothed illumination estimate: the same view of the same
    arm with its vein moved out of the way (25 mm to the side). Also returns the same
    measurement made on that reference itself (a control: no vein, no contrast).
    """
    phantom = _phantom(vein_top)
    pose = _looking_down(phantom, 0.10)
    state = phantom.new_state()
    sim = NirSimulator(phantom, seed=seed)
    ir, _ = sim.render(pose, state, frame)
    ref, _ = NirSimulator(_phantom(vein_top, x=X0 + 0.025), seed=seed).render(
        pose, state, frame)
    illumination = cv2.blur(ref.astype(float), (9, 9))
    u, _, _ = sim.project(pose, np.array([[X0, Y0, float(phantom.skin_z(X0, Y0))]]))
    col = round(float(u[0]))
    rows = slice(140, 340)
    near, far = round(8 * 6.15), round(12 * 6.15)    # 6.15 px/mm at 0.1 m

    def measure(img: np.ndarray) -> float:
        flat = img.astype(float) / illumination
        band = flat[rows, col - 3:col + 4].mean()
        beside = np.concatenate((flat[rows, col - far:col - near],
                                 flat[rows, col + near:col + far]), axis=1).mean()
        return 1.0 - band / beside

    return measure(ir), measure(ref)


def test_shallow_vein_is_a_clearly_darker_band():
    contrast, control = _contrast(2.0e-3)
    assert contrast > 0.05, contrast
    assert abs(control) < 0.01


def test_deep_vein_is_practically_invisible():
    contrast, _ = _contrast(6.0e-3)
    assert abs(contrast) < 0.015, contrast


def test_contrast_falls_with_depth():
    values = [_contrast(d)[0] for d in (2e-3, 3e-3, 4e-3, 5e-3)]
    assert all(a > b for a, b in itertools.pairwise(values)), values
    # Visible to about 3 mm (Chen et al. 2016), faint beyond.
    assert values[1] > 0.03 and values[3] < 0.02


def test_darkest_column_is_over_the_vein():
    phantom = _phantom(2.0e-3, x=X0 + 0.006)
    pose = _looking_down(phantom, 0.10)
    state = phantom.new_state()
    sim = NirSimulator(phantom, seed=2)
    ir, _ = sim.render(pose, state, 0)
    ref, _ = NirSimulator(_phantom(2.0e-3, x=X0 - 0.03), seed=2).render(pose, state, 0)
    profile = (ir.astype(float) / cv2.blur(ref.astype(float), (9, 9)))[100:380].mean(axis=0)
    g = phantom.vein_geometry(0, np.array([Y0]), state)
    over = np.array([[g['x'][0], Y0, float(phantom.skin_z(g['x'][0], Y0))]])
    u, _, z = sim.project(pose, over)
    window = slice(round(float(u[0])) - 60, round(float(u[0])) + 61)
    darkest = window.start + int(np.argmin(cv2.GaussianBlur(profile[window][None, :], (0, 0),
                                                            3.0)[0]))
    assert abs(darkest - u[0]) <= 2.0
    assert z[0] == pytest.approx(0.10, abs=1e-3)


def test_depth_is_the_distance_to_the_skin():
    phantom = _phantom(3.0e-3)
    for height in (0.10, 0.25):
        pose = _looking_down(phantom, height)
        _, depth = NirSimulator(phantom, seed=1).render(pose, phantom.new_state(), 0)
        assert depth.dtype == np.uint16 and depth.shape == (480, 640)
        centre = np.median(depth[235:246, 315:326])
        assert centre == pytest.approx(height * 1000, abs=2.0)


def test_depth_noise_grows_with_distance():
    phantom = _phantom(3.0e-3)
    spread = []
    for height in (0.10, 0.40):
        pose = _looking_down(phantom, height)
        _, depth = NirSimulator(phantom, seed=1).render(pose, phantom.new_state(), 0)
        patch = depth[200:280, 280:360].astype(float)
        # Against a smooth fit of the (slightly curved) skin: a quadratic per column.
        rows = np.arange(patch.shape[0])
        fit = np.polynomial.polynomial.polyval(
            rows, np.polynomial.polynomial.polyfit(rows, patch, 2)).T
        spread.append(np.std(patch - fit))
    assert spread[0] < 0.6 and spread[1] > 0.8, spread


def test_no_return_off_the_arm_out_of_range_and_at_grazing_angles():
    phantom = _phantom(3.0e-3)
    pose = _looking_down(phantom, 0.10)
    state = phantom.new_state()
    # No table: beyond the arm's sides there is nothing to see.
    ir, depth = NirSimulator(phantom, seed=1, table=False).render(pose, state, 0)
    u, _, _ = NirSimulator(phantom).project(pose, np.array([
        [phantom.axis_x - phantom.arm_radius - 0.005, Y0, phantom.axis_z],
        [phantom.axis_x + phantom.arm_radius + 0.005, Y0, phantom.axis_z]]))
    outside = np.r_[0:int(u[0]) - 5, int(u[1]) + 5:640]
    assert np.all(depth[:, outside] == 0)
    assert ir[:, outside].mean() < 10
    # With the table: it returns depth beside the arm; the arm's grazing edges do not.
    _, depth = NirSimulator(phantom, seed=1).render(pose, state, 0)
    row = depth[240]
    table_mm = (pose[2, 3] - (phantom.axis_z - phantom.arm_radius)) * 1000
    assert np.median(row[:20]) == pytest.approx(table_mm, abs=3)
    arm = row[200:440]
    assert np.all(arm > 0) and arm.max() < table_mm - 20
    edge = row[int(u[0]) - 5:200]
    assert (edge == 0).any()
    # Closer than the minimum range: no depth.
    _, near = NirSimulator(phantom, seed=1).render(_looking_down(phantom, 0.05), state, 0)
    assert np.all(near[200:280, 280:360] == 0)


def test_illumination_is_uneven():
    phantom = _phantom(3.0e-3)
    # Looking at the bare table beyond the end of the arm.
    pose = _looking_down(phantom, 0.10, y=0.45)
    ir, depth = NirSimulator(phantom, seed=1).render(pose, phantom.new_state(), 0)
    ir = cv2.blur(ir.astype(float), (15, 15))
    centre = ir[240, 320]
    assert ir[20, 20] < 0.8 * centre and ir[460, 620] < 0.8 * centre
    # The gradient: one side brighter than the other.
    assert ir[240, 600] > ir[240, 40] * 1.1
    assert np.all(depth[100:380, 100:540] > 0)


def test_camera_info_matches_the_config():
    cfg = CameraConfig(width=848, height=480, fx=600.0, fy=601.0, cx=420.0, cy=241.0)
    info = NirSimulator(_phantom(3.0e-3), cfg).camera_info()
    assert info['width'] == 848 and info['height'] == 480
    assert info['distortion_model'] == 'plumb_bob'
    assert np.array_equal(info['D'], np.zeros(5))
    assert np.array_equal(info['K'], [[600.0, 0.0, 420.0], [0.0, 601.0, 241.0], [0, 0, 1]])
    assert np.array_equal(info['P'][:, :3], info['K']) and not info['P'][:, 3].any()
    ir, depth = NirSimulator(_phantom(3.0e-3), cfg).render(
        _looking_down(_phantom(3.0e-3), 0.1), None, 0)
    assert ir.shape == depth.shape == (480, 848)


def test_project_inverts_the_pinhole():
    phantom = _phantom(3.0e-3)
    sim = NirSimulator(phantom)
    pose = _looking_down(phantom, 0.10)
    cfg = sim.config
    ray = np.array([(100 - cfg.cx) / cfg.fx, (50 - cfg.cy) / cfg.fy, 1.0]) * 0.2
    u, v, z = sim.project(pose, (pose[:3, :3] @ ray + pose[:3, 3])[None])
    assert (u[0], v[0], z[0]) == pytest.approx((100, 50, 0.2))


def test_frames_are_deterministic():
    phantom = _phantom(2.5e-3)
    pose = _looking_down(phantom, 0.12)
    state = phantom.new_state()
    a = NirSimulator(phantom, seed=5).render(pose, state, 3)
    b = NirSimulator(phantom, seed=5).render(pose, state, 3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = NirSimulator(phantom, seed=5).render(pose, state, 4)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


def test_config_and_pose_validation():
    for bad in ({'width': 0}, {'fx': -1.0}, {'min_range_m': 1.0}, {'vignetting': 2.0},
                {'gradient': (0.1,)}, {'cx': float('nan')}):
        with pytest.raises(ValueError):
            CameraConfig(**bad)
    sim = NirSimulator(_phantom(3.0e-3))
    with pytest.raises(ValueError):
        sim.render(np.eye(3))
    with pytest.raises(ValueError):
        sim.render(np.diag([1.0, 1.0, 2.0, 1.0]))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_no_invalid_arithmetic_for_random_phantoms_and_poses(seed):
    # Any NaN, division by zero or overflow on the way raises here.
    phantom = Phantom.random(seed, motion_amplitude=2e-3)
    rng = np.random.default_rng(seed)
    sim = NirSimulator(phantom, seed=seed)
    state = phantom.new_state()
    with np.errstate(invalid='raise', divide='raise', over='raise'):
        for k in range(3):
            state.time_s = float(rng.uniform(0, 8))
            pose = _looking_down(phantom, rng.uniform(0.08, 0.2),
                                 x=X0 + rng.uniform(-0.03, 0.03), y=Y0 + rng.uniform(-0.1, 0.1))
            tilt = rng.uniform(-0.5, 0.5)
            c, s = np.cos(tilt), np.sin(tilt)
            pose[:3, :3] = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ pose[:3, :3]
            ir, depth = sim.render(pose, state, k)
            assert ir.dtype == np.uint8 and depth.dtype == np.uint16
            assert ir.max() > 50 and (depth > 0).mean() > 0.5


# -- scene cache and per-frame noise -------------------------------------------------------

def _same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_a_cached_scene_renders_exactly_as_a_fresh_simulator():
    phantom = _phantom(2.5e-3)
    pose = _looking_down(phantom, 0.12)
    other = _looking_down(phantom, 0.15, x=X0 + 0.01)
    state = phantom.new_state()
    state.probe_force_n, state.probe_xy = 2.0, (X0, Y0)
    sim = NirSimulator(phantom, seed=5)

    def fresh(p, k):
        return NirSimulator(phantom, seed=5).render(p, state, k)

    first = sim.render(pose, state, 0)
    assert sim.scene_updates == 1
    assert _same(first, fresh(pose, 0))
    for k in (1, 2, 0):
        assert _same(sim.render(pose.copy(), state, k), fresh(pose, k))
    assert _same(sim.render(pose, state, 0), first)
    assert sim.scene_updates == 1
    # Two scenes are kept; a third evicts the least recently used (``pose``: ``other``
    # came last), and coming back to it recomputes it, exactly.
    for k in range(3, 7):
        p = pose if k % 2 else other
        assert _same(sim.render(p, state, k), fresh(p, k))
    assert sim.scene_updates == 2
    sim.render(_looking_down(phantom, 0.2), state, 7)
    assert _same(sim.render(other, state, 8), fresh(other, 8))
    assert sim.scene_updates == 3
    assert _same(sim.render(pose, state, 9), fresh(pose, 9))
    assert sim.scene_updates == 4


def _changes():
    """Name, and a change of the pose, the state or the table that the view depends on."""

    def pose_nm(sim, pose, state):
        pose[0, 3] += 1e-9

    def force(sim, pose, state):
        state.probe_force_n += 3.0

    def roll(sim, pose, state):
        state.roll[0] += 1e-3

    def time(sim, pose, state):
        state.time_s += 0.5

    def table(sim, pose, state):
        sim.table_z -= 0.01

    return [('pose by 1 nm', pose_nm), ('probe force', force), ('vein roll', roll),
            ('time with motion', time), ('table height', table)]


@pytest.mark.parametrize('name, change', _changes())
def test_any_change_of_the_scene_invalidates_the_cache(name, change):
    phantom = _phantom(2.0e-3, motion_amplitude=3e-3)
    pose = _looking_down(phantom, 0.12)
    state = phantom.new_state()
    state.time_s = 1.0
    state.probe_force_n, state.probe_xy = 1.0, (X0, Y0)
    sim = NirSimulator(phantom, seed=2)
    before = sim.render(pose, state, 4)
    assert sim.scene_updates == 1
    change(sim, pose, state)
    after = sim.render(pose, state, 4)
    assert sim.scene_updates == 2, name
    fresh = NirSimulator(phantom, seed=2, table_z=sim.table_z)
    assert _same(after, fresh.render(pose, state, 4))
    if name != 'pose by 1 nm':      # a nanometre need not change a single pixel
        assert not _same(after, before), name


def test_what_does_not_change_the_view_keeps_the_cached_scene():
    phantom = _phantom(2.0e-3)
    pose = _looking_down(phantom, 0.12)
    state = phantom.new_state()
    sim = NirSimulator(phantom, seed=2)
    sim.render(pose, state, 0)
    state.time_s += 3.0                 # no drift
    state.probe_xy = (0.1, 0.2)         # no force
    out = sim.render(np.array(pose.tolist()), state, 1)
    assert sim.scene_updates == 1
    assert _same(out, NirSimulator(phantom, seed=2).render(pose, state, 1))


def test_noise_is_a_function_of_seed_and_frame_index():
    phantom = _phantom(2.5e-3)
    pose = _looking_down(phantom, 0.12)
    state = phantom.new_state()
    sim = NirSimulator(phantom, seed=5)
    frames = [sim.render(pose, state, k) for k in range(48)]
    assert len({ir.tobytes() for ir, _ in frames}) == len(frames)
    assert len({depth.tobytes() for _, depth in frames}) == len(frames)
    other = NirSimulator(phantom, seed=5)
    for k in (47, 3, 0):
        assert _same(other.render(pose, state, k), frames[k])
    assert not _same(NirSimulator(phantom, seed=6).render(pose, state, 3), frames[3])


def test_consecutive_frames_have_independent_noise_of_the_right_size():
    # The bare table beyond the end of the arm: per pixel, the variance over n frames is
    # the model's (shot + read noise; depth_noise_per_m * z^2) only if the frames' noise
    # is independent, and consecutive residuals correlate by -1 / (n - 1).
    phantom = _phantom(3.0e-3)
    pose = _looking_down(phantom, 0.30, y=0.6)
    sim = NirSimulator(phantom, seed=1)
    cfg = sim.config
    n = 24
    frames = [sim.render(pose, phantom.new_state(), k) for k in range(n)]
    patch = (slice(140, 340), slice(200, 440))
    ir = np.stack([f[0][patch] for f in frames]).astype(float)
    depth = np.stack([f[1][patch] for f in frames]).astype(float)
    z = depth.mean(axis=0) * cfg.depth_scale
    assert np.all(depth > 0) and 0.3 < z.mean() < 0.4
    model = {'ir': cfg.shot_noise_dn * ir.mean(axis=0) + cfg.read_noise_dn ** 2,
             'depth': (cfg.depth_noise_per_m * z ** 2 / cfg.depth_scale) ** 2}
    for name, stack in (('ir', ir), ('depth', depth)):
        # Rounding to integers adds 1/12.
        ratio = stack.var(axis=0, ddof=1).mean() / (model[name] + 1 / 12).mean()
        assert 0.93 < ratio < 1.07, (name, ratio)
        residual = stack - stack.mean(axis=0)
        corr = [np.corrcoef(residual[k].ravel(), residual[k + 1].ravel())[0, 1]
                for k in range(n - 1)]
        assert abs(np.mean(corr) + 1 / (n - 1)) < 0.02, (name, corr)
