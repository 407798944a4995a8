"""``ir-guidance bench kinematics``: FK, Jacobian and needle IK against pin-pink.

Targets are needle poses made by FK from random joint configurations within limits.
Both solvers start every target from the same home configuration (never from the one
that made the target), stop at the same tolerances, give up on a start after the same
number of iterations or when progress stalls the same way, and restart from the same
seeded random configurations. pink is used as its documentation shows: a
``FrameTask`` on the tip frame (orientation cost 0 about the needle axis, so roll is
free), ``solve_ik`` with the DAQP solver and pink's default configuration and velocity
limits, integrated until converged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pinocchio as pin

from ir_guidance.kinematics import NeedleIk, NeedlePose, SerialChain


@dataclass
class SolveStats:
    """Per-target outcomes of one solver."""

    seconds: list[float]
    success: list[bool]
    pos_err_m: list[float]
    axis_err_rad: list[float]

    def summary(self, prefix: str) -> dict[str, float]:
        """Flat JSON-ready numbers; errors are over successful solves only."""
        ok = np.array(self.success)
        pos = np.array(self.pos_err_m)[ok] if ok.any() else np.array([math.nan])
        ang = np.array(self.axis_err_rad)[ok] if ok.any() else np.array([math.nan])
        us = np.array(self.seconds) * 1e6
        return {
            f'{prefix}_success_rate': float(ok.mean()),
            f'{prefix}_us_p50': float(np.percentile(us, 50)),
            f'{prefix}_us_p90': float(np.percentile(us, 90)),
            f'{prefix}_us_max': float(us.max()),
            f'{prefix}_pos_err_mm_max': float(pos.max() * 1e3),
            f'{prefix}_axis_err_deg_max': float(np.degrees(ang.max())),
        }


def default_home(chain: SerialChain) -> np.ndarray:
    """Mid-range of every limited joint, zero for unlimited ones (for arms with no home)."""
    mid = (chain.lower + chain.upper) / 2.0
    return np.where(np.isfinite(mid), mid, 0.0)


def make_targets(chain: SerialChain, axis_local: np.ndarray, count: int, seed: int
                 ) -> list[NeedlePose]:
    """Needle poses reached by FK from uniformly random configurations within limits."""
    rng = np.random.default_rng(seed)
    lo = np.where(np.isfinite(chain.lower), chain.lower, -np.pi)
    hi = np.where(np.isfinite(chain.upper), chain.upper, np.pi)
    return [NeedlePose.from_transform(chain.fk(rng.uniform(lo, hi)), axis_local)
            for _ in range(count)]


def time_call(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls."""
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return float(np.median(times))


class PinkSolver:
    """The same needle-pose problem solved with pink's differential IK."""

    def __init__(self, ik: NeedleIk, dt: float = 1.0, damping: float = 1e-6) -> None:
        import pink
        from pink.tasks import FrameTask

        self._pink = pink
        self.ik = ik
        self.chain = ik.chain
        self.dt = dt
        # pink's default damping (1e-12) leaves the QP singular when roll is free and the
        # arm is redundant; DAQP then reports no solution. 1e-6 is the smallest that works.
        self.damping = damping
        # FrameTask costs are in the tip frame; zero cost about the needle axis (local z).
        orientation_cost = np.abs(1.0 - np.abs(ik.axis_local))
        self.task = FrameTask(self.chain.tip_link, position_cost=1.0,
                              orientation_cost=orientation_cost.tolist())
        self.data = self.chain.model.createData()

    def solve(self, target: NeedlePose, start: np.ndarray) -> tuple[bool, float, float]:
        """Return (success, tip error m, axis error rad) after pink's iterations."""
        from pink import solve_ik
        from pink.exceptions import PinkError

        ik, chain = self.ik, self.chain
        world = chain.world_to_base().inverse()
        goal = NeedlePose(world.act(target.position), world.rotation @ target.axis)
        self.task.set_target(pin.SE3(_frame_with_axis(goal.axis, ik.axis_local), goal.position))
        rng: np.random.Generator | None = None
        best = (math.inf, math.inf)
        for attempt in range(ik.restarts + 1):
            if attempt == 0:
                x0 = chain.clip(start)
            else:
                rng = rng or np.random.default_rng(ik.seed)
                x0 = rng.uniform(ik._lo, ik._hi)
            configuration = self._pink.Configuration(chain.model, self.data, chain.to_q(x0))
            history: list[float] = []
            for _ in range(ik.max_iters + 1):
                pos_err, ang_err = self._errors(configuration, goal)
                if pos_err <= ik.pos_tol and ang_err <= ik.axis_tol:
                    return True, pos_err, ang_err
                cost = pos_err ** 2 + ang_err ** 2
                history.append(cost)
                if len(history) > 15 and cost > 0.1 * history[-10]:
                    break
                try:
                    velocity = solve_ik(configuration, [self.task], self.dt, solver='daqp',
                                        damping=self.damping, safety_break=False)
                except PinkError:
                    break
                configuration.integrate_inplace(velocity, self.dt)
            if pos_err + 0.1 * ang_err < best[0] + 0.1 * best[1]:
                best = (pos_err, ang_err)
        return False, best[0], best[1]

    def _errors(self, configuration, goal: NeedlePose) -> tuple[float, float]:
        placement = configuration.get_transform_frame_to_world(self.chain.tip_link)
        axis = placement.rotation @ self.ik.axis_local
        pos_err = float(np.linalg.norm(placement.translation - goal.position))
        return pos_err, 2.0 * math.asin(min(1.0, float(np.linalg.norm(axis - goal.axis)) / 2))


