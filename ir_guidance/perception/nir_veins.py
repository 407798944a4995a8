"""Vein detection in near-infrared (NIR) images, and back-projection to 3D (ROS-free).

Haemoglobin absorbs ~850 nm light, so a vein a few millimetres under the skin shows as a
dark, diffuse band (its shadow widens with depth: a Gaussian of sigma 1.5-3.5 mm, 9-22 px
at 10 cm). docs/perception_nir.md has the measurements behind every choice below.

1. **Working resolution.** The image is reduced with ``cv2.pyrDown`` while the smallest
   Hessian scale stays >= 4 px there (at most to quarter resolution: scales of 16-32 px
   run at 160 x 120 for a 640 x 480 image).
2. **Flat field.** (a) The image is divided by its background: a grey closing with a
   disc of ``flat_field_px`` (wider than any vein's shadow, so it bridges them), smoothed, on
   an odd-reflected border (a mirrored one biases the background high near the border).
   Uneven illumination, vignetting and the arm's curvature become a flat 1, veins a
   relative dip, mapped to 8 bits as ``160 + contrast_gain * (ratio - 1)``.
   **2b. From the depth image** (``detect_points``, or ``detect`` given ``depth`` and
   ``k``; ``shading_from_depth``), which the image-only background cannot match where
   the arm bends away (its blur lies below the arm's steep shoulders, and veins on the
   slope vanish). The depth, reduced like the image, gives a first view cosine (normals
   of the depth smoothed by ``depth_smooth_px``); the arm is the brighter Otsu class of
   ``(I - ambient_dn) range^2 / cos`` (its albedo; the table is darker) where that
   cosine is ``>= shading_cos``. A quadric surface fitted to the arm's 3D points (the
   millimetre steps of the depth average out; a cylinder or cone is fitted exactly) and
   intersected with every ray gives the shading ``S = cos / range^2`` of Lambertian
   skin lit from the camera. The lamp's illumination ``L`` is a polynomial of degree
   ``illumination_order`` fitted robustly (veins left out) to ``log((I - ambient) / S)``
   on the arm. ``(I - ambient) / (S L)``, carried past the arm's edge by its local mean
   (``fill_px``), then goes through step 2a for what the model leaves. The arm region
   is the arm where ``cos >= roi_cos``, eroded by ``roi_margin_px`` (not step 3).
   ``ambient_dn`` (the image level with the lamp off) is a camera calibration.
3. **Arm region.** The forearm is far brighter than what lies around it. Otsu's
   threshold splits the background of step 2 (veins already filled in) in two classes;
   when the dark class's mean is below ``roi_ratio`` times the bright class's, the arm
   is the largest region brighter than ``roi_level`` of the way from the dark mean to
   the bright one (holes filled), eroded by ``roi_margin_px``: the arm's dark silhouette
   is a valley of its own. A frame that is all skin keeps the whole image. Saturated
   pixels (``>= saturation_dn`` at the working resolution), grown by ``roi_margin_px``,
   are left out: they show no vein, and the rim of a clipped plateau looks like one.
4. **CLAHE** (optional: ``clahe_clip`` > 0, ``clahe_tile`` x ``clahe_tile`` tiles), on the
   flattened image. Off by default: its per-tile mappings lift the background around a
   vein by a different amount in each tile, which moves and hides veins as wide as a
   tile (docs/perception_nir.md); the flat field already normalises the contrast.
5. **Vesselness** (Frangi et al. 1998, dark lines). Per scale ``sigma``: Gaussian blur
   (border odd-reflected), Hessian from Sobel differences, eigenvalues in closed form,
   ``sigma^2``-normalised; across a dark line the larger eigenvalue ``l1`` is positive.
   ``V = exp(-Rb^2 / 2 beta^2) * (1 - exp(-S^2 / 2 c^2)) * exp(-E^2 / 2 gamma^2)`` with
   ``Rb = l2 / l1``, ``S^2 = l1^2 + l2^2``, ``c = frangi_c`` in grey levels of step 2 (a
   fixed constant, so V is an absolute measure in [0, 1): a frame without veins has no
   high V) and ``E = sigma |grad| / (sigma^2 l1)``, 0 at the bottom of a valley and 1
   at the dark foot of a step edge (this edge term is our addition). ``V = 0`` where
   ``l1 <= 0``. The maximum over the scales is kept.
6. **Hysteresis.** 8-connected regions of ``V >= hysteresis[0]`` that reach
   ``V >= hysteresis[1]`` form the mask (the thresholds are fractions of V's maximum, 1).
7. **Centrelines.** Non-maximum suppression, inside the mask, of the ridge strength
   ``l1`` (its maximum over the scales; unlike V it does not saturate, and the edge term
   does not pull it downhill) across the vein: the eigenvector of ``l1`` at the scale of
   that maximum, bilinear samples one pixel either side, a parabolic sub-pixel offset.
   The crest pixels are traced as a graph (neighbours up to ``_LINK`` px apart, which
   bridges small gaps): each component's longest geodesic path (two Dijkstra sweeps) is
   a centreline, and what is left of the component away from it is traced again
   (branches). Centrelines shorter than ``min_length_px`` are dropped; the rest are
   resampled every working pixel along their length and smoothed along it (Gaussian of
   ``smooth_px``: the crest of a faint vein wanders with the noise and skin texture).

Pixel coordinates are ``(u, v)``: column and row of the full-resolution image, with
pixel centres at integers, as :meth:`ir_guidance.sim.nir.NirSimulator.project` and
``sensor_msgs/CameraInfo`` use them. :func:`back_project` turns centrelines into points
in the camera's optical frame (z forward, x right, y down) with the registered depth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra

_MIN_SIGMA_WORK = 4.0          # px: the smallest Hessian scale at the working resolution
_MAX_LEVEL = 2                 # at most quarter resolution
_MIN_SIZE = 32                 # px: smallest image side accepted
_MAX_BRANCH_ROUNDS = 3         # tracing passes per component (main path, then branches)
_EIGHT = np.ones((3, 3), dtype=bool)
# Crest pixels up to _LINK apart are linked (the forward half of the neighbourhood):
# non-maximum suppression leaves gaps where a slanted crest steps sideways or where skin
# texture crosses a vein.
_LINK = 3
_FORWARD = tuple((dy, dx) for dy in range(_LINK + 1) for dx in range(-_LINK, _LINK + 1)
                 if (dy > 0 or dx > 0) and dy * dy + dx * dx <= _LINK * _LINK + 1)


@dataclass(frozen=True)
class NirParams:
    """Detector parameters; :meth:`from_config` reads them from config's ``nir`` section.

    The defaults are the values tuned on simulated frames (docs/perception_nir.md); a
    key present in the section overrides its default. Lengths are in full-resolution
    pixels; ``frangi_c`` is in grey levels of the flat-fielded image (see the module
    docs), whose ``contrast_gain`` is grey levels per unit of relative contrast.
    """

    clahe_clip: float = 0.0              # 0: no CLAHE
    clahe_tile: int = 8                  # tiles per side
    scales_px: tuple[float, ...] = (16.0, 24.0, 32.0)
    hysteresis: tuple[float, float] = (0.15, 0.35)
    min_length_px: float = 25.0
    frangi_beta: float = 0.5
    frangi_c: float = 2.0
    edge_gamma: float = 1.0
    flat_field_px: float = 128.0
    contrast_gain: float = 200.0
    roi_ratio: float = 0.5
    roi_level: float = 0.25
    roi_margin_px: float = 24.0
    saturation_dn: int = 250
    smooth_px: float = 16.0
    depth_window_px: int = 5
    shading_from_depth: bool = True      # flat field from the depth image's shape
    depth_smooth_px: float = 12.0        # smoothing of the depth for the first look
    shading_cos: float = 0.35            # skin this oblique or more is not modelled
    roi_cos: float = 0.45                # veins are looked for on skin facing the camera
    illumination_order: int = 1          # polynomial degree of the lamp's illumination
    fill_px: float = 32.0                # smoothing of the flat field outside the arm
    ambient_dn: float = 4.0              # image level without the lamp (calibration)

    def __post_init__(self) -> None:
        scales = tuple(float(s) for s in np.atleast_1d(np.asarray(self.scales_px, float)))
        if not scales or not all(math.isfinite(s) and 0.5 <= s <= 64.0 for s in scales):
            raise ValueError(f'scales_px must be 1+ values in [0.5, 64] px, got {scales}')
        object.__setattr__(self, 'scales_px', tuple(sorted(scales)))
        hyst = tuple(float(h) for h in np.atleast_1d(np.asarray(self.hysteresis, float)))
        if len(hyst) != 2 or not 0.0 < hyst[0] <= hyst[1] < 1.0:
            raise ValueError(f'hysteresis must be [low, high] with 0 < low <= high < 1, '
                             f'got {hyst}')
        object.__setattr__(self, 'hysteresis', hyst)
        if not (isinstance(self.clahe_tile, int | np.integer) and 1 <= self.clahe_tile <= 64):
            raise ValueError(f'clahe_tile must be an int in [1, 64], got {self.clahe_tile!r}')
        if not (isinstance(self.saturation_dn, int | np.integer)
                and 1 <= self.saturation_dn <= 256):
            raise ValueError(f'saturation_dn must be an int in [1, 256] (256: off), '
                             f'got {self.saturation_dn!r}')
        if not (isinstance(self.depth_window_px, int | np.integer)
                and self.depth_window_px >= 1 and self.depth_window_px % 2 == 1):
            raise ValueError(f'depth_window_px must be an odd int >= 1, '
                             f'got {self.depth_window_px!r}')
        if not (math.isfinite(self.clahe_clip) and self.clahe_clip >= 0):
            raise ValueError(f'clahe_clip must be finite and >= 0 (0: off), '
                             f'got {self.clahe_clip!r}')
        if not (isinstance(self.illumination_order, int | np.integer)
                and 0 <= self.illumination_order <= 4):
            raise ValueError(f'illumination_order must be an int in [0, 4], '
                             f'got {self.illumination_order!r}')
        if not isinstance(self.shading_from_depth, bool | np.bool_):
            raise ValueError(f'shading_from_depth must be a bool, '
                             f'got {self.shading_from_depth!r}')
        for name in ('shading_cos', 'roi_cos'):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f'{name} must be in [0, 1), got {value!r}')
        for name in ('frangi_beta', 'frangi_c', 'edge_gamma', 'flat_field_px',
                     'contrast_gain', 'depth_smooth_px', 'fill_px'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f'{name} must be finite and > 0, got {value!r}')
        for name in ('min_length_px', 'roi_margin_px', 'smooth_px', 'ambient_dn'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f'{name} must be finite and >= 0, got {value!r}')
        for name in ('roi_ratio', 'roi_level'):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f'{name} must be in (0, 1), got {value!r}')

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> NirParams:
        """Parameters from a mapping such as config's ``nir`` (other keys are ignored)."""
        if not isinstance(section, Mapping):
            raise ValueError(f'nir section must be a mapping, got {type(section).__name__}')
        values: dict[str, Any] = {}
        for f in cls.__dataclass_fields__.values():
            if f.name not in section:
                continue
            raw = section[f.name]
            try:
                if f.name in ('scales_px', 'hysteresis'):
                    values[f.name] = tuple(float(x) for x in raw)
                elif f.name == 'shading_from_depth':
                    if not isinstance(raw, bool):
                        raise ValueError
                    values[f.name] = raw
                elif f.name in ('clahe_tile', 'depth_window_px', 'saturation_dn',
                                'illumination_order'):
                    if isinstance(raw, bool) or float(raw) != int(raw):
                        raise ValueError
                    values[f.name] = int(raw)
                else:
                    values[f.name] = float(raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f'nir.{f.name}: bad value {raw!r}') from exc
        return cls(**values)


