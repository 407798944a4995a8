"""Camera-to-flange (eye-in-hand) calibration: ``T_flange_camera`` from robot poses and views.

Algorithms layer: numpy, scipy and OpenCV only (no rclpy). This module also holds the
small pose helpers (checks, xyz/rpy reports, rotation spread) that ``probe.py`` shares.

The robot moves the camera to N poses around a fixed calibration target (a chessboard or
ChArUco board). For every view the flange pose ``G_i = T_base_flange`` comes from the
robot (FK of the joint readings) and the target pose ``C_i = T_camera_target`` from
``cv2.solvePnP`` on the detected corners. The target is fixed in the base, so
``G_i X C_i = W`` for every view, with ``X = T_flange_camera`` and ``W = T_base_target``
unknown. Pairs of views give the classic ``A X = X B`` with ``A = G_j^-1 G_i`` and
``B = C_j C_i^-1``.

Closed forms (all pairs of views): Tsai-Lenz, Park-Martin, Horaud-Dornaika, Andreff and
Daniilidis, by ``cv2.calibrateHandEye`` where the installed OpenCV has it. OpenCV
5.0.0's Python package does not export ``calibrateHandEye`` (opencv/opencv#29565, fixed
by PR #29584 after that release), so the same five methods are also written here in
numpy from their papers (Park, Horaud and Daniilidis agree with OpenCV 4.14 to 1e-12,
Tsai to 0.08 mm / 0.014 deg, Andreff differs on purpose: see ``_andreff``);
``backend='auto'`` takes OpenCV when present. A closed form
then starts a joint nonlinear refinement (``scipy.optimize.least_squares``) of ``X`` and
``W`` on the reprojection error of every corner of every view: the maximum-likelihood
estimate when the pixel noise is Gaussian and the robot poses are exact, and the answer
that ``calibrate_hand_eye`` returns.

Rotation diversity is what makes ``X`` observable: with every motion about one axis the
translation along that axis is unobservable. ``calibrate_hand_eye`` refuses such data
(``CalibrationError``) instead of returning a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

METHODS = ('tsai', 'park', 'horaud', 'andreff', 'daniilidis')
_CV_METHOD = {'tsai': 'CALIB_HAND_EYE_TSAI', 'park': 'CALIB_HAND_EYE_PARK',
              'horaud': 'CALIB_HAND_EYE_HORAUD', 'andreff': 'CALIB_HAND_EYE_ANDREFF',
              'daniilidis': 'CALIB_HAND_EYE_DANIILIDIS'}
MIN_VIEWS = 3
MIN_SPREAD_DEG = 2.0     # second principal rotation spread below this: one rotation axis
MAX_PNP_RMS_PX = 5.0     # a view whose PnP reprojection RMS is worse is a bad detection


class CalibrationError(ValueError):
    """Calibration data that cannot give a trustworthy answer (says what and why)."""


# -- pose helpers (shared with probe.py) ------------------------------------------------

def check_poses(poses: np.ndarray, name: str) -> np.ndarray:
    """``(N, 4, 4)`` finite rigid transforms as float arrays, else ``CalibrationError``."""
    arr = np.asarray(poses, dtype=float)
    if arr.ndim != 3 or arr.shape[1:] != (4, 4):
        raise CalibrationError(f'{name} must be (N, 4, 4) poses, got shape {arr.shape}')
    if not np.all(np.isfinite(arr)):
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(arr))[:, 0]})
        raise CalibrationError(f'{name}: NaN/inf in pose(s) {bad[:10]}')
    rot = arr[:, :3, :3]
    ortho = np.abs(np.einsum('nji,njk->nik', rot, rot) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(rot)
    bad = np.flatnonzero((ortho > 1e-6) | (np.abs(det - 1.0) > 1e-6)
                         | (np.abs(arr[:, 3] - [0, 0, 0, 1]).max(axis=1) > 1e-12))
    if bad.size:
        raise CalibrationError(f'{name}: pose(s) {bad[:10].tolist()} are not rigid '
                               'transforms (rotation not orthonormal or last row not 0 0 0 1)')
    return arr


def make_pose(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4x4 from a 3x3 rotation and a 3-vector."""
    t = np.eye(4)
    t[:3, :3] = rotation
    t[:3, 3] = translation
    return t


