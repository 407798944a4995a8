"""Inverse kinematics for a needle pose: tip position plus needle-axis direction.

A needle is symmetric about its axis, so roll is left free: five constraints on the
chain, and a 6- or 7-DoF arm keeps the extra freedom. The solver is damped least
squares (Levenberg-Marquardt) on the pinocchio Jacobian with joint limits enforced by
projection, and deterministic restarts when a start converges to a limit or a local
minimum. Failure is never silent: the result says why the target was not reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pinocchio as pin

from ir_guidance.kinematics.chain import SerialChain


class UnreachableError(RuntimeError):
    """The needle pose cannot be reached within joint limits."""


@dataclass(frozen=True)
class NeedlePose:
    """Needle tip ``position`` (m) and unit insertion ``axis``, both in the base frame."""

    position: np.ndarray
    axis: np.ndarray

    @classmethod
    def make(cls, position: np.ndarray | list[float], axis: np.ndarray | list[float]
             ) -> NeedlePose:
        p = np.asarray(position, dtype=float)
        a = np.asarray(axis, dtype=float)
        if p.shape != (3,) or a.shape != (3,):
            raise ValueError(f'position and axis must be 3-vectors, got {p.shape}, {a.shape}')
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(a))):
            raise ValueError(f'needle pose not finite: position {p}, axis {a}')
        norm = np.linalg.norm(a)
        if norm < 1e-9:
            raise ValueError('needle axis has zero length')
        return cls(p, a / norm)

    @classmethod
    def from_transform(cls, transform: np.ndarray, axis_local: np.ndarray) -> NeedlePose:
        return cls.make(transform[:3, 3], transform[:3, :3] @ axis_local)


@dataclass(frozen=True)
class IkResult:
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
        self.max_iters = max_iters
        self.restarts = restarts
        self.seed = seed
        lower, upper = chain.lower, chain.upper
        # Sampling range for restarts: the limits, or one turn for unlimited joints.
        self._lo = np.where(np.isfinite(lower), lower, -np.pi)
        self._hi = np.where(np.isfinite(upper), upper, np.pi)

    def solve(self, target: NeedlePose, start: np.ndarray) -> IkResult:
        """Solve from ``start``; restart from seeded random configurations if needed."""
        start = self.chain.check_positions(start)
        rng = np.random.default_rng(self.seed)
        best: IkResult | None = None
        total_iters = 0
        for attempt in range(self.restarts + 1):
            x0 = self.chain.clip(start) if attempt == 0 else rng.uniform(self._lo, self._hi)
            x, pos_err, ang_err, iters = self._descend(target, x0)
            total_iters += iters
            ok = pos_err <= self.pos_tol and ang_err <= self.axis_tol
            if best is None or pos_err + ang_err < best.position_error_m + best.axis_error_rad:
                best = IkResult(ok, x, pos_err, ang_err, total_iters, attempt, 'converged')
            if ok:
                return IkResult(True, x, pos_err, ang_err, total_iters, attempt, 'converged')
        assert best is not None
        reason = (f'unreachable: best tip error {best.position_error_m * 1e3:.3f} mm, '
                  f'axis error {np.degrees(best.axis_error_rad):.3f} deg after '
                  f'{self.restarts + 1} starts within joint limits')
        return IkResult(False, best.positions, best.position_error_m, best.axis_error_rad,
                        total_iters, self.restarts, reason)

    def solve_or_raise(self, target: NeedlePose, start: np.ndarray) -> np.ndarray:
        result = self.solve(target, start)
        if not result.success:
            raise UnreachableError(result.reason)
        return result.positions

    def _descend(self, target: NeedlePose, x0: np.ndarray) -> tuple[np.ndarray, float, float, int]:
        """Levenberg-Marquardt from ``x0``: a step is kept only if it lowers the error."""
        chain = self.chain
        world = chain.world_to_base().inverse()  # base -> world
        p_goal = world.act(target.position)
        a_goal = world.rotation @ target.axis
        x = x0.copy()
        e = self._error(x, p_goal, a_goal)
        cost = float(e @ e)
        damping = 1e-3
        it = 0
        history: list[float] = []
        while it < self.max_iters:
            it += 1
            pos_err, ang_err = _split_errors(e)
            if pos_err <= self.pos_tol and ang_err <= self.axis_tol:
                return x, pos_err, ang_err, it
            jac = self._jacobian_at_last_fk()
            a = e[3:] + a_goal
            # d(a)/dq = omega x a = -[a]x J_angular.
            j = np.vstack((jac[:3], -_skew(a) @ jac[3:]))
            # Joints resting on a limit and pushed further out are dropped from the step.
            free = ~(((x <= chain.lower) & (j.T @ e > 0)) | ((x >= chain.upper) & (j.T @ e < 0)))
            j = j * free
            jjt = j @ j.T
            g = j.T
            history.append(cost)
            if len(history) > 15 and cost > 0.1 * history[-10]:
                break  # creeping: a local minimum; a restart is cheaper than waiting
            while True:
                m = jjt + damping * np.eye(6)
                dq = -g @ np.linalg.solve(m, e)
                step = np.max(np.abs(dq))
                if step > 0.5:
                    dq *= 0.5 / step
                x_new = np.clip(x + dq, chain.lower, chain.upper)
                e_new = self._error(x_new, p_goal, a_goal)
                cost_new = float(e_new @ e_new)
                if cost_new < cost:
                    x, e, cost = x_new, e_new, cost_new
                    damping = max(damping * 0.2, 1e-12)
                    break
                damping *= 10.0
                it += 1
                if damping > 1e3 or it >= self.max_iters:
                    # No descent direction inside the limits: a local minimum.
                    self._error(x, p_goal, a_goal)
                    pos_err, ang_err = _split_errors(e)
                    return x, pos_err, ang_err, it
        pos_err, ang_err = _split_errors(e)
        return x, pos_err, ang_err, it

    def _error(self, x: np.ndarray, p_goal: np.ndarray, a_goal: np.ndarray) -> np.ndarray:
        """Tip position error and axis-vector error, in world axes; leaves FK in data."""
        chain = self.chain
        self._q = chain.to_q(x)
        pin.forwardKinematics(chain.model, chain.data, self._q)
        placement = pin.updateFramePlacement(chain.model, chain.data, chain.tip_id)
        return np.concatenate((placement.translation - p_goal,
                               placement.rotation @ self.axis_local - a_goal))

    def _jacobian_at_last_fk(self) -> np.ndarray:
        chain = self.chain
        pin.computeJointJacobians(chain.model, chain.data, self._q)
        return pin.getFrameJacobian(chain.model, chain.data, chain.tip_id, _LWA)

    def straight_line(self, start: np.ndarray, distance: float, steps: int,
                      stage_joint: str | None = None) -> np.ndarray:
        """Joint waypoints that move the tip ``distance`` (m) along the needle axis.

        With ``stage_joint`` (a prismatic joint whose axis is the needle axis) only the
        stage moves; otherwise the arm follows the line by IK from waypoint to waypoint.
        Returns ``(steps + 1, dof)``; raises :class:`UnreachableError` if any is not.
        """
        x = self.chain.check_positions(start)
        if steps < 1 or not np.isfinite(distance):
            raise ValueError(f'need steps >= 1 and a finite distance, got {steps}, {distance}')
        fractions = np.linspace(0.0, 1.0, steps + 1)
        if stage_joint is not None:
            if stage_joint not in self.chain.joint_names:
                raise ValueError(f'stage joint {stage_joint!r} not in {self.chain.joint_names}')
            i = self.chain.joint_names.index(stage_joint)
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
            path.append(self.solve_or_raise(goal, path[-1]))
        return np.array(path)


_LWA = pin.ReferenceFrame.LOCAL_WORLD_ALIGNED


def _split_errors(e: np.ndarray) -> tuple[float, float]:
    """Position error (m) and axis angle error (rad) from the stacked error vector."""
    chord = min(1.0, float(np.linalg.norm(e[3:])) / 2.0)
    return float(np.linalg.norm(e[:3])), 2.0 * float(np.arcsin(chord))


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