@dataclass(frozen=True)
class NirDetection:
    """What :meth:`NirVeinDetector.detect` found in one image.

    ``mask``: uint8 H x W, 255 on veins. ``vesselness``: float32 H x W in [0, 1).
    ``centerlines``: ``(N, 2)`` float arrays of ``(u, v)`` pixels, ordered along the vein
    from its end nearest the top of the image, one working pixel (1, 2 or 4 px) apart;
    the list is sorted by ``confidence`` (highest first), the mean vesselness along each
    centreline, in [0, 1).
    ``roi``: uint8 H x W, 255 where veins were looked for (the arm, see the module docs).
    """

    mask: np.ndarray
    vesselness: np.ndarray
    centerlines: list[np.ndarray]
    confidence: np.ndarray
    roi: np.ndarray = field(repr=False)


def _check_ir(ir: Any) -> np.ndarray:
    """The image as a uint8 H x W array, or ValueError saying what is wrong."""
    if not isinstance(ir, np.ndarray):
        raise ValueError(f'ir must be a numpy array, got {type(ir).__name__}')
    if ir.dtype != np.uint8:
        raise ValueError(f'ir must be uint8 (mono8), got {ir.dtype}')
    if ir.ndim != 2:
        raise ValueError(f'ir must be 2-D (H x W, one channel), got shape {ir.shape}')
    if ir.size == 0:
        raise ValueError('ir image is empty')
    if min(ir.shape) < _MIN_SIZE:
        raise ValueError(f'ir image {ir.shape} is too small: each side must be >= '
                         f'{_MIN_SIZE} px')
    lo, hi, _, _ = cv2.minMaxLoc(ir)
    if lo == hi:
        raise ValueError(f'ir image is constant ({int(lo)} everywhere): no picture')
    return np.ascontiguousarray(ir)


