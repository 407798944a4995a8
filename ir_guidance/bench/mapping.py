"""``ir-guidance bench mapping``: the vessel map of a simulated US sweep against the truth.

For each of ``phantoms`` random phantoms (seeds ``SEED0 + seed * 1000 + i``: a range never
used for training or tuning; the default run is 20000..20019) the in-process simulator
runs the standard sweep: from home the arm moves the probe (``planning.motion``, PoseIk)
to hover 5 mm above the transverse sweep start (``planning.scan.sweep_poses``, 30 mm
along the forearm centred under the home probe; the planner hovers at 20 mm, 5 mm keeps
the run short), lowers it at 8 mm/s to ``planner.press_depth_m`` (1 mm) below the skin,
sweeps at 10 mm/s and holds 0.2 s. The probe height is set from the phantom's undeformed
skin height at the sweep centre: that is this benchmark's fixture (the controller finds
the skin by force instead). The NIR camera is switched off (US-only benchmark), which
halves the simulator's render time.

Every US frame the simulator delivers from the descent on goes through exactly what the
``ultrasound`` node runs (trained U-Net, ``cross_sections``, ``VesselTracker``; the
tracked, filtered sections), is placed by FK of the joint state interpolated at its
capture stamp (``JointHistory`` of the simulated 1 kHz joint states) and fed to
:class:`VesselMap`. Then, against ``phantom.centerline``/``vein_geometry`` with the
deformation state at the time the probe was over each point (the probe compresses the
veins: the true radius is ``sqrt(a * b)`` under that compression):

- ``centerline_err_mm_p50/p90``: distance of each mapped centreline sample within the
  swept range to the true centreline of the vein it was matched to (pooled);
- ``radius_err_mm_p50/p90``: |mapped - true equivalent radius| at the same samples;
- ``veins_in_view``, ``veins_seen``, ``veins_missed``, ``false_vessels``: a mapped vessel
  matches the vein its samples are closest to (median within ``MATCH_MM``), else it is
  false; a vein is in view when its centre is inside the image (lateral margin 2 mm);
- ``map_update_ms_p50/max``: one ``add_us`` (association, bin update, snapshot);
  ``map_readout_ms_p50``: one ``vessels()`` at the end;
- ``pose_err_mm_max``: FK at the interpolated joint state vs the simulator's own image
  pose (checks the placement chain);
- ``targets_ok``: phantoms where ``select_target`` found a site.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ir_guidance import config, rig_description
from ir_guidance.kinematics import PoseIk
from ir_guidance.mapping import JointHistory, VesselMap, select_target
from ir_guidance.perception import us_vessels
from ir_guidance.perception.us_model import UsSegmenter
from ir_guidance.planning.motion import MotionLimits, cartesian_line, joint_move
from ir_guidance.planning.scan import sweep_poses
from ir_guidance.sim.phantom import Phantom, PhantomState
from ir_guidance.sim.simulator import SimSettings, Simulator

SEED0 = 20_000
MATCH_MM = 2.0
SWEEP_LENGTH_M = 0.030
SWEEP_SPEED_M_S = 0.010
HOLD_S = 0.2
HOVER_M = 0.005   # probe face above the skin before the descent (the planner uses 20 mm)


def _plan(chain, home: np.ndarray, skin_z: float) -> tuple[list, tuple[np.ndarray, ...]]:
    """Trajectories (approach, descent, sweep) and the sweep start/end poses."""
    planner = config.load()['planner']
    frame = config.load()['frames']['us_image']
    dt = float(planner['dt_s'])
    limits = MotionLimits.from_config(chain)
    ik = PoseIk(chain, frame)
    stage = [config.load()['robot']['stage_joint']]
    contact = skin_z - float(planner['press_depth_m'])
    start, end = sweep_poses(chain.fk(home, frame), SWEEP_LENGTH_M, contact)
    hover = start.copy()
    hover[2, 3] += HOVER_M
    q_hover = ik.solve_or_raise(hover, home, frozen=stage)
    approach = joint_move(home, q_hover, limits, dt, chain.joint_names)
    descent = cartesian_line(chain, ik, q_hover, start, 0.008, dt, limits, frozen=stage)
    sweep = cartesian_line(chain, ik, descent.positions[-1], end, SWEEP_SPEED_M_S, dt,
                           limits, frozen=stage)
    return [approach, descent, sweep], (start, end)


def _copy_state(state: PhantomState) -> PhantomState:
    return dataclasses.replace(state, roll=list(state.roll))


def _run_phantom(seed: int, segmenter: UsSegmenter, chain, home: np.ndarray,
                 map_params: dict, target_params: dict) -> dict:
    us_cfg = config.load()['ultrasound']
    width, depth = float(us_cfg['width_m']), float(us_cfg['depth_m'])
    frame = config.load()['frames']['us_image']
    max_gap = float(map_params['max_stamp_gap_s'])
    phantom = Phantom.random(seed)
    # The NIR camera is off (one frame at start): this benchmark maps US only.
    sim = Simulator(phantom, SimSettings.from_config(seed=seed, nir_hz=1e-3))
    x0, y0 = chain.fk(home, frame)[:2, 3]
    skin_z = float(phantom.skin_z(x0, y0))
    trajectories, (start, end) = _plan(chain, home, skin_z)
    history = JointHistory(sim.joint_names, max_age_s=1.0)
    tracker = us_vessels.VesselTracker(gate_mm=float(us_cfg['track_gate_mm']))
    vmap = VesselMap(map_params)
    states: dict[int, PhantomState] = {}
    frames: list[tuple[float, float, int]] = []   # (probe y, stamp, tick) of mapped frames
    update_ms, pose_err = [], []
    for phase, trajectory in enumerate(trajectories):
        feeding = phase >= 1
        t0 = sim.time_s
        ticks = round((trajectory.duration + HOLD_S) * sim.settings.physics_hz)
        for _ in range(ticks):
            sim.command(trajectory.sample(sim.time_s + sim.dt - t0))
            out = sim.step()
            history.add(out.time_s, out.joint_positions)
            if feeding:
                states[out.tick] = _copy_state(sim.state)
            if out.us_image is None or not feeding:
                continue
            result = segmenter.segment(out.us_image)
            sections = us_vessels.cross_sections(
                result.mask, width, depth, probability=result.probability,
                min_area_mm2=float(us_cfg['min_area_mm2']))
            tracks = tracker.update(sections)
            q = history.at(out.us_time_s, max_gap)
            pose = chain.fk(q, frame)
            pose_err.append(float(np.linalg.norm(pose[:3, 3] - out.us_pose[:3, 3])))
            begin = time.perf_counter()
            vmap.add_us(out.us_time_s, pose, [t.filtered for t in tracks],
                        ids=[t.id for t in tracks])
            update_ms.append((time.perf_counter() - begin) * 1e3)
            frames.append((float(pose[1, 3]), out.us_time_s,
                           round(out.us_time_s * sim.settings.physics_hz)))
    begin = time.perf_counter()
    vessels = vmap.vessels()
    readout_ms = (time.perf_counter() - begin) * 1e3
    target = select_target(vessels, vmap.skin_points(), target_params)
    return _score(phantom, vessels, frames, states, start, end, width, depth) | {
        'update_ms': update_ms, 'readout_ms': readout_ms, 'pose_err': pose_err,
        'target_ok': bool(target.ok)}


def _score(phantom: Phantom, vessels: list, frames: list, states: dict,
           start: np.ndarray, end: np.ndarray, width: float, depth: float) -> dict:
    """Match mapped vessels to veins; centreline and radius errors within the sweep."""
    probe_y = np.array([f[0] for f in frames])
    y_lo, y_hi = min(start[1, 3], end[1, 3]), max(start[1, 3], end[1, 3])
    x_probe = start[0, 3]

    def state_at(y: float) -> PhantomState:
        return states[frames[int(np.argmin(np.abs(probe_y - y)))][2]]

    def truth(i: int, y: float) -> tuple[np.ndarray, float]:
        """Dense true centreline near y (state of the probe's pass over y), radius at y."""
        state = state_at(y)
        ys = y + np.linspace(-2e-3, 2e-3, 81)
        line = phantom.centerline(i, ys, state)
        g = phantom.vein_geometry(i, np.array([y]), state)
        return line, float(np.sqrt(g['a'][0] * g['b'][0]))

    in_view = []
    for i in range(len(phantom.veins)):
        ys = np.linspace(y_lo, y_hi, 7)
        line = phantom.centerline(i, ys, state_at(0.5 * (y_lo + y_hi)))
        lateral_ok = np.abs(line[:, 0] - x_probe) < width / 2 - 2e-3
        depth_ok = (start[2, 3] - line[:, 2]) < depth - 2e-3
        in_view.append(bool(np.any(lateral_ok & depth_ok)))
    centre_err, radius_err = [], []
    seen, false_vessels = set(), 0
    for v in vessels:
        keep = (v.points[:, 1] >= y_lo) & (v.points[:, 1] <= y_hi)
        if not keep.any() or not frames:
            continue
        errors = {i: [] for i in range(len(phantom.veins))}
        radii = {i: [] for i in range(len(phantom.veins))}
        for p, r in zip(v.points[keep], v.radius[keep], strict=True):
            for i in errors:
                line, true_r = truth(i, float(p[1]))
                errors[i].append(float(np.min(np.linalg.norm(line - p, axis=1))))
                radii[i].append(abs(float(r) - true_r))
        best = min(errors, key=lambda i: np.median(errors[i]))
        if np.median(errors[best]) * 1e3 > MATCH_MM:
            false_vessels += 1
            continue
        seen.add(best)
        centre_err.extend(errors[best])
        radius_err.extend(radii[best])
    return {'centre_err': centre_err, 'radius_err': radius_err,
            'in_view': sum(in_view), 'seen': len(seen & {i for i, f in enumerate(in_view) if f}),
            'seen_any': len(seen), 'false': false_vessels}


def _pct(values: list[float], q: float, scale: float = 1.0) -> float:
    return float(np.percentile(values, q) * scale) if values else float('nan')


def run(seed: int = 0, phantoms: int = 20) -> dict:
    """Map ``phantoms`` held-out phantoms from one sweep each; a JSON-able dict of numbers."""
    cfg = config.load()
    chain = rig_description.rig_chain()
    home = np.array(cfg['robot']['home'], dtype=float)
    segmenter = UsSegmenter()
    seeds = [SEED0 + seed * 1000 + i for i in range(phantoms)]
    wall = time.perf_counter()
    results = [_run_phantom(s, segmenter, chain, home, cfg['vessel_mapper'], cfg['target'])
               for s in seeds]
    centre = [e for r in results for e in r['centre_err']]
    radius = [e for r in results for e in r['radius_err']]
    updates = [e for r in results for e in r['update_ms']]
    in_view = sum(r['in_view'] for r in results)
    seen = sum(r['seen'] for r in results)
    return {
        'phantom_seeds': f'{seeds[0]}..{seeds[-1]}',
        'phantoms': phantoms,
        'sweep_length_mm': SWEEP_LENGTH_M * 1e3,
        'sweep_speed_mm_s': SWEEP_SPEED_M_S * 1e3,
        'centerline_err_mm_p50': _pct(centre, 50, 1e3),
        'centerline_err_mm_p90': _pct(centre, 90, 1e3),
        'radius_err_mm_p50': _pct(radius, 50, 1e3),
        'radius_err_mm_p90': _pct(radius, 90, 1e3),
        'centerline_samples': len(centre),
        'veins_in_view': in_view,
        'veins_seen': seen,
        'veins_missed': in_view - seen,
        'veins_seen_outside_view': sum(r['seen_any'] for r in results) - seen,
        'false_vessels': sum(r['false'] for r in results),
        'map_update_ms_p50': _pct(updates, 50),
        'map_update_ms_max': float(max(updates)) if updates else float('nan'),
        'map_readout_ms_p50': _pct([r['readout_ms'] for r in results], 50),
        'us_frames_mapped': len(updates),
        'pose_err_mm_max': float(max(e for r in results for e in r['pose_err']) * 1e3),
        'targets_ok': sum(r['target_ok'] for r in results),
        'wall_s': time.perf_counter() - wall,
    }