def _frame_with_axis(axis: np.ndarray, axis_local: np.ndarray) -> np.ndarray:
    """A rotation taking ``axis_local`` onto ``axis`` (roll is arbitrary: its cost is 0)."""
    def basis(v: np.ndarray) -> np.ndarray:
        helper = np.array([1.0, 0.0, 0.0]) if abs(v[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        u = np.cross(v, helper)
        u /= np.linalg.norm(u)
        return np.column_stack((u, np.cross(v, u), v))
    return basis(axis) @ basis(axis_local).T


def run(chain: SerialChain, home: np.ndarray, count: int = 1000, seed: int = 0,
        ik_kwargs: dict | None = None) -> dict[str, float | int | str]:
    """Measure FK, Jacobian and both IK solvers on ``count`` targets."""
    ik = NeedleIk(chain, **(ik_kwargs or {}))
    home = chain.check_positions(home)
    targets = make_targets(chain, ik.axis_local, count, seed)
    result: dict[str, float | int | str] = {
        'dof': chain.dof, 'base_link': chain.base_link, 'tip_link': chain.tip_link,
        'targets': count, 'seed': seed,
        'pos_tol_mm': ik.pos_tol * 1e3, 'axis_tol_deg': math.degrees(ik.axis_tol),
        'fk_us_p50': time_call(lambda: chain.fk(home), 2000) * 1e6,
        'jacobian_us_p50': time_call(lambda: chain.jacobian(home), 2000) * 1e6,
    }
    ours = SolveStats([], [], [], [])
    for target in targets:
        start = time.perf_counter()
        res = ik.solve(target, home)
        ours.seconds.append(time.perf_counter() - start)
        ours.success.append(res.success)
        # Verify independently of the solver's own bookkeeping.
        reached = NeedlePose.from_transform(chain.fk(res.positions), ik.axis_local)
        ours.pos_err_m.append(float(np.linalg.norm(reached.position - target.position)))
        ours.axis_err_rad.append(_angle(reached.axis, target.axis))
        ours.success[-1] &= chain.within_limits(res.positions)
    pink = PinkSolver(ik)
    base = SolveStats([], [], [], [])
    for target in targets:
        start = time.perf_counter()
        ok, pos_err, ang_err = pink.solve(target, home)
        base.seconds.append(time.perf_counter() - start)
        base.success.append(ok)
        base.pos_err_m.append(pos_err)
        base.axis_err_rad.append(ang_err)
    result.update(ours.summary('ik'))
    result.update(base.summary('pink'))
    result['ik_over_pink_p50'] = result['ik_us_p50'] / result['pink_us_p50']
    return result


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * math.asin(min(1.0, float(np.linalg.norm(a - b)) / 2.0))
