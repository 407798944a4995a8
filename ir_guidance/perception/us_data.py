"""Labelled B-mode frames from the simulator, for training and scoring vein segmentation.

Every frame is a pure function of ``(phantom seed, frame number, shifted)``: a random
forearm (:meth:`Phantom.random`), a random probe pose over it, a random deformation, random
imaging parameters, optional needle and acoustic shadow, then image-space augmentation.
The mask is the simulator's ``LUMEN`` label on the same pose and state, so image and mask
always agree.

Probe poses (``us_image_frame``: x lateral, y depth, see :mod:`ir_guidance.sim.ultrasound`):
the probe sits on the skin normal to it (a flat face tilted to the local slope of the
cylindrical arm, as a sonographer holds it), pressed 0-3 mm in, with a little rock and
tilt. 70 % of frames are transverse (the array across the arm, veins seen in cross-
section), 20 % oblique (20-60 degrees), 10 % longitudinal (along the arm). The probe centre
is within +-12 mm of a vein (less for oblique and longitudinal views, which would miss it
otherwise); 5 % of frames look away from every vein, so that empty masks occur.

Deformation (:class:`PhantomState`): probe force 0-3 N under the probe (veins flatten),
every vein rolled sideways by up to 1.5 mm.

Augmentation of the imaging (the simulator's own parameters, :class:`UltrasoundConfig`):
gain +-6 dB, dynamic range 40-60 dB, speckle cell size, decorrelation and electronic noise,
PSF widths, attenuation and TGC, and the depth setting (30, 40 or 50 mm; the image stays
256 x 256, so the axial pixel size changes: each frame's geometry is in its ``meta``).
A needle lies in the image plane (or crosses it) in 30 % of frames; 20 % get a synthetic
acoustic shadow (a bright reflector with a dark band below it, as behind a bone edge,
calcification or air). Image space: left-right flips (p = 0.5) and a gamma of 0.8-1.25.

The ``shifted`` distribution is one the training never saw: gain exactly +-6 dB, heavier
and coarser speckle with more electronic noise and a blurrier PSF, a shadow in every
frame, and depth settings of 25 or 60 mm.

Ground-truth centres (``meta[i]['centres']``) are the centroids of each connected lumen
region of the mask, in image metres (x lateral from the image centre, y depth from the
face, :meth:`UltrasoundConfig.pixel_to_image`): a plane cuts an elliptical tube in an
ellipse, whose centroid is its centre (where the centreline crosses the plane), so in
full view this is the vein's true centre; a vein cut by the image border has the centroid
of its visible part, as any detector would see it.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from ir_guidance.sim.phantom import LUMEN, Phantom, PhantomState
from ir_guidance.sim.ultrasound import UltrasoundConfig, UltrasoundSimulator

IMAGE_SIZE = 256
WIDTH_M = 0.038
TRAIN_DEPTHS_M = (0.030, 0.040, 0.050)
SHIFTED_DEPTHS_M = (0.025, 0.060)
TEST_SEED_BASE = 10_000          # held-out phantoms: seeds from here up, never trained on
_SALT = 0x05D47A                 # stream of the per-frame random draws


def train_seeds(count: int) -> list[int]:
    """Phantom seeds of the training split: ``0 .. count - 1``."""
    if not (isinstance(count, int) and 0 < count < TEST_SEED_BASE):
        raise ValueError(f'train seed count must be an int in [1, {TEST_SEED_BASE - 1}], '
                         f'got {count!r}')
    return list(range(count))


def test_seeds(count: int, start: int = 0) -> list[int]:
    """Held-out phantom seeds: ``TEST_SEED_BASE + start ..`` (disjoint from training)."""
    if not (isinstance(count, int) and count > 0 and isinstance(start, int) and start >= 0):
        raise ValueError(f'test seeds need count > 0 and start >= 0, got {count!r}, {start!r}')
    return list(range(TEST_SEED_BASE + start, TEST_SEED_BASE + start + count))


def _rot(axis: str, angle: float) -> np.ndarray:
    """Rotation matrix about a coordinate axis."""
    c, s = math.cos(angle), math.sin(angle)
    if axis == 'x':
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    if axis == 'y':
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# Transverse probe: array along world x, depth pointing down (world -z), z_img = x × y.
_TRANSVERSE = np.column_stack(([1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]))


def _probe_pose(phantom: Phantom, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A random pose of ``us_image_frame`` over the arm and the kind of view."""
    index = int(rng.integers(len(phantom.veins)))
    along = phantom.center_y + float(rng.uniform(-0.08, 0.08))
    target = float(phantom.vein_geometry(index, np.array([along]))['x'][0])
    u = float(rng.uniform())
    if u < 0.7:
        view, yaw, reach = 'transverse', float(rng.normal(0.0, math.radians(8.0))), 0.012
    elif u < 0.9:
        view = 'oblique'
        yaw = float(rng.choice((-1.0, 1.0)) * rng.uniform(math.radians(20), math.radians(60)))
        reach = 0.006
    else:
        view = 'longitudinal'
        yaw, reach = math.pi / 2 + float(rng.normal(0.0, math.radians(5.0))), 0.002
    x = target + float(rng.uniform(-reach, reach))
    if rng.uniform() < 0.05:
        view = 'away'
        x = phantom.axis_x + float(rng.choice((-1.0, 1.0)) * rng.uniform(0.018, 0.024))
    limit = 0.6 * phantom.arm_radius
    x = float(np.clip(x, phantom.axis_x - limit, phantom.axis_x + limit))
    # Normal to the skin: tilt about the arm axis (world y) by the local slope.
    slope = math.asin((x - phantom.axis_x) / phantom.arm_radius)
    rot = (_rot('y', slope) @ _rot('z', yaw) @ _TRANSVERSE
           @ _rot('x', float(rng.normal(0.0, math.radians(3.0))))
           @ _rot('z', float(rng.normal(0.0, math.radians(3.0)))))
    skin = np.array([x, along, float(phantom.skin_z(x, along))])
    press = float(rng.uniform(0.0, 3.0e-3))
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = skin + press * rot[:, 1]
    return pose, view