class NirVeinDetector:
    """Finds veins in NIR images; see the module docs for the pipeline.

    Not thread-safe (one CLAHE object is reused); use one detector per thread.
    """

    def __init__(self, params: NirParams | None = None) -> None:
        self.params = params if params is not None else NirParams()
        p = self.params
        self.level = min(_MAX_LEVEL, max(0, math.floor(
            math.log2(p.scales_px[0] / _MIN_SIGMA_WORK))))
        self._clahe = (cv2.createCLAHE(clipLimit=p.clahe_clip,
                                       tileGridSize=(p.clahe_tile, p.clahe_tile))
                       if p.clahe_clip > 0 else None)

    # -- public -----------------------------------------------------------------------------
    def detect(self, ir: np.ndarray, depth: np.ndarray | None = None,
               k: np.ndarray | None = None, depth_scale: float = 0.001) -> NirDetection:
        """Veins in one NIR image (uint8, H x W).

        With the registered ``depth`` image (uint16, same shape) and the intrinsics ``k``
        the skin's shading is predicted from its shape (module docs, step 2b); without
        them, or where the depth covers too little of the image, the image's own
        background is used (step 2a).
        """
        ir = _check_ir(ir)
        p = self.params
        factor = 2 ** self.level
        work = ir
        for _ in range(self.level):
            work = cv2.pyrDown(work)
        shaded = None
        if depth is not None and p.shading_from_depth:
            if k is None:
                raise ValueError('k (3x3 intrinsics) is needed with a depth image')
            _check_depth(depth, ir.shape)
            shaded = self._shape_flat_field(work, depth, _check_k(k), depth_scale, factor)
        if shaded is not None:
            flat, roi = shaded
        else:
            flat, background = self._flat_field(work, factor)
            roi = self._roi(background, work.shape, factor)
        saturated = work >= p.saturation_dn
        if saturated.any():
            # Clipped pixels show no vein, and the rim of a clipped plateau looks like one.
            r = max(1, round(p.roi_margin_px / factor))
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            roi &= cv2.dilate(saturated.view(np.uint8), kernel) == 0
        if self._clahe is not None:
            flat = self._clahe.apply(flat)
        enhanced = flat.astype(np.float32)
        vessel, ridge, hdiff, hxy2 = self._vesselness(enhanced, factor)
        vessel *= roi
        low, high = p.hysteresis
        labels, count = ndimage.label(vessel >= low, structure=_EIGHT)
        if count:
            keep = np.zeros(count + 1, dtype=bool)
            keep[np.unique(labels[vessel >= high])] = True
            keep[0] = False
            mask_work = keep[labels]
        else:
            mask_work = np.zeros(vessel.shape, dtype=bool)
        lines, confidence = self._centerlines(vessel, ridge, hdiff, hxy2, mask_work, factor)
        h, w = ir.shape
        for line in lines:
            # Sub-pixel offsets at the working image's edge may reach past the image.
            np.clip(line[:, 0], 0.0, w - 1.0, out=line[:, 0])
            np.clip(line[:, 1], 0.0, h - 1.0, out=line[:, 1])
        vessel_full = _upsample(vessel, factor, (h, w), cv2.INTER_LINEAR)
        np.clip(vessel_full, 0.0, None, out=vessel_full)
        mask = _upsample(mask_work.view(np.uint8) * np.uint8(255), factor, (h, w),
                         cv2.INTER_NEAREST)
        roi_full = _upsample(roi.view(np.uint8) * np.uint8(255), factor, (h, w),
                             cv2.INTER_NEAREST)
        return NirDetection(mask=mask, vesselness=vessel_full, centerlines=lines,
                            confidence=confidence, roi=roi_full)

    def detect_points(self, ir: np.ndarray, depth: np.ndarray, k: np.ndarray,
                      depth_scale: float = 0.001
                      ) -> tuple[NirDetection, list[np.ndarray]]:
        """:meth:`detect`, then :func:`back_project` with the registered depth image."""
        ir = _check_ir(ir)
        _check_depth(depth, ir.shape)
        detection = self.detect(ir, depth, k, depth_scale)
        return detection, back_project(detection.centerlines, depth, k, depth_scale,
                                       window_px=self.params.depth_window_px)

    # -- steps ------------------------------------------------------------------------------
    def _flat_field(self, work: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
        """The image over its background, as uint8 around 160, and the background.

        See the module docs, step 2. The background is returned at half the working
        resolution, where it is computed.
        """
        p = self.params
        small = cv2.pyrDown(work).astype(np.float32)
        size = max(3, 2 * round(p.flat_field_px / (4 * factor)) + 1)
        blur = size / 4
        pad = size // 2 + math.ceil(3 * blur)
        padded, inner = _pad_odd(small, pad)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel,
                                  borderType=cv2.BORDER_REPLICATE)
        background_small = cv2.GaussianBlur(closed, (0, 0), blur)[inner]
        background = cv2.resize(background_small, (work.shape[1], work.shape[0]),
                                interpolation=cv2.INTER_LINEAR)
        cv2.max(background, 1.0, dst=background)
        ratio = cv2.divide(work.astype(np.float32), background)
        # 160 + gain * (ratio - 1), saturated to uint8.
        flat = cv2.convertScaleAbs(ratio, alpha=p.contrast_gain, beta=160.0 - p.contrast_gain)
        return flat, background_small

    def _shape_flat_field(self, work: np.ndarray, depth: np.ndarray, k: np.ndarray,
                          depth_scale: float, factor: int
                          ) -> tuple[np.ndarray, np.ndarray] | None:
        """Flat field and arm region from the skin's shape (module docs, step 2b).

        None when the depth covers too little of the image to model the shading.
        """
        p = self.params
        h, w = work.shape
        # Depth at the working resolution, averaged over the valid pixels only.
        z = depth.astype(np.float32) * np.float32(depth_scale)
        valid = (depth > 0).astype(np.float32)
        z *= valid
        for _ in range(self.level):
            z = cv2.pyrDown(z)
            valid = cv2.pyrDown(valid)
        z, valid = z[:h, :w], valid[:h, :w]
        known = valid > 0.99
        if known.mean() < 0.1:
            return None
        z /= np.maximum(valid, np.float32(1e-6))
        # Rays (z = 1) of the working pixels: pixel x there is full-resolution pixel
        # factor * x (cv2.pyrDown's centres).
        a = ((np.arange(w, dtype=np.float32) * factor - np.float32(k[0, 2]))
             / np.float32(k[0, 0]))[None, :]
        b = ((np.arange(h, dtype=np.float32) * factor - np.float32(k[1, 2]))
             / np.float32(k[1, 1]))[:, None]
        ray = np.sqrt(a * a + b * b + 1.0)
        # First look at the shading, from the normals of the smoothed depth (quantised
        # to millimetres, which leaves steps: good enough to tell the arm from the table).
        smooth = max(1.0, p.depth_smooth_px / factor)
        weight = cv2.GaussianBlur(valid, (0, 0), smooth, borderType=cv2.BORDER_REPLICATE)
        zs = cv2.GaussianBlur(z * valid, (0, 0), smooth, borderType=cv2.BORDER_REPLICATE)
        zs /= np.maximum(weight, np.float32(1e-6))
        cos = _view_cosine(zs, a, b, factor / k[0, 0], factor / k[1, 1])
        work_f = work.astype(np.float32)
        fit = (known & (cos >= p.shading_cos) & (work < p.saturation_dn)
               & (work_f > p.ambient_dn + 1.0))
        if fit.sum() < 50:
            return None
        log_r = np.zeros((h, w), np.float32)
        np.log((work_f - np.float32(p.ambient_dn)) * (zs * ray) ** 2 / np.maximum(
            cos, np.float32(1e-6)), out=log_r, where=fit)
        # The arm against the table: the brighter class of the albedo (shading removed).
        arm = self._arm(log_r, fit)
        if arm is None:
            return None
        # The skin's shape: a quadric through the arm's points (the millimetre steps
        # average out), intersected with every ray.
        model = _fit_quadric(z, a, b, arm)
        if model is None:
            return None
        zq, cos = model
        rng = zq * ray
        # Lambertian skin lit from the camera: shading cos / range^2.
        shade = cos / np.maximum(rng * rng, np.float32(1e-12))
        arm &= (zq > 0) & (cos >= p.shading_cos)
        if arm.sum() < 50:
            return None
        np.log((work_f - np.float32(p.ambient_dn)) / np.maximum(shade, np.float32(1e-12)),
               out=log_r, where=arm)
        # The lamp's illumination: a smooth (low-order) fit over the arm, veins left out.
        illum = _robust_poly(log_r, arm, p.illumination_order)
        ratio = np.zeros((h, w), np.float32)
        np.divide(work_f - np.float32(p.ambient_dn), shade * np.exp(illum), out=ratio,
                  where=arm)
        # Outside the arm: its local mean (normalised convolution), so that its border is
        # neither a step nor a valley.
        spread = max(1.0, p.fill_px / factor)
        den = cv2.GaussianBlur(arm.astype(np.float32), (0, 0), spread,
                               borderType=cv2.BORDER_REPLICATE)
        num = cv2.GaussianBlur(ratio, (0, 0), spread, borderType=cv2.BORDER_REPLICATE)
        fill = np.ones((h, w), np.float32)
        np.divide(num + np.float32(1e-3), den + np.float32(1e-3), out=fill, where=den > 1e-3)
        outside = ~arm
        ratio[outside] = fill[outside]
        # What the model leaves (a gentle hump) goes with the image's own background
        # (step 2a), which the arm's steep shoulders no longer bias.
        flat, _ = self._flat_field(ratio * np.float32(128.0), factor)
        roi = arm & (cos >= p.roi_cos)
        margin = round(p.roi_margin_px / factor)
        if margin > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                               (2 * margin + 1, 2 * margin + 1))
            roi = cv2.erode(roi.view(np.uint8), kernel,
                            borderType=cv2.BORDER_REPLICATE).astype(bool)
        return flat, roi

    def _arm(self, log_r: np.ndarray, fit: np.ndarray) -> np.ndarray | None:
        """The arm: the largest bright (albedo) region of ``fit`` (holes filled)."""
        p = self.params
        values = log_r[fit]
        lo, hi = np.percentile(values, (1, 99))
        if not hi > lo:
            return fit
        scaled = np.clip((values - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
        t, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        bright = scaled > t
        if bright.all() or not bright.any():
            return fit
        dark_mean = float(np.exp(values[~bright].mean()))
        bright_mean = float(np.exp(values[bright].mean()))
        if dark_mean > p.roi_ratio * bright_mean:
            region = fit
        else:
            region = np.zeros(fit.shape, bool)
            region[fit] = bright
        labels, count = ndimage.label(region, structure=_EIGHT)
        if count == 0:
            return None
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
        return ndimage.binary_fill_holes(labels == int(np.argmax(sizes))) & fit

    def _roi(self, background: np.ndarray, shape: tuple[int, int], factor: int
             ) -> np.ndarray:
        """Boolean arm region at the working resolution (see the module docs, step 3).

        Found on the flat-field background, in which the closing has already filled the
        veins: a vein dark enough to fall below the threshold would otherwise cut a notch
        into the region wherever it reaches the image border.
        """
        p = self.params
        small = np.clip(background, 0.0, 255.0).astype(np.uint8)
        _, bright = cv2.threshold(small, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        bright = bright.astype(bool)
        h, w = shape
        if bright.all() or not bright.any():
            return np.ones((h, w), dtype=bool)
        dark_mean = float(small[~bright].mean())
        bright_mean = float(small[bright].mean())
        if dark_mean > p.roi_ratio * bright_mean:
            return np.ones((h, w), dtype=bool)
        # Otsu's threshold lies half-way between the classes; the arm's edge, darkened by
        # vignetting and the grazing view, reaches much closer to the dark class.
        bright = small > dark_mean + p.roi_level * (bright_mean - dark_mean)
        labels, count = ndimage.label(bright, structure=_EIGHT)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
        region = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))
        region = cv2.resize(region.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        margin = round(p.roi_margin_px / factor)
        if margin > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                               (2 * margin + 1, 2 * margin + 1))
            region = cv2.erode(region, kernel, borderType=cv2.BORDER_REPLICATE)
        return region.astype(bool)

    def _vesselness(self, img: np.ndarray, factor: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Vesselness, ridge strength, and Hxx - Hyy, 2 Hxy at the ridge's scale.

        Both are maxima over the scales: ``V``, and the larger Hessian eigenvalue
        ``l1`` (``sigma^2``-normalised), whose crest marks the centre of a vein.
        """
        p = self.params
        padded, inner = _pad_odd(img, math.ceil(3.0 * p.scales_px[-1] / factor) + 2)
        best = np.zeros(img.shape, np.float32)
        ridge = np.zeros(img.shape, np.float32)
        best_d = np.zeros(img.shape, np.float32)
        best_b = np.zeros(img.shape, np.float32)
        inv_beta = np.float32(-0.5 / p.frangi_beta ** 2)
        inv_c = np.float32(-0.5 / p.frangi_c ** 2)
        inv_gamma = np.float32(-0.5 / p.edge_gamma ** 2)
        for sigma_full in p.scales_px:
            s = sigma_full / factor
            g = cv2.GaussianBlur(padded, (0, 0), s)
            s2 = s * s
            hxx = cv2.Sobel(g, cv2.CV_32F, 2, 0, ksize=3, scale=s2 / 4)[inner]
            hyy = cv2.Sobel(g, cv2.CV_32F, 0, 2, ksize=3, scale=s2 / 4)[inner]
            hxy = cv2.Sobel(g, cv2.CV_32F, 1, 1, ksize=3, scale=s2 / 4)[inner]
            gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3, scale=s / 8)[inner]
            gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3, scale=s / 8)[inner]
            d = hxx - hyy
            b2 = 2 * hxy
            root = cv2.magnitude(d, b2)
            tr = hxx + hyy
            l1 = (tr + root) * np.float32(0.5)          # the larger eigenvalue
            l2 = (tr - root) * np.float32(0.5)
            pos = np.maximum(l1, np.float32(1e-6))
            rb = l2 / pos
            with np.errstate(under='ignore'):
                structure = l1 * l1 + l2 * l2
            slope = cv2.magnitude(gx, gy) / pos
            # Exponents floored at -80: exp underflows to 0 in float32 below about -87.
            with np.errstate(under='ignore'):
                v = np.exp(np.maximum(rb * rb * inv_beta + slope * slope * inv_gamma, -80.0))
                v *= 1.0 - np.exp(np.maximum(structure * inv_c, -80.0))
            v[l1 <= 0] = 0.0
            np.maximum(best, v, out=best)
            # The ridge strength (unsaturated, unbiased by slopes) and its direction.
            better = l1 > ridge
            np.copyto(ridge, l1, where=better)
            np.copyto(best_d, d, where=better)
            np.copyto(best_b, b2, where=better)
        return best, ridge, best_d, best_b

    def _centerlines(self, vessel: np.ndarray, ridge: np.ndarray, d: np.ndarray,
                     b2: np.ndarray, mask: np.ndarray, factor: int
                     ) -> tuple[list[np.ndarray], np.ndarray]:
        """Crests of ``ridge`` inside ``mask``, traced; full-resolution polylines."""
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            return [], np.zeros(0)
        # Unit normal across the vein: the eigenvector of the larger eigenvalue.
        theta = 0.5 * np.arctan2(b2[ys, xs], d[ys, xs])
        nx, ny = np.cos(theta), np.sin(theta)
        v0 = ridge[ys, xs]
        v_plus = _bilinear(ridge, xs + nx, ys + ny)
        v_minus = _bilinear(ridge, xs - nx, ys - ny)
        crest = (v0 >= v_plus) & (v0 > v_minus)
        ys, xs, nx, ny = ys[crest], xs[crest], nx[crest], ny[crest]
        v0, v_plus, v_minus = v0[crest], v_plus[crest], v_minus[crest]
        if ys.size == 0:
            return [], np.zeros(0)
        curv = v_plus - 2 * v0 + v_minus
        with np.errstate(divide='ignore', invalid='ignore'):
            offset = np.where(curv < -1e-9, 0.5 * (v_minus - v_plus) / curv, 0.0)
        offset = np.clip(offset, -0.5, 0.5)
        sub_x = xs + offset * nx
        sub_y = ys + offset * ny
        paths = _trace(ys, xs, vessel.shape, self.params.min_length_px / factor)
        smooth = self.params.smooth_px / factor
        lines: list[np.ndarray] = []
        conf: list[float] = []
        for path in paths:
            # cv2.pyrDown centres working pixel x on full-resolution pixel factor * x.
            pts = _resample(np.column_stack((sub_x[path], sub_y[path])) * factor, factor)
            if smooth > 0 and len(pts) > 2:
                pts = ndimage.gaussian_filter1d(pts, smooth, axis=0, mode='nearest')
            if (pts[-1, 1], pts[-1, 0]) < (pts[0, 1], pts[0, 0]):
                pts = pts[::-1]
            lines.append(np.ascontiguousarray(pts))
            conf.append(float(vessel[ys[path], xs[path]].mean()))
        order = np.argsort(-np.asarray(conf), kind='stable')
        return [lines[i] for i in order], np.asarray(conf)[order]


def _robust_poly(values: np.ndarray, mask: np.ndarray, order: int, rounds: int = 3,
                 step: int = 2) -> np.ndarray:
    """A 2-D polynomial of ``order`` fitted to ``values`` on ``mask``, evaluated everywhere.

    Least squares on every ``step``-th pixel; then ``rounds`` refits without the pixels
    more than 2.5 robust standard deviations below the fit (veins) or 4 above.
    """
    h, w = values.shape
    yy, xx = np.mgrid[0:h:step, 0:w:step]
    sub = mask[::step, ::step]
    x = (xx[sub] - w / 2) / (w / 2)
    y = (yy[sub] - h / 2) / (h / 2)
    f = values[::step, ::step][sub].astype(np.float64)
    powers = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    design = np.column_stack([x ** i * y ** j for i, j in powers])
    keep = np.ones(len(f), bool)
    coef = np.zeros(len(powers))
    for _ in range(rounds + 1):
        if keep.sum() < len(powers) * 4:
            break
        dk = design[keep]
        coef = np.linalg.solve(dk.T @ dk + 1e-9 * np.eye(len(powers)), dk.T @ f[keep])
        res = f - design @ coef
        scale = 1.4826 * np.median(np.abs(res[keep] - np.median(res[keep]))) + 1e-6
        keep = (res > -2.5 * scale) & (res < 4.0 * scale)
    gx = ((np.arange(w) - w / 2) / (w / 2))[None, :]
    gy = ((np.arange(h) - h / 2) / (h / 2))[:, None]
    out = np.zeros((h, w))
    for (i, j), c in zip(powers, coef, strict=True):
        out += c * gx ** i * gy ** j
    return out.astype(np.float32)


def _view_cosine(z: np.ndarray, a: np.ndarray, b: np.ndarray, da: float, db: float
                 ) -> np.ndarray:
    """Cosine between the surface normal and the ray, per pixel of the depth ``z``.

    The surface points are ``z (a, b, 1)``; ``da``, ``db``: the steps of ``a``, ``b`` from
    one pixel to the next.
    """
    zu = cv2.Sobel(z, cv2.CV_32F, 1, 0, ksize=3, scale=0.125, borderType=cv2.BORDER_REPLICATE)
    zv = cv2.Sobel(z, cv2.CV_32F, 0, 1, ksize=3, scale=0.125, borderType=cv2.BORDER_REPLICATE)
    # dP/du = (a zu + z da, b zu, zu); dP/dv = (a zv, b zv + z db, zv); n = dP/du x dP/dv.
    ux, uy, uz = a * zu + z * np.float32(da), b * zu, zu
    vx, vy, vz = a * zv, b * zv + z * np.float32(db), zv
    nx = uy * vz - uz * vy
    ny = uz * vx - ux * vz
    nz = ux * vy - uy * vx
    dot = np.abs(nx * a + ny * b + nz)
    return dot / (np.sqrt(nx * nx + ny * ny + nz * nz) * np.sqrt(a * a + b * b + 1.0)
                  + np.float32(1e-12))


def _fit_quadric(z: np.ndarray, a: np.ndarray, b: np.ndarray, mask: np.ndarray,
                 step: int = 2) -> tuple[np.ndarray, np.ndarray] | None:
    """The quadric surface through the points ``z (a, b, 1)`` on ``mask``.

    Algebraic least squares (the smallest right singular vector) in centred, scaled
    coordinates; then each pixel's ray is intersected with it (the root nearest the
    measured ``z``). Returns the surface's ``z`` (0 where the ray misses it) and the
    cosine between its normal and the ray.
    """
    h, w = z.shape
    sub = np.zeros_like(mask)
    sub[::step, ::step] = mask[::step, ::step]
    zz = z[sub].astype(np.float64)
    aa = np.broadcast_to(a, (h, w))[sub].astype(np.float64)
    bb = np.broadcast_to(b, (h, w))[sub].astype(np.float64)
    pts = np.column_stack((aa * zz, bb * zz, zz))
    if len(pts) < 50:
        return None
    centre = pts.mean(axis=0)
    scale = float(np.sqrt(((pts - centre) ** 2).sum(axis=1).mean())) + 1e-9
    x, y, q = ((pts - centre) / scale).T
    design = np.column_stack((x * x, y * y, q * q, x * y, x * q, y * q, x, y, q,
                              np.ones_like(x)))
    coef = np.linalg.eigh(design.T @ design)[1][:, 0]   # smallest eigenvalue's vector
    amat = np.array([[coef[0], coef[3] / 2, coef[4] / 2],
                     [coef[3] / 2, coef[1], coef[5] / 2],
                     [coef[4] / 2, coef[5] / 2, coef[2]]])
    bvec = coef[6:9]
    c0 = coef[9]
    # Ray X = (t d - centre) / scale, d = (a, b, 1): alpha t^2 + beta t + gamma = 0.
    # Elementwise in float32 over the grid (t in metres: float32 is ample).
    f32 = np.float32
    da, db, dc = (f32(1.0 / scale) * np.broadcast_to(v, (h, w)).astype(np.float32)
                  for v in (a, b, np.ones((1, 1), np.float32)))
    o = -centre / scale
    m = amat.astype(np.float32)
    # A d (rows of the symmetric matrix times d), then alpha = d.A d, beta = 2 o.A d + b.d
    ad0 = m[0, 0] * da + m[0, 1] * db + m[0, 2] * dc
    ad1 = m[1, 0] * da + m[1, 1] * db + m[1, 2] * dc
    ad2 = m[2, 0] * da + m[2, 1] * db + m[2, 2] * dc
    alpha = ad0 * da + ad1 * db + ad2 * dc
    beta = (f32(2 * o[0]) * ad0 + f32(2 * o[1]) * ad1 + f32(2 * o[2]) * ad2
            + f32(bvec[0]) * da + f32(bvec[1]) * db + f32(bvec[2]) * dc)
    gamma = f32(o @ amat @ o + bvec @ o + c0)
    disc = beta * beta - f32(4) * alpha * gamma
    root = np.sqrt(np.maximum(disc, f32(0)))
    with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
        t1 = (-beta - root) / (f32(2) * alpha)
        t2 = (-beta + root) / (f32(2) * alpha)
    t = np.where(np.abs(t1 - z) <= np.abs(t2 - z), t1, t2)
    good = (disc >= 0) & np.isfinite(t) & (t > 0)
    t = np.where(good, t, f32(0))
    # The gradient 2 A X + b at X = t d + o.
    gx = f32(2) * (t * ad0 + f32(amat[0] @ o)) + f32(bvec[0])
    gy = f32(2) * (t * ad1 + f32(amat[1] @ o)) + f32(bvec[1])
    gz = f32(2) * (t * ad2 + f32(amat[2] @ o)) + f32(bvec[2])
    with np.errstate(invalid='ignore', over='ignore'):
        cos = np.abs(gx * da + gy * db + gz * dc) / (
            np.sqrt(gx * gx + gy * gy + gz * gz) * np.sqrt(da * da + db * db + dc * dc)
            + f32(1e-12))
    return t.astype(np.float32), np.where(good, cos, f32(0)).astype(np.float32)


def _check_k(k: Any) -> np.ndarray:
    """The intrinsics as a finite 3 x 3 float array with positive focal lengths."""
    kk = np.asarray(k, dtype=float)
    if kk.shape != (3, 3) or not np.all(np.isfinite(kk)):
        raise ValueError(f'K must be a finite 3x3 matrix, got shape {kk.shape}')
    if kk[0, 0] <= 0 or kk[1, 1] <= 0:
        raise ValueError(f'K must have positive focal lengths, got fx={kk[0, 0]}, '
                         f'fy={kk[1, 1]}')
    return kk


def _resample(pts: np.ndarray, spacing: float) -> np.ndarray:
    """The polyline ``pts`` resampled at ``spacing`` along its length (ends kept)."""
    along = np.r_[0.0, np.cumsum(np.hypot(*np.diff(pts, axis=0).T))]
    total = along[-1]
    if total <= spacing:
        return pts
    count = math.ceil(total / spacing)
    grid = np.linspace(0.0, total, count + 1)
    return np.column_stack((np.interp(grid, along, pts[:, 0]), np.interp(grid, along, pts[:, 1])))


def _upsample(img: np.ndarray, factor: int, shape: tuple[int, int], interpolation: int
              ) -> np.ndarray:
    """Working-resolution ``img`` at full resolution: pixel x there is pixel factor * x.

    That is where ``cv2.pyrDown`` centres its pixels (``cv2.resize`` would shift them by
    ``(factor - 1) / 2``).
    """
    if factor == 1:
        return img.copy()
    h, w = shape
    m = np.array([[1.0 / factor, 0.0, 0.0], [0.0, 1.0 / factor, 0.0]])
    return cv2.warpAffine(img, m, (w, h), flags=interpolation | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _pad_odd(img: np.ndarray, pad: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """``img`` (float32) padded by odd reflection, and the slices of the original.

    Odd reflection (``2 * edge - mirror image``) continues the image's slope past its
    border. A mirror or a replicated border would put a kink there, which a Hessian
    takes for a valley along every border the image darkens towards (vignetting), and
    which a grey closing turns into a background too bright near the border.
    """
    h, w = img.shape
    pad = max(1, min(pad, min(h, w) - 1))
    mirrored = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    edge = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    padded = cv2.addWeighted(edge, 2.0, mirrored, -1.0, 0.0)
    return padded, (slice(pad, pad + h), slice(pad, pad + w))


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``img`` at float positions, bilinear, clamped to the image."""
    h, w = img.shape
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0 = np.minimum(x.astype(np.intp), w - 2)
    y0 = np.minimum(y.astype(np.intp), h - 2)
    fx, fy = x - x0, y - y0
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _trace(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int], min_length: float
           ) -> list[np.ndarray]:
    """Ordered index paths through the pixel set ``(ys, xs)``.

    Pixels up to ``_LINK`` apart are neighbours (8-connectivity plus small gaps). Each
    component's longest geodesic path (the farthest pixel from any pixel, then the
    farthest from that one; steps cost their length, jumps over gaps a quarter more) is
    a path; the component's pixels more
    than ``_LINK`` from it are traced again, up to ``_MAX_BRANCH_ROUNDS`` times. Paths
    shorter than ``min_length`` are dropped. All components are swept at once: one
    multi-source Dijkstra per sweep, one source per component.
    """
    n = ys.size
    index = np.full(shape, -1, dtype=np.intp)
    index[ys, xs] = np.arange(n)
    h, w = shape
    rows, cols, weights = [], [], []
    for dy, dx in _FORWARD:
        ty, tx = ys + dy, xs + dx
        ok = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
        src = np.flatnonzero(ok)
        dst = index[ty[ok], tx[ok]]
        hit = dst >= 0
        rows.append(src[hit])
        cols.append(dst[hit])
        # A jump over a gap costs a quarter more than its length, so that where the
        # crest is contiguous the path follows it pixel by pixel.
        step = math.hypot(dy, dx)
        weights.append(np.full(int(hit.sum()), step if step < 1.5 else 1.25 * step))
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    wt = np.concatenate(weights)
    graph = coo_matrix((np.r_[wt, wt], (np.r_[r, c], np.r_[c, r])), shape=(n, n)).tocsr()
    active = np.ones(n, dtype=bool)
    paths: list[np.ndarray] = []
    near = np.zeros(shape, dtype=np.uint8)
    kernel = np.ones((2 * _LINK + 1, 2 * _LINK + 1), np.uint8)
    min_pixels = max(2, int(min_length / _LINK))
    for _ in range(_MAX_BRANCH_ROUNDS):
        nodes = np.flatnonzero(active)
        if nodes.size < min_pixels:
            break
        sub = graph[nodes][:, nodes]
        count, comp = connected_components(sub, directed=False)
        sizes = np.bincount(comp, minlength=count)
        big = np.flatnonzero(sizes >= min_pixels)
        if big.size == 0:
            break
        # First node of each big component, then the farthest from it, then the
        # farthest from that one: the ends of the longest path.
        _, first = np.unique(comp, return_index=True)
        dist = dijkstra(sub, directed=False, indices=first[big], min_only=True)
        ends_a = _argmax_per(dist, comp, big, count)
        dist, pred, _ = dijkstra(sub, directed=False, indices=ends_a, min_only=True,
                                 return_predecessors=True)
        ends_b = _argmax_per(dist, comp, big, count)
        near[...] = 0
        keep = np.zeros(count, dtype=bool)
        for a, b in zip(ends_a, ends_b, strict=True):
            if dist[b] < min_length:        # an upper bound of the path's length
                continue
            walk = [b]
            while walk[-1] != a:
                walk.append(pred[walk[-1]])
            path = nodes[np.asarray(walk[::-1])]
            if np.hypot(np.diff(ys[path]), np.diff(xs[path])).sum() < min_length:
                continue
            paths.append(path)
            keep[comp[a]] = True
            near[ys[path], xs[path]] = 1
        # What is left to trace: kept components' pixels away from their paths.
        active[:] = False
        cv2.dilate(near, kernel, dst=near)
        left = keep[comp] & (near[ys[nodes], xs[nodes]] == 0)
        active[nodes[left]] = True
    return paths


