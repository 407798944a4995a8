"""B-mode image synthesis for a linear ultrasound probe over the forearm phantom (ROS-free).

The image lies in the plane ``z = 0`` of ``us_image_frame`` (urdf/rig.urdf.xacro): origin
at the centre of the probe face, x lateral along the array, y depth into the tissue.
Pixel ``(r, c)`` is the point ``x = (c + 0.5) / cols * width - width / 2``,
``y = (r + 0.5) / rows * depth``; each column is one beam line.

The model is the usual convolution model of a B-mode image, in 2D:

- Tissue labels come from the phantom geometry (:mod:`ir_guidance.sim.phantom`); each
  label has a backscatter amplitude (skin bright, fat hypoechoic with brighter septa,
  muscle mid-grey with striations and a bright fascia on top, vein wall bright, lumen
  anechoic). The septa and striations are tissue-fixed procedural textures.
- Scatterers are a complex Gaussian field. Most of it is tissue-fixed (a hash of the
  tissue point, so a still probe sees the same speckle and a moving one sees it move and
  decorrelate); ``speckle_decorrelation`` of its variance, plus the electronic noise, is
  fresh in every frame (see "Speed" below for how it is drawn).
- Specular reflectors add a coherent term: the vein walls (strongest where the wall faces
  the beam, fading at the sides) and the needle (a bright line where it lies within the
  slice thickness of the image plane, with a comet tail of reverberations below it).
- The field is convolved with an anisotropic Gaussian PSF (axial finer than lateral);
  its magnitude is Rayleigh-distributed speckle in homogeneous tissue.
- Attenuation is integrated down every beam line through the labels (blood attenuates
  far less than tissue, hence the posterior enhancement below a vein); time-gain
  compensation makes up most of the soft-tissue loss; electronic noise enters before
  the TGC, so it shows at depth.
- Where the probe face does not touch the skin the gap is anechoic (gel) up to
  ``coupling_gap_m``; beyond that, or below air inside the field of view, the beam line
  carries no echo at all (coupling lost).
- Log compression over ``dynamic_range_db`` to uint8.

Attenuation values follow soft-tissue tables (one-way dB/cm/MHz: fat ~0.6, skin and
muscle ~0.7, blood ~0.18) and are applied both ways (round trip).

Speed (a render runs at 30 Hz inside the 1 kHz physics loop):

- Everything that depends on the scene alone (labels, echo and attenuation maps, TGC and
  coupling, the tissue-fixed speckle, the walls' and septa's specular echoes, the scale
  of the fresh noise) is cached, keyed exactly on what it depends on: the bytes of the
  4x4 pose and the phantom state's values that move tissue (see :func:`state_key`). Two
  scenes are cached; a frame of an unchanged scene only adds the fresh noise and the
  needle to the cached field, blurs it and log-compresses it. ``scene_updates`` counts
  the scenes computed.
- The fresh noise comes from a bank of standard normals drawn once per seed (two fields
  of ``rows + 64 * sr`` by ``cols + 64 * sc``, about six frames' worth), from which a
  frame takes a ``rows x cols`` window at offset ``(i * sr, j * sc)``. The window index
  ``(i, j)`` (one of 64 x 64) is a seeded random permutation of ``frame_index`` modulo
  4096, so a frame is a pure function of ``(seed, frame_index)``, the frames of any 4096
  in a row (2 min 16 s at 30 Hz) all use different windows, and consecutive frames'
  windows are not a fixed shift apart. The strides ``sr, sc`` are four PSF sigmas
  (axial, lateral; 4 and 8 pixels with the defaults). The fresh noise matters after the
  PSF, and there two different windows correlate at the same pixel by at most
  ``exp(-4) ~ 0.02`` (blurred white noise at a lag of four sigmas: two neighbouring
  windows, which a random permutation makes consecutive for ~1 frame in 1000; windows
  farther apart share no samples within the kernel). So from frame to frame the fresh
  speckle and the electronic noise are as uncorrelated as freshly drawn ones, with the
  same Gaussian statistics. The noise repeats after 4096 frames (identical only if the
  scene is too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ir_guidance.sim.phantom import (
    AIR,
    FAT,
    LABEL_NAMES,
    LUMEN,
    MUSCLE,
    SKIN,
    WALL,
    Phantom,
    PhantomState,
)
from ir_guidance.sim.scene_cache import SceneCache, noise_bank, rigid_pose, state_key

_LN10_20 = math.log(10.0) / 20.0
_DB_20_LN10 = 20.0 / math.log(10.0)
_NOISE_BANK = 1 << 16           # tissue-fixed scatterer amplitudes, indexed by a hash
_Y_TABLE_STEP = 2.0e-5          # m: spacing of the per-y vein geometry table
_COARSE_STEP = 8                # pixels: grid of the pass that boxes each vein
_FRESH_WINDOWS = 64             # fresh-noise bank: windows per axis (64 x 64 frames)
_SCENE_CACHE = 2                # scenes kept (their frame-independent maps)


# Per label (AIR, SKIN, FAT, MUSCLE, WALL, LUMEN): backscatter amplitude in dB re a unit
# reflector, and attenuation relative to ``attenuation_db_cm_mhz``.
ECHO_DB = (-300.0, -12.0, -36.0, -23.0, -24.0, -80.0)
ATTENUATION_FACTOR = (0.0, 1.2, 1.0, 1.2, 1.0, 0.3)
# Texture (dB re the tissue's echo, or re a unit reflector for the coherent parts).
_SEPTA_DB = 12.0                # diffuse echo of fat septa over the lobules
_SEPTA_COHERENT_DB = -22.0      # specular echo of a septum
_STRIATION_DB = 9.0             # muscle perimysium over the fibres
_FASCIA_DB = -12.0              # specular echo of the fascia on top of the muscle
_FASCIA_M = 0.35e-3
_EPIDERMIS_DB = 5.0             # entry echo: the top of the skin is brighter
_EPIDERMIS_M = 0.25e-3


@dataclass(frozen=True)
class UltrasoundConfig:
    """Probe geometry, imaging parameters and the tissue model of the B-mode synthesis."""

    width_m: float = 0.038               # lateral field of view (the array length)
    depth_m: float = 0.040               # imaging depth
    cols: int = 256
    rows: int = 256
    frequency_mhz: float = 10.0
    gain_db: float = 0.0                 # overall receive gain
    dynamic_range_db: float = 50.0       # log compression: white_db - range is black
    white_db: float = 0.0                # echo amplitude (dB re a unit reflector) shown as 255
    rate_hz: float = 30.0
    # Point-spread function (full widths at half maximum) and slice thickness.
    axial_fwhm_m: float = 0.3e-3
    lateral_fwhm_m: float = 0.7e-3
    slice_thickness_m: float = 1.0e-3    # elevational FWHM of the beam
    # Speckle.
    speckle_cell_m: float = 0.1e-3       # size of a tissue-fixed scatterer cell
    speckle_decorrelation: float = 0.1   # fraction of speckle variance redrawn each frame
    noise_floor_db: float = -88.0        # electronic noise before TGC, dB re a unit reflector
    # Attenuation: one-way soft-tissue coefficient, applied round trip; TGC makes up this
    # fraction of it (as a function of depth only).
    attenuation_db_cm_mhz: float = 0.6
    tgc_compensation: float = 0.85
    # Coupling: the largest probe-skin gap that the gel still bridges.
    coupling_gap_m: float = 6.0e-3
    # Needle (20 G: 0.9 mm outer diameter; the URDF needle is 50 mm long).
    needle_diameter_m: float = 0.9e-3
    needle_length_m: float = 0.05
    needle_db: float = 2.0               # coherent echo of a needle normal to the beam
    reverb_count: int = 6
    reverb_decay: float = 0.55           # amplitude ratio of successive reverberations
    wall_specular_db: float = -3.0       # coherent echo of a wall normal to the beam
    # Per label (AIR, SKIN, FAT, MUSCLE, WALL, LUMEN): see ECHO_DB, ATTENUATION_FACTOR.
    echo_db: tuple[float, ...] = ECHO_DB
    attenuation_factor: tuple[float, ...] = ATTENUATION_FACTOR

    def __post_init__(self) -> None:
        for name in ('width_m', 'depth_m', 'frequency_mhz', 'dynamic_range_db', 'rate_hz',
                     'axial_fwhm_m', 'lateral_fwhm_m', 'slice_thickness_m',
                     'speckle_cell_m', 'needle_diameter_m', 'needle_length_m'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f'ultrasound {name} must be finite and > 0, got {value}')
        for name in ('gain_db', 'white_db', 'noise_floor_db', 'needle_db',
                     'wall_specular_db'):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f'ultrasound {name} is not finite')
        for name in ('cols', 'rows'):
            value = getattr(self, name)
            if not (isinstance(value, int) and 8 <= value <= 4096):
                raise ValueError(f'ultrasound {name} must be an int in [8, 4096], got {value}')
        if not (isinstance(self.reverb_count, int) and 0 <= self.reverb_count <= 50):
            raise ValueError(f'reverb_count must be an int in [0, 50], got {self.reverb_count}')
        for name in ('speckle_decorrelation', 'tgc_compensation', 'reverb_decay'):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'ultrasound {name} must be in [0, 1], got {value}')
        for name in ('echo_db', 'attenuation_factor'):
            value = tuple(getattr(self, name))
            if len(value) != len(LABEL_NAMES) or not all(math.isfinite(v) for v in value):
                raise ValueError(f'ultrasound {name} needs {len(LABEL_NAMES)} finite values '
                                 f'(one per label {LABEL_NAMES}), got {value}')
            if name == 'attenuation_factor' and min(value) < 0:
                raise ValueError(f'ultrasound attenuation_factor must be >= 0, got {value}')
            object.__setattr__(self, name, value)
        for name in ('attenuation_db_cm_mhz', 'coupling_gap_m'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f'ultrasound {name} must be finite and >= 0, got {value}')

    @property
    def pixel_m(self) -> tuple[float, float]:
        """Pixel size ``(lateral, axial)`` in metres."""
        return self.width_m / self.cols, self.depth_m / self.rows

    @property
    def mm_per_pixel(self) -> tuple[float, float]:
        """Pixel size ``(lateral, axial)`` in millimetres."""
        lateral, axial = self.pixel_m
        return lateral * 1e3, axial * 1e3

    def pixel_to_image(self, r: np.ndarray | float, c: np.ndarray | float
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Image-frame ``(x, y)`` in metres of the (sub)pixel ``(row, col)``; z is 0."""
        x = (np.asarray(c, dtype=float) + 0.5) / self.cols * self.width_m - self.width_m / 2
        y = (np.asarray(r, dtype=float) + 0.5) / self.rows * self.depth_m
        return x, y

    def image_to_pixel(self, x: np.ndarray | float, y: np.ndarray | float
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Fractional ``(row, col)`` of the image-frame point ``(x, y)`` in metres."""
        c = (np.asarray(x, dtype=float) + self.width_m / 2) / self.width_m * self.cols - 0.5
        r = np.asarray(y, dtype=float) / self.depth_m * self.rows - 0.5
        return r, c


def _label_lut(values: object) -> np.ndarray:
    """A 256-entry float32 lookup table (for cv2.LUT) from per-label values."""
    lut = np.zeros((256, 1), dtype=np.float32)
    v = np.asarray(values, dtype=np.float32)
    lut[:len(v), 0] = v
    return lut


class _Scene:
    """The frame-independent maps of one scene (one cache entry)."""

    def __init__(self, shape: tuple[int, int]) -> None:
        # Tissue-fixed field (speckle + specular echoes), real and imaginary; the standard
        # deviation of the fresh noise; the gain (TGC, attenuation, coupling) per pixel.
        self.re = np.empty(shape, np.float32)
        self.im = np.empty(shape, np.float32)
        self.fresh = np.empty(shape, np.float32)
        self.gain = np.empty(shape, np.float32)


class UltrasoundSimulator:
    """Renders B-mode frames of the phantom seen by a linear probe; see the module docs.

    Not thread-safe: one simulator reuses its work buffers from frame to frame (a 30 Hz
    renderer must not page-fault fresh arrays in every frame). It caches the last two
    scenes' maps (see the module docs); ``scene_updates`` counts the scenes computed.
    """

    def __init__(self, phantom: Phantom, config: UltrasoundConfig | None = None,
                 seed: int = 0) -> None:
        self.phantom = phantom
        self.config = config if config is not None else UltrasoundConfig()
        self.seed = int(seed)
        cfg = self.config
        lateral, axial = cfg.pixel_m
        self._xs = (np.arange(cfg.cols) + 0.5) * lateral - cfg.width_m / 2
        self._ys = (np.arange(cfg.rows) + 0.5) * axial
        # PSF: separable Gaussian kernels on the complex field. Noise sources are scaled so
        # that white noise of unit variance keeps unit variance through the blur.
        sx = cfg.lateral_fwhm_m / 2.3548 / lateral
        sy = cfg.axial_fwhm_m / 2.3548 / axial
        self._blur = {'ksize': (2 * math.ceil(3 * sx) + 1, 2 * math.ceil(3 * sy) + 1),
                      'sigmaX': sx, 'sigmaY': sy, 'borderType': cv2.BORDER_REFLECT}
        kx = cv2.getGaussianKernel(self._blur['ksize'][0], sx, cv2.CV_64F)
        ky = cv2.getGaussianKernel(self._blur['ksize'][1], sy, cv2.CV_64F)
        noise_gain = 1.0 / math.sqrt(float(np.sum(kx ** 2) * np.sum(ky ** 2)))
        # Tissue-fixed scatterers: a bank of complex normals indexed by a spatial hash.
        rng = np.random.default_rng((self.seed, 0x5BEC))
        bank = rng.standard_normal((2, _NOISE_BANK)) * (noise_gain / math.sqrt(2))
        self._bank = bank.astype(np.float32)
        self._hash_salt = np.uint32(int(rng.integers(0, 2 ** 32)))
        self._phase = rng.uniform(0.0, 2 * np.pi, 8)
        # Fresh noise: windows of a bank of standard normals (see the module docs), scaled
        # to complex unit variance through the blur; window strides of four PSF sigmas.
        self._fresh_gain = np.float32(noise_gain / math.sqrt(2))
        self._fresh_stride = (math.ceil(4 * sy), math.ceil(4 * sx))
        bank_shape = (2, cfg.rows + _FRESH_WINDOWS * self._fresh_stride[0],
                      cfg.cols + _FRESH_WINDOWS * self._fresh_stride[1])
        self._fresh_bank, self._fresh_order = noise_bank(
            self.seed, 0xF8E5, bank_shape, _FRESH_WINDOWS ** 2)
        self._cache: SceneCache[_Scene] = SceneCache(
            _SCENE_CACHE, lambda: _Scene((self.config.rows, self.config.cols)))
        # Per-label tables, TGC (+ overall gain) and the electronic noise behind it.
        per_pixel = 2 * cfg.attenuation_db_cm_mhz * cfg.frequency_mhz * axial * 100.0
        self._echo_lut = _label_lut(cfg.echo_db)
        self._atten_lut = _label_lut(np.asarray(cfg.attenuation_factor) * per_pixel)
        tgc_db = cfg.tgc_compensation * 2 * cfg.attenuation_db_cm_mhz * cfg.frequency_mhz \
            * self._ys * 100.0 + cfg.gain_db
        self._tgc_db = tgc_db.astype(np.float32)[:, None]
        noise = 10.0 ** ((tgc_db + cfg.noise_floor_db) / 20.0)
        self._noise_power = np.ascontiguousarray(
            np.broadcast_to((noise ** 2)[:, None], (cfg.rows, cfg.cols)), dtype=np.float32)
        self._below = np.arange(cfg.rows)[:, None]
        shape, half = (cfg.rows, cfg.cols), ((cfg.rows + 1) // 2, (cfg.cols + 1) // 2)
        f32 = [np.empty(shape, np.float32) for _ in range(12)]
        (self._x, self._y, self._z, self._depth, self._spec, self._att, self._gain,
         self._amp, self._tex, self._tex2, self._re, self._im) = f32
        self._blurred = np.empty((2, *shape), np.float32)
        self._integral = np.empty((cfg.rows + 1, cfg.cols + 1), np.float32)
        self._index = np.empty(shape, np.intp)
        self._hash = np.empty((4, *shape), np.uint32)
        self._half = np.empty((4, *half), np.float32)

    # -- geometry helpers -----------------------------------------------------------------
    @property
    def mm_per_pixel(self) -> tuple[float, float]:
        """Pixel size ``(lateral, axial)`` in millimetres."""
        return self.config.mm_per_pixel

    def pixel_to_image(self, r: np.ndarray | float, c: np.ndarray | float
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Image-frame ``(x, y)`` in metres of pixel ``(row, col)``."""
        return self.config.pixel_to_image(r, c)

    def image_to_pixel(self, x: np.ndarray | float, y: np.ndarray | float
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Fractional ``(row, col)`` of image-frame ``(x, y)`` in metres."""
        return self.config.image_to_pixel(x, y)

    def world_to_image(self, image_pose: np.ndarray, points: np.ndarray) -> np.ndarray:
        """World points ``(N, 3)`` in ``us_image_frame`` coordinates ``(N, 3)``."""
        t = rigid_pose(image_pose, 'image_pose')
        p = np.atleast_2d(np.asarray(points, dtype=float))
        return (p - t[:3, 3]) @ t[:3, :3]

    def world_to_pixel(self, image_pose: np.ndarray, points: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fractional ``(row, col)`` of world points and their distance off the image plane."""
        q = self.world_to_image(image_pose, points)
        r, c = self.config.image_to_pixel(q[:, 0], q[:, 1])
        return r, c, q[:, 2]

    # -- rendering ------------------------------------------------------------------------
    def labels(self, image_pose: np.ndarray, state: PhantomState | None = None
               ) -> np.ndarray:
        """Tissue label of every pixel (uint8, rows x cols), as :meth:`Phantom.labels`."""
        return self._geometry(rigid_pose(image_pose, 'image_pose'), state)

    def render(self, image_pose: np.ndarray, state: PhantomState | None = None,
               needle: tuple[np.ndarray, np.ndarray] | None = None, frame_index: int = 0
               ) -> np.ndarray:
        """One B-mode frame (uint8, rows x cols) from the pose of ``us_image_frame``.

        ``needle`` is ``(tip, axis)`` in the world frame (axis: the insertion direction;
        the shaft runs ``needle_length_m`` back from the tip), or None. The fresh noise
        is a function of ``(seed, frame_index)``: a frame is a pure function of its
        arguments, whatever was rendered before (the scene cache only saves time).
        """
        cfg = self.config
        pose, pose_key = self._cache.pose(image_pose, 'image_pose')
        if needle is not None:
            needle = _needle_line(needle)
        scene = self._scene(pose, pose_key, state)

        # Complex field before the PSF: the scene's (tissue-fixed speckle, specular echoes)
        # plus this frame's fresh scatterers and electronic noise, plus the needle.
        re, im = self._re, self._im
        n_re, n_im = self._fresh_noise(frame_index)
        cv2.multiply(n_re, scene.fresh, dst=re)
        cv2.add(re, scene.re, dst=re)
        cv2.multiply(n_im, scene.fresh, dst=im)
        cv2.add(im, scene.im, dst=im)
        if needle is not None:
            self._needle_echo(pose, needle, re, scene.gain)
        b_re, b_im = self._blurred
        cv2.GaussianBlur(re, dst=b_re, **self._blur)
        cv2.GaussianBlur(im, dst=b_im, **self._blur)
        level = cv2.magnitude(b_re, b_im, magnitude=re)
        np.maximum(level, np.float32(1e-12), out=level)
        cv2.log(level, dst=level)
        scale = 255.0 / cfg.dynamic_range_db
        level *= np.float32(_DB_20_LN10 * scale)
        level += np.float32((cfg.dynamic_range_db - cfg.white_db) * scale)
        np.clip(level, 0.0, 255.0, out=level)
        return level.astype(np.uint8)

    # -- internals ------------------------------------------------------------------------
    def _scene(self, pose: np.ndarray, pose_key: bytes, state: PhantomState | None
               ) -> _Scene:
        """The cached maps of the scene, computed if it is not one of the last two."""
        key = (pose_key, state_key(self.phantom, state), id(self.phantom))
        return self._cache.get(key, lambda scene: self._compute_scene(pose, state, scene))

    @property
    def scene_updates(self) -> int:
        """Scenes computed so far (cache misses)."""
        return self._cache.updates

    def _compute_scene(self, pose: np.ndarray, state: PhantomState | None, scene: _Scene
                       ) -> None:
        """Fill ``scene`` with the frame-independent maps of the image at ``pose``."""
        cfg = self.config
        lab = self._geometry(pose, state)

        # Gain of the beam line down to each pixel: TGC minus the round-trip attenuation
        # integrated through the labels (value at the pixel centre); zero where lost.
        att, gain = self._att, scene.gain
        cv2.LUT(lab, self._atten_lut, dst=att)
        cv2.integral(att, sum=self._integral, sdepth=cv2.CV_32F)
        np.subtract(self._integral[1:, 1:], self._integral[1:, :-1], out=gain)
        att *= np.float32(0.5)
        gain -= att
        np.subtract(self._tgc_db, gain, out=gain)
        gain *= np.float32(_LN10_20)
        cv2.exp(gain, dst=gain)
        gain *= self._coupled(lab)

        # Backscatter amplitude times gain.
        amp = self._amp
        cv2.LUT(lab, self._echo_lut, dst=amp)
        amp += self._texture_db(lab)
        amp *= np.float32(_LN10_20)
        cv2.exp(amp, dst=amp)
        amp *= gain

        # Coherent (specular) echoes of the tissue: vein walls, septa, fascia.
        coherent = self._spec
        coherent *= gain

        # Standard deviation of the fresh part: the redrawn share of the speckle and the
        # electronic noise (independent Gaussians add), per unit-variance draw.
        q = np.float32(cfg.speckle_decorrelation)
        fresh = scene.fresh
        np.multiply(amp, amp, out=fresh)
        fresh *= q
        fresh += self._noise_power
        cv2.sqrt(fresh, dst=fresh)
        fresh *= self._fresh_gain
        # The tissue-fixed part of the field.
        re, im = self._tissue_noise()
        amp *= np.float32(math.sqrt(1.0 - cfg.speckle_decorrelation))
        np.multiply(re, amp, out=scene.re)
        scene.re += coherent
        np.multiply(im, amp, out=scene.im)

    def _fresh_noise(self, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
        """The frame's window of the fresh-noise bank (real, imaginary; read-only views)."""
        cfg = self.config
        window = int(self._fresh_order[int(frame_index) % len(self._fresh_order)])
        r = window // _FRESH_WINDOWS * self._fresh_stride[0]
        c = window % _FRESH_WINDOWS * self._fresh_stride[1]
        bank = self._fresh_bank
        return bank[0, r:r + cfg.rows, c:c + cfg.cols], bank[1, r:r + cfg.rows, c:c + cfg.cols]

    def _geometry(self, pose: np.ndarray, state: PhantomState | None) -> np.ndarray:
        """Labels of the pixels (a fast :meth:`Phantom.labels` for the image grid).

        Fills the tissue coordinates of every pixel (``_x`` lateral from the arm axis,
        ``_y`` along the arm from its centre, ``_z`` up from the axis: they move with the
        arm's drift), ``_depth`` (vertical, below the skin; -1 outside the arm) and the
        walls' specular echo ``_spec``.
        """
        p = self.phantom
        off = p.offset(state)
        rot, origin = pose[:3, :3], pose[:3, 3]
        ref = np.array([p.axis_x + off[0], p.center_y + off[1], p.axis_z + off[2]])
        o = origin - ref
        for k, out in enumerate((self._x, self._y, self._z)):
            np.add((self._ys * rot[k, 1]).astype(np.float32)[:, None],
                   (self._xs * rot[k, 0] + o[k]).astype(np.float32)[None, :], out=out)
        x, y, z, depth = self._x, self._y, self._z, self._depth
        radius = np.float32(p.arm_radius)
        inside = np.abs(x) < radius
        inside &= np.abs(y) <= np.float32(p.length / 2)
        np.multiply(x, x, out=depth)
        np.subtract(radius * radius, depth, out=depth)
        np.maximum(depth, np.float32(0.0), out=depth)
        np.sqrt(depth, out=depth)
        depth -= z
        depth[~inside] = -1.0
        lab = (depth >= 0).view(np.uint8)
        lab += depth >= np.float32(p.skin_thickness)
        lab += depth >= np.float32(p.skin_thickness + p.fat_thickness)
        self._spec.fill(0.0)
        if p.veins:
            self._veins(pose, state, ref, lab)
        return lab

    def _veins(self, pose: np.ndarray, state: PhantomState | None, ref: np.ndarray,
               lab: np.ndarray) -> None:
        """Paint wall and lumen labels and the walls' specular echo, vein by vein.

        The vein geometry depends on y alone: it is tabulated over the image's y range
        and looked up per pixel. A coarse pass finds each vein's bounding box in the
        image, and only that box is tested pixel by pixel.
        """
        p, cfg = self.phantom, self.config
        x, y, z = self._x, self._y, self._z
        corners = np.array([y[0, 0], y[0, -1], y[-1, 0], y[-1, -1]], dtype=float)
        y_lo, y_hi = float(corners.min()), float(corners.max())
        n = max(2, min(8192, math.ceil((y_hi - y_lo) / _Y_TABLE_STEP) + 1))
        table_y = np.linspace(y_lo, y_hi, n)
        per_m = np.float32((n - 1) / (y_hi - y_lo) if y_hi - y_lo > 1e-9 else 0.0)
        step = _COARSE_STEP
        coarse = (slice(None, None, step), slice(None, None, step))
        margin = 1.5 * step * max(cfg.pixel_m)
        beam = pose[:3, 1]
        spec_amp = np.float32(10.0 ** (cfg.wall_specular_db / 20.0))
        tissue = lab > AIR

        # Table row of every pixel; a lookup gives (x, z, a, b) from the (n, 4) table.
        rows = np.rint((y - np.float32(y_lo)) * per_m).astype(np.intp)
        np.clip(rows, 0, n - 1, out=rows)

        def lookup(table: np.ndarray, index: np.ndarray) -> np.ndarray:
            return np.moveaxis(np.take(table, index, axis=0), -1, 0)

        for i, vein in enumerate(p.veins):
            g = p.vein_geometry(i, table_y + ref[1], state)
            table = np.stack([np.broadcast_to(np.asarray(g[k], dtype=float), table_y.shape)
                              for k in ('x', 'z', 'a', 'b')])
            table[0] -= ref[0]
            table[1] -= ref[2]
            table = np.ascontiguousarray(table.T, dtype=np.float32)
            xc, zc, a, b = lookup(table, rows[coarse])
            near = ((x[coarse] - xc) / (a + vein.wall + margin)) ** 2 \
                + ((z[coarse] - zc) / (b + vein.wall + margin)) ** 2 < 1
            rr, cc = np.nonzero(near)
            if rr.size == 0:
                continue
            box = (slice(max(0, (rr.min() - 1) * step), min(cfg.rows, (rr.max() + 1) * step + 1)),
                   slice(max(0, (cc.min() - 1) * step), min(cfg.cols, (cc.max() + 1) * step + 1)))
            xc, zc, a, b = lookup(table, rows[box])
            wall = np.float32(vein.wall)
            ao, bo = a + wall, b + wall
            dx = x[box] - xc
            dz = z[box] - zc
            dx2, dz2 = dx * dx, dz * dz
            inside = tissue[box]
            outer = (dx2 / (ao * ao) + dz2 / (bo * bo) < 1) & inside
            lumen = (dx2 / (a * a) + dz2 / (b * b) < 1) & inside
            sub_lab = lab[box]
            sub_lab[outer] = WALL
            sub_lab[lumen] = LUMEN
            # Wall normal in the cross-section (x-z) plane; the specular echo falls off
            # steeply with its angle to the beam: the top and bottom walls shine, the sides
            # fade into the diffuse wall echo (the "edge dropout" of real vessel walls).
            am, bm = a + wall / 2, b + wall / 2
            nx = dx / (am * am)
            nz = dz / (bm * bm)
            cos = (nx * np.float32(beam[0]) + nz * np.float32(beam[2])) / np.maximum(
                np.sqrt(nx * nx + nz * nz), np.float32(1e-9))
            cos *= cos
            power = cos * cos
            power *= cos                    # cos^6
            power *= outer & ~lumen
            power *= spec_amp
            sub_spec = self._spec[box]
            np.maximum(sub_spec, power, out=sub_spec)
        # A later vein's lumen may cover an earlier vein's wall.
        self._spec[lab == LUMEN] = 0.0

    def _texture_db(self, lab: np.ndarray) -> np.ndarray:
        """Tissue-fixed texture in dB: fat septa, muscle striations, fascia, epidermis.

        The smooth patterns are evaluated on every other pixel and interpolated; the
        label masks that select them stay at full resolution.
        """
        p, ph, cfg = self.phantom, self._phase, self.config
        x, y, d = self._x[::2, ::2], self._y[::2, ::2], self._depth[::2, ::2]
        w1, w2, m, t = self._half
        two_pi = 2 * np.pi

        def wave(out: np.ndarray, coord: np.ndarray, period: float, phase: float,
                 amplitude: float) -> np.ndarray:
            """``out = amplitude * sin(2 pi coord / period + phase)``."""
            np.multiply(coord, np.float32(two_pi / period), out=out)
            out += np.float32(phase)
            np.sin(out, out=out)
            out *= np.float32(amplitude)
            return out

        # Fat: lobules between thin bright septa, two families (along the skin, oblique).
        wave(w1, x, 9e-3, ph[0], 0.35)
        w1 += wave(t, y, 13e-3, ph[1], 0.3)
        w1 += d * np.float32(1 / 2.6e-3)
        wave(w1, w1, 1.0, 0.0, 1.0)
        wave(w2, d, 5e-3, ph[2], 0.3)
        w2 += wave(t, y, 11e-3, ph[5], 0.4)
        w2 += (x * np.float32(0.5) + d * np.float32(0.866)) * np.float32(1 / 3.7e-3)
        wave(w2, w2, 1.0, 0.0, 1.0)
        np.maximum(w1, w2, out=w1)
        w1 -= np.float32(0.94)
        np.clip(w1, 0.0, 0.06, out=w1)
        w1 *= np.float32(1 / 0.06)          # septa strength, 0..1
        # Muscle: striations roughly parallel to the skin.
        wave(m, x, 7e-3, ph[3], 0.3)
        m += wave(t, y, 17e-3, ph[4], 0.2)
        m += d * np.float32(1 / 1.1e-3)
        wave(m, m, 1.0, 0.0, 1.0)
        m -= np.float32(0.55)
        np.clip(m, 0.0, 0.45, out=m)
        m *= np.float32(_STRIATION_DB / 0.45)
        septa, tex = self._tex, self._tex2
        cv2.resize(w1, (cfg.cols, cfg.rows), dst=septa, interpolation=cv2.INTER_LINEAR)
        cv2.resize(m, (cfg.cols, cfg.rows), dst=tex, interpolation=cv2.INTER_LINEAR)
        is_fat = lab == FAT
        is_muscle = lab == MUSCLE
        tex *= is_muscle
        septa *= is_fat
        # Septa and fascia are interfaces: they add a coherent (specular) echo as well.
        depth = self._depth
        fascia = is_muscle & (depth < np.float32(p.skin_thickness + p.fat_thickness
                                                 + _FASCIA_M))
        spec = self._spec
        np.add(spec, np.float32(10.0 ** (_FASCIA_DB / 20.0)), out=spec, where=fascia)
        septa *= np.float32(_SEPTA_DB)
        tex += septa
        septa *= np.float32(10.0 ** (_SEPTA_COHERENT_DB / 20.0) / _SEPTA_DB)
        spec += septa
        epidermis = (lab == SKIN) & (depth < np.float32(_EPIDERMIS_M))
        np.add(tex, np.float32(_EPIDERMIS_DB), out=tex, where=epidermis)
        return tex

    def _tissue_noise(self) -> tuple[np.ndarray, np.ndarray]:
        """Tissue-fixed complex scatterer field (real, imaginary): a hash of the tissue cell."""
        inv = np.float32(1.0 / self.config.speckle_cell_m)
        h, ix, iy, iz = self._hash
        for coord, out in ((self._x, ix), (self._y, iy), (self._z, iz)):
            t = np.multiply(coord, inv, out=self._tex2)
            np.floor(t, out=t)
            out.view(np.int32)[...] = t
        np.multiply(ix, np.uint32(73856093), out=h)
        iy *= np.uint32(19349663)
        h ^= iy
        iz *= np.uint32(83492791)
        h ^= iz
        h ^= self._hash_salt
        for shift, mult in ((16, 0x7FEB352D), (15, 0x846CA68B)):
            np.right_shift(h, np.uint32(shift), out=ix)
            h ^= ix
            h *= np.uint32(mult)
        np.right_shift(h, np.uint32(16), out=ix)
        h ^= ix
        h &= np.uint32(_NOISE_BANK - 1)
        index = self._index
        index[...] = h
        np.take(self._bank[0], index, out=self._re)
        np.take(self._bank[1], index, out=self._im)
        return self._re, self._im

    def _coupled(self, lab: np.ndarray) -> np.ndarray:
        """1 where the beam line reaches the pixel, 0 where coupling or the line is lost."""
        cfg = self.config
        tissue = lab > AIR
        first = np.argmax(tissue, axis=0)
        has = tissue[first, np.arange(cfg.cols)]
        gap = (first + 0.5) * cfg.pixel_m[1]
        ok_cols = has & (gap <= cfg.coupling_gap_m)
        # Air below tissue (past the arm's side or bottom) reflects everything: shadow.
        air_after = ~tissue
        air_after &= self._below > first[None, :]
        seen = self._tex
        seen[...] = air_after
        cv2.integral(seen, sum=self._integral, sdepth=cv2.CV_32F)
        np.subtract(self._integral[1:, 1:], self._integral[1:, :-1], out=seen)
        ok = seen < 0.5
        ok &= ok_cols[None, :]
        seen[...] = ok
        return seen

    def _needle_echo(self, pose: np.ndarray, needle: tuple[np.ndarray, np.ndarray],
                     out: np.ndarray, gain: np.ndarray) -> None:
        """Add the needle shaft's coherent echo (within the slice, with its comet tail).

        The echo is weighted by the beam lines' ``gain`` and added to ``out``.
        """
        cfg = self.config
        tip, axis = needle
        rot, origin = pose[:3, :3], pose[:3, 3]
        p1 = (tip - origin) @ rot                               # tip, image frame
        p0 = (tip - cfg.needle_length_m * axis - origin) @ rot  # hub end
        # The part of the shaft within one slice thickness of the plane.
        reach = cfg.slice_thickness_m
        z0, z1 = p0[2], p1[2]
        if abs(z1 - z0) < 1e-12:
            if abs(z0) > reach:
                return
            t_lo, t_hi = 0.0, 1.0
        else:
            ta, tb = (-reach - z0) / (z1 - z0), (reach - z0) / (z1 - z0)
            t_lo, t_hi = max(0.0, min(ta, tb)), min(1.0, max(ta, tb))
            if t_lo >= t_hi:
                return
        a = p0 + t_lo * (p1 - p0)
        b = p0 + t_hi * (p1 - p0)
        # The echo comes from the shaft's upper surface (towards the probe).
        radius = cfg.needle_diameter_m / 2
        a[1] -= radius
        b[1] -= radius
        lateral, axial = cfg.pixel_m
        sigma = max(0.1e-3, axial)
        margin = 4 * sigma
        r_a, c_a = cfg.image_to_pixel(a[0], a[1])
        r_b, c_b = cfg.image_to_pixel(b[0], b[1])
        m_c, m_r = margin / lateral, margin / axial
        c_lo = max(0, math.floor(min(c_a, c_b) - m_c))
        c_hi = min(cfg.cols, math.ceil(max(c_a, c_b) + m_c) + 1)
        r_lo = max(0, math.floor(min(r_a, r_b) - m_r))
        r_hi = min(cfg.rows, math.ceil(max(r_a, r_b) + m_r) + 1)
        if c_lo >= c_hi or r_lo >= r_hi:
            return
        # Per pixel, the closest point of the shaft (in 3D): its in-plane distance gives the
        # line profile, its distance off the plane the elevation weight. A shaft crossing
        # the plane thus shows as a dot, one lying in it as a line.
        px = self._xs[c_lo:c_hi][None, :]
        py = self._ys[r_lo:r_hi][:, None]
        seg = b - a
        length2 = float(seg @ seg)
        t = ((px - a[0]) * seg[0] + (py - a[1]) * seg[1] - a[2] * seg[2]) / length2
        np.clip(t, 0.0, 1.0, out=t)
        dist2 = (px - a[0] - t * seg[0]) ** 2 + (py - a[1] - t * seg[1]) ** 2
        z = a[2] + t * seg[2]
        elevation = np.exp(-4 * math.log(2) * (z / cfg.slice_thickness_m) ** 2)
        # Specular: a needle along the array reflects straight back, a steep one less.
        direction = p1[:2] - p0[:2]
        in_plane = float(np.linalg.norm(direction))
        cos = abs(direction[0]) / in_plane if in_plane > 1e-12 else 1.0
        strength = 10.0 ** (cfg.needle_db / 20.0) * (0.35 + 0.65 * cos ** 6)
        line = (strength * elevation * np.exp(-0.5 * dist2 / sigma ** 2)).astype(np.float32)
        out[r_lo:r_hi, c_lo:c_hi] += line * gain[r_lo:r_hi, c_lo:c_hi]
        # Comet tail: reverberations inside the shaft, one diameter apart, fading.
        spacing = max(1, round(cfg.needle_diameter_m / axial))
        amp = 1.0
        for k in range(1, cfg.reverb_count + 1):
            amp *= cfg.reverb_decay
            lo = r_lo + k * spacing
            if lo >= cfg.rows:
                break
            hi = min(cfg.rows, r_hi + k * spacing)
            out[lo:hi, c_lo:c_hi] += np.float32(amp) * line[:hi - lo] * gain[lo:hi, c_lo:c_hi]


def _needle_line(needle: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(tip, unit axis)`` of a needle given as ``(tip, axis)``."""
    try:
        tip_in, axis_in = needle
    except (TypeError, ValueError):
        raise ValueError('needle must be a (tip, axis) pair') from None
    tip = np.asarray(tip_in, dtype=float).reshape(-1)
    axis = np.asarray(axis_in, dtype=float).reshape(-1)
    if tip.shape != (3,) or axis.shape != (3,):
        raise ValueError('needle tip and axis must be 3-vectors')
    norm = float(np.linalg.norm(axis))
    if not (np.all(np.isfinite(tip)) and math.isfinite(norm) and norm > 0):
        raise ValueError('needle tip and axis must be finite and the axis non-zero')
    return tip, axis / norm
