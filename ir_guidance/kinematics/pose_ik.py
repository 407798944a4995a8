"""Inverse kinematics for a full 6-DoF pose of any frame of a serial chain.

The planner places the ultrasound probe (``us_image_frame``) on the skin: position and
orientation both matter, so this is the 6-constraint sibling of :class:`NeedleIk`. The
same solver is used: the damped least-squares loop of
:mod:`ir_guidance.kinematics.damped_ik` (joint limits, seeded restarts). Algorithms
layer, ROS-free. The orientation error is the rotation vector
``log3(R_goal^T R)`` with its exact Jacobian (``Jlog3``), so the error converges to
machine precision instead of stalling on a small-angle approximation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pinocchio as pin

from ir_guidance.kinematics.chain import SerialChain
from ir_guidance.kinematics.damped_ik import DampedIk, IkResult

_LOCAL = pin.ReferenceFrame.LOCAL
_EYE3 = np.eye(3)
_Goal = tuple[pin.SE3, np.ndarray]  # the goal in world axes and its rotation transposed


class PoseIk(DampedIk[np.ndarray]):
    """Solve for joint positions that put ``frame`` on a 4x4 pose (base frame)."""

    def __init__(self, chain: SerialChain, frame: str, pos_tol: float = 1e-6,
                 rot_tol: float = 1e-6, max_iters: int = 60, restarts: int = 16,
                 seed: int = 0) -> None:
        self.frame = frame
        self.frame_id = chain.frame_id(frame)
        if not (pos_tol > 0 and rot_tol > 0 and max_iters >= 1 and restarts >= 0):
            raise ValueError(f'need pos_tol, rot_tol > 0, max_iters >= 1, restarts >= 0; got '
                             f'{pos_tol}, {rot_tol}, {max_iters}, {restarts}')
        super().__init__(chain, max_iters, restarts, seed)
        self.pos_tol = pos_tol
        self.rot_tol = rot_tol

    def solve(self, target: np.ndarray, start: np.ndarray, frozen: Sequence[str] = (),
              restarts: int | None = None) -> IkResult:
        """Solve from ``start``; restart from seeded random configurations if needed.

        ``target`` is the 4x4 pose of ``frame`` in the chain's base frame. Joints named in
        ``frozen`` keep their ``start`` value. ``restarts`` overrides the configured
        count; 0 keeps the answer on the branch of ``start`` (for continuous paths). The
        result's ``axis_error_rad`` is the full rotation error angle.
        """
        pose = _check_pose(target)
        start, lower, upper = self._bounds(start, frozen)
        world_goal = self.chain.world_to_base().inverse() * pin.SE3(pose[:3, :3], pose[:3, 3])
        # (goal.rotation is a view into goal: the tuple keeps goal alive with it.)
        goal = (world_goal, world_goal.rotation.T)
        return self._search(goal, start, lower, upper, restarts, self.pos_tol, self.rot_tol)

    def _unreachable(self, pos_err: float, ang_err: float, starts: int) -> str:
        return (f'unreachable: best {self.frame} position error {pos_err * 1e3:.3f} mm, '
                f'rotation error {np.degrees(ang_err):.3f} deg after {starts} starts '
                'within joint limits')

    def _error(self, q: np.ndarray, goal: _Goal) -> tuple[np.ndarray, float, np.ndarray]:
        """The error [R_g^T (p - p_g); log3(R_g^T R)] (goal axes), |e|^2 and R (the state).

        Its Jacobian is [R_g^T R J_v; Jlog3 J_w] with the frame Jacobian J in LOCAL axes.
        """
        model, data = self.chain.model, self.chain.data
        pin.forwardKinematics(model, data, q)
        placement = pin.updateFramePlacement(model, data, self.frame_id)
        rot = placement.rotation
        dp = goal[1] @ (placement.translation - goal[0].translation)
        e = np.concatenate((dp, pin.log3(goal[1] @ rot)))
        return e, float(e @ e), rot

    def _jacobian(self, q: np.ndarray, goal: _Goal, rot: np.ndarray) -> np.ndarray:
        pin.computeJointJacobians(self.chain.model, self.chain.data, q)
        j = pin.getFrameJacobian(self.chain.model, self.chain.data, self.frame_id, _LOCAL)
        j[:3] = (goal[1] @ rot) @ j[:3]
        j[3:] = pin.Jlog3(goal[1] @ rot) @ j[3:]
        return j

    def _converged(self, e: np.ndarray, rot: np.ndarray) -> bool:
        return (float(e[:3] @ e[:3]) <= self.pos_tol ** 2
                and float(e[3:] @ e[3:]) <= self.rot_tol ** 2)

    def _errors(self, e: np.ndarray, rot: np.ndarray) -> tuple[float, float]:
        return math.sqrt(float(e[:3] @ e[:3])), math.sqrt(float(e[3:] @ e[3:]))


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
