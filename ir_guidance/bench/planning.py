"""``ir-guidance bench planning``: insertion plans on random phantoms, scored by FK.

For each of ``phantoms`` random phantoms (``Phantom.random(s)`` for
``s = PHANTOM_SEED_BASE * seed + k``, ``k = 0 .. phantoms - 1``) and each of its veins,
the true target is the vein centre at the site ``y =`` the home probe's y (a fixed rule,
no search for a favourable site), the vessel direction is the central difference of the
true centreline over +-1 mm, the skin height is ``phantom.skin_z`` above the centre and
the radius the equivalent ``sqrt(a b)`` of the uncompressed lumen. Every plan starts from
the home configuration.

A target is *eligible* when the rig can reach it at all: its diameter is at least
``min_vessel_diameter_m`` and its depth fits the needle stage, i.e. the vertical drop of
the needle tip below the probe face at the usable stage travel (joint limit minus margin,
measured by FK at home and turned to the configured insertion angle) plus the press
depth is at least the vein's depth. The success rate is over eligible targets; every
refusal (eligible or not) is counted by its reason. The tip error of a successful plan is
the FK needle tip at the end of the insertion trajectory against the true centre,
independent of the planner's own check, and every trajectory is checked against the
position, velocity, acceleration and jerk limits.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from ir_guidance import config
from ir_guidance.kinematics import SerialChain
from ir_guidance.planning.insertion import plan_insertion
from ir_guidance.planning.motion import MotionLimits, check_limits
from ir_guidance.rig_description import rig_chain
from ir_guidance.sim.phantom import Phantom

PHANTOM_SEED_BASE = 100_000
DIRECTION_STEP_M = 1e-3


def max_depth_m(chain: SerialChain, home: np.ndarray, params: dict) -> float:
    """Deepest vein centre (below the skin) the needle stage can reach, by FK at home."""
    frames = config.load()['frames']
    stage = chain.joint_names.index(config.load()['robot']['stage_joint'])
    q = home.copy()
    q[stage] = 0.0
    probe = chain.fk(q, frames['us_image'])
    q[stage] = chain.upper[stage] - params['stage_travel_margin_m']
    tip = np.linalg.inv(probe) @ chain.fk(q, frames['needle_tip'])
    # Tip in the probe frame (x along the face, y into the tissue); tilt it about z by
    # the configured angle minus the mechanical one, and read the depth below the face.
    axis = tip[:3, 2]
    tilt = math.radians(params['insertion_angle_deg']) - math.atan2(axis[1], axis[0])
    c, s = math.cos(tilt), math.sin(tilt)
    drop = s * tip[0, 3] + c * tip[1, 3]
    return float(drop + params['press_depth_m'])


def run(seed: int = 0, phantoms: int = 100) -> dict[str, float | int | str | dict]:
    """Plan every vein of ``phantoms`` random phantoms from home; JSON-ready numbers."""
    if phantoms < 1:
        raise ValueError(f'phantoms must be >= 1, got {phantoms}')
    chain = rig_chain()
    params = config.load()['planner']
    home = np.array(config.load()['robot']['home'], dtype=float)
    limits = MotionLimits.from_config(chain, params)
    stage = chain.joint_names.index(config.load()['robot']['stage_joint'])
    insert_limits = limits.with_velocity(stage, params['insertion_speed_m_s'])
    frames = config.load()['frames']
    site_y = float(chain.fk(home, frames['us_image'])[1, 3])
    deepest = max_depth_m(chain, home, params)
    targets = eligible = succeeded = ineligible_planned = violations = 0
    reasons: Counter[str] = Counter()
    eligible_reasons: Counter[str] = Counter()
    tip_errors: list[float] = []
    plan_ms: list[float] = []
    depths: list[float] = []
    for k in range(phantoms):
        phantom = Phantom.random(PHANTOM_SEED_BASE * seed + k)
        ys = np.array([site_y - DIRECTION_STEP_M, site_y, site_y + DIRECTION_STEP_M])
        for i in range(len(phantom.veins)):
            line = phantom.centerline(i, ys)
            geometry = phantom.vein_geometry(i, ys[1:2])
            centre = line[1]
            skin = float(phantom.skin_z(centre[0], centre[1]))
            radius = float(math.sqrt(geometry['a'][0] * geometry['b'][0]))
            depth = float(skin - centre[2])
            ok_target = bool(2 * radius >= params['min_vessel_diameter_m'] and depth <= deepest)
            targets += 1
            eligible += ok_target
            plan = plan_insertion(chain, home, centre, line[2] - line[0], skin, params, radius)
            plan_ms.append(plan.plan_ms)
            if not plan.ok:
                kind = plan.reason.split(':')[0]
                reasons[kind] += 1
                if ok_target:
                    eligible_reasons[kind] += 1
                continue
            depths.append(depth)
            if not ok_target:
                ineligible_planned += 1
                continue
            end = plan.insertion.positions[-1]
            tip = chain.fk(end, frames['needle_tip'])[:3, 3]
            tip_errors.append(float(np.linalg.norm(tip - centre)))
            broken = [check_limits(chain, traj, lim) for traj, lim in (
                (plan.approach, limits), (plan.insertion, insert_limits),
                (plan.retraction, limits))]
            violations += any(broken)
            succeeded += not any(broken)
    ms = np.array(plan_ms)
    return {
        'seed': seed, 'phantoms': phantoms,
        'phantom_seeds': f'{PHANTOM_SEED_BASE * seed}..{PHANTOM_SEED_BASE * seed + phantoms - 1}',
        'site_y_m': site_y, 'insertion_angle_deg': float(params['insertion_angle_deg']),
        'max_reachable_depth_mm': deepest * 1e3,
        'targets': targets, 'eligible': eligible,
        'planned_ok': succeeded, 'limit_violations': violations,
        'plan_success_rate': succeeded / eligible if eligible else math.nan,
        'ineligible_but_planned': ineligible_planned,
        'refused': dict(reasons), 'refused_eligible': dict(eligible_reasons),
        'planned_tip_err_mm_max': max(tip_errors) * 1e3 if tip_errors else math.nan,
        'planned_tip_err_mm_p50': float(np.median(tip_errors)) * 1e3 if tip_errors
        else math.nan,
        'planned_depth_mm_max': max(depths) * 1e3 if depths else math.nan,
        'plan_ms_p50': float(np.percentile(ms, 50)),
        'plan_ms_p90': float(np.percentile(ms, 90)),
        'plan_ms_max': float(ms.max()),
    }
