"""Inverse kinematics for a full 6-DoF pose of any frame of a serial chain.

The planner places the ultrasound probe (``us_image_frame``) on the skin: position and
orientation both matter, so this is the 6-constraint sibling of :class:`NeedleIk`. The
same solver shape is used: damped least squares (Levenberg-Marquardt) on the pinocchio
Jacobian, joint limits enforced by projection, a step kept only if it lowers the error,
and deterministic seeded restarts. The orientation error is the rotation vector
``log3(R_goal^T R)`` with its exact Jacobian (``Jlog3``), so the error converges to
machine precision instead of stalling on a small-angle approximation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pinocchio as pin
from scipy.linalg.lapack import dposv as _dposv

from ir_guidance.kinematics.chain import SerialChain
from ir_guidance.kinematics.needle_ik import IkResult, UnreachableError

_LOCAL = pin.ReferenceFrame.LOCAL
_EYE6 = np.eye(6)
_EYE3 = np.eye(3)
_MAX_STEP = 0.5  # rad or m per iteration: keeps the linearisation honest far from the goal
_DAMP0 = 1e-3
_DAMP_DOWN = 0.2
_ROT_WEIGHT_M = 0.1  # 0.1 m per rad when ranking failed starts: 1 mm ~ 0.57 deg


class PoseIk:
    """Solve for joint positions that put ``frame`` on a 4x4 pose (base frame)."""

    def __init__(self, chain: SerialChain, frame: str, pos_tol: float = 1e-6,
                 rot_tol: float = 1e-6, max_iters: int = 60, restarts: int = 16,
                 seed: int = 0) -> None:
        self.chain = chain
        self.frame = frame
        self.frame_id = chain.frame_id(frame)
        if not (pos_tol > 0 and rot_tol > 0 and max_iters >= 1 and restarts >= 0):
            raise ValueError(f'need pos_tol, rot_tol > 0, max_iters >= 1, restarts >= 0; got '
                             f'{pos_tol}, {rot_tol}, {max_iters}, {restarts}')
        self.pos_tol = pos_tol
        self.rot_tol = rot_tol
        self.max_iters = max_iters
        self.restarts = restarts
        self.seed = seed
        self._lo = np.where(np.isfinite(chain.lower), chain.lower, -np.pi)
        self._hi = np.where(np.isfinite(chain.upper), chain.upper, np.pi)

    def solve(self, target: np.ndarray, start: np.ndarray, frozen: Sequence[str] = (),
              restarts: int | None = None) -> IkResult:
        """Solve from ``start``; restart from seeded random configurations if needed.

        ``target`` is the 4x4 pose of ``frame`` in the chain's base frame. Joints named in
        ``frozen`` keep their ``start`` value. ``restarts`` overrides the configured
        count; 0 keeps the answer on the branch of ``start`` (for continuous paths). The
        result's ``axis_error_rad`` is the full rotation error angle.
        """
        goal = _check_pose(target)
        chain = self.chain
        start = chain.check_positions(start)
        lower, upper = chain.lower, chain.upper
        if frozen:
            idx = [self._joint_index(name) for name in frozen]
            lower, upper = lower.copy(), upper.copy()
            lower[idx] = upper[idx] = start[idx]
        world_goal = chain.world_to_base().inverse() * pin.SE3(goal[:3, :3], goal[:3, 3])
        rng: np.random.Generator | None = None
        best: tuple[float, np.ndarray, float, float] | None = None
        total_iters = 0
        starts = (self.restarts if restarts is None else restarts) + 1
        for attempt in range(starts):
            if attempt == 0:
                x0 = np.clip(start, lower, upper)
            else:
                rng = rng or np.random.default_rng(self.seed)
                x0 = np.clip(rng.uniform(self._lo, self._hi), lower, upper)
            x, pos_err, rot_err, iters = self._descend(world_goal, x0, lower, upper)
            total_iters += iters
            if pos_err <= self.pos_tol and rot_err <= self.rot_tol:
                return IkResult(True, x, pos_err, rot_err, total_iters, attempt, 'converged')
            score = pos_err + _ROT_WEIGHT_M * rot_err
            if best is None or score < best[0]:
                best = (score, x, pos_err, rot_err)
        assert best is not None
        _, x, pos_err, rot_err = best
        reason = (f'unreachable: best {self.frame} position error {pos_err * 1e3:.3f} mm, '
                  f'rotation error {np.degrees(rot_err):.3f} deg after {starts} starts '
                  'within joint limits')
        return IkResult(False, x, pos_err, rot_err, total_iters, starts - 1, reason)

    def solve_or_raise(self, target: np.ndarray, start: np.ndarray, frozen: Sequence[str] = (),
                       restarts: int | None = None) -> np.ndarray:
        """Joint positions reaching ``target``, or :class:`UnreachableError` with the reason."""
        result = self.solve(target, start, frozen, restarts)
        if not result.success:
            raise UnreachableError(result.reason)
        return result.positions

    def _joint_index(self, name: str) -> int:
        if name not in self.chain.joint_names:
            raise ValueError(f'unknown joint {name!r}; chain joints: {self.chain.joint_names}')
        return self.chain.joint_names.index(name)

    def _descend(self, goal: pin.SE3, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray
                 ) -> tuple[np.ndarray, float, float, int]:
        """Levenberg-Marquardt from ``x0`` on the 6-vector [position; log3] error.

        Both halves are expressed in the goal frame's axes: e = [R_g^T (p - p_g);
        log3(R_g^T R)], whose Jacobian is [R_g^T R J_v; Jlog3 J_w] with the frame
        Jacobian J in LOCAL axes.
        """
        chain = self.chain
        model, data, fid = chain.model, chain.data, self.frame_id
        to_q = chain.to_q
        rg_t = goal.rotation.T
        x = x0.copy()
        q = to_q(x, check=False)
        e, rot = self._error(q, goal, rg_t)
        cost = float(e @ e)
        on_limit = bool((x <= lower).any() or (x >= upper).any())
        damping = _DAMP0
        history: list[float] = []
        it = 0
        while it < self.max_iters:
            if _converged(e, self.pos_tol, self.rot_tol):
                break
            history.append(cost)
            if len(history) > 15 and cost > 0.1 * history[-10]:
                break  # creeping into a local minimum: a restart is cheaper than waiting
            it += 1
            pin.computeJointJacobians(model, data, q)
            j = pin.getFrameJacobian(model, data, fid, _LOCAL)
            j[:3] = (rg_t @ rot) @ j[:3]
            j[3:] = pin.Jlog3(rg_t @ rot) @ j[3:]
            if on_limit:
                grad = j.T @ e
                blocked = ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))
                j[:, blocked] = 0.0
            jjt = j @ j.T
            while True:
                dq = j.T @ _dposv(jjt + damping * _EYE6, e)[1]
                step = max(dq.max(), -dq.min())
                if step > _MAX_STEP:
                    dq *= _MAX_STEP / step
                x_new = x - dq
                hit = bool((x_new <= lower).any() or (x_new >= upper).any())
                if hit:
                    x_new = np.minimum(np.maximum(x_new, lower), upper)
                q_new = to_q(x_new, check=False)
                e_new, rot_new = self._error(q_new, goal, rg_t)
                cost_new = float(e_new @ e_new)
                if cost_new < cost:
                    x, q, e, rot, cost = x_new, q_new, e_new, rot_new, cost_new
                    on_limit = hit
                    damping = max(damping * _DAMP_DOWN, 1e-12)
                    break
                damping *= 10.0
                it += 1
                if damping > 1e3 or it >= self.max_iters:
                    return x, *_norms(e), it
        return x, *_norms(e), it

    def _error(self, q: np.ndarray, goal: pin.SE3, rg_t: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        model, data = self.chain.model, self.chain.data
        pin.forwardKinematics(model, data, q)
        placement = pin.updateFramePlacement(model, data, self.frame_id)
        rot = placement.rotation
        dp = rg_t @ (placement.translation - goal.translation)
        dr = pin.log3(rg_t @ rot)
        return np.concatenate((dp, dr)), rot


def _norms(e: np.ndarray) -> tuple[float, float]:
    return math.sqrt(float(e[:3] @ e[:3])), math.sqrt(float(e[3:] @ e[3:]))


def _converged(e: np.ndarray, pos_tol: float, rot_tol: float) -> bool:
    return float(e[:3] @ e[:3]) <= pos_tol ** 2 and float(e[3:] @ e[3:]) <= rot_tol ** 2


def _check_pose(target: np.ndarray) -> np.ndarray:
    """A finite 4x4 homogeneous transform with a proper rotation, else ValueError."""
    t = np.asarray(target, dtype=float)
    if t.shape != (4, 4):
        raise ValueError(f'target pose must be a 4x4 matrix, got shape {t.shape}')
    if not np.all(np.isfinite(t)):
        raise ValueError('target pose is not finite')
    r = t[:3, :3]
    if not (float(np.abs(r.T @ r - _EYE3).max()) <= 1e-6 and np.linalg.det(r) > 0
            and t[3, 0] == t[3, 1] == t[3, 2] == 0.0 and t[3, 3] == 1.0):
        raise ValueError('target pose rotation is not orthonormal (or last row not 0 0 0 1)')
    return t
