"""select_target: the best insertion site and why the other vessels were ruled out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ir_guidance import config
from ir_guidance.mapping import VesselEstimate, select_target

PARAMS = config.load()['target']
SKIN_Z = 0.27


def straight(vid, x, depth, radius, y0=0.115, y1=0.145, sigma=1e-4, confidence=0.9,
             dx_dy=0.0):
    ys = np.arange(y0, y1 + 1e-9, 0.0005)
    points = np.column_stack((x + dx_dy * (ys - y0), ys, np.full_like(ys, SKIN_Z - depth)))
    return VesselEstimate(id=vid, points=points, radius=np.full(len(ys), radius),
                          sigma=np.full(len(ys), sigma), confidence=confidence,
                          observations=90)


def skin(y0=0.115, y1=0.145):
    ys = np.arange(y0, y1 + 1e-9, 0.001)
    return np.column_stack((np.full_like(ys, 0.43), ys, np.full_like(ys, SKIN_Z)))


def test_empty_map():
    t = select_target([], skin(), PARAMS)
    assert not t.ok and 'empty map' in t.reason


def test_no_skin_points():
    t = select_target([straight(1, 0.43, 0.005, 0.0015)], np.zeros((0, 3)), PARAMS)
    assert not t.ok and 'skin' in t.reason


def test_picks_the_bigger_vessel_and_says_why_not_the_others():
    vessels = [straight(1, 0.415, 0.005, 0.0012),     # fine, smaller
               straight(2, 0.435, 0.005, 0.0020),     # the best
               straight(3, 0.425, 0.005, 0.0006),     # too thin
               straight(4, 0.445, 0.0115, 0.002)]     # needle path too long
    t = select_target(vessels, skin(), PARAMS)
    assert t.ok and t.vessel_id == 2
    assert abs(t.depth - 0.005) < 1e-9 and t.radius == pytest.approx(0.002)
    assert abs(abs(t.direction[1]) - 1.0) < 1e-9 and 0.0 < t.score <= 1.0
    # The site has the needle's straight stretch of vessel mapped before it.
    before = t.position[1] - np.sign(t.direction[1]) * PARAMS['straight_length_m']
    assert 0.115 - 1e-9 <= before <= 0.145 + 1e-9
    assert t.rejected['vessel 1'].startswith('best score')
    assert 'diameter' in t.rejected['vessel 3']
    assert 'needle path' in t.rejected['vessel 4'] and 'stage travel' in t.rejected['vessel 4']
    assert set(t.rejected) == {'vessel 1', 'vessel 3', 'vessel 4'}


def test_depth_limit_matches_the_stage_travel():
    angle = math.radians(PARAMS['needle_angle_deg'])
    limit = PARAMS['stage_travel_m'] * math.sin(angle) - PARAMS['tip_standoff_m']
    assert select_target([straight(1, 0.43, limit - 2e-4, 0.002)], skin(), PARAMS).ok
    assert not select_target([straight(1, 0.43, limit + 2e-4, 0.002)], skin(), PARAMS).ok
    t = select_target([straight(1, 0.43, 0.001, 0.002)], skin(), PARAMS)
    assert not t.ok and 'too shallow' in t.rejected['vessel 1']


def test_short_crooked_crowded_uncertain_sites_are_ruled_out():
    short = straight(1, 0.43, 0.005, 0.002, y0=0.125, y1=0.135)
    t = select_target([short], skin(), PARAMS)
    assert not t.ok and 'mapped before the site' in t.rejected['vessel 1']
    # A winding vessel: 1 mm sideways every 10 mm.
    kinked = straight(1, 0.43, 0.005, 0.002)
    kinked.points[:, 0] += 0.001 * np.sin(2 * np.pi * kinked.points[:, 1] / 0.01)
    t = select_target([kinked], skin(), PARAMS)
    assert not t.ok and 'not straight' in t.reason
    # A neighbour 1 mm wall to wall all along.
    t = select_target([straight(1, 0.43, 0.005, 0.002), straight(2, 0.435, 0.005, 0.0015)],
                      skin(), PARAMS)
    assert not t.ok and 'another vessel' in t.rejected['vessel 1']
    t = select_target([straight(1, 0.43, 0.005, 0.002, sigma=0.002)], skin(), PARAMS)
    assert not t.ok and 'uncertain' in t.rejected['vessel 1']
    t = select_target([straight(1, 0.43, 0.005, 0.002, confidence=0.2)], skin(), PARAMS)
    assert not t.ok and 'confidence' in t.rejected['vessel 1']


def test_branch_point_is_avoided():
    trunk = straight(1, 0.43, 0.005, 0.002, y0=0.100, y1=0.160)
    # A side branch joining the trunk at y = 0.125 from the side.
    ys = np.arange(0.105, 0.1251, 0.0005)
    pts = np.column_stack((0.43 + 0.5 * (0.125 - ys), ys, np.full_like(ys, SKIN_Z - 0.005)))
    branch = VesselEstimate(2, pts, np.full(len(ys), 0.0008), np.full(len(ys), 1e-4), 0.9, 50)
    t = select_target([trunk, branch], skin(0.100, 0.160), PARAMS)
    assert t.ok and t.vessel_id == 1
    # Neither the site nor the stretch before it comes near the junction.
    stretch = sorted((t.position[1], t.position[1] - np.sign(t.direction[1]) * 0.015))
    assert stretch[0] > 0.125 + 0.004 or stretch[1] < 0.125 - 0.004
    alone = select_target([trunk], skin(0.100, 0.160), PARAMS)
    assert alone.ok and alone.score >= t.score - 1e-9


def test_nan_vessel_is_refused():
    v = straight(1, 0.43, 0.005, 0.002)
    v.points[3, 0] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        select_target([v], skin(), PARAMS)