def _imaging(rng: np.random.Generator, shifted: bool) -> dict[str, float]:
    """Random :class:`UltrasoundConfig` overrides (the simulator-side augmentation)."""
    if shifted:
        return {
            'depth_m': float(rng.choice(SHIFTED_DEPTHS_M)),
            'gain_db': float(rng.choice((-6.0, 6.0))),
            'dynamic_range_db': float(rng.uniform(40.0, 60.0)),
            'speckle_cell_m': float(rng.uniform(0.16e-3, 0.22e-3)),
            'speckle_decorrelation': float(rng.uniform(0.4, 0.7)),
            'noise_floor_db': float(rng.uniform(-82.0, -76.0)),
            'lateral_fwhm_m': float(rng.uniform(0.95e-3, 1.2e-3)),
            'axial_fwhm_m': float(rng.uniform(0.4e-3, 0.5e-3)),
            'attenuation_db_cm_mhz': float(rng.uniform(0.5, 0.8)),
            'tgc_compensation': float(rng.uniform(0.75, 0.95)),
        }
    return {
        'depth_m': float(rng.choice(TRAIN_DEPTHS_M)),
        'gain_db': float(rng.uniform(-6.0, 6.0)),
        'dynamic_range_db': float(rng.uniform(40.0, 60.0)),
        'speckle_cell_m': float(rng.uniform(0.07e-3, 0.14e-3)),
        'speckle_decorrelation': float(rng.uniform(0.05, 0.3)),
        'noise_floor_db': float(rng.uniform(-92.0, -84.0)),
        'lateral_fwhm_m': float(rng.uniform(0.55e-3, 0.9e-3)),
        'axial_fwhm_m': float(rng.uniform(0.25e-3, 0.4e-3)),
        'attenuation_db_cm_mhz': float(rng.uniform(0.5, 0.8)),
        'tgc_compensation': float(rng.uniform(0.75, 0.95)),
    }


