"""A classical vein-lumen segmenter for B-mode frames: the baseline the U-Net must beat.

A vein in cross-section is an anechoic (black) ellipse with bright walls, in the upper
part of the tissue. Steps:

1. Median (5 px) then Gaussian blur to suppress speckle.
2. The tissue region: in every column, below the skin's entry echo (the first bright
   pixel) by ``skin_m``; above ``max_depth_m`` (superficial veins only). The gel gap of
   a probe not flush with the skin (black above the skin) is excluded this way.
3. Hypoechoic pixels: darker than ``dark_ratio`` times the median of the tissue region
   and than its Otsu threshold.
4. Morphological opening and hole filling, then connected components filtered by area
   (``min_area_mm2`` up to ``max_area_mm2``), by shape (it must fill its moment ellipse;
   aspect ratio below ``max_aspect``, or ``max_aspect_flat`` when it lies flat, as a
   vein cut along its length does: acoustic shadows are tall bands), by darkness (its
   inside below ``max_inside`` times the tissue median: a lumen is anechoic, fat lobules
   only hypoechoic) and by contrast (the ring around it ``min_contrast`` times brighter
   than its inside).
5. Each kept region is re-thresholded locally at the midpoint of its inside and ring
   brightness, which puts the edge where the dark lumen meets the bright wall.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

MIN_SIDE = 32


def check_image(image: object) -> np.ndarray:
    """Validate a B-mode frame: a 2-D uint8 (or finite float on the 0-255 scale) array.

    ``(H, W, 1)`` is accepted as ``(H, W)``. Raises ValueError saying what is wrong.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f'expected a numpy array, got {type(image).__name__}')
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2:
        raise ValueError(f'expected a 2-D grey image (H, W), got shape {image.shape}; '
                         'convert colour frames to grey first')
    if image.size == 0 or min(image.shape) < MIN_SIDE:
        raise ValueError(f'image too small or empty: {image.shape}; needs at least '
                         f'{MIN_SIDE} x {MIN_SIDE} pixels')
    if image.dtype == np.uint8:
        return image
    if image.dtype in (np.float32, np.float64):
        if not np.all(np.isfinite(image)):
            raise ValueError('image contains NaN or inf')
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 255.0:
            raise ValueError(f'float image values must be in [0, 255], got [{lo}, {hi}]')
        return image
    raise ValueError(f'image dtype must be uint8 (or float32/float64 on 0-255), got '
                     f'{image.dtype}')


