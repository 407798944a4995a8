"""``ir-guidance bench calibration``: hand-eye and probe calibration against simulated truth.

Benchmarks layer (no rclpy). Data come from ``calibration.simulated``: the truth is the
URDF's transform moved 3 mm in a random direction and turned 2 deg about a random axis
(a different draw per seed); the solvers start from the URDF's transform (probe) or
from nothing (hand-eye closed forms).

Reported (errors = |t_est - t_true| in mm and the angle of R_est^T R_true in degrees):

- ``hand_eye``: the default data set (20 views of a 9 x 7 chessboard, 0.3 px noise) for
  seeds ``seed .. seed + trials - 1``: each closed form (Tsai, Park, Horaud, Andreff,
  Daniilidis) and the refined answer, median and max over the trials; the refined
  answer's reprojection RMS and 1-sigma; the same with 1e-4 rad encoder noise.
- ``hand_eye_sweep``: the refined and the Park errors (median/max over ``sweep_trials``
  seeds) for views x pixel noise.
- ``probe``: the default point-phantom data set (50 frames, 1 px noise, the point within
  +-0.25 mm of the image plane) over the same seeds, the point estimated; the same with
  the point known (stylus) and with encoder noise.
- ``probe_sweep``: frames x elevation band (0, 0.5 mm, and the full 1 mm slice).
- ``meets_bar``: the max errors of both default runs within 0.5 mm and 0.5 deg.
"""

from __future__ import annotations

import time

import numpy as np

from ir_guidance.calibration import hand_eye, probe, simulated
from ir_guidance.rig_description import rig_chain

BAR_MM = 0.5
BAR_DEG = 0.5


def _stats(errors: list[tuple[float, float]]) -> dict[str, float]:
    e = np.asarray(errors, dtype=float)
    return {'mm_p50': float(np.median(e[:, 0])), 'mm_max': float(e[:, 0].max()),
            'deg_p50': float(np.median(e[:, 1])), 'deg_max': float(e[:, 1].max())}


def _hand_eye_trials(seeds, chain, **kwargs) -> dict:
    per_method: dict[str, list] = {m: [] for m in hand_eye.METHODS}
    refined, rms, sigma_mm, sigma_deg, seconds = [], [], [], [], []
    for seed in seeds:
        d = simulated.simulate_hand_eye(seed=seed, chain=chain, **kwargs)
        t0 = time.perf_counter()
        r = hand_eye.calibrate_hand_eye(d.flange_poses, d.image_points, d.object_points,
                                        d.camera_matrix, d.dist_coeffs)
        seconds.append(time.perf_counter() - t0)
        for m, x in r.closed_forms.items():
            per_method[m].append(hand_eye.pose_error(x, d.truth))
        refined.append(hand_eye.pose_error(r.transform, d.truth))
        rms.append(r.reprojection_rms_px)
        sigma_mm.append(r.sigma_translation_mm)
        sigma_deg.append(r.sigma_rotation_deg)
    return {'refined': _stats(refined), **{m: _stats(e) for m, e in per_method.items()},
            'reprojection_rms_px_p50': float(np.median(rms)),
            'sigma_mm_p50': float(np.median(sigma_mm)),
            'sigma_deg_p50': float(np.median(sigma_deg)),
            'solve_s_p50': float(np.median(seconds)), 'backend': r.backend}


def _probe_trials(seeds, chain, known_point: bool = False, **kwargs) -> dict:
    errors, point_err, rms, sigma_mm, sigma_deg = [], [], [], [], []
    for seed in seeds:
        d = simulated.simulate_probe(seed=seed, chain=chain, **kwargs)
        r = probe.calibrate_probe(d.flange_poses, d.points_image, d.nominal,
                                  point_base=d.point_base if known_point else None)
        errors.append(hand_eye.pose_error(r.transform, d.truth))
        point_err.append(float(np.linalg.norm(r.point_base - d.point_base)) * 1e3)
        rms.append(r.rms_m * 1e3)
        sigma_mm.append(r.sigma_translation_mm)
        sigma_deg.append(r.sigma_rotation_deg)
    return {**_stats(errors), 'point_err_mm_max': float(max(point_err)),
            'residual_rms_mm_p50': float(np.median(rms)),
            'sigma_mm_p50': float(np.median(sigma_mm)),
            'sigma_deg_p50': float(np.median(sigma_deg))}


def run(seed: int = 0, trials: int = 10, sweep_trials: int = 5) -> dict:
    """All numbers of the module docstring (about a minute on two cores)."""
    chain = rig_chain()
    seeds = range(seed, seed + trials)
    sweep_seeds = range(seed, seed + sweep_trials)
    t0 = time.perf_counter()
    result: dict = {'seeds': [seed, seed + trials - 1], 'truth_offset': '3 mm, 2 deg'}
    result['hand_eye'] = _hand_eye_trials(seeds, chain)
    result['hand_eye_joint_noise_1e-4rad'] = _hand_eye_trials(seeds, chain,
                                                              joint_noise_rad=1e-4)
    sweep = {}
    for views in (6, 10, 15, 20, 30):
        for noise in (0.2, 0.5, 1.0):
            r = _hand_eye_trials(sweep_seeds, chain, views=views, pixel_noise_px=noise)
            sweep[f'views={views},noise_px={noise}'] = {'refined': r['refined'],
                                                        'park': r['park']}
    result['hand_eye_sweep'] = sweep
    result['probe'] = _probe_trials(seeds, chain)
    result['probe_point_known'] = _probe_trials(seeds, chain, known_point=True)
    result['probe_joint_noise_1e-4rad'] = _probe_trials(seeds, chain, joint_noise_rad=1e-4)
    psweep = {}
    for frames in (15, 30, 50, 80):
        for band in (0.0, 0.5e-3, 1.0e-3):
            psweep[f'frames={frames},band_mm={band * 1e3:g}'] = _probe_trials(
                sweep_seeds, chain, frames_count=frames, elevation_m=band)
    result['probe_sweep'] = psweep
    result['seconds'] = time.perf_counter() - t0
    he, pr = result['hand_eye']['refined'], result['probe']
    result['meets_bar'] = bool(he['mm_max'] <= BAR_MM and he['deg_max'] <= BAR_DEG
                               and pr['mm_max'] <= BAR_MM and pr['deg_max'] <= BAR_DEG)
    return result


if __name__ == '__main__':
    import json

    print(json.dumps(run(), indent=2))
