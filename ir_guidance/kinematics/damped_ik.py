"""The damped least-squares IK loop shared by :class:`NeedleIk` and :class:`PoseIk`.

Algorithms layer, ROS-free. Needle-pose IK (tip position + axis, 5 constraints) and
probe-pose IK (position + orientation, 6) differ only in the error they drive to zero
and its Jacobian; how they search is the same, so it lives here once and each IK class
only says what its error is. The search: Levenberg-Marquardt on a 6-row error, a
step kept only if it lowers the cost, joints on a limit that the gradient pushes further
out taken out of the step (an active set), steps projected into the limits, and
deterministic restarts from seeded random configurations when a start converges to a
limit or a local minimum. Failure is never silent: the result says why the target was
not reached.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from scipy.linalg.lapack import dposv as _dposv

from ir_guidance.kinematics.chain import SerialChain

_EYE6 = np.eye(6)
_MAX_STEP = 0.5  # rad or m per iteration: keeps the linearisation honest far from the goal
_DAMP0 = 1e-3
_DAMP_DOWN = 0.2
_ANGLE_WEIGHT_M = 0.1  # 0.1 m per rad when ranking failed starts: 1 mm ~ 0.57 deg

Target = TypeVar('Target')


class UnreachableError(RuntimeError):
    """The target (a needle pose or a frame pose) cannot be reached within joint limits."""


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


class DampedIk(abc.ABC, Generic[Target]):
    """Restarts, frozen joints and the Levenberg-Marquardt loop of an IK class.

    A subclass turns a target into a ``goal`` in its ``solve`` and defines the error of
    a configuration for it: ``_error``, ``_jacobian``, ``_converged``, ``_errors``.
    """

    def __init__(self, chain: SerialChain, max_iters: int, restarts: int, seed: int) -> None:
        self.chain = chain
        self.max_iters = max_iters
        self.restarts = restarts
        self.seed = seed
        # Sampling range for restarts: the limits, or one turn for unlimited joints.
        self._lo = np.where(np.isfinite(chain.lower), chain.lower, -np.pi)
        self._hi = np.where(np.isfinite(chain.upper), chain.upper, np.pi)

    @abc.abstractmethod
    def solve(self, target: Target, start: np.ndarray, frozen: Sequence[str] = (),
              restarts: int | None = None) -> IkResult:
        """Solve from ``start`` (see the subclass)."""

    def solve_or_raise(self, target: Target, start: np.ndarray, frozen: Sequence[str] = (),
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

    def _bounds(self, start: np.ndarray, frozen: Sequence[str]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The checked ``start`` and the limits, with the ``frozen`` joints pinned to it."""
        start = self.chain.check_positions(start)
        lower, upper = self.chain.lower, self.chain.upper
        if frozen:
            idx = [self._joint_index(name) for name in frozen]
            lower, upper = lower.copy(), upper.copy()
            lower[idx] = upper[idx] = start[idx]
        return start, lower, upper

    @abc.abstractmethod
    def _error(self, q: np.ndarray, goal: Any) -> tuple[np.ndarray, float, Any]:
        """Error vector (6), cost and state (what the methods below need) at ``q``."""

    @abc.abstractmethod
    def _jacobian(self, q: np.ndarray, goal: Any, state: Any) -> np.ndarray:
        """d(error)/d(joint positions) at ``q``: a fresh (6, dof) array the loop may edit."""

    @abc.abstractmethod
    def _converged(self, e: np.ndarray, state: Any) -> bool:
        """Whether the error is within the tolerances (ends the descent)."""

    @abc.abstractmethod
    def _errors(self, e: np.ndarray, state: Any) -> tuple[float, float]:
        """Position error (m) and angle error (rad)."""

    @abc.abstractmethod
    def _unreachable(self, pos_err: float, ang_err: float, starts: int) -> str:
        """The failure reason for the best of ``starts`` failed starts."""

    def _search(self, goal: Any, start: np.ndarray, lower: np.ndarray,
                upper: np.ndarray, restarts: int | None, pos_tol: float, ang_tol: float
                ) -> IkResult:
        """Descend from ``start``, then from seeded random starts, until one converges.

        The restart sequence depends only on ``seed``: a given request always gets the
        same answer. Without convergence the best start (position plus 0.1 m per rad of
        angle) is returned with ``success`` False.
        """
        rng: np.random.Generator | None = None  # made on the first restart: it costs ~50 us
        best: tuple[float, np.ndarray, float, float] | None = None
        total_iters = 0
        starts = (self.restarts if restarts is None else restarts) + 1
        for attempt in range(starts):
            if attempt == 0:
                x0 = np.clip(start, lower, upper)
            else:
                rng = rng or np.random.default_rng(self.seed)
                x0 = np.clip(rng.uniform(self._lo, self._hi), lower, upper)
            x, pos_err, ang_err, iters = self._descend(goal, x0, lower, upper)
            total_iters += iters
            if pos_err <= pos_tol and ang_err <= ang_tol:
                return IkResult(True, x, pos_err, ang_err, total_iters, attempt, 'converged')
            score = pos_err + _ANGLE_WEIGHT_M * ang_err
            if best is None or score < best[0]:
                best = (score, x, pos_err, ang_err)
        assert best is not None
        _, x, pos_err, ang_err = best
        return IkResult(False, x, pos_err, ang_err, total_iters, starts - 1,
                        self._unreachable(pos_err, ang_err, starts))

    def _descend(self, goal: Any, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray
                 ) -> tuple[np.ndarray, float, float, int]:
        """Levenberg-Marquardt from ``x0``; a step is kept only if it lowers the cost.

        This is the hot loop of every plan, so it calls LAPACK directly and keeps numpy
        calls on tiny arrays to a minimum: each costs about a microsecond of overhead,
        more than the kinematics itself.
        """
        error, jacobian, converged = self._error, self._jacobian, self._converged
        to_q = self.chain.to_q
        x = x0.copy()
        q = to_q(x, check=False)
        e, cost, state = error(q, goal)
        on_limit = bool((x <= lower).any() or (x >= upper).any())
        damping = _DAMP0
        history: list[float] = []
        it = 0
        while it < self.max_iters:
            if converged(e, state):
                break
            history.append(cost)
            if len(history) > 15 and cost > 0.1 * history[-10]:
                break  # creeping into a local minimum: a restart is cheaper than waiting
            it += 1
            j = jacobian(q, goal, state)
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
                e_new, cost_new, state_new = error(q_new, goal)
                if cost_new < cost:
                    x, q, e, cost, state = x_new, q_new, e_new, cost_new, state_new
                    on_limit = hit
                    damping = max(damping * _DAMP_DOWN, 1e-12)
                    break
                damping *= 10.0
                it += 1
                if damping > 1e3 or it >= self.max_iters:
                    return x, *self._errors(e, state), it  # no descent inside the limits
        return x, *self._errors(e, state), it
