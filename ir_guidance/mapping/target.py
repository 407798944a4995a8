"""Insertion-site selection on the vessel map (algorithms layer, no ROS).

Every centreline sample of every mapped vessel (``site_step_m`` apart) is a candidate,
for a needle travelling along the vessel in either direction. A candidate is ruled out,
with the first reason that applies, when:

- the vessel is too thin (diameter ``2 * radius`` < ``min_diameter_m``);
- no skin height is known near it (``skin_radius_m``) or its depth below the skin is
  outside ``[min_depth_m, max_depth_m]``;
- the needle path is longer than the stage can travel: from its start ``tip_standoff_m``
  above the probe face, at ``needle_angle_deg`` to the skin, the tip travels
  ``(depth + standoff) / sin(angle)``, at most ``stage_travel_m`` (40 mm at 20°: ~10.7 mm
  deep);
- the map does not cover ``straight_length_m`` of the vessel before the site (where the
  needle runs along it), or the centreline there strays more than ``max_deviation_m``
  from a straight line;
- another vessel comes closer than ``min_clearance_m`` (wall to wall) to that stretch,
  or a branch point (two vessels touching) lies within ``branch_clearance_m`` of it;
- the position is too uncertain (``sigma > max_sigma_m``) or the vessel's confidence is
  below ``min_confidence``.

The others are scored in [0, 1] (weights ``w_*``): diameter (bigger is better, up to
twice the minimum), depth (middle of the allowed range best), straightness, clearance,
and confidence x certainty. The best site wins; for every other vessel the reason it
lost is returned (its best score, or the most common reason its sites were ruled out).

The skin height above a site comes from ``skin_points`` (probe-face centres of US frames
in contact): the inverse-distance mean of the nearest ones horizontally. The face is flat
and 38 mm wide, so in contact its centre's height is the skin's under the whole face.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ir_guidance.mapping.vessel_map import VesselEstimate

DEFAULTS: dict[str, float] = {
    'min_diameter_m': 0.0015,
    'min_depth_m': 0.002,
    'max_depth_m': 0.012,
    'needle_angle_deg': 20.0,
    'stage_travel_m': 0.040,
    'tip_standoff_m': 0.003,
    'straight_length_m': 0.015,
    'max_deviation_m': 0.0005,
    'min_clearance_m': 0.002,
    'branch_clearance_m': 0.005,
    'max_sigma_m': 0.0005,
    'min_confidence': 0.5,
    'site_step_m': 0.001,
    'skin_radius_m': 0.02,
    'w_diameter': 0.3,
    'w_depth': 0.2,
    'w_straight': 0.15,
    'w_clearance': 0.15,
    'w_confidence': 0.2,
}


@dataclass(frozen=True)
class Target:
    """The chosen insertion site (base frame), or why there is none (``ok`` False)."""

    ok: bool
    vessel_id: int
    position: np.ndarray      # (3,) vessel centre at the site
    direction: np.ndarray     # (3,) unit vector along the vessel: the needle's direction
    radius: float
    depth: float              # below the skin
    score: float
    reason: str               # why not, when ok is False
    rejected: dict[str, str] = field(default_factory=dict)  # candidate -> why not


def _failure(reason: str, rejected: dict[str, str] | None = None) -> Target:
    return Target(ok=False, vessel_id=-1, position=np.zeros(3), direction=np.zeros(3),
                  radius=0.0, depth=0.0, score=0.0, reason=reason, rejected=rejected or {})


def _params(params: dict | None) -> dict[str, float]:
    p = dict(DEFAULTS)
    for key, value in (params or {}).items():
        if key in DEFAULTS:
            p[key] = value
    for key, value in p.items():
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f'target {key} must be a finite number >= 0, got {value!r}')
    if not 0 < p['needle_angle_deg'] < 90:
        raise ValueError(f"target needle_angle_deg must be in (0, 90), got "
                         f"{p['needle_angle_deg']}")
    return p


def _check(vessels: Sequence[VesselEstimate], skin: np.ndarray) -> None:
    for v in vessels:
        n = len(v.points)
        if np.shape(v.points) != (n, 3) or np.shape(v.radius) != (n,) or \
                np.shape(v.sigma) != (n,):
            raise ValueError(f'vessel {v.id}: points (N, 3), radius and sigma (N,) expected')
        if not (np.all(np.isfinite(v.points)) and np.all(np.isfinite(v.radius))
                and np.all(np.isfinite(v.sigma)) and math.isfinite(v.confidence)):
            raise ValueError(f'vessel {v.id} has NaN/inf values')
    if skin.ndim != 2 or skin.shape[1] != 3 or not np.all(np.isfinite(skin)):
        raise ValueError(f'skin_points must be a finite (M, 3) array, got shape {skin.shape}')


def _skin_height(skin: np.ndarray, point: np.ndarray, radius: float) -> float | None:
    d = np.hypot(skin[:, 0] - point[0], skin[:, 1] - point[1])
    near = np.argsort(d, kind='stable')[:5]
    near = near[d[near] <= radius]
    if not len(near):
        return None
    w = 1.0 / np.maximum(d[near], 1e-4)
    return float(np.sum(w * skin[near, 2]) / np.sum(w))


def _branch_points(vessels: Sequence[VesselEstimate]) -> np.ndarray:
    """Centreline points where two vessels touch (within their radii plus 0.5 mm)."""
    out = []
    for i, a in enumerate(vessels):
        for b in vessels[i + 1:]:
            d = np.linalg.norm(a.points[:, None, :] - b.points[None, :, :], axis=2)
            touch = d < a.radius[:, None] + b.radius[None, :] + 0.5e-3
            out.extend(a.points[np.nonzero(touch.any(axis=1))[0]])
    return np.array(out, dtype=float).reshape(-1, 3)


def select_target(vessels: Sequence[VesselEstimate], skin_points: np.ndarray,
                  params: dict) -> Target:
    """Score every candidate site and return the best (see the module docstring)."""
    p = _params(params)
    skin = np.asarray(skin_points, dtype=float).reshape(-1, 3) if np.size(skin_points) \
        else np.zeros((0, 3))
    _check(vessels, skin)
    vessels = [v for v in vessels if len(v.points)]
    if not vessels:
        return _failure('empty map: no vessel has been mapped yet')
    if not len(skin):
        return _failure('no skin points: the probe has not touched the skin, depth unknown')
    angle = math.radians(p['needle_angle_deg'])
    max_path_depth = p['stage_travel_m'] * math.sin(angle) - p['tip_standoff_m']
    depth_hi = min(p['max_depth_m'], max_path_depth)
    branches = _branch_points(vessels)
    best: tuple[float, Target] | None = None
    per_vessel: dict[int, Counter] = {}
    example: dict[str, str] = {}  # a reason with its numbers, per kind of reason
    best_of: dict[int, float] = {}
    for v in vessels:
        reasons: Counter = Counter()
        others = [o for o in vessels if o.id != v.id]
        arc = np.concatenate(([0.0], np.cumsum(np.linalg.norm(np.diff(v.points, axis=0),
                                                              axis=1))))
        step = max(p['site_step_m'], 1e-6)
        sites = np.unique(np.searchsorted(arc, np.arange(0.0, arc[-1] + 1e-9, step)))
        sites = sites[sites < len(arc)]
        for i in sites:
            for sign in (1, -1):
                result = _score_site(v, i, sign, arc, others, branches, skin, p, depth_hi,
                                     max_path_depth)
                if isinstance(result, str):
                    kind = re.sub(r'\d+(\.\d+)?', '#', result)
                    reasons[kind] += 1
                    example.setdefault(kind, result)
                    continue
                best_of[v.id] = max(best_of.get(v.id, 0.0), result.score)
                if best is None or result.score > best[0] + 1e-12:
                    best = (result.score, result)
        per_vessel[v.id] = reasons
    rejected = {}
    for v in vessels:
        if best is not None and v.id == best[1].vessel_id:
            continue
        if v.id in best_of:
            rejected[f'vessel {v.id}'] = (f'best score {best_of[v.id]:.3f} < '
                                          f'{best[1].score:.3f}')
        else:
            kind, count = per_vessel[v.id].most_common(1)[0]
            total = sum(per_vessel[v.id].values())
            rejected[f'vessel {v.id}'] = (f'{example[kind]} (this kind of reason for {count} '
                                          f'of {total} candidate sites)')
    if best is None:
        return _failure('no acceptable site: ' + '; '.join(
            f'{k}: {r}' for k, r in rejected.items()), rejected)
    target = best[1]
    return Target(**{**target.__dict__, 'rejected': rejected})


def _score_site(v: VesselEstimate, i: int, sign: int, arc: np.ndarray,
                others: list[VesselEstimate], branches: np.ndarray, skin: np.ndarray,
                p: dict[str, float], depth_hi: float, max_path_depth: float
                ) -> Target | str:
    """A scored Target for site ``i``, or the reason it is ruled out.

    ``sign``: the needle moves towards increasing (+1) or decreasing (-1) sample index.
    """
    site, radius, sigma = v.points[i], float(v.radius[i]), float(v.sigma[i])
    if 2 * radius < p['min_diameter_m']:
        return (f'diameter {2e3 * radius:.2f} mm < {1e3 * p["min_diameter_m"]:.2f} mm')
    skin_z = _skin_height(skin, site, p['skin_radius_m'])
    if skin_z is None:
        return 'no skin height measured near the site'
    depth = skin_z - site[2]
    if depth < p['min_depth_m']:
        return f'too shallow ({1e3 * depth:.1f} mm < {1e3 * p["min_depth_m"]:.1f} mm)'
    if depth > max_path_depth:
        path = (depth + p['tip_standoff_m']) / math.sin(math.radians(p['needle_angle_deg']))
        return (f'needle path {1e3 * path:.1f} mm longer than the stage travel '
                f'{1e3 * p["stage_travel_m"]:.0f} mm')
    if depth > depth_hi:
        return f'too deep ({1e3 * depth:.1f} mm > {1e3 * p["max_depth_m"]:.1f} mm)'
    # The stretch the needle runs along: straight_length_m before the site.
    behind = (arc[i] - arc <= p['straight_length_m'] + 1e-9) & (arc <= arc[i]) if sign > 0 \
        else (arc - arc[i] <= p['straight_length_m'] + 1e-9) & (arc >= arc[i])
    stretch = v.points[behind]
    covered = float(np.ptp(arc[behind])) if behind.any() else 0.0
    if covered < 0.9 * p['straight_length_m']:
        return (f'only {1e3 * covered:.1f} mm of the vessel mapped before the site '
                f'(needs {1e3 * p["straight_length_m"]:.0f} mm)')
    centre = stretch.mean(axis=0)
    axis = np.linalg.svd(stretch - centre, full_matrices=False)[2][0]
    toward = site - stretch[0] if sign > 0 else site - stretch[-1]
    if axis @ toward < 0:
        axis = -axis
    offset = stretch - centre
    deviation = float(np.max(np.linalg.norm(offset - np.outer(offset @ axis, axis), axis=1)))
    if deviation > p['max_deviation_m']:
        return (f'not straight: {1e3 * deviation:.2f} mm from a line over the needle path')
    clearance = math.inf
    for o in others:
        d = np.linalg.norm(stretch[:, None, :] - o.points[None, :, :], axis=2)
        gap = d - v.radius[behind][:, None] - o.radius[None, :]
        clearance = min(clearance, float(gap.min()))
    if clearance < p['min_clearance_m']:
        return f'another vessel {1e3 * clearance:.1f} mm from the needle path'
    if len(branches):
        to_branch = float(np.min(np.linalg.norm(branches[:, None, :] - stretch[None], axis=2)))
        if to_branch < p['branch_clearance_m']:
            return f'branch point {1e3 * to_branch:.1f} mm from the needle path'
    if sigma > p['max_sigma_m']:
        return f'uncertain: sigma {1e3 * sigma:.2f} mm > {1e3 * p["max_sigma_m"]:.2f} mm'
    if v.confidence < p['min_confidence']:
        return f'confidence {v.confidence:.2f} < {p["min_confidence"]:.2f}'
    mid = 0.5 * (p['min_depth_m'] + depth_hi)
    half = max(0.5 * (depth_hi - p['min_depth_m']), 1e-6)
    terms = {
        'w_diameter': min(1.0, (2 * radius - p['min_diameter_m']) / p['min_diameter_m']),
        'w_depth': max(0.0, 1.0 - abs(depth - mid) / half),
        'w_straight': 1.0 - deviation / max(p['max_deviation_m'], 1e-9),
        'w_clearance': 1.0 if math.isinf(clearance) else min(
            1.0, clearance / max(2 * p['min_clearance_m'], 1e-9)),
        'w_confidence': v.confidence * (1.0 - sigma / max(p['max_sigma_m'], 1e-9)),
    }
    total_w = sum(p[k] for k in terms)
    score = sum(p[k] * t for k, t in terms.items()) / max(total_w, 1e-12)
    return Target(ok=True, vessel_id=v.id, position=site.copy(), direction=axis,
                  radius=radius, depth=depth, score=float(score), reason='')
