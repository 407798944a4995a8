"""Ultrasound probe calibration: ``T_flange_image`` by the point (cross-wire) phantom method.

Algorithms layer: numpy and scipy only (no rclpy).

A point target fixed in the base frame (a bead, or the crossing of two wires in a water
tank) is imaged from many probe poses. In frame i the operator (or a detector) marks the
point's pixel; with the scanner's pixel geometry that is ``p_i = (x_i, y_i, 0)`` in the
image frame (x lateral, y depth; the image is the plane z = 0). With the flange pose
``G_i = T_base_flange`` from the robot::

    G_i X p_i = p_base          for every frame i,

with ``X = T_flange_image`` (6 unknowns) and ``p_base`` (3 unknowns, or known from a
tracked stylus). Each frame gives three equations (two measured coordinates and "the
point lies in the plane"), solved jointly by ``scipy.optimize.least_squares`` from the
designed (URDF) transform. The residual is the 3-D distance between the frames'
back-projected points and ``p_base``; its RMS is the calibration's reproducibility, the
figure the literature (Mercier et al. 2005, Hsu et al. 2009) reports.

Observability: the probe must turn about at least two axes (in practice: tilt both ways
and rotate about the beam) with the point at different places in the image. A data set
that cannot fix all unknowns is refused (``CalibrationError``): too few frames, no
rotation diversity, or a rank-deficient Jacobian at the solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from ir_guidance.calibration.hand_eye import (
    CalibrationError,
    check_diversity,
    check_poses,
    make_pose,
)

MIN_FRAMES = 6
MAX_CONDITION = 1e7       # of the (column-scaled) Jacobian at the solution


@dataclass
class ProbeResult:
    """Outcome of :func:`calibrate_probe` (poses 4x4, metres)."""

    transform: np.ndarray            # T_flange_image
    point_base: np.ndarray           # the phantom point in the base frame (estimated or given)
    point_known: bool
    residuals_m: np.ndarray          # (N,) distance of each frame's point from point_base
    rms_m: float
    sigma_translation_mm: float      # 1-sigma (norm) from the Gauss-Newton covariance
    sigma_rotation_deg: float
    condition: float                 # of the column-scaled Jacobian
    rotation_spread_deg: np.ndarray
    frames: int


def _perturbed(t0: np.ndarray, x: np.ndarray) -> np.ndarray:
    return t0 @ make_pose(Rotation.from_rotvec(x[:3]).as_matrix(), x[3:6])


def back_project(flange_poses: np.ndarray, transform: np.ndarray,
                 points_image: np.ndarray) -> np.ndarray:
    """Base-frame points ``G_i X (x_i, y_i, 0)``: ``(N, 3)``."""
    p = np.column_stack([points_image, np.zeros(len(points_image)), np.ones(len(points_image))])
    return np.einsum('nij,nj->ni', flange_poses @ transform, p)[:, :3]


def calibrate_probe(flange_poses: np.ndarray, points_image: np.ndarray,
                    initial: np.ndarray, point_base: np.ndarray | None = None,
                    min_frames: int = MIN_FRAMES) -> ProbeResult:
    """Point-phantom calibration of ``T_flange_image``.

    ``flange_poses`` ``(N, 4, 4)``: ``T_base_flange`` per frame; ``points_image``
    ``(N, 2)``: the point's (x lateral, y depth) in image metres per frame (convert
    pixels with the scanner geometry first); ``initial``: the designed transform (the
    URDF's), which must be within a few centimetres / tens of degrees; ``point_base``:
    the point's base-frame position if a tracked stylus measured it, else estimated.
    """
    g = check_poses(flange_poses, 'flange_poses')
    x0 = check_poses(np.asarray(initial, dtype=float)[None], 'initial')[0]
    pts = np.asarray(points_image, dtype=float)
    if pts.ndim != 2 or pts.shape != (len(g), 2):
        raise CalibrationError(f'points_image must be (N={len(g)}, 2) image metres, got '
                               f'{pts.shape}')
    if not np.all(np.isfinite(pts)):
        bad = np.flatnonzero(~np.all(np.isfinite(pts), axis=1))
        raise CalibrationError(f'points_image: NaN/inf in frame(s) {bad[:10].tolist()}')
    known = point_base is not None
    if known:
        p_known = np.asarray(point_base, dtype=float).reshape(-1)
        if p_known.shape != (3,) or not np.all(np.isfinite(p_known)):
            raise CalibrationError(f'point_base must be 3 finite values, got {point_base}')
    spread = check_diversity(g, 'flange_poses', min_count=min_frames)

    def split(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _perturbed(x0, p[:6]), (p_known if known else p[6:])

    def residual(p: np.ndarray) -> np.ndarray:
        x, pb = split(p)
        return (back_project(g, x, pts) - pb).ravel()

    start = np.zeros(6 if known else 9)
    if not known:
        start[6:] = back_project(g, x0, pts).mean(axis=0)
    scale = np.r_[[1.0] * 3, [0.01] * 3, [0.01] * (0 if known else 3)]
    sol = least_squares(residual, start, method='lm', x_scale=scale)
    x, pb = split(sol.x)
    jac = sol.jac * scale                      # columns in comparable units (rad, 1 cm)
    sv = np.linalg.svd(jac, compute_uv=False)
    condition = float(sv[0] / sv[-1]) if sv[-1] > 0 else math.inf
    if not condition <= MAX_CONDITION:
        raise CalibrationError(
            f'the frames do not determine the calibration (Jacobian condition {condition:.3g}'
            f' > {MAX_CONDITION:g}): tilt the probe about more axes and move the point '
            'across the image')
    dist = np.linalg.norm(sol.fun.reshape(-1, 3), axis=1)
    dof = max(sol.fun.size - sol.x.size, 1)
    cov = float(sol.fun @ sol.fun) / dof * np.linalg.inv(sol.jac.T @ sol.jac)
    sigma = np.sqrt(np.clip(np.diag(cov)[:6], 0.0, None))
    return ProbeResult(
        transform=x, point_base=np.asarray(pb, dtype=float), point_known=known,
        residuals_m=dist, rms_m=float(np.sqrt(np.mean(dist ** 2))),
        sigma_translation_mm=float(np.linalg.norm(sigma[3:]) * 1e3),
        sigma_rotation_deg=float(np.degrees(np.linalg.norm(sigma[:3]))), condition=condition,
        rotation_spread_deg=spread, frames=len(g))