def invert(t: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 (or a stack of them)."""
    rot_t = np.swapaxes(t[..., :3, :3], -1, -2)
    out = np.zeros_like(t)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum('...ij,...j->...i', rot_t, t[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def pose_error(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(translation error in mm, rotation error in degrees) between two 4x4 poses."""
    dt = float(np.linalg.norm(estimate[:3, 3] - truth[:3, 3])) * 1e3
    dr = Rotation.from_matrix(estimate[:3, :3].T @ truth[:3, :3]).magnitude()
    return dt, float(np.degrees(dr))


def xyz_rpy(t: np.ndarray) -> dict[str, list[float]]:
    """URDF-style ``xyz`` (m) and ``rpy`` (rad; R = Rz(yaw) Ry(pitch) Rx(roll))."""
    rpy = Rotation.from_matrix(t[:3, :3]).as_euler('xyz')
    return {'xyz': [float(v) for v in t[:3, 3]], 'rpy': [float(v) for v in rpy]}


def transform_report(t: np.ndarray) -> dict:
    """``xyz``, ``rpy``, quaternion (x, y, z, w) and the 4x4 as nested lists."""
    return {**xyz_rpy(t),
            'quaternion_xyzw': [float(v) for v in Rotation.from_matrix(t[:3, :3]).as_quat()],
            'matrix': [[float(v) for v in row] for row in t]}


def rotation_spread_deg(rotations: np.ndarray) -> np.ndarray:
    """Principal RMS spreads (degrees, descending) of rotations about their mean.

    The rotation vectors of ``R_mean^T R_i`` are stacked; their singular values over
    ``sqrt(N)`` say how much the set rotates about each principal axis. A set that turns
    about one axis only has its second value near zero.
    """
    rots = Rotation.from_matrix(rotations)
    rel = (rots.mean().inv() * rots).as_rotvec()
    return np.degrees(np.linalg.svd(rel, compute_uv=False) / math.sqrt(len(rel)))


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _project_rotation(m: np.ndarray) -> np.ndarray:
    """Closest rotation matrix (Frobenius) to ``m``."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    return u @ np.diag([1.0, 1.0, d]) @ vt


# -- views -------------------------------------------------------------------------------

def chessboard_points(cols: int, rows: int, square_m: float) -> np.ndarray:
    """Inner-corner grid of a chessboard in its own frame, OpenCV order (row-major), z=0."""
    if cols < 2 or rows < 2 or not (math.isfinite(square_m) and square_m > 0):
        raise CalibrationError(f'chessboard needs cols, rows >= 2 and square_m > 0, got '
                               f'{cols}, {rows}, {square_m}')
    grid = np.stack(np.meshgrid(np.arange(cols), np.arange(rows)), axis=-1).reshape(-1, 2)
    return np.column_stack([grid * square_m, np.zeros(len(grid))])


def _check_views(image_points: np.ndarray, object_points: np.ndarray, camera_matrix,
                 dist_coeffs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    img = np.asarray(image_points, dtype=float)
    obj = np.asarray(object_points, dtype=float)
    if obj.ndim != 2 or obj.shape[1] != 3 or len(obj) < 4:
        raise CalibrationError(f'object_points must be (M >= 4, 3), got {obj.shape}')
    if img.ndim != 3 or img.shape[1:] != (len(obj), 2):
        raise CalibrationError(f'image_points must be (N, {len(obj)}, 2) (one row per target '
                               f'point per view), got {img.shape}')
    if not (np.all(np.isfinite(img)) and np.all(np.isfinite(obj))):
        raise CalibrationError('image_points/object_points contain NaN/inf')
    k = np.asarray(camera_matrix, dtype=float)
    if k.shape != (3, 3) or not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise CalibrationError(f'camera_matrix must be a finite 3x3 with fx, fy > 0, got {k}')
    d = np.zeros(5) if dist_coeffs is None else np.asarray(dist_coeffs, dtype=float).ravel()
    if not np.all(np.isfinite(d)) or len(d) not in (4, 5, 8, 12, 14):
        raise CalibrationError(f'dist_coeffs must be 4, 5, 8, 12 or 14 finite values, got {d}')
    return img, obj, k, d


def target_poses(image_points: np.ndarray, object_points: np.ndarray,
                 camera_matrix: np.ndarray, dist_coeffs: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``T_camera_target`` per view by ``cv2.solvePnP`` and each view's RMS (px).

    Planar targets start from IPPE (no mirror ambiguity from a homography guess) and
    are refined by Levenberg-Marquardt (``SOLVEPNP_ITERATIVE`` with the guess).
    """
    img, obj, k, d = _check_views(image_points, object_points, camera_matrix, dist_coeffs)
    planar = np.ptp(obj[:, 2]) < 1e-12
    poses, rms = [], []
    for i, pts in enumerate(img):
        ok, rvec, tvec = cv2.solvePnP(obj, pts, k, d, flags=(
            cv2.SOLVEPNP_IPPE if planar else cv2.SOLVEPNP_ITERATIVE))
        if ok:
            ok, rvec, tvec = cv2.solvePnP(obj, pts, k, d, rvec, tvec, useExtrinsicGuess=True,
                                          flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok:
            raise CalibrationError(f'view {i}: solvePnP found no target pose')
        proj, _ = cv2.projectPoints(obj, rvec, tvec, k, d)
        err = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - pts) ** 2, axis=1))))
        if not err <= MAX_PNP_RMS_PX:
            raise CalibrationError(f'view {i}: target pose reprojects with RMS {err:.2f} px '
                                   f'(> {MAX_PNP_RMS_PX}): corners mis-detected or wrong '
                                   'intrinsics')
        poses.append(make_pose(cv2.Rodrigues(rvec)[0], tvec.ravel()))
        rms.append(err)
    return np.array(poses), np.array(rms)


