"""The safety supervisor: what every tick must pass before the arm may move (ROS-free).

Checks are plain functions of the tick's inputs and the proposed command, so each one is
unit-tested alone and the controller cannot skip one by accident. A failed check returns
a reason string; the controller then holds its last command (the arm stays where it was
sent, it never moves on bad data) and enters SAFE or ABORT with that reason.

- Inputs: joint state present, finite, inside the URDF limits and fresh; F/T wrench
  present, finite and fresh; each watched stream younger than its watchdog.
- Commands: finite, inside the joint limits, no joint stepping faster than its URDF
  velocity limit allows in one tick, the needle tip inside the configured workspace box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Workspace:
    """Axis-aligned box (base frame, m) the needle tip must stay inside."""

    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def from_config(cls, section: dict) -> Workspace:
        box = section['workspace']
        return cls(np.asarray(box['lower'], dtype=float), np.asarray(box['upper'], dtype=float))

    def violation(self, point: np.ndarray) -> str | None:
        """Why ``point`` is outside, or None."""
        p = np.asarray(point, dtype=float)
        if not np.all(np.isfinite(p)):
            return f'needle tip position not finite: {p.tolist()}'
        low, high = p < self.lower, p > self.upper
        if low.any() or high.any():
            axes = [a for a, bad in zip('xyz', low | high, strict=True) if bad]
            return (f'needle tip {np.round(p, 4).tolist()} outside the workspace on '
                    f'{axes} (box {self.lower.tolist()} .. {self.upper.tolist()})')
        return None


def check_vector(name: str, value: np.ndarray | None, size: int) -> str | None:
    """A present, finite vector of ``size`` values, or why not."""
    if value is None:
        return f'no {name}'
    v = np.asarray(value, dtype=float)
    if v.shape != (size,):
        return f'{name} has shape {v.shape}, expected ({size},)'
    if not np.all(np.isfinite(v)):
        return f'{name} not finite: {np.round(v, 6).tolist()}'
    return None


def check_fresh(name: str, stamp_s: float | None, now_s: float, max_age_s: float
                ) -> str | None:
    """The input's stamp is at most ``max_age_s`` old and not in the future, or why not."""
    if stamp_s is None:
        return f'no {name} received'
    age = now_s - stamp_s
    if age > max_age_s + 1e-9:
        return f'{name} stale: {age * 1e3:.1f} ms old (watchdog {max_age_s * 1e3:.1f} ms)'
    if age < -1e-6:
        return f'{name} stamped {-age * 1e3:.1f} ms in the future'
    return None


def check_joints(positions: np.ndarray | None, lower: np.ndarray, upper: np.ndarray,
                 names: Sequence[str]) -> str | None:
    """A measured joint state is complete, finite and inside the limits, or why not."""
    bad = check_vector('joint state', positions, len(names))
    if bad:
        return bad
    q = np.asarray(positions, dtype=float)
    outside = (q < lower - 1e-6) | (q > upper + 1e-6)
    if outside.any():
        bad = [n for n, o in zip(names, outside, strict=True) if o]
        return f'joint state outside limits: {bad}'
    return None


def check_command(command: np.ndarray, previous: np.ndarray, lower: np.ndarray,
                  upper: np.ndarray, max_step: np.ndarray, names: Sequence[str]
                  ) -> str | None:
    """A proposed command is finite, in limits and no faster than ``max_step`` per tick."""
    bad = check_vector('command', command, len(names))
    if bad:
        return bad
    q = np.asarray(command, dtype=float)
    outside = (q < lower - 1e-9) | (q > upper + 1e-9)
    if outside.any():
        return f'command outside limits: {[n for n, o in zip(names, outside, strict=True) if o]}'
    step = np.abs(q - previous)
    fast = step > max_step + 1e-12
    if fast.any():
        worst = int(np.argmax(step / max_step))
        return (f'command steps {names[worst]} by {step[worst]:.5f} in one tick '
                f'(limit {max_step[worst]:.5f})')
    return None