def _argmax_per(values: np.ndarray, comp: np.ndarray, which: np.ndarray, count: int
                ) -> np.ndarray:
    """Per component in ``which``: the node of the largest finite ``values``."""
    finite = np.where(np.isfinite(values), values, -1.0)
    order = np.lexsort((finite, comp))          # by component, then by value
    ranked = comp[order]
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    best = np.full(count, -1)
    best[ranked[ends]] = order[ends]            # the last (largest) of each component
    return best[which]


def _check_depth(depth: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The depth image as uint16 H x W, or ValueError."""
    if not isinstance(depth, np.ndarray):
        raise ValueError(f'depth must be a numpy array, got {type(depth).__name__}')
    if depth.dtype != np.uint16:
        raise ValueError(f'depth must be uint16 (16UC1, depth units), got {depth.dtype}')
    if depth.ndim != 2 or depth.size == 0:
        raise ValueError(f'depth must be a non-empty 2-D image, got shape {depth.shape}')
    if shape is not None and depth.shape != tuple(shape):
        raise ValueError(f'depth shape {depth.shape} does not match the ir image {shape}')
    return depth


def back_project(centerlines: Sequence[np.ndarray], depth: np.ndarray, k: np.ndarray,
                 depth_scale: float = 0.001, window_px: int = 5) -> list[np.ndarray]:
    """Centrelines ``(N, 2)`` of ``(u, v)`` pixels to ``(M, 3)`` optical-frame points (m).

    The depth of a point is the median of the valid (non-zero) depths in the
    ``window_px`` x ``window_px`` window around its pixel; points with none are skipped,
    so ``M <= N`` and no NaN is ever returned. One array per centreline, in order.
    ``depth`` is registered to the NIR image (same intrinsics ``k``, 3 x 3).
    """
    depth = _check_depth(depth)
    kk = np.asarray(k, dtype=float)
    if kk.shape != (3, 3) or not np.all(np.isfinite(kk)):
        raise ValueError(f'K must be a finite 3x3 matrix, got shape {kk.shape}')
    fx, fy, cx, cy = kk[0, 0], kk[1, 1], kk[0, 2], kk[1, 2]
    if fx <= 0 or fy <= 0:
        raise ValueError(f'K must have positive focal lengths, got fx={fx}, fy={fy}')
    if not (math.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f'depth_scale must be finite and > 0, got {depth_scale!r}')
    if not (isinstance(window_px, int | np.integer) and window_px >= 1 and window_px % 2):
        raise ValueError(f'window_px must be an odd int >= 1, got {window_px!r}')
    lines = []
    for i, line in enumerate(centerlines):
        arr = np.asarray(line, dtype=float)
        if arr.ndim != 2 or arr.shape[1] != 2 or not np.all(np.isfinite(arr)):
            raise ValueError(f'centerline {i} must be a finite (N, 2) array, got {arr.shape}')
        lines.append(arr)
    if not lines:
        return []
    pts = np.concatenate(lines)
    h, w = depth.shape
    col = np.rint(pts[:, 0]).astype(np.intp)
    row = np.rint(pts[:, 1]).astype(np.intp)
    if pts.size and (col.min() < 0 or row.min() < 0 or col.max() >= w or row.max() >= h):
        raise ValueError(f'centerline pixels fall outside the {w}x{h} depth image')
    r = window_px // 2
    pad = np.pad(depth, r, mode='constant')
    offsets = np.arange(-r, r + 1)
    win = pad[(row + r)[:, None, None] + offsets[None, :, None],
              (col + r)[:, None, None] + offsets[None, None, :]].reshape(len(pts), -1)
    valid = win > 0
    count = valid.sum(axis=1)
    # Invalid samples sort last; the median of the valid ones is in the first ``count``.
    ordered = np.sort(np.where(valid, win, np.iinfo(np.uint16).max), axis=1).astype(float)
    ok = count > 0
    lo = ordered[np.arange(len(pts)), np.maximum(count - 1, 0) // 2]
    hi = ordered[np.arange(len(pts)), np.maximum(count, 1) // 2]
    z = 0.5 * (lo + hi) * depth_scale
    xyz = np.column_stack(((pts[:, 0] - cx) / fx * z, (pts[:, 1] - cy) / fy * z, z))
    out = []
    start = 0
    for arr in lines:
        stop = start + len(arr)
        out.append(np.ascontiguousarray(xyz[start:stop][ok[start:stop]]))
        start = stop
    return out
