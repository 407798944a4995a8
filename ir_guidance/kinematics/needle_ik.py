"""Inverse kinematics for a needle pose: tip position plus needle-axis direction.

A needle is symmetric about its axis, so roll is left free: five constraints on the
chain, and a 6- or 7-DoF arm keeps the extra freedom. The solver is damped least
squares (Levenberg-Marquardt) on the pinocchio Jacobian with joint limits enforced by
projection, and deterministic restarts when a start converges to a limit or a local
minimum. Failure is never silent: the result says why the target was not reached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pinocchio as pin
from scipy.linalg.lapack import dposv as _dposv

from ir_guidance.kinematics.chain import SerialChain


class UnreachableError(RuntimeError):
    """The needle pose cannot be reached within joint limits."""


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


@dataclass(frozen=True)
class IkResult:
    """Outcome of one IK request; ``reason`` says why when ``success`` is False."""

    success: bool
    positions: np.ndarray
    position_error_m: float
    axis_error_rad: float
    iterations: int
    restarts: int
    reason: str


class NeedleIk:
    """Solve for joint positions that put the chain's tip frame on a needle pose."""

    def __init__(self, chain: SerialChain, axis_local: tuple[float, float, float] = (0, 0, 1),
                 pos_tol: float = 1e-6, axis_tol: float = 1e-6, max_iters: int = 60,
                 restarts: int = 16, seed: int = 0) -> None:
        self.chain = chain
        self.axis_local = np.asarray(axis_local, dtype=float)
        self.axis_local /= np.linalg.norm(self.axis_local)
        self.pos_tol = pos_tol
        self.axis_tol = axis_tol
        # Squared tolerances as the loop measures them: the axis error is the chord
        # |a - a_goal| = 2 sin(angle / 2).
        self._pos_tol2 = pos_tol ** 2
        self._chord_tol2 = (2.0 * math.sin(axis_tol / 2.0)) ** 2
        self.max_iters = max_iters
        self.restarts = restarts
        self.seed = seed
        lower, upper = chain.lower, chain.upper
        # Sampling range for restarts: the limits, or one turn for unlimited joints.
        self._lo = np.where(np.isfinite(lower), lower, -np.pi)
        self._hi = np.where(np.isfinite(upper), upper, np.pi)

    def solve(self, target: NeedlePose, start: np.ndarray, frozen: Sequence[str] = (),
              restarts: int | None = None) -> IkResult:
        """Solve from ``start``; restart from seeded random configurations if needed.

        Joints named in ``frozen`` keep their ``start`` value (e.g. the needle stage while
        the arm aligns). ``restarts`` overrides the configured count; 0 keeps the answer
        on the branch of ``start``, for paths that must be continuous. The restart
        sequence depends only on ``seed``: a given request always gets the same answer.
        """
        chain = self.chain
        start = chain.check_positions(start)
        lower, upper = chain.lower, chain.upper
        if frozen:
            idx = [self._joint_index(name) for name in frozen]
            lower, upper = lower.copy(), upper.copy()
            lower[idx] = upper[idx] = start[idx]
        world = chain.world_to_base().inverse()  # base -> world (pinocchio's frame)
        p_goal = world.act(target.position)
        a_goal = world.rotation @ target.axis
        rng: np.random.Generator | None = None  # made on the first restart: it costs ~50 us
        best: tuple[float, np.ndarray, float, float] | None = None
        total_iters = 0
        starts = self.restarts + 1 if restarts is None else restarts + 1
        for attempt in range(starts):
            if attempt == 0:
                x0 = np.clip(start, lower, upper)
            else:
                rng = rng or np.random.default_rng(self.seed)
                x0 = np.clip(rng.uniform(self._lo, self._hi), lower, upper)
            x, pos_err, ang_err, iters = self._descend(p_goal, a_goal, x0, lower, upper)
            total_iters += iters
            if pos_err <= self.pos_tol and ang_err <= self.axis_tol:
                return IkResult(True, x, pos_err, ang_err, total_iters, attempt, 'converged')
            score = pos_err + ang_err * 0.1  # 0.1 m per rad: 1 mm ~ 0.57 deg
            if best is None or score < best[0]:
                best = (score, x, pos_err, ang_err)
        assert best is not None
        _, x, pos_err, ang_err = best
        reason = (f'unreachable: best tip error {pos_err * 1e3:.3f} mm, axis error '
                  f'{np.degrees(ang_err):.3f} deg after {starts} starts within joint limits')
        return IkResult(False, x, pos_err, ang_err, total_iters, starts - 1, reason)

    def _joint_index(self, name: str) -> int:
        if name not in self.chain.joint_names:
            raise ValueError(f'unknown joint {name!r}; chain joints: {self.chain.joint_names}')
        return self.chain.joint_names.index(name)

    def solve_or_raise(self, target: NeedlePose, start: np.ndarray, frozen: Sequence[str] = (),
                       restarts: int | None = None) -> np.ndarray:
        """Joint positions reaching ``target``, or :class:`UnreachableError` with the reason."""
        result = self.solve(target, start, frozen, restarts)
        if not result.success:
            raise UnreachableError(result.reason)
        return result.positions

    def _descend(self, p_goal: np.ndarray, a_goal: np.ndarray, x0: np.ndarray,
                 lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, float, float, int]:
        """Levenberg-Marquardt from ``x0``; a step is kept only if it lowers the error.

        This is the hot loop of every plan, so it calls pinocchio and LAPACK directly and
        keeps numpy calls on tiny arrays to a minimum: each costs about a microsecond of
        overhead, more than the kinematics itself.
        """
        model, data, tip = self.chain.model, self.chain.data, self.chain.tip_id
        to_q = self.chain.to_q
        x = x0.copy()
        q = to_q(x, check=False)
        e, axis, pos2, chord2 = self._error(q, p_goal, a_goal)
        cost = pos2 + chord2
        on_limit = bool((x <= lower).any() or (x >= upper).any())
        damping = _DAMP0
        history: list[float] = []
        it = 0
        while it < self.max_iters:
            if pos2 <= self._pos_tol2 and chord2 <= self._chord_tol2:
                break
            history.append(cost)
            if len(history) > 15 and cost > 0.1 * history[-10]:
                break  # creeping into a local minimum: a restart is cheaper than waiting
            it += 1
            pin.computeJointJacobians(model, data, q)
            j = pin.getFrameJacobian(model, data, tip, _LWA)
            # The axis a = R a_local moves as da = omega x a, so d(a)/dq = -[a]x J_angular.
            j[3:] = pin.skew(-axis) @ j[3:]
            if on_limit:
                # Joints on a limit that the gradient pushes further out take no part.
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
                e_new, axis_new, pos2_new, chord2_new = self._error(q_new, p_goal, a_goal)
                cost_new = pos2_new + chord2_new
                if cost_new < cost:
                    x, q, e, axis, pos2, chord2, cost = (x_new, q_new, e_new, axis_new,
                                                         pos2_new, chord2_new, cost_new)
                    on_limit = hit
                    damping = max(damping * _DAMP_DOWN, 1e-12)
                    break
                damping *= 10.0
                it += 1
                if damping > 1e3 or it >= self.max_iters:
                    return x, *_errors(pos2, chord2), it  # no descent inside the limits
        return x, *_errors(pos2, chord2), it

    def _error(self, q: np.ndarray, p_goal: np.ndarray, a_goal: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Error terms of configuration ``q``, all in world axes.

        Returns the stacked [tip position; axis vector] error, the current needle axis,
        and the squared norms of both halves.
        """
        model, data = self.chain.model, self.chain.data
        pin.forwardKinematics(model, data, q)
        placement = pin.updateFramePlacement(model, data, self.chain.tip_id)
        dp = placement.translation - p_goal
        axis = placement.rotation @ self.axis_local
        da = axis - a_goal
        return np.concatenate((dp, da)), axis, float(dp @ dp), float(da @ da)

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
_EYE6 = np.eye(6)
_MAX_STEP = 0.5  # rad or m per iteration: keeps the linearisation honest far from the goal
_DAMP0 = 1e-3
_DAMP_DOWN = 0.2


def _errors(pos2: float, chord2: float) -> tuple[float, float]:
    """Position error (m) and axis angle (rad) from the squared error norms."""
    return math.sqrt(pos2), 2.0 * math.asin(min(1.0, math.sqrt(chord2) / 2.0))
