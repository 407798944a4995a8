"""Vein cross-sections from a lumen mask, and a tracker that keeps their ids across frames.

Coordinates are those of ``us_image_frame`` (:mod:`ir_guidance.sim.ultrasound`): x lateral
from the image centre, y depth from the probe face, metres; pixel ``(r, c)`` of a
``rows x cols`` image ``width_m`` wide and ``depth_m`` deep is at
``x = (c + 0.5) / cols * width_m - width_m / 2``, ``y = (r + 0.5) / rows * depth_m``.
Pixels need not be square (the depth setting changes the axial size only): every
measurement is made in metres.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment


@functools.cache
def _defaults() -> dict[str, float]:
    """``min_area_mm2`` and ``track_gate_mm`` of the ``ultrasound`` config section."""
    from ir_guidance import config

    section = config.load()['ultrasound']
    return {'min_area_mm2': float(section['min_area_mm2']),
            'track_gate_mm': float(section['track_gate_mm'])}


@dataclass(frozen=True)
class CrossSection:
    """One vessel cross-section in the image plane (metres, radians)."""

    x: float              # centre, lateral from the image centre
    y: float              # centre, depth below the probe face
    radius_major: float   # semi-axes of the moment-equivalent ellipse
    radius_minor: float
    angle: float          # of the major axis, from image +x towards +y, in (-pi/2, pi/2]
    area: float           # m^2 (pixel count times pixel area)
    confidence: float     # mean probability inside (1.0 when none was given)

    @property
    def radius(self) -> float:
        """Radius of the circle of the same area as the ellipse, ``sqrt(a * b)``."""
        return math.sqrt(self.radius_major * self.radius_minor)


def _check_geometry(width_m: float, depth_m: float) -> None:
    for name, value in (('width_m', width_m), ('depth_m', depth_m)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f'{name} must be a finite number > 0, got {value!r}')


def cross_sections(mask: np.ndarray, width_m: float, depth_m: float,
                   probability: np.ndarray | None = None, min_area_mm2: float | None = None
                   ) -> list[CrossSection]:
    """Connected regions of ``mask`` (8-connected) as cross-sections, sorted by x.

    ``mask``: 2-D, nonzero = lumen. ``probability``: same shape, averaged inside each
    region as its confidence. Regions smaller than ``min_area_mm2`` (default: the
    config's ``ultrasound.min_area_mm2``) are dropped. Radii and angle come from the
    region's second moments in metres (a filled ellipse with semi-axes a, b has variances
    a^2/4 and b^2/4 along them; pixel quantisation adds 1/12 pixel^2, taken into account).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f'mask must be a non-empty 2-D array, got shape {mask.shape}')
    _check_geometry(width_m, depth_m)
    if probability is not None and np.shape(probability) != mask.shape:
        raise ValueError(f'probability shape {np.shape(probability)} != mask shape '
                         f'{mask.shape}')
    min_area = (_defaults()['min_area_mm2'] if min_area_mm2 is None else min_area_mm2) * 1e-6
    rows, cols = mask.shape
    binary = mask if mask.dtype == np.uint8 else (mask != 0).view(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(
        binary, connectivity=8, ltype=cv2.CV_32S)
    if count <= 1:
        return []
    px, py = width_m / cols, depth_m / rows
    area = stats[:, cv2.CC_STAT_AREA].astype(float) * (px * py)
    keep = np.nonzero(area[1:] >= min_area)[0] + 1
    if keep.size == 0:
        return []
    rr, cc = np.nonzero(labels)
    lab = labels[rr, cc]
    n = np.bincount(lab, minlength=count).astype(float)
    n[0] = 1.0
    dx = (cc - centroids[lab, 0]) * px
    dy = (rr - centroids[lab, 1]) * py
    sxx = np.bincount(lab, dx * dx, count) / n + px * px / 12.0
    syy = np.bincount(lab, dy * dy, count) / n + py * py / 12.0
    sxy = np.bincount(lab, dx * dy, count) / n
    if probability is not None:
        conf = np.bincount(lab, np.asarray(probability, dtype=float)[rr, cc], count) / n
    else:
        conf = np.ones(count)
    out = []
    for k in keep:
        half_trace = 0.5 * (sxx[k] + syy[k])
        root = math.sqrt(max(0.0, 0.25 * (sxx[k] - syy[k]) ** 2 + sxy[k] ** 2))
        major, minor = half_trace + root, max(0.0, half_trace - root)
        angle = 0.5 * math.atan2(2.0 * sxy[k], sxx[k] - syy[k])
        out.append(CrossSection(
            x=(centroids[k, 0] + 0.5) * px - width_m / 2,
            y=(centroids[k, 1] + 0.5) * py,
            radius_major=2.0 * math.sqrt(major), radius_minor=2.0 * math.sqrt(minor),
            angle=angle, area=float(area[k]), confidence=float(conf[k])))
    out.sort(key=lambda s: s.x)
    return out


@dataclass
class Track:
    """A tracked vessel: id, filtered centre and velocity (m, m per frame), its last section."""

    id: int
    x: float
    y: float
    vx: float
    vy: float
    section: CrossSection     # the last matched measurement
    hits: int = 1             # frames matched
    missed: int = 0           # consecutive frames without a match

    @property
    def filtered(self) -> CrossSection:
        """The last section with the filtered centre."""
        return replace(self.section, x=self.x, y=self.y)


class VesselTracker:
    """Stable ids for cross-sections across frames (global nearest neighbour).

    Each frame, the tracks' predicted centres (constant position, or constant velocity
    when ``beta > 0``) are matched one-to-one to the new cross-sections by the Hungarian
    algorithm on centre distance; pairs further apart than ``gate_mm`` (default: the
    config's ``ultrasound.track_gate_mm``) are not matched. A matched track moves by an
    alpha-beta filter (``alpha = 1``: to the measurement; smaller smooths); an unmatched
    section starts a new track with a new id; a track unmatched for more than
    ``max_missed`` consecutive frames is dropped (its id is never reused).
    """

    def __init__(self, gate_mm: float | None = None, max_missed: int = 5,
                 alpha: float = 0.7, beta: float = 0.0) -> None:
        gate = _defaults()['track_gate_mm'] if gate_mm is None else gate_mm
        if not (math.isfinite(gate) and gate > 0):
            raise ValueError(f'gate_mm must be finite and > 0, got {gate}')
        if not (isinstance(max_missed, int) and max_missed >= 0):
            raise ValueError(f'max_missed must be an int >= 0, got {max_missed!r}')
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f'alpha must be in (0, 1], got {alpha}')
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f'beta must be in [0, 1], got {beta}')
        self.gate = gate * 1e-3
        self.max_missed = max_missed
        self.alpha = alpha
        self.beta = beta
        self._tracks: list[Track] = []
        self._next_id = 1

    @property
    def tracks(self) -> list[Track]:
        """The live tracks (matched this frame or recently), by id."""
        return list(self._tracks)

    def reset(self) -> None:
        """Drop every track (ids keep counting up)."""
        self._tracks = []

    def update(self, sections: Sequence[CrossSection]) -> list[Track]:
        """Feed one frame's cross-sections; returns their tracks, in the input order."""
        for s in sections:
            if not isinstance(s, CrossSection):
                raise TypeError(f'expected CrossSection, got {type(s).__name__}')
        tracks = self._tracks
        px = np.array([t.x + t.vx for t in tracks])
        py = np.array([t.y + t.vy for t in tracks])
        assigned: dict[int, Track] = {}
        if tracks and sections:
            sx = np.array([s.x for s in sections])
            sy = np.array([s.y for s in sections])
            dist = np.hypot(px[:, None] - sx[None, :], py[:, None] - sy[None, :])
            cost = np.where(dist <= self.gate, dist, 1e3 * self.gate + dist)
            for ti, si in zip(*linear_sum_assignment(cost), strict=True):
                if dist[ti, si] <= self.gate:
                    assigned[int(si)] = self._correct(tracks[ti], px[ti], py[ti],
                                                      sections[si])
        matched = {id(t) for t in assigned.values()}
        survivors = []
        for t in tracks:
            if id(t) not in matched:
                # Coast on the prediction (no move under the constant-position model).
                t.x += t.vx
                t.y += t.vy
                t.missed += 1
                if t.missed > self.max_missed:
                    continue
            survivors.append(t)
        out = []
        for i, s in enumerate(sections):
            track = assigned.get(i)
            if track is None:
                track = Track(id=self._next_id, x=s.x, y=s.y, vx=0.0, vy=0.0, section=s)
                self._next_id += 1
                survivors.append(track)
            out.append(track)
        survivors.sort(key=lambda t: t.id)
        self._tracks = survivors
        return out

    def _correct(self, track: Track, pred_x: float, pred_y: float, s: CrossSection
                 ) -> Track:
        """Alpha-beta update of a matched track."""
        rx, ry = s.x - pred_x, s.y - pred_y
        track.x = pred_x + self.alpha * rx
        track.y = pred_y + self.alpha * ry
        if self.beta > 0.0:
            track.vx += self.beta * rx
            track.vy += self.beta * ry
        track.section = s
        track.hits += 1
        track.missed = 0
        return track