def segment_classical(image: np.ndarray, width_m: float = 0.038, depth_m: float = 0.040,
                      min_area_mm2: float | None = None, max_area_mm2: float = 60.0,
                      max_depth_m: float = 0.025, skin_m: float = 0.5e-3,
                      dark_ratio: float = 0.6, max_inside: float = 0.3,
                      min_contrast: float = 1.5, max_aspect: float = 3.0,
                      max_aspect_flat: float = 12.0) -> np.ndarray:
    """Lumen mask (uint8 0/1, the image's shape) of one frame; see the module docs."""
    frame = check_image(image)
    for name, value in (('width_m', width_m), ('depth_m', depth_m)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f'{name} must be finite and > 0, got {value}')
    if min_area_mm2 is None:
        from ir_guidance.perception.us_vessels import _defaults

        min_area_mm2 = _defaults()['min_area_mm2']
    rows, cols = frame.shape
    px, py = width_m / cols, depth_m / rows
    img = np.clip(frame, 0, 255).astype(np.uint8) if frame.dtype != np.uint8 else frame
    smooth = cv2.GaussianBlur(cv2.medianBlur(img, 5), (0, 0), 1.5).astype(np.float32)

    # Tissue rows: below the skin entry echo, above the deepest vein looked for.
    bright = smooth > max(40.0, 0.6 * float(np.percentile(smooth, 99)))
    entry = np.where(bright.any(axis=0), np.argmax(bright, axis=0), rows)
    row = np.arange(rows)[:, None]
    tissue = (row >= entry[None, :] + skin_m / py) & (row < max_depth_m / py)
    if not tissue.any():
        return np.zeros((rows, cols), np.uint8)

    level = float(np.median(smooth[tissue]))
    values = smooth[tissue].astype(np.uint8)
    otsu, _ = cv2.threshold(values.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = (smooth < min(dark_ratio * level, otsu)) & tissue
    dark = dark.astype(np.uint8)
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    dark = _fill_holes(dark)

    count, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    out = np.zeros((rows, cols), np.uint8)
    ring_px = max(2, round(0.8e-3 / px))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
    for i in range(1, count):
        area_mm2 = stats[i, cv2.CC_STAT_AREA] * px * py * 1e6
        if not min_area_mm2 <= area_mm2 <= max_area_mm2:
            continue
        x0, y0 = stats[i, cv2.CC_STAT_LEFT], stats[i, cv2.CC_STAT_TOP]
        w, h = stats[i, cv2.CC_STAT_WIDTH], stats[i, cv2.CC_STAT_HEIGHT]
        pad = 2 * ring_px + 2
        ys = slice(max(0, y0 - pad), min(rows, y0 + h + pad))
        xs = slice(max(0, x0 - pad), min(cols, x0 + w + pad))
        region = (labels[ys, xs] == i).astype(np.uint8)
        if not _ellipse_like(region, px, py, max_aspect, max_aspect_flat):
            continue
        ring = cv2.dilate(region, kernel).astype(bool) & ~region.astype(bool)
        patch = smooth[ys, xs]
        inside_mean = float(patch[region.astype(bool)].mean())
        ring_mean = float(patch[ring].mean()) if ring.any() else 0.0
        if inside_mean > max_inside * level or ring_mean < min_contrast * max(inside_mean, 1.0):
            continue
        # Local re-threshold at the midpoint: the component overlapping the seed region.
        local = (patch < 0.5 * (inside_mean + ring_mean)).astype(np.uint8)
        n, lab = cv2.connectedComponents(local, connectivity=8)
        hits = np.bincount(lab[region.astype(bool)], minlength=n)
        hits[0] = 0
        refined = (lab == int(np.argmax(hits))) if hits.max() > 0 else region.astype(bool)
        grown = int(refined.sum())
        if grown > 2.0 * int(region.sum()):
            refined = region.astype(bool)           # leaked into a dark neighbour
        out[ys, xs] |= _fill_holes(refined.astype(np.uint8))
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with the background regions not connected to its border filled."""
    h, w = mask.shape
    flood = np.zeros((h + 2, w + 2), np.uint8)
    flood[1:-1, 1:-1] = mask
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    out = mask.copy()
    out[holes] = 1
    return out


def _ellipse_like(region: np.ndarray, px: float, py: float, max_aspect: float,
                  max_aspect_flat: float) -> bool:
    """Whether a region fills its moment ellipse (metres) and is not too elongated.

    Lying flat (major axis within 30 degrees of lateral: a vein cut along its length)
    allows ``max_aspect_flat``; otherwise ``max_aspect`` (a shadow is a tall band).
    """
    rr, cc = np.nonzero(region)
    if rr.size < 5:
        return False
    x = cc * px
    y = rr * py
    cov = np.cov(np.vstack((x, y))) + np.diag([px * px, py * py]) / 12.0
    eig, vec = np.linalg.eigh(cov)
    if eig[0] <= 0:
        return False
    a, b = 2.0 * math.sqrt(eig[1]), 2.0 * math.sqrt(eig[0])
    fill = rr.size * px * py / (math.pi * a * b)
    flat = abs(vec[0, 1]) >= math.cos(math.radians(30.0))
    return a / b <= (max_aspect_flat if flat else max_aspect) and 0.75 <= fill <= 1.15
