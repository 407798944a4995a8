"""Hand-eye (camera-to-flange) and ultrasound probe (image-to-flange) calibration.

Algorithms (``hand_eye``, ``probe``) are plain numpy/scipy/OpenCV functions; this module
adds what a lab needs around them: the data-file format a recording is written in, the
result YAML (transform, residuals, difference from the URDF's designed transform and the
URDF joint origin that would reproduce it) and ``main(argv)`` behind
``ir-guidance calibrate``::

    ir-guidance calibrate hand-eye DATA.yaml [--out RESULT.yaml] [--method park]
    ir-guidance calibrate probe DATA.yaml [--out RESULT.yaml]
    ir-guidance calibrate simulate {hand-eye,probe} DATA.yaml [--seed 0] [--samples N]

Data files (YAML; poses either as ``joints`` in the rig chain's order, 6 arm joints or
all 7, turned into flange poses by the rig URDF's FK, or as a 4x4 ``flange_pose``):

- hand-eye: ``camera_matrix`` (3x3), ``dist_coeffs`` (OpenCV), ``object_points`` (M x 3)
  or ``board: {cols, rows, square_m}``, and ``views``: a list of ``{joints | flange_pose,
  image_points: M x [u, v]}``.
- probe: ``image: {width_m, depth_m, cols, rows}``, optional ``point_base`` (a stylus
  measured the phantom point), ``frames``: a list of ``{joints | flange_pose,
  pixel: [row, col]}``.

Simulated data files also carry ``truth`` (never read by the solvers); the result then
reports the error against it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

from ir_guidance.calibration.hand_eye import (
    METHODS,
    CalibrationError,
    HandEyeResult,
    calibrate_hand_eye,
    chessboard_points,
    hand_eye_closed_form,
    invert,
    pose_error,
    target_poses,
    transform_report,
    xyz_rpy,
)
from ir_guidance.calibration.probe import ProbeResult, calibrate_probe

__all__ = ['METHODS', 'MOUNT_JOINTS', 'CalibrationError', 'HandEyeResult', 'ProbeResult',
           'calibrate_hand_eye', 'calibrate_probe', 'chessboard_points', 'hand_eye_closed_form',
           'hand_eye_report', 'load_hand_eye', 'load_probe', 'main', 'pose_error',
           'probe_report', 'target_poses']

# The URDF joint whose origin a calibration replaces: (joint, parent link, child link,
# the frame the calibration estimates, suggested xacro argument prefix).
MOUNT_JOINTS = {
    'camera_optical': ('tool_plate-nir_camera_link', 'tool_plate', 'nir_camera_link',
                       'camera_mount'),
    'us_image': ('tool_plate-us_probe_link', 'tool_plate', 'us_probe_link', 'probe_mount'),
}


def _chain():
    from ir_guidance.rig_description import rig_chain

    return rig_chain()


def _frames() -> dict[str, str]:
    from ir_guidance import config

    return config.load()['frames']


def _nominal(chain, parent: str, child: str) -> np.ndarray:
    from ir_guidance.calibration.simulated import nominal_transform

    return nominal_transform(chain, parent, child)


def _float_list(value) -> list:
    return np.asarray(value, dtype=float).tolist()


def _flange_poses(items: list[dict], chain, what: str) -> np.ndarray:
    """Flange poses of data-file samples from ``flange_pose`` or ``joints`` (rig FK)."""
    flange = _frames()['flange']
    poses = []
    for i, item in enumerate(items):
        if 'flange_pose' in item:
            poses.append(np.asarray(item['flange_pose'], dtype=float))
        elif 'joints' in item:
            q = np.asarray(item['joints'], dtype=float).ravel()
            if len(q) == chain.dof - 1:
                q = np.r_[q, 0.0]
            if len(q) != chain.dof or not np.all(np.isfinite(q)):
                raise CalibrationError(f'{what} {i}: joints must be {chain.dof - 1} or '
                                       f'{chain.dof} finite values, got {item["joints"]}')
            poses.append(chain.fk(q, flange))
        else:
            raise CalibrationError(f'{what} {i}: needs "joints" or "flange_pose"')
    return np.array(poses) if poses else np.zeros((0, 4, 4))


def _read(path: Path, kind: str) -> dict:
    data = yaml.safe_load(Path(path).read_text(encoding='utf-8'))
    if not isinstance(data, dict) or data.get('kind') != kind:
        raise CalibrationError(f'{path}: not a {kind} data file (kind: {kind} missing)')
    return data


def load_hand_eye(path: Path, chain=None) -> dict:
    """Arguments of :func:`calibrate_hand_eye` (and ``truth`` if present) from a data file."""
    data = _read(path, 'hand_eye')
    chain = chain or _chain()
    views = data.get('views') or []
    if 'object_points' in data:
        obj = np.asarray(data['object_points'], dtype=float)
    elif 'board' in data:
        b = data['board']
        obj = chessboard_points(int(b['cols']), int(b['rows']), float(b['square_m']))
    else:
        raise CalibrationError(f'{path}: needs object_points or board')
    return {'flange_poses': _flange_poses(views, chain, 'view'),
            'image_points': np.array([np.asarray(v['image_points'], dtype=float)
                                      for v in views]),
            'object_points': obj,
            'camera_matrix': np.asarray(data['camera_matrix'], dtype=float),
            'dist_coeffs': np.asarray(data.get('dist_coeffs', np.zeros(5)), dtype=float),
            'truth': None if data.get('truth') is None else np.asarray(data['truth'])}


def load_probe(path: Path, chain=None) -> dict:
    """Arguments of :func:`calibrate_probe` (pixels converted to image metres)."""
    from ir_guidance.sim.ultrasound import UltrasoundConfig

    data = _read(path, 'probe')
    chain = chain or _chain()
    image = data.get('image') or {}
    try:
        us = UltrasoundConfig(width_m=float(image['width_m']), depth_m=float(image['depth_m']),
                              cols=int(image['cols']), rows=int(image['rows']))
    except (KeyError, TypeError) as exc:
        raise CalibrationError(f'{path}: image needs width_m, depth_m, cols, rows') from exc
    items = data.get('frames') or []
    pixels = np.array([np.asarray(f['pixel'], dtype=float) for f in items]).reshape(-1, 2)
    x, y = us.pixel_to_image(pixels[:, 0], pixels[:, 1])
    point = data.get('point_base')
    return {'flange_poses': _flange_poses(items, chain, 'frame'),
            'points_image': np.column_stack([x, y]),
            'point_base': None if point is None else np.asarray(point, dtype=float),
            'truth': None if data.get('truth') is None else np.asarray(data['truth'])}


def _comparison(estimate: np.ndarray, nominal: np.ndarray, truth: np.ndarray | None,
                chain, key: str) -> dict:
    """Difference from the URDF, the mount-joint origin to write, error vs truth."""
    joint, parent, child, prefix = MOUNT_JOINTS[key]
    flange = _frames()['flange']
    frame = _frames()[key]
    mount = (invert(_nominal(chain, flange, parent)) @ estimate
             @ invert(_nominal(chain, child, frame)))
    dt, dr = pose_error(estimate, nominal)
    out = {'nominal': xyz_rpy(nominal),
           'difference_from_nominal': {'translation_mm': dt, 'rotation_deg': dr},
           'urdf_joint': {'name': joint, 'parent': parent, 'child': child,
                          **xyz_rpy(mount),
                          'xacro_args': {f'{prefix}_xyz': ' '.join(
                              f'{v:.9f}' for v in mount[:3, 3]),
                                         f'{prefix}_rpy': ' '.join(
                              f'{v:.9f}' for v in xyz_rpy(mount)['rpy'])}}}
    if truth is not None:
        et, er = pose_error(estimate, truth)
        out['error_vs_truth'] = {'translation_mm': et, 'rotation_deg': er}
    return out


def hand_eye_report(result: HandEyeResult, truth: np.ndarray | None = None, chain=None) -> dict:
    """The result YAML of a hand-eye calibration (plain types)."""
    chain = chain or _chain()
    names = _frames()
    nominal = _nominal(chain, names['flange'], names['camera_optical'])
    methods = {}
    for m, x in result.closed_forms.items():
        entry = {**xyz_rpy(x), 'reprojection_rms_px': result.closed_form_rms_px[m]}
        dt, dr = pose_error(x, result.transform)
        entry['vs_result'] = {'translation_mm': dt, 'rotation_deg': dr}
        if truth is not None:
            et, er = pose_error(x, truth)
            entry['error_vs_truth'] = {'translation_mm': et, 'rotation_deg': er}
        methods[m] = entry
    return {'kind': 'hand_eye', 'parent': names['flange'], 'child': names['camera_optical'],
            'transform': transform_report(result.transform),
            'residuals': {'reprojection_rms_px': result.reprojection_rms_px,
                          'pnp_rms_px_max': float(result.pnp_rms_px.max())},
            'sigma': {'translation_mm': result.sigma_translation_mm,
                      'rotation_deg': result.sigma_rotation_deg},
            'views': result.views, 'method': result.method, 'refined': result.refined,
            'backend': result.backend,
            'rotation_spread_deg': _float_list(result.rotation_spread_deg),
            'target_in_base': xyz_rpy(result.target_in_base), 'methods': methods,
            **_comparison(result.transform, nominal, truth, chain, 'camera_optical')}


def probe_report(result: ProbeResult, truth: np.ndarray | None = None, chain=None) -> dict:
    """The result YAML of a probe calibration (plain types)."""
    chain = chain or _chain()
    names = _frames()
    nominal = _nominal(chain, names['flange'], names['us_image'])
    return {'kind': 'probe', 'parent': names['flange'], 'child': names['us_image'],
            'transform': transform_report(result.transform),
            'point_base': _float_list(result.point_base), 'point_known': result.point_known,
            'residuals': {'rms_mm': result.rms_m * 1e3,
                          'max_mm': float(result.residuals_m.max() * 1e3)},
            'sigma': {'translation_mm': result.sigma_translation_mm,
                      'rotation_deg': result.sigma_rotation_deg},
            'condition': result.condition, 'frames': result.frames,
            'rotation_spread_deg': _float_list(result.rotation_spread_deg),
            **_comparison(result.transform, nominal, truth, chain, 'us_image')}


def write_simulated(kind: str, path: Path, seed: int = 0, samples: int | None = None,
                    noise_px: float | None = None, joint_noise_rad: float = 0.0) -> None:
    """Write a simulated data file (with ``truth``) in the format the solvers read."""
    from ir_guidance.calibration import simulated

    kwargs = {'seed': seed, 'joint_noise_rad': joint_noise_rad}
    if noise_px is not None:
        kwargs['pixel_noise_px'] = noise_px
    if kind == 'hand-eye':
        d = simulated.simulate_hand_eye(**kwargs, **({'views': samples} if samples else {}))
        data = {'kind': 'hand_eye', 'camera_matrix': _float_list(d.camera_matrix),
                'dist_coeffs': _float_list(d.dist_coeffs),
                'object_points': _float_list(d.object_points),
                'views': [{'joints': _float_list(q), 'image_points': _float_list(p)}
                          for q, p in zip(d.joints, d.image_points, strict=True)],
                'truth': _float_list(d.truth), 'settings': d.settings}
    else:
        d = simulated.simulate_probe(**kwargs, **({'frames_count': samples} if samples else {}))
        us = d.ultrasound
        data = {'kind': 'probe',
                'image': {'width_m': us.width_m, 'depth_m': us.depth_m, 'cols': us.cols,
                          'rows': us.rows},
                'frames': [{'joints': _float_list(q), 'pixel': _float_list(p)}
                           for q, p in zip(d.joints, d.pixels, strict=True)],
                'truth': _float_list(d.truth), 'truth_point_base': _float_list(d.point_base),
                'settings': d.settings}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding='utf-8')


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='ir-guidance calibrate', description=(
        'camera-to-flange (hand-eye) and probe image-to-flange calibration'))
    sub = parser.add_subparsers(dest='command', required=True)
    he = sub.add_parser('hand-eye', help='T_flange_camera from robot poses + target views')
    he.add_argument('data', type=Path)
    he.add_argument('--out', type=Path, help='write the result YAML here too')
    he.add_argument('--method', choices=METHODS, default='park',
                    help='closed form that starts the refinement')
    he.add_argument('--no-refine', action='store_true',
                    help='report the closed form without the reprojection refinement')
    he.add_argument('--backend', choices=('auto', 'opencv', 'numpy'), default='auto')
    pr = sub.add_parser('probe', help='T_flange_image from a point-phantom recording')
    pr.add_argument('data', type=Path)
    pr.add_argument('--out', type=Path)
    sim = sub.add_parser('simulate', help='write a simulated data file (with its truth)')
    sim.add_argument('kind', choices=('hand-eye', 'probe'))
    sim.add_argument('out', type=Path)
    sim.add_argument('--seed', type=int, default=0)
    sim.add_argument('--samples', type=int, help='views (hand-eye) or frames (probe)')
    sim.add_argument('--noise-px', type=float, help='pixel noise (1 sigma)')
    sim.add_argument('--joint-noise-rad', type=float, default=0.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``ir-guidance calibrate ...``: prints the result YAML; 2 on unusable data."""
    args = _parser().parse_args(argv)
    try:
        if args.command == 'simulate':
            write_simulated(args.kind, args.out, args.seed, args.samples, args.noise_px,
                            args.joint_noise_rad)
            print(f'wrote {args.out}')
            return 0
        chain = _chain()
        if args.command == 'hand-eye':
            data = load_hand_eye(args.data, chain)
            truth = data.pop('truth')
            result = calibrate_hand_eye(**data, method=args.method,
                                        refine_result=not args.no_refine,
                                        backend=args.backend)
            report = hand_eye_report(result, truth, chain)
        else:
            data = load_probe(args.data, chain)
            truth = data.pop('truth')
            initial = _nominal(chain, _frames()['flange'], _frames()['us_image'])
            report = probe_report(calibrate_probe(**data, initial=initial), truth, chain)
    except (CalibrationError, OSError, yaml.YAMLError) as exc:
        print(f'calibration failed: {exc}', file=sys.stderr)
        return 2
    text = yaml.safe_dump(report, sort_keys=False)
    print(text, end='')
    if args.out:
        args.out.write_text(text, encoding='utf-8')
    return 0
