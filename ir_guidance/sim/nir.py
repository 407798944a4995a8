"""NIR (~850 nm) and depth image synthesis for a RealSense-D4xx-like camera (ROS-free).

The camera looks along +z of ``nir_camera_optical_frame`` (REP 103: x right, y down);
pixel ``(v, u)`` (row, column) sees the ray ``((u - cx) / fx, (v - cy) / fy, 1)`` in that
frame, a pinhole with no distortion. Both images share the intrinsics (on a D4xx the
depth is computed for the left IR imager, whose picture the NIR image is).

Scene: the forearm's skin (the phantom's cylinder, open at its ends, moving with the
phantom's drift) above a table plane; every ray is intersected with both analytically.

NIR image:
- Diffuse (Lambertian) skin of ``skin_albedo`` lit from the camera (an LED ring), so
  ``I = gain * albedo * illumination(u, v) * cos(incidence) * (reference / range)^2``
  plus ambient light. The illumination is uneven: a radial falloff from the image centre
  and a linear gradient across it.
- Veins darken the skin over them by ``c0 * exp(-d / d0)`` with ``d`` the depth of the
  top of the lumen under the skin: near-infrared light is absorbed by haemoglobin, and
  the tissue above scatters it, so the shadow fades and blurs with depth. With the
  defaults a vein 2 mm deep shows ~9 % contrast, one 4 mm deep ~2 %, 6 mm deep 0.3 %:
  veins are visible to about 3 mm (Chen et al. 2016). Across the vein the shadow is a
  Gaussian of ``sigma = 0.75 * half-width + blur_per_depth * d``.
- A faint tissue-fixed albedo texture; read noise plus shot noise.

Depth image: the z coordinate of the hit in millimetres (uint16, ``depth_scale`` m per
unit), with RealSense-like noise ``sigma = depth_noise_per_m * z^2`` that is spatially
correlated (drawn at a quarter of the resolution), and 0 (no data) where the ray hits
nothing, the range is outside ``[min_range_m, max_range_m]``, or the surface is too
oblique to return the projected pattern.

A frame is a pure function of its arguments and the seed: its noise depends on
``(seed, frame_index)`` alone.

Speed (a render runs at 30 Hz inside the 1 kHz physics loop):

- Everything that depends on the scene alone (the ray casting, the shading and vein
  contrast, the noise-free NIR image and its noise level, the clean depth and its noise
  level, both 0 where there is no depth) is cached, keyed exactly on what it depends on:
  the bytes of the 4x4 camera pose, the table height and the phantom state's values
  that move the skin or the veins (:func:`ir_guidance.sim.ultrasound.state_key`). Two
  scenes are cached; a frame of an unchanged scene only adds noise and converts
  (``scene_updates`` counts the scenes computed).
- The noise comes from banks of standard normals drawn once per seed: the NIR noise
  from a full-resolution bank of ``(H + 64) x (W + 64)``, the depth noise from a
  quarter-resolution bank with room for 64 x 64 windows two samples (eight pixels)
  apart. A frame takes one window of each; the window index (one of 64 x 64) is a seeded
  random permutation of ``frame_index`` modulo 4096, so the frames of any 4096 in a row
  (2 min 16 s at 30 Hz) use different windows and consecutive frames' windows are not a
  fixed shift apart. Different windows share no sample at any pixel (the NIR noise is
  white; the depth noise, interpolated from its quarter-resolution samples, reads
  samples at least two apart), so consecutive frames' noise is exactly as uncorrelated,
  pixel by pixel, as freshly drawn noise, with the same Gaussian statistics (the depth
  window is interpolated as before, so its correlation and the variance correction
  over it are unchanged). The noise repeats after 4096 frames, identical only if the
  scene is too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ir_guidance.sim.phantom import Phantom, PhantomState
from ir_guidance.sim.scene_cache import SceneCache, noise_bank, rigid_pose, state_key

_Y_TABLE_STEP = 5.0e-5          # m: spacing of the per-y vein geometry table
_LOW = 4                        # the vein shading and depth noise are computed at 1/_LOW
_NOISE_WINDOWS = 64             # noise banks: windows per axis (64 x 64 frames)
_SCENE_CACHE = 2                # scenes kept (their frame-independent maps)


@dataclass(frozen=True)
class CameraConfig:
    """Intrinsics, range and the optical model of the NIR/depth camera.

    The defaults are a D4xx-class camera at 640 x 480 (about 55 x 43 degrees).
    """

    width: int = 640
    height: int = 480
    fx: float = 615.0
    fy: float = 615.0
    cx: float = 319.5
    cy: float = 239.5
    rate_hz: float = 30.0
    depth_scale: float = 0.001           # metres per depth unit: uint16 millimetres
    min_range_m: float = 0.07
    max_range_m: float = 0.5
    depth_noise_per_m: float = 0.01      # sigma = this * z^2 (0.1 mm at 0.1 m, 4 mm at 0.6 m)
    grazing_cos: float = 0.15            # no depth where the surface is more oblique
    # NIR image formation (digital numbers, DN).
    gain_dn: float = 290.0               # DN of a white diffuser at reference range, centre
    reference_range_m: float = 0.10
    ambient_dn: float = 4.0
    skin_albedo: float = 0.6
    table_albedo: float = 0.25
    vignetting: float = 0.35             # illumination loss at the image corners
    gradient: tuple[float, float] = (0.12, -0.06)  # across the image (x, y), per half-size
    read_noise_dn: float = 1.5
    shot_noise_dn: float = 0.08          # DN per photo-electron: variance = this * I
    # Veins.
    vein_contrast: float = 0.5           # c0
    vein_decay_m: float = 1.2e-3         # d0
    vein_blur_per_depth: float = 0.5     # growth of the shadow's sigma per metre of depth

    def __post_init__(self) -> None:
        for name in ('width', 'height'):
            value = getattr(self, name)
            if not (isinstance(value, int) and 8 <= value <= 8192):
                raise ValueError(f'camera {name} must be an int in [8, 8192], got {value}')
        for name in ('fx', 'fy', 'rate_hz', 'depth_scale', 'max_range_m', 'gain_dn',
                     'reference_range_m', 'vein_decay_m'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f'camera {name} must be finite and > 0, got {value}')
        for name in ('cx', 'cy', 'min_range_m', 'depth_noise_per_m', 'ambient_dn',
                     'read_noise_dn', 'shot_noise_dn', 'vein_blur_per_depth'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f'camera {name} must be finite and >= 0, got {value}')
        for name in ('grazing_cos', 'skin_albedo', 'table_albedo', 'vignetting',
                     'vein_contrast'):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'camera {name} must be in [0, 1], got {value}')
        if not self.min_range_m < self.max_range_m:
            raise ValueError('camera min_range_m must be below max_range_m')
        gradient = tuple(float(g) for g in self.gradient)
        if len(gradient) != 2 or not all(math.isfinite(g) and abs(g) < 1 for g in gradient):
            raise ValueError(f'camera gradient must be two values in (-1, 1), got {gradient}')
        object.__setattr__(self, 'gradient', gradient)

    @property
    def k(self) -> np.ndarray:
        """The 3x3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


