"""Inverse kinematics for a needle pose: tip position plus needle-axis direction.

A needle is symmetric about its axis, so roll is left free: five constraints on the
chain, and a 6- or 7-DoF arm keeps the extra freedom. Algorithms layer, ROS-free. The
solver is the damped least-squares loop of :mod:`ir_guidance.kinematics.damped_ik`
(joint limits, seeded restarts); this module gives it the error to drive to zero: the
tip position and the needle-axis vector, both in world axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pinocchio as pin

from ir_guidance.kinematics.chain import SerialChain
from ir_guidance.kinematics.damped_ik import DampedIk, IkResult, UnreachableError


@dataclass(frozen=True)
class NeedlePose:
    """Needle tip ``position`` (m) and unit insertion ``axis``, both in the base frame.

    Validated on construction: finite 3-vectors, and the axis is normalised, so that no
    solver downstream ever sees NaN or a scaled axis.
    """

    position: np.ndarray
    axis: np.ndarray

    def __post_init__(self) -> None:
        p = np.asarray(self.position, dtype=float)
        a = np.asarray(self.axis, dtype=float)
        if p.shape != (3,) or a.shape != (3,):
            raise ValueError(f'position and axis must be 3-vectors, got {p.shape}, {a.shape}')
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(a))):
            raise ValueError(f'needle pose not finite: position {p}, axis {a}')
        norm = float(np.linalg.norm(a))
        if norm < 1e-9:
            raise ValueError('needle axis has zero length')
        object.__setattr__(self, 'position', p)
        object.__setattr__(self, 'axis', a / norm)

    @classmethod
    def make(cls, position: np.ndarray | list[float], axis: np.ndarray | list[float]
             ) -> NeedlePose:
        """Build from any 3-sequences (kept for readability at call sites)."""
        return cls(np.asarray(position, dtype=float), np.asarray(axis, dtype=float))

    @classmethod
    def from_transform(cls, transform: np.ndarray, axis_local: np.ndarray) -> NeedlePose:
        """The needle pose of a frame whose needle axis is ``axis_local`` in that frame."""
        return cls(transform[:3, 3], transform[:3, :3] @ axis_local)


_Goal = tuple[np.ndarray, np.ndarray]  # tip position and needle axis in world axes
_State = tuple[np.ndarray, float, float]  # the needle axis, |tip error|^2, |axis chord|^2


class NeedleIk(DampedIk[NeedlePose]):
    """Solve for joint positions that put the chain's tip frame on a needle pose."""

    def __init__(self, chain: SerialChain, axis_local: tuple[float, float, float] = (0, 0, 1),
                 pos_tol: float = 1e-6, axis_tol: float = 1e-6, max_iters: int = 60,
                 restarts: int = 16, seed: int = 0) -> None:
        super().__init__(chain, max_iters, restarts, seed)
        self.axis_local = np.asarray(axis_local, dtype=float)
        self.axis_local /= np.linalg.norm(self.axis_local)
        self.pos_tol = pos_tol
        self.axis_tol = axis_tol
        # Squared tolerances as the loop measures them: the axis error is the chord
        # |a - a_goal| = 2 sin(angle / 2).
        self._pos_tol2 = pos_tol ** 2
        self._chord_tol2 = (2.0 * math.sin(axis_tol / 2.0)) ** 2

    def solve(self, target: NeedlePose, start: np.ndarray, frozen: Sequence[str] = (),
              restarts: int | None = None) -> IkResult:
        """Solve from ``start``; restart from seeded random configurations if needed.

        Joints named in ``frozen`` keep their ``start`` value (e.g. the needle stage while
        the arm aligns). ``restarts`` overrides the configured count; 0 keeps the answer
        on the branch of ``start``, for paths that must be continuous. The restart
        sequence depends only on ``seed``: a given request always gets the same answer.
        """
        start, lower, upper = self._bounds(start, frozen)
        world = self.chain.world_to_base().inverse()  # base -> world (pinocchio's frame)
        goal = (world.act(target.position), world.rotation @ target.axis)
        return self._search(goal, start, lower, upper, restarts, self.pos_tol, self.axis_tol)

    def _unreachable(self, pos_err: float, ang_err: float, starts: int) -> str:
        return (f'unreachable: best tip error {pos_err * 1e3:.3f} mm, axis error '
                f'{np.degrees(ang_err):.3f} deg after {starts} starts within joint limits')

    def _error(self, q: np.ndarray, goal: _Goal) -> tuple[np.ndarray, float, _State]:
        """[tip position; needle axis] minus the goal (both in world axes) and its cost.

        The cost is the sum of both halves' squared norms, each also kept in the state.
        """
        model, data = self.chain.model, self.chain.data
        pin.forwardKinematics(model, data, q)
        placement = pin.updateFramePlacement(model, data, self.chain.tip_id)
        dp = placement.translation - goal[0]
        axis = placement.rotation @ self.axis_local
        da = axis - goal[1]
        pos2, chord2 = float(dp @ dp), float(da @ da)
        return np.concatenate((dp, da)), pos2 + chord2, (axis, pos2, chord2)

    def _jacobian(self, q: np.ndarray, goal: _Goal, state: _State) -> np.ndarray:
        pin.computeJointJacobians(self.chain.model, self.chain.data, q)
        j = pin.getFrameJacobian(self.chain.model, self.chain.data, self.chain.tip_id, _LWA)
        # The axis a = R a_local moves as da = omega x a, so d(a)/dq = -[a]x J_angular.
        j[3:] = pin.skew(-state[0]) @ j[3:]
        return j

    def _converged(self, e: np.ndarray, state: _State) -> bool:
        return state[1] <= self._pos_tol2 and state[2] <= self._chord_tol2

    def _errors(self, e: np.ndarray, state: _State) -> tuple[float, float]:
        return math.sqrt(state[1]), 2.0 * math.asin(min(1.0, math.sqrt(state[2]) / 2.0))

    def straight_line(self, start: np.ndarray, distance: float, steps: int,
                      stage_joint: str | None = None, frozen: Sequence[str] = ()
                      ) -> np.ndarray:
        """Joint waypoints that move the tip ``distance`` (m) along the needle axis.

        With ``stage_joint`` (a prismatic joint whose axis is the needle axis) only the
        stage moves. Otherwise the arm follows the line by IK from waypoint to waypoint,
        never moving the joints in ``frozen`` (pass the stage there to keep it still) and
        never restarting, so the path stays on one IK branch. Returns
        ``(steps + 1, dof)``; raises :class:`UnreachableError` if a waypoint is not.
        """
        x = self.chain.check_positions(start)
        if steps < 1 or not np.isfinite(distance):
            raise ValueError(f'need steps >= 1 and a finite distance, got {steps}, {distance}')
        fractions = np.linspace(0.0, 1.0, steps + 1)
        if stage_joint is not None:
            i = self._joint_index(stage_joint)
            path = np.repeat(x[None, :], steps + 1, axis=0)
            path[:, i] = x[i] + fractions * distance
            if not (self.chain.within_limits(path[0]) and self.chain.within_limits(path[-1])):
                raise UnreachableError(
                    f'stage travel {x[i]:.4f} -> {x[i] + distance:.4f} m outside '
                    f'[{self.chain.lower[i]:.4f}, {self.chain.upper[i]:.4f}]')
            return path
        origin = NeedlePose.from_transform(self.chain.fk(x), self.axis_local)
        path = [x]
        for f in fractions[1:]:
            goal = NeedlePose(origin.position + f * distance * origin.axis, origin.axis)
            path.append(self.solve_or_raise(goal, path[-1], frozen, restarts=0))
        return np.array(path)


_LWA = pin.ReferenceFrame.LOCAL_WORLD_ALIGNED
