"""Insertion planning (planning.insertion): geometry, motions, limits and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ir_guidance import config
from ir_guidance.kinematics import SerialChain
from ir_guidance.planning.insertion import InsertionPlan, needs_replan, plan_insertion
from ir_guidance.planning.motion import MotionLimits, check_limits
from ir_guidance.sim.phantom import Phantom

STAGE = 6
PARAMS = config.load()['planner']


@pytest.fixture(scope='module')
def site(rig: SerialChain, home: np.ndarray) -> dict:
    """A real vein of a random phantom, under the home probe position."""
    phantom = Phantom.random(1)
    y = rig.fk(home, 'us_image_frame')[1, 3]
    line = phantom.centerline(1, np.array([y - 1e-3, y, y + 1e-3]))
    geometry = phantom.vein_geometry(1, np.array([y]))
    target = line[1]
    return {'target': target, 'direction': line[2] - line[0],
            'skin': float(phantom.skin_z(target[0], target[1])),
            'radius': float(np.sqrt(geometry['a'][0] * geometry['b'][0]))}


@pytest.fixture(scope='module')
def plan(rig: SerialChain, home: np.ndarray, site: dict) -> InsertionPlan:
    return plan_insertion(rig, home, site['target'], site['direction'], site['skin'],
                          PARAMS, site['radius'])


def test_plan_hits_the_target(rig: SerialChain, plan: InsertionPlan, site: dict) -> None:
    assert plan.ok, plan.reason
    end = plan.insertion.positions[-1]
    tip = rig.fk(end, 'needle_tip')
    assert np.linalg.norm(tip[:3, 3] - site['target']) <= 0.2e-3
    assert np.isclose(end[STAGE], plan.stage_travel)
    assert 0.0 < plan.stage_travel <= rig.upper[STAGE] - PARAMS['stage_travel_margin_m']
    # The needle axis is the tip's z axis, goes through the entry point and the target.
    assert np.allclose(tip[:3, 2], plan.axis, atol=1e-6)
    assert np.isclose(plan.entry[2], site['skin'])
    along = (site['target'] - plan.entry) / np.linalg.norm(site['target'] - plan.entry)
    assert np.allclose(along, plan.axis, atol=1e-9)


def test_probe_in_plane_level_and_pressed(rig: SerialChain, home: np.ndarray,
                                          plan: InsertionPlan, site: dict) -> None:
    probe = rig.fk(plan.q_contact, 'us_image_frame')
    assert np.isclose(probe[2, 3], site['skin'] - PARAMS['press_depth_m'], atol=1e-6)
    assert np.allclose(probe[:3, 1], (0, 0, -1), atol=1e-6)  # face level at 20 deg
    # The image plane (normal: probe z) contains the vessel and the needle.
    direction = site['direction'] / np.linalg.norm(site['direction'])
    horizontal = np.array([direction[0], direction[1], 0.0])
    assert abs(probe[:3, 2] @ horizontal) < 1e-6
    assert abs(probe[:3, 2] @ plan.axis) < 1e-6
    assert math.isclose(math.degrees(math.asin(-plan.axis[2])), PARAMS['insertion_angle_deg'],
                        abs_tol=1e-6)
    # At home the needle points along world -y, so that sign is kept.
    assert plan.axis[1] < -0.9


def test_motions_are_continuous_limited_and_staged(rig: SerialChain, home: np.ndarray,
                                                   plan: InsertionPlan) -> None:
    limits = MotionLimits.from_config(rig)
    for traj in (plan.approach, plan.insertion, plan.retraction):
        assert check_limits(rig, traj, limits) == ''
        assert not traj.velocities[0].any() and not traj.velocities[-1].any()
        assert np.allclose(np.diff(traj.times), PARAMS['dt_s'])
    assert np.array_equal(plan.approach.positions[0], home)
    assert np.allclose(plan.approach.positions[-1], plan.q_contact)
    assert np.allclose(plan.insertion.positions[0], plan.q_contact)
    assert np.allclose(plan.retraction.positions[0], plan.insertion.positions[-1])
    assert not plan.approach.positions[:, STAGE].any()
    # Insertion: the arm is still, the stage moves at most at the insertion speed.
    assert np.ptp(plan.insertion.positions[:, :STAGE], axis=0).max() == 0.0
    speed = np.abs(plan.insertion.velocities[:, STAGE]).max()
    assert PARAMS['insertion_speed_m_s'] * 0.95 <= speed <= PARAMS['insertion_speed_m_s'] + 1e-9
    # Retraction: the needle all the way back, then the probe up by the clearance.
    end = plan.retraction.positions[-1]
    assert end[STAGE] == 0.0
    lifted = rig.fk(end, 'us_image_frame')[2, 3] - rig.fk(plan.q_contact, 'us_image_frame')[2, 3]
    assert np.isclose(lifted, PARAMS['clearance_m'] + PARAMS['press_depth_m'], atol=1e-6)


def test_approach_keeps_clear_of_the_skin(rig: SerialChain, plan: InsertionPlan,
                                          site: dict) -> None:
    frames = ('us_image_frame', 'tool0', 'needle_tip')
    poses = [rig.fk_all(q, frames) for q in plan.approach.positions]
    face_z = np.array([p['us_image_frame'][2, 3] for p in poses])
    above = site['skin'] + PARAMS['clearance_m']
    descent = int(np.nonzero(face_z >= above - 1e-6)[0][-1])
    for pose in poses[:descent + 1]:
        assert min(pose[f][2, 3] for f in frames) >= site['skin']
    # After that: the final descent, straight down.
    xy = np.array([p['us_image_frame'][:2, 3] for p in poses[descent:]])
    assert np.ptp(xy, axis=0).max() < 1e-5
    assert np.all(np.diff(face_z[descent:]) <= 1e-9)


@pytest.mark.parametrize('angle', [15.0, 25.0])
def test_insertion_angle_tilts_the_probe(rig: SerialChain, home: np.ndarray, site: dict,
                                         angle: float) -> None:
    plan = plan_insertion(rig, home, site['target'], site['direction'], site['skin'],
                          {**PARAMS, 'insertion_angle_deg': angle}, site['radius'])
    assert plan.ok, plan.reason
    assert math.isclose(math.degrees(math.asin(-plan.axis[2])), angle, abs_tol=1e-6)
    tip = rig.fk(plan.insertion.positions[-1], 'needle_tip')[:3, 3]
    assert np.linalg.norm(tip - site['target']) <= 0.2e-3
    with pytest.raises(ValueError, match='insertion_angle_deg'):
        plan_insertion(rig, home, site['target'], site['direction'], site['skin'],
                       {**PARAMS, 'insertion_angle_deg': 30.0})


def test_direction_sign_does_not_matter(rig: SerialChain, home: np.ndarray, site: dict,
                                        plan: InsertionPlan) -> None:
    flipped = plan_insertion(rig, home, site['target'], -site['direction'], site['skin'],
                             PARAMS, site['radius'])
    assert flipped.ok
    assert np.allclose(flipped.axis, plan.axis)


def test_start_with_the_needle_out_retracts_it_first(rig: SerialChain, home: np.ndarray,
                                                     site: dict) -> None:
    start = home.copy()
    start[STAGE] = 0.01
    plan = plan_insertion(rig, start, site['target'], site['direction'], site['skin'],
                          PARAMS, site['radius'])
    assert plan.ok, plan.reason
    approach = plan.approach.positions
    first_arm_move = int(np.nonzero(np.abs(approach[:, :STAGE] - home[:STAGE]).max(1))[0][0])
    assert approach[first_arm_move - 1, STAGE] == 0.0


def refused(rig: SerialChain, q_start: np.ndarray, site: dict, **changes) -> InsertionPlan:
    """Plan from ``q_start`` with ``changes`` to the site; check it is a clean refusal."""
    args = {'target_position': site['target'], 'vessel_direction': site['direction'],
            'skin_height_m': site['skin'], 'vessel_radius': site['radius'], **changes}
    plan = plan_insertion(rig, q_start, params=PARAMS, **args)
    assert not plan.ok
    # A refusal holds the start configuration and carries no numbers.
    assert len(plan.approach.times) == 1
    assert np.array_equal(plan.approach.positions[0], q_start)
    assert math.isnan(plan.stage_travel) and np.isnan(plan.q_contact).all()
    return plan


def test_refusals(rig: SerialChain, home: np.ndarray, site: dict) -> None:
    deep = site['target'] - (0, 0, 0.008)
    assert refused(rig, home, site, target_position=deep).reason.startswith('too deep')
    assert refused(rig, home, site, vessel_radius=0.5e-3).reason.startswith('too small')
    far = site['target'] + (0.8, 0.0, 0.0)
    assert refused(rig, home, site, target_position=far).reason.startswith('unreachable')
    for bad in ({'target_position': np.array([np.nan, 0.1, 0.2])},
                {'vessel_direction': np.array([0.0, 0.0, 1.0])},
                {'vessel_direction': np.array([0.0, np.inf, 0.0])},
                {'skin_height_m': math.nan},
                {'target_position': site['target'] + (0, 0, 0.02)},  # above the skin
                {'vessel_radius': -1.0}):
        assert refused(rig, home, site, **bad).reason.startswith('invalid target'), bad


def test_no_clear_path_from_a_start_with_the_flange_low(rig: SerialChain, site: dict
                                                        ) -> None:
    start = np.array([0.387, -0.419, 1.721, -0.406, -1.571, -0.224, 0.0])
    assert rig.fk(start, 'tool0')[2, 3] < site['skin']
    plan = refused(rig, start, site)
    assert plan.reason.startswith('no clear path')


def test_needs_replan(plan: InsertionPlan) -> None:
    assert not needs_replan(plan, plan.target + np.array([0.0005, 0, 0]), 0.001)
    assert needs_replan(plan, plan.target + np.array([0.0, 0.0015, 0]), 0.001)
    with pytest.raises(ValueError):
        needs_replan(plan, np.array([np.nan, 0, 0]), 0.001)
    with pytest.raises(ValueError):
        needs_replan(plan, plan.target, 0.0)