class _Scene:
    """The frame-independent maps of one scene (one cache entry)."""

    def __init__(self, shape: tuple[int, int]) -> None:
        # Noise-free NIR image and its noise's standard deviation (DN); depth without noise
        # and the noise's standard deviation (depth units), both 0 where there is no depth.
        self.ir = np.empty(shape, np.float32)
        self.ir_sigma = np.empty(shape, np.float32)
        self.depth = np.empty(shape, np.float32)
        self.depth_sigma = np.empty(shape, np.float32)


class NirSimulator:
    """Renders NIR and depth frames of the phantom's forearm; see the module docs.

    ``table_z`` is the height of the table plane under the arm (None: the arm rests on
    it); ``table=False`` leaves nothing below the arm (no return there). Not thread-safe:
    one simulator reuses its work buffers from frame to frame. It caches the last two
    scenes' maps (see the module docs); ``scene_updates`` counts the scenes computed.
    """

    def __init__(self, phantom: Phantom, config: CameraConfig | None = None, seed: int = 0,
                 table_z: float | None = None, table: bool = True) -> None:
        self.phantom = phantom
        self.config = config if config is not None else CameraConfig()
        self.seed = int(seed)
        if table_z is None:
            table_z = phantom.axis_z - phantom.arm_radius
        if not math.isfinite(float(table_z)):
            raise ValueError(f'table_z must be finite, got {table_z}')
        self.table_z = float(table_z) if table else None
        cfg = self.config
        h, w = cfg.height, cfg.width
        # Ray directions in the optical frame (z = 1), full and quarter resolution.
        self._au = ((np.arange(w) - cfg.cx) / cfg.fx).astype(np.float32)
        self._bv = ((np.arange(h) - cfg.cy) / cfg.fy).astype(np.float32)
        norm = np.sqrt(1.0 + self._au[None, :] ** 2 + self._bv[:, None] ** 2)
        self._inv_norm = (1.0 / norm).astype(np.float32)
        self._low_shape = (-(-h // _LOW), -(-w // _LOW))
        low_u = np.arange(self._low_shape[1]) * _LOW + (_LOW - 1) / 2
        low_v = np.arange(self._low_shape[0]) * _LOW + (_LOW - 1) / 2
        self._low_au = ((low_u - cfg.cx) / cfg.fx).astype(np.float32)
        self._low_bv = ((low_v - cfg.cy) / cfg.fy).astype(np.float32)
        # Illumination (vignetting + gradient) times the gain, per pixel.
        un = (np.arange(w) - (w - 1) / 2) / ((w - 1) / 2)
        vn = (np.arange(h) - (h - 1) / 2) / ((h - 1) / 2)
        r2 = (un[None, :] ** 2 + vn[:, None] ** 2) / 2.0
        illum = (1.0 - cfg.vignetting * r2) * (1.0 + cfg.gradient[0] * un[None, :]
                                               + cfg.gradient[1] * vn[:, None])
        self._illum = (cfg.gain_dn * illum).astype(np.float32)
        # The depth noise is drawn at low resolution and interpolated (bilinear), which
        # lowers its variance between the samples: this map restores sigma everywhere.
        def interpolated_variance(n: int, n_low: int) -> np.ndarray:
            src = (np.arange(n) + 0.5) / _LOW - 0.5
            frac = src - np.floor(src)
            var = (1 - frac) ** 2 + frac ** 2
            var[(src < 0) | (src > n_low - 1)] = 1.0
            return var

        var = (interpolated_variance(h, self._low_shape[0])[:, None]
               * interpolated_variance(w, self._low_shape[1])[None, :])
        self._depth_sigma = (cfg.depth_noise_per_m / np.sqrt(var)).astype(np.float32)
        rng = np.random.default_rng((self.seed, 0x0A1B))
        self._phase = rng.uniform(0.0, 2 * np.pi, 4)
        # Noise banks (see the module docs): NIR at full resolution, windows one pixel
        # apart; depth at quarter resolution, windows two samples apart.
        n = _NOISE_WINDOWS
        self._ir_bank, self._noise_order = noise_bank(
            self.seed, 0x0A1C, (h + n, w + n), n * n)
        low_h, low_w = self._low_shape
        self._depth_bank, _ = noise_bank(
            self.seed, 0x0A1D, (low_h + 2 * n, low_w + 2 * n), n * n)
        self._cache: SceneCache[_Scene] = SceneCache(
            _SCENE_CACHE, lambda: _Scene((self.config.height, self.config.width)))
        f32 = [np.empty((h, w), np.float32) for _ in range(8)]
        (self._dx, self._dy, self._dz, self._a, self._b, self._t, self._s, self._u) = f32
        self._noise = np.empty((h, w), np.float32)
        self._shade = np.empty((h, w), np.float32)

    # -- camera model ---------------------------------------------------------------------
    def camera_info(self) -> dict[str, Any]:
        """Intrinsics in the layout of sensor_msgs/CameraInfo (the node converts them)."""
        cfg = self.config
        k = cfg.k
        p = np.zeros((3, 4))
        p[:, :3] = k
        return {'width': cfg.width, 'height': cfg.height, 'distortion_model': 'plumb_bob',
                'D': np.zeros(5), 'K': k, 'R': np.eye(3), 'P': p, 'rate_hz': cfg.rate_hz,
                'depth_scale': cfg.depth_scale}

    def project(self, camera_pose: np.ndarray, points: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel ``(u, v)`` (column, row) and optical-frame z of world points ``(N, 3)``."""
        t = rigid_pose(camera_pose, 'camera_pose')
        p = (np.atleast_2d(np.asarray(points, dtype=float)) - t[:3, 3]) @ t[:3, :3]
        cfg = self.config
        with np.errstate(divide='ignore', invalid='ignore'):
            u = cfg.fx * p[:, 0] / p[:, 2] + cfg.cx
            v = cfg.fy * p[:, 1] / p[:, 2] + cfg.cy
        return u, v, p[:, 2]

    # -- rendering ------------------------------------------------------------------------
    def render(self, camera_pose: np.ndarray, state: PhantomState | None = None,
               frame_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """NIR image (uint8, H x W) and depth (uint16 in ``depth_scale`` units, 0 = none).

        ``camera_pose`` is the 4x4 pose of ``nir_camera_optical_frame`` in the world. The
        noise is a function of ``(seed, frame_index)``: a frame is a pure function of the
        arguments, whatever was rendered before (the scene cache only saves time).
        """
        cfg = self.config
        pose, pose_key = self._cache.pose(camera_pose, 'camera_pose')
        scene = self._scene(pose, pose_key, state)
        window = int(self._noise_order[int(frame_index) % len(self._noise_order)])
        r, c = divmod(window, _NOISE_WINDOWS)
        noise = self._noise
        # NIR: read plus shot noise, rounded and saturated to uint8.
        cv2.multiply(self._ir_bank[r:r + cfg.height, c:c + cfg.width], scene.ir_sigma,
                     dst=noise)
        ir = cv2.add(scene.ir, noise, dtype=cv2.CV_8U)
        # Depth: z^2 noise, correlated over a few pixels (interpolated from 1/_LOW).
        low_h, low_w = self._low_shape
        low = self._depth_bank[2 * r:2 * r + low_h, 2 * c:2 * c + low_w]
        cv2.resize(low, (cfg.width, cfg.height), dst=noise, interpolation=cv2.INTER_LINEAR)
        cv2.multiply(noise, scene.depth_sigma, dst=noise)
        depth = cv2.add(scene.depth, noise, dtype=cv2.CV_16U)
        return ir, depth

    # -- scene cache ----------------------------------------------------------------------
    def _scene(self, pose: np.ndarray, pose_key: bytes, state: PhantomState | None
               ) -> _Scene:
        """The cached maps of the scene, computed if it is not one of the last two."""
        key = (pose_key, state_key(self.phantom, state), self.table_z, id(self.phantom))
        return self._cache.get(key, lambda scene: self._compute_scene(pose, state, scene))

    @property
    def scene_updates(self) -> int:
        """Scenes computed so far (cache misses)."""
        return self._cache.updates

    def _compute_scene(self, pose: np.ndarray, state: PhantomState | None, scene: _Scene
                       ) -> None:
        """Fill ``scene`` with the frame-independent maps of the view from ``pose``."""
        cfg = self.config
        rot, centre = pose[:3, :3], pose[:3, 3]
        p = self.phantom
        off = p.offset(state)
        ox = float(centre[0] - p.axis_x - off[0])
        oy = float(centre[1] - p.center_y - off[1])
        oz = float(centre[2] - p.axis_z - off[2])
        dx, dy, dz = self._dx, self._dy, self._dz
        for k, out in enumerate((dx, dy, dz)):
            np.add((self._bv * np.float32(rot[k, 1]) + np.float32(rot[k, 2]))[:, None],
                   (self._au * np.float32(rot[k, 0]))[None, :], out=out)

        # Ray - cylinder (axis along y): a t^2 + 2 b t + c = 0, t = z in the optical frame.
        a, b, t, s = self._a, self._b, self._t, self._s
        np.multiply(dx, dx, out=a)
        np.multiply(dz, dz, out=s)
        a += s
        np.multiply(dx, np.float32(ox), out=b)
        np.multiply(dz, np.float32(oz), out=s)
        b += s
        c = ox * ox + oz * oz - p.arm_radius ** 2
        np.multiply(b, b, out=s)
        np.multiply(a, np.float32(c), out=t)
        s -= t                                  # discriminant / 4
        hit = s > 0
        cv2.max(s, 0.0, dst=s)
        cv2.sqrt(s, dst=s)
        np.add(b, s, out=t)
        np.negative(t, out=t)
        cv2.max(a, 1e-12, dst=a)
        t /= a                                  # nearest root
        hit &= t > 0
        # Within the arm's length: y of the hit.
        np.multiply(dy, t, out=a)
        a += np.float32(oy)
        np.abs(a, out=a)
        hit &= a <= np.float32(p.length / 2)
        # Lambert: cos(incidence) = sqrt(disc) / (R |d|).
        cos = s
        cos *= self._inv_norm
        cos *= np.float32(1.0 / p.arm_radius)

        albedo = self._shade
        albedo[...] = hit
        albedo *= np.float32(cfg.skin_albedo)
        if self.table_z is not None:
            # The table where the arm is not hit (it lies below the arm).
            t_table = cv2.min(dz, -1e-9, dst=self._u)
            np.divide(np.float32(self.table_z - centre[2]), t_table, out=t_table)
            table = t_table > 0
            table &= ~hit
            mask = table.view(np.uint8)
            cv2.copyTo(t_table, mask, t)
            np.multiply(dz, self._inv_norm, out=t_table)
            np.negative(t_table, out=t_table)
            cv2.copyTo(t_table, mask, cos)
            np.copyto(albedo, np.float32(cfg.table_albedo), where=table)
            seen = hit | table
        else:
            seen = hit
        t[~seen] = 0.0
        cos[~seen] = 0.0

        # Vein shadows and skin texture, at quarter resolution, interpolated.
        low = self._skin_shading(rot, (ox, oy, oz), state)
        cv2.resize(low, (cfg.width, cfg.height), dst=a, interpolation=cv2.INTER_LINEAR)
        np.copyto(albedo, albedo * a, where=hit)

        # NIR intensity: albedo * illumination * cos * (reference / range)^2 + ambient.
        img = scene.ir
        cv2.max(t, 1e-6, dst=b)
        np.multiply(b, np.float32(1.0 / cfg.reference_range_m), out=b)
        np.multiply(b, b, out=b)                # (z / reference)^2
        np.multiply(albedo, cos, out=img)
        img *= self._illum
        img /= b
        # |d|^2 = 1 / inv_norm^2: range^2 = z^2 |d|^2.
        img *= self._inv_norm
        img *= self._inv_norm
        img += np.float32(cfg.ambient_dn)

        # Standard deviation of the NIR noise: read noise plus shot noise.
        sigma = scene.ir_sigma
        np.multiply(img, np.float32(cfg.shot_noise_dn), out=sigma)
        sigma += np.float32(cfg.read_noise_dn ** 2)
        cv2.sqrt(sigma, dst=sigma)

        # Depth: z in depth units; its noise sigma = depth_noise_per_m * z^2 (with the
        # interpolation's variance restored); both 0 where there is no depth.
        valid = seen & (cos >= np.float32(cfg.grazing_cos))
        valid &= t >= np.float32(cfg.min_range_m)
        valid &= t <= np.float32(cfg.max_range_m)
        invalid = ~valid
        np.multiply(t, np.float32(1.0 / cfg.depth_scale), out=scene.depth)
        scene.depth[invalid] = 0.0
        d_sigma = scene.depth_sigma
        np.multiply(t, t, out=d_sigma)
        d_sigma *= self._depth_sigma
        d_sigma *= np.float32(1.0 / cfg.depth_scale)
        d_sigma[invalid] = 0.0

    # -- internals ------------------------------------------------------------------------
    def _skin_shading(self, rot: np.ndarray, origin: tuple[float, float, float],
                      state: PhantomState | None) -> np.ndarray:
        """Multiplicative skin shading (veins, texture) on the quarter-resolution grid."""
        p, cfg = self.phantom, self.config
        ox, oy, oz = origin
        au, bv = self._low_au, self._low_bv
        d = [np.add((bv * np.float32(rot[k, 1]) + np.float32(rot[k, 2]))[:, None],
                    (au * np.float32(rot[k, 0]))[None, :]) for k in range(3)]
        a = d[0] * d[0] + d[2] * d[2]
        b = d[0] * np.float32(ox) + d[2] * np.float32(oz)
        disc = b * b - a * np.float32(ox * ox + oz * oz - p.arm_radius ** 2)
        hit = disc > 0
        t = -(b + np.sqrt(np.maximum(disc, 0.0))) / np.maximum(a, np.float32(1e-12))
        hit &= t > 0
        # Hit points in arm coordinates (x lateral from the axis, y along from the centre).
        x = d[0] * t + np.float32(ox)
        y = d[1] * t + np.float32(oy)
        shade = np.ones_like(x)
        if not hit.any():
            return shade
        # A faint albedo texture fixed to the skin.
        ph = self._phase
        shade += np.float32(0.008) * np.sin(x * np.float32(2 * np.pi / 7e-3)
                                            + np.float32(ph[0]))
        shade += np.float32(0.006) * np.sin(y * np.float32(2 * np.pi / 11e-3)
                                            + np.float32(ph[1]))
        off = p.offset(state)
        ys = y[hit].astype(float)
        y_lo, y_hi = float(ys.min()), float(ys.max())
        n = max(2, min(16384, math.ceil((y_hi - y_lo) / _Y_TABLE_STEP) + 1))
        table_y = np.linspace(y_lo, y_hi, n)
        world_y = table_y + p.center_y + off[1]
        per_m = (n - 1) / (y_hi - y_lo) if y_hi > y_lo else 0.0
        index = np.clip(np.rint((y - np.float32(y_lo)) * np.float32(per_m)), 0, n - 1)
        index = index.astype(np.intp)
        xh = x.astype(float)
        for i in range(len(p.veins)):
            g = p.vein_geometry(i, world_y, state)
            xc = np.broadcast_to(np.asarray(g['x'], dtype=float), table_y.shape)
            top = (np.asarray(p.skin_z(xc, world_y, state), dtype=float)
                   - (np.asarray(g['z'], dtype=float) + np.asarray(g['b'], dtype=float)))
            top = np.maximum(np.nan_to_num(top, nan=np.inf), 0.0)
            half = np.broadcast_to(np.asarray(g['a'], dtype=float), table_y.shape)
            slope = np.gradient(xc, table_y) if n > 2 else np.zeros(n)
            strength = cfg.vein_contrast * np.exp(-top / cfg.vein_decay_m)
            sigma = 0.75 * half + cfg.vein_blur_per_depth * top
            # Distance across the vein (perpendicular to its course) from the hit point.
            centre = xc - p.axis_x - off[0]
            lateral = xh - np.take(centre, index)
            lateral /= np.take(np.sqrt(1.0 + slope ** 2), index)
            lateral /= np.take(sigma, index)
            lateral *= lateral
            lateral *= -0.5
            dark = np.exp(lateral, out=lateral)
            dark *= np.take(strength, index)
            dark *= hit
            shade *= (1.0 - dark).astype(np.float32)
        return shade