def _needle(pose: np.ndarray, depth_m: float, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """A needle ``(tip, axis)`` in the world: in the image plane, or crossing it."""
    tip_img = np.array([rng.uniform(-0.010, 0.012),
                        rng.uniform(0.002, min(0.020, depth_m - 0.003)), 0.0])
    if rng.uniform() < 0.7:
        # In plane, from the probe's -x side going down (the rig's geometry), or mirrored.
        angle = rng.uniform(math.radians(10), math.radians(35))
        side = 1.0 if rng.uniform() < 0.8 else -1.0
        axis_img = np.array([side * math.cos(angle), math.sin(angle),
                             rng.normal(0.0, 0.02)])
    else:
        # Out of plane: the shaft crosses the image as a dot with its comet tail.
        axis_img = np.array([rng.normal(0.0, 0.2), rng.uniform(0.2, 0.5), 1.0])
        tip_img[2] = rng.uniform(0.0, 0.004)
    rot = pose[:3, :3]
    return pose[:3, 3] + rot @ tip_img, rot @ (axis_img / np.linalg.norm(axis_img))


def add_shadow(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A bright specular reflector with a dark acoustic shadow below it (float image).

    The band is 6-24 pixels wide with soft edges; 65-95 % of the echo below the reflector
    is removed, the reflector itself is bright (180-255) with some texture.
    """
    rows, cols = image.shape
    centre = rng.uniform(0.0, cols)
    half = rng.uniform(3.0, 12.0)
    top = rng.uniform(0.05, 0.6) * rows
    thick = rng.uniform(1.5, 4.0)
    removed = rng.uniform(0.65, 0.95)
    cc = np.arange(cols, dtype=np.float32)
    rr = np.arange(rows, dtype=np.float32)[:, None]
    band = 0.5 * (1.0 - np.tanh((np.abs(cc - centre) - half) / 3.0))   # soft edges
    below = np.clip((rr - top - thick) / 3.0, 0.0, 1.0)
    out = image * (1.0 - removed * below * band[None, :])
    reflector = np.exp(-0.5 * ((rr - top - thick / 2) / (thick / 2)) ** 2) * band[None, :]
    texture = rng.uniform(0.7, 1.0, size=(rows, cols)).astype(np.float32)
    return np.maximum(out, reflector * texture * rng.uniform(180.0, 255.0))


def lumen_centres(mask: np.ndarray, width_m: float, depth_m: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Centroids ``(k, 2)`` (x, y in image metres) and areas ``(k,)`` (m^2) of mask regions."""
    rows, cols = mask.shape
    _, _, stats, centroids = cv2.connectedComponentsWithStats(
        (mask > 0).astype(np.uint8), connectivity=8)
    cfg = UltrasoundConfig(width_m=width_m, depth_m=depth_m, rows=rows, cols=cols)
    x, y = cfg.pixel_to_image(centroids[1:, 1], centroids[1:, 0])
    pixel_area = width_m / cols * depth_m / rows
    areas = stats[1:, cv2.CC_STAT_AREA].astype(float) * pixel_area
    return np.column_stack((x, y)).reshape(-1, 2), areas


def make_frame(seed: int, frame: int, shifted: bool = False
               ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One frame: ``(image uint8 256x256, mask uint8 0/1, meta)``; pure in its arguments."""
    phantom = Phantom.random(int(seed))
    return _frame(phantom, int(seed), int(frame), bool(shifted))


def _frame(phantom: Phantom, seed: int, frame: int, shifted: bool
           ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    rng = np.random.default_rng((seed, frame, int(shifted), _SALT))
    pose, view = _probe_pose(phantom, rng)
    roll = [float(np.clip(rng.uniform(-1.5e-3, 1.5e-3), -v.max_roll, v.max_roll))
            for v in phantom.veins]
    state = PhantomState(probe_force_n=float(rng.uniform(0.0, 3.0)),
                         probe_xy=(float(pose[0, 3]), float(pose[1, 3])), roll=roll)
    imaging = _imaging(rng, shifted)
    config = UltrasoundConfig(width_m=WIDTH_M, rows=IMAGE_SIZE, cols=IMAGE_SIZE, **imaging)
    sim = UltrasoundSimulator(phantom, config, seed=int(rng.integers(2 ** 31)))
    needle = _needle(pose, config.depth_m, rng) if rng.uniform() < (0.5 if shifted else 0.3) \
        else None
    image = sim.render(pose, state, needle=needle, frame_index=int(rng.integers(4096)))
    mask = (sim.labels(pose, state) == LUMEN).astype(np.uint8)
    shadow = shifted or rng.uniform() < 0.2
    work = image.astype(np.float32)
    if shadow:
        work = add_shadow(work, rng)
    gamma = float(rng.uniform(0.8, 1.25))
    work = 255.0 * (np.clip(work, 0.0, 255.0) / 255.0) ** gamma
    image = np.clip(np.rint(work), 0, 255).astype(np.uint8)
    flip = bool(rng.uniform() < 0.5)
    if flip:
        image = np.ascontiguousarray(image[:, ::-1])
        mask = np.ascontiguousarray(mask[:, ::-1])
    centres, areas = lumen_centres(mask, config.width_m, config.depth_m)
    meta: dict[str, Any] = {
        'seed': seed, 'frame': frame, 'shifted': shifted, 'view': view,
        'width_m': config.width_m, 'depth_m': config.depth_m,
        'mm_per_pixel': list(config.mm_per_pixel),
        'probe_force_n': state.probe_force_n, 'needle': needle is not None,
        'shadow': bool(shadow), 'flip': flip, 'gamma': gamma, **imaging,
        'centres': centres.tolist(), 'areas_m2': areas.tolist(),
    }
    return image, mask, meta


def make_split(seeds: list[int] | range, frames_per_seed: int, shifted: bool = False
               ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Frames of every phantom seed: ``(images N x 256 x 256 uint8, masks, meta)``.

    ``N = len(seeds) * frames_per_seed``, seed-major. Masks are 0/1 uint8. ``meta[i]``
    holds the frame's geometry (``width_m``, ``depth_m``, ``mm_per_pixel`` as (lateral,
    axial)), its augmentation parameters and the ground-truth lumen ``centres`` (list of
    [x, y] in image metres) with their ``areas_m2``. Deterministic in the arguments.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError('make_split needs a non-empty list of seeds >= 0')
    if not (isinstance(frames_per_seed, int) and frames_per_seed > 0):
        raise ValueError(f'frames_per_seed must be a positive int, got {frames_per_seed!r}')
    n = len(seeds) * frames_per_seed
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    masks = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    meta: list[dict[str, Any]] = []
    i = 0
    for seed in seeds:
        phantom = Phantom.random(seed)
        for frame in range(frames_per_seed):
            images[i], masks[i], m = _frame(phantom, seed, frame, shifted)
            meta.append(m)
            i += 1
    return images, masks, meta