# -- closed forms ------------------------------------------------------------------------

def _motions(flange_poses: np.ndarray, target_in_camera: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j: ``A = G_j^-1 G_i`` and ``B = C_j C_i^-1``."""
    n = len(flange_poses)
    i, j = np.triu_indices(n, k=1)
    a = invert(flange_poses[j]) @ flange_poses[i]
    b = target_in_camera[j] @ invert(target_in_camera[i])
    return a, b


def _translation(a: np.ndarray, b: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Least-squares ``t`` of ``(R_A - I) t = R b_t - a_t`` over all motions."""
    lhs = (a[:, :3, :3] - np.eye(3)).reshape(-1, 3)
    rhs = (b[:, :3, 3] @ rot.T - a[:, :3, 3]).reshape(-1)
    return np.linalg.lstsq(lhs, rhs, rcond=None)[0]


def _quat_wxyz(rot: np.ndarray) -> np.ndarray:
    q = Rotation.from_matrix(rot).as_quat()          # x, y, z, w
    q = np.concatenate([q[..., 3:], q[..., :3]], axis=-1)
    return np.where(q[..., :1] < 0, -q, q)           # scalar part >= 0


def _tsai(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Tsai & Lenz (1989): modified Rodrigues vectors ``2 sin(theta/2) n``."""
    pa = 2.0 * _quat_wxyz(a[:, :3, :3])[:, 1:]
    pb = 2.0 * _quat_wxyz(b[:, :3, :3])[:, 1:]
    lhs = np.concatenate([_skew(u + v) for u, v in zip(pa, pb, strict=True)])
    p_prime = np.linalg.lstsq(lhs, (pb - pa).reshape(-1), rcond=None)[0]
    p = 2.0 * p_prime / math.sqrt(1.0 + p_prime @ p_prime)
    pp = p @ p
    rot = ((1.0 - pp / 2.0) * np.eye(3)
           + 0.5 * (np.outer(p, p) + math.sqrt(max(4.0 - pp, 0.0)) * _skew(p)))
    return _project_rotation(rot)


def _park(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Park & Martin (1994): ``log R_A = R log R_B``; orthogonal Procrustes solution."""
    alpha = Rotation.from_matrix(a[:, :3, :3]).as_rotvec()
    beta = Rotation.from_matrix(b[:, :3, :3]).as_rotvec()
    m = beta.T @ alpha                                 # sum beta alpha^T
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def _quat_left(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([[w, -x, -y, -z], [x, w, -z, y], [y, z, w, -x], [z, -y, x, w]])


def _quat_right(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([[w, -x, -y, -z], [x, w, z, -y], [y, -z, w, x], [z, y, -x, w]])


def _horaud(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Horaud & Dornaika (1995): ``q_A q = q q_B``, smallest eigenvector of the stack."""
    qa, qb = _quat_wxyz(a[:, :3, :3]), _quat_wxyz(b[:, :3, :3])
    m = np.concatenate([_quat_left(u) - _quat_right(v) for u, v in zip(qa, qb, strict=True)])
    q = np.linalg.svd(m, full_matrices=False)[2][-1]
    return Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()


def _andreff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Andreff et al. (2001): linear ``(I kron R_A - R_B^T kron I) vec(R) = 0``.

    The rotation is the null vector, orthonormalised; the translation is then solved
    with that rotation (like the other methods). OpenCV keeps the translation of the
    joint linear system instead, solved with the not-yet-orthonormal rotation: on the
    simulated data of ``bench calibration`` that is 1.1-1.7 mm worse.
    """
    eye = np.eye(3)
    n = len(a)
    m = (np.einsum('ac,nbd->nabcd', eye, a[:, :3, :3])            # I kron R_A
         - np.einsum('nca,bd->nabcd', b[:, :3, :3], eye)).reshape(9 * n, 9)  # R_B^T kron I
    r = np.linalg.svd(m, full_matrices=False)[2][-1].reshape(3, 3, order='F')
    if np.linalg.det(r) < 0:
        r = -r
    return _project_rotation(r)


def _daniilidis(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Daniilidis (1999): dual quaternions, SVD of the 6N x 8 system; returns 4x4."""
    def dual(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = _quat_wxyz(t[:, :3, :3])
        tq = np.column_stack([np.zeros(len(t)), t[:, :3, 3]])
        qd = 0.5 * np.array([_quat_left(u) @ v for u, v in zip(tq, q, strict=True)])
        return q, qd

    qa, qad = dual(a)
    qb, qbd = dual(b)
    rows = []
    for u, ud, v, vd in zip(qa, qad, qb, qbd, strict=True):
        blk = np.zeros((6, 8))
        blk[:3, 0] = u[1:] - v[1:]
        blk[:3, 1:4] = _skew(u[1:] + v[1:])
        blk[3:, 0] = ud[1:] - vd[1:]
        blk[3:, 1:4] = _skew(ud[1:] + vd[1:])
        blk[3:, 4] = u[1:] - v[1:]
        blk[3:, 5:8] = _skew(u[1:] + v[1:])
        rows.append(blk)
    vt = np.linalg.svd(np.concatenate(rows), full_matrices=False)[2]
    v7, v8 = vt[-2], vt[-1]
    u1, w1, u2, w2 = v7[:4], v7[4:], v8[:4], v8[4:]
    # lambda1 v7 + lambda2 v8 with |q| = 1 and q . q' = 0: a quadratic in s = l1 / l2.
    ca, cb, cc = u1 @ w1, u1 @ w2 + u2 @ w1, u2 @ w2
    if abs(ca) < 1e-12:
        roots = [-cc / cb] if abs(cb) > 1e-12 else [0.0]
    else:
        disc = max(cb * cb - 4.0 * ca * cc, 0.0)
        roots = [(-cb + math.sqrt(disc)) / (2 * ca), (-cb - math.sqrt(disc)) / (2 * ca)]
    norms = [s * s * (u1 @ u1) + 2 * s * (u1 @ u2) + u2 @ u2 for s in roots]
    best = int(np.argmax(norms))
    l2 = 1.0 / math.sqrt(norms[best])
    l1 = roots[best] * l2
    q = l1 * u1 + l2 * u2
    qd = l1 * w1 + l2 * w2
    conj = q * np.array([1.0, -1.0, -1.0, -1.0])
    t = 2.0 * (_quat_left(qd) @ conj)[1:]
    return make_pose(Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix(), t)


_NUMPY = {'tsai': _tsai, 'park': _park, 'horaud': _horaud, 'andreff': _andreff}


def opencv_has_hand_eye() -> bool:
    """Whether the installed OpenCV exports ``calibrateHandEye`` (5.0.0's wheel does not)."""
    return hasattr(cv2, 'calibrateHandEye')


def hand_eye_closed_form(flange_poses: np.ndarray, target_in_camera: np.ndarray,
                         method: str = 'park', backend: str = 'auto') -> np.ndarray:
    """``T_flange_camera`` from ``G_i = T_base_flange`` and ``C_i = T_camera_target``.

    ``backend``: ``'opencv'`` (``cv2.calibrateHandEye``), ``'numpy'`` (the same
    methods written here) or ``'auto'`` (OpenCV when it has the function).
    """
    if method not in METHODS:
        raise ValueError(f'unknown hand-eye method {method!r}; one of {METHODS}')
    if backend not in ('auto', 'opencv', 'numpy'):
        raise ValueError(f"backend must be 'auto', 'opencv' or 'numpy', got {backend!r}")
    g = check_poses(flange_poses, 'flange_poses')
    c = check_poses(target_in_camera, 'target_in_camera')
    if len(g) != len(c):
        raise CalibrationError(f'{len(g)} flange poses but {len(c)} target poses')
    check_diversity(g, 'flange_poses')
    if backend == 'opencv' and not opencv_has_hand_eye():
        raise RuntimeError(f'cv2 {cv2.__version__} has no calibrateHandEye '
                           "(opencv/opencv#29565); use backend='numpy' or 'auto'")
    if backend != 'numpy' and opencv_has_hand_eye():
        rot, t = cv2.calibrateHandEye(
            list(g[:, :3, :3]), list(g[:, :3, 3]), list(c[:, :3, :3]), list(c[:, :3, 3]),
            method=getattr(cv2, _CV_METHOD[method]))
        return make_pose(rot, np.asarray(t).ravel())
    a, b = _motions(g, c)
    if method == 'daniilidis':
        return _daniilidis(a, b)
    rot = _NUMPY[method](a, b)
    return make_pose(rot, _translation(a, b, rot))


def check_diversity(poses: np.ndarray, name: str, min_count: int = MIN_VIEWS,
                    min_spread_deg: float = MIN_SPREAD_DEG) -> np.ndarray:
    """Raise unless there are ``min_count`` poses turning about at least two axes."""
    if len(poses) < min_count:
        raise CalibrationError(f'{name}: {len(poses)} poses, need at least {min_count}')
    spread = rotation_spread_deg(poses[:, :3, :3])
    if spread[1] < min_spread_deg:
        raise CalibrationError(
            f'{name}: no rotation diversity: principal rotation spreads {np.round(spread, 2)}'
            f' deg; the poses must turn about at least two different axes by more than '
            f'{min_spread_deg} deg (rotations about one axis leave the calibration '
            'unobservable)')
    return spread


# -- refinement --------------------------------------------------------------------------

def _mean_pose(poses: np.ndarray) -> np.ndarray:
    return make_pose(Rotation.from_matrix(poses[:, :3, :3]).mean().as_matrix(),
                     poses[:, :3, 3].mean(axis=0))


def _perturbed(t0: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``t0`` moved by a 6-vector (rotation vector, translation) in its own frame."""
    return t0 @ make_pose(Rotation.from_rotvec(x[:3]).as_matrix(), x[3:6])


def reprojection(x_flange_camera: np.ndarray, w_base_target: np.ndarray,
                 flange_poses: np.ndarray, object_points: np.ndarray,
                 camera_matrix: np.ndarray, dist_coeffs: np.ndarray) -> np.ndarray:
    """Predicted pixels ``(N, M, 2)`` of the target points in every view."""
    cam_target = invert(x_flange_camera) @ invert(flange_poses) @ w_base_target
    out = np.empty((len(flange_poses), len(object_points), 2))
    for i, t in enumerate(cam_target):
        rvec = cv2.Rodrigues(t[:3, :3])[0]
        out[i] = cv2.projectPoints(object_points, rvec, t[:3, 3], camera_matrix,
                                   dist_coeffs)[0].reshape(-1, 2)
    return out


def refine(x0: np.ndarray, w0: np.ndarray, flange_poses: np.ndarray,
           image_points: np.ndarray, object_points: np.ndarray, camera_matrix: np.ndarray,
           dist_coeffs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint least squares of ``X`` and ``W`` on all reprojection errors.

    Returns ``(X, W, sigma)`` where ``sigma`` is the 1-sigma (rotation rad x3,
    translation m x3) of ``X`` from the Gauss-Newton covariance at the solution.
    """
    def residual(p: np.ndarray) -> np.ndarray:
        pred = reprojection(_perturbed(x0, p[:6]), _perturbed(w0, p[6:]), flange_poses,
                            object_points, camera_matrix, dist_coeffs)
        return (pred - image_points).ravel()

    scale = np.r_[[1.0] * 3, [0.1] * 3, [1.0] * 3, [0.1] * 3]     # rad, 10 cm
    sol = least_squares(residual, np.zeros(12), method='lm', x_scale=scale)
    dof = max(sol.fun.size - 12, 1)
    s2 = float(sol.fun @ sol.fun) / dof
    jtj = sol.jac.T @ sol.jac
    try:
        cov = s2 * np.linalg.inv(jtj)
        sigma = np.sqrt(np.clip(np.diag(cov)[:6], 0.0, None))
    except np.linalg.LinAlgError:
        sigma = np.full(6, math.inf)
    return _perturbed(x0, sol.x[:6]), _perturbed(w0, sol.x[6:]), sigma


@dataclass
class HandEyeResult:
    """Outcome of :func:`calibrate_hand_eye` (all poses 4x4, metres)."""

    transform: np.ndarray                 # T_flange_camera (refined if refine=True)
    target_in_base: np.ndarray            # T_base_target
    method: str                           # closed form that started the refinement
    refined: bool
    backend: str                          # 'opencv' or 'numpy' (closed forms)
    closed_forms: dict[str, np.ndarray]   # every method's T_flange_camera
    reprojection_rms_px: float            # of `transform`, all corners of all views
    closed_form_rms_px: dict[str, float]  # each closed form's reprojection RMS
    pnp_rms_px: np.ndarray                # per view, solvePnP alone
    sigma_translation_mm: float           # 1-sigma (norm) from the refinement covariance
    sigma_rotation_deg: float
    rotation_spread_deg: np.ndarray       # principal spreads of the flange rotations
    views: int


def calibrate_hand_eye(flange_poses: np.ndarray, image_points: np.ndarray,
                       object_points: np.ndarray, camera_matrix: np.ndarray,
                       dist_coeffs: np.ndarray | None = None, method: str = 'park',
                       refine_result: bool = True, backend: str = 'auto',
                       methods: Sequence[str] = METHODS) -> HandEyeResult:
    """Eye-in-hand calibration from flange poses and target corner detections.

    ``flange_poses`` ``(N, 4, 4)`` are ``T_base_flange`` (FK of the joint readings);
    ``image_points`` ``(N, M, 2)`` are the pixels (u, v) of the ``object_points``
    ``(M, 3)`` (target frame) in view i; ``camera_matrix``/``dist_coeffs`` are the
    camera's intrinsics (OpenCV model). Every name in ``methods`` is solved and
    reported; ``method`` starts the refinement (and is the answer without it).
    """
    g = check_poses(flange_poses, 'flange_poses')
    img, obj, k, d = _check_views(image_points, object_points, camera_matrix, dist_coeffs)
    if len(img) != len(g):
        raise CalibrationError(f'{len(g)} flange poses but {len(img)} views of the target')
    spread = check_diversity(g, 'flange_poses')
    if method not in methods:
        methods = (*methods, method)
    c, pnp_rms = target_poses(img, obj, k, d)
    forms = {m: hand_eye_closed_form(g, c, m, backend) for m in methods}
    rms = {}
    for m, x in forms.items():
        w = _mean_pose(g @ x @ c)
        pred = reprojection(x, w, g, obj, k, d)
        rms[m] = float(np.sqrt(np.mean(np.sum((pred - img) ** 2, axis=-1))))
    x = forms[method]
    w = _mean_pose(g @ x @ c)
    sigma = np.full(6, math.nan)
    if refine_result:
        x, w, sigma = refine(x, w, g, img, obj, k, d)
    pred = reprojection(x, w, g, obj, k, d)
    final_rms = float(np.sqrt(np.mean(np.sum((pred - img) ** 2, axis=-1))))
    used = 'opencv' if backend != 'numpy' and opencv_has_hand_eye() else 'numpy'
    return HandEyeResult(
        transform=x, target_in_base=w, method=method, refined=refine_result, backend=used,
        closed_forms=forms, reprojection_rms_px=final_rms, closed_form_rms_px=rms,
        pnp_rms_px=pnp_rms, sigma_translation_mm=float(np.linalg.norm(sigma[3:]) * 1e3),
        sigma_rotation_deg=float(np.degrees(np.linalg.norm(sigma[:3]))),
        rotation_spread_deg=spread, views=len(g))
