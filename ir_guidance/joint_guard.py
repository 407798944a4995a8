"""Validate measured joint states and outgoing joint commands before anything uses them.

A needle is inside a patient's arm: a pose computed from a garbled joint state, or a
command that jumps the arm, is a safety fault, not a glitch. Every joint state is
checked (names, finite values, limits, age) before kinematics sees it, and every command
is checked against the last good measured state before it reaches the controller.

ROS-free on purpose: the node (``ir_guidance.nodes.arm_interface``) only unpacks messages
and calls these functions, so every rejection is unit-tested without rclpy.

Two orders are used and never mixed silently:

* *chain order*: ``SerialChain.joint_names`` (what kinematics takes);
* *command order*: ``config.joint_names()`` (what the ros2_control controller takes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# A measured position may sit a little past a limit (encoder noise, controller overshoot)
# without the state being garbage; a command gets no such slack.
LIMIT_TOL_RAD = 1e-3
LIMIT_TOL_M = 1e-4
# Stamps from the future beyond this are a clock fault (unsynchronised hosts, a bag
# played with the wrong clock), not jitter.
FUTURE_TOL_S = 0.05


class JointStateError(ValueError):
    """A joint state that must not be used; ``reason`` is a short machine-readable code.

    Codes: ``length``, ``duplicate``, ``missing``, ``stale``, ``future``, ``nonfinite``,
    ``limits``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class CommandError(ValueError):
    """A joint command that must not be forwarded; ``reason`` is a short code.

    Codes: ``length``, ``duplicate``, ``names``, ``no_state``, ``nonfinite``, ``limits``,
    ``step``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class JointLimits:
    """Joint names, position limits and joint kind, in chain order.

    Prismatic joints are told apart because their tolerances and step limits are in
    metres, the others' in radians.
    """

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    prismatic: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.names)
        for field in ('lower', 'upper', 'prismatic'):
            if np.shape(getattr(self, field)) != (n,):
                raise ValueError(f'{field} must have one entry per joint ({n})')
        if len(set(self.names)) != n:
            raise ValueError(f'duplicate joint names in {list(self.names)}')
        if np.any(np.isnan(self.lower)) or np.any(np.isnan(self.upper)):
            raise ValueError('joint limits must not be NaN (use +-inf for none)')
        if np.any(self.lower > self.upper):
            raise ValueError('a lower joint limit is above its upper limit')

    @classmethod
    def from_chain(cls, chain: Any) -> JointLimits:
        """Read names, limits and joint kinds from a ``SerialChain``.

        Pinocchio names prismatic joint models ``JointModelP*`` (PX, PY, PZ,
        PrismaticUnaligned); everything else in a 1-DoF serial chain rotates.
        """
        prismatic = np.array([j.shortname().startswith('JointModelP')
                              for j in chain.model.joints[1:]], dtype=bool)
        return cls(tuple(chain.joint_names), np.asarray(chain.lower, dtype=float).copy(),
                   np.asarray(chain.upper, dtype=float).copy(), prismatic)

    def tolerance(self, tol_rad: float, tol_m: float) -> np.ndarray:
        """Per-joint tolerance: ``tol_m`` for prismatic joints, ``tol_rad`` for the rest."""
        return np.where(self.prismatic, tol_m, tol_rad)

    def outside(self, positions: np.ndarray, tol: np.ndarray | float = 0.0) -> list[str]:
        """Describe each joint of ``positions`` (chain order) outside its limits + ``tol``."""
        bad = (positions < self.lower - tol) | (positions > self.upper + tol)
        return [f'{self.names[i]}={positions[i]:.6g} not in [{self.lower[i]:.6g}, '
                f'{self.upper[i]:.6g}]' for i in np.flatnonzero(bad)]


@dataclass(frozen=True)
class GuardParams:
    """The ``arm_interface`` parameters the guards need (see ``config/ir_guidance.yaml``)."""

    joint_state_timeout_s: float
    max_step_rad: float
    max_step_m: float
    limit_tol_rad: float = LIMIT_TOL_RAD
    limit_tol_m: float = LIMIT_TOL_M
    future_tol_s: float = FUTURE_TOL_S

    def __post_init__(self) -> None:
        for name in ('joint_state_timeout_s', 'max_step_rad', 'max_step_m'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f'{name} must be a positive number, got {value!r}')
        for name in ('limit_tol_rad', 'limit_tol_m', 'future_tol_s'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f'{name} must be a non-negative number, got {value!r}')

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> GuardParams:
        """Take the guard's values from a mapping such as config's ``arm_interface``."""
        return cls(joint_state_timeout_s=float(section['joint_state_timeout_s']),
                   max_step_rad=float(section['max_step_rad']),
                   max_step_m=float(section['max_step_m']))


def _index_names(names: Sequence[str], n_positions: int,
                 error: type[JointStateError] | type[CommandError]) -> dict[str, int]:
    """Map each name to its index; a message whose arrays disagree is malformed."""
    if len(names) != n_positions:
        raise error('length', f'{len(names)} joint names but {n_positions} positions')
    index: dict[str, int] = {}
    duplicates: list[str] = []
    for i, name in enumerate(names):
        if name in index:
            duplicates.append(name)
        index[name] = i
    if duplicates:
        raise error('duplicate', f'duplicate joint names: {sorted(set(duplicates))}')
    return index


class JointStateGuard:
    """Turn a measured joint state into positions in chain order, or refuse it."""

    def __init__(self, limits: JointLimits, params: GuardParams) -> None:
        self.limits = limits
        self.params = params
        self._tol = limits.tolerance(params.limit_tol_rad, params.limit_tol_m)

    def validate(self, names: Sequence[str], positions: Sequence[float], stamp_s: float,
                 now_s: float) -> np.ndarray:
        """Return the chain's joint positions (chain order) from a joint-state message.

        Joints the chain does not have (gripper fingers, a second arm) are ignored, as a
        real ``joint_state_broadcaster`` publishes them too. Raises ``JointStateError``.
        """
        values = np.asarray(positions, dtype=float).reshape(-1)
        index = _index_names(names, values.size, JointStateError)
        missing = [n for n in self.limits.names if n not in index]
        if missing:
            raise JointStateError('missing', f'joint state lacks joints {missing}')
        age = now_s - stamp_s
        if age > self.params.joint_state_timeout_s:
            raise JointStateError('stale', f'joint state is {age:.3f} s old (timeout '
                                  f'{self.params.joint_state_timeout_s:g} s)')
        if -age > self.params.future_tol_s:
            raise JointStateError('future', f'joint state stamped {-age:.3f} s in the future '
                                  f'(tolerance {self.params.future_tol_s:g} s)')
        x = values[[index[n] for n in self.limits.names]]
        finite = np.isfinite(x)
        if not finite.all():
            bad = {self.limits.names[i]: float(x[i]) for i in np.flatnonzero(~finite)}
            raise JointStateError('nonfinite', f'joint positions not finite: {bad}')
        outside = self.limits.outside(x, self._tol)
        if outside:
            raise JointStateError('limits', f'joint positions outside limits: {outside}')
        return x


class CommandGuard:
    """Check joint commands against limits and the last good measured state.

    A command is only as safe as the state it is compared with, so the guard refuses
    everything while it holds no state younger than ``joint_state_timeout_s``.
    """

    def __init__(self, limits: JointLimits, params: GuardParams,
                 command_order: Sequence[str]) -> None:
        if sorted(command_order) != sorted(limits.names) or \
                len(set(command_order)) != len(command_order):
            raise ValueError(f'command joints {list(command_order)} are not a permutation of '
                             f'the chain joints {list(limits.names)}')
        self.params = params
        self.command_order = tuple(command_order)
        chain_index = {n: i for i, n in enumerate(limits.names)}
        # chain-order vector [perm] -> command-order vector
        self._perm = np.array([chain_index[n] for n in self.command_order])
        self._limits = JointLimits(self.command_order, limits.lower[self._perm],
                                   limits.upper[self._perm], limits.prismatic[self._perm])
        self._max_step = np.where(self._limits.prismatic, params.max_step_m, params.max_step_rad)
        self._state: np.ndarray | None = None
        self._stamp_s = -math.inf

    def update_state(self, positions: np.ndarray, stamp_s: float) -> None:
        """Record a validated measured state (chain order, as ``JointStateGuard`` returns)."""
        self._state = np.asarray(positions, dtype=float)[self._perm]
        self._stamp_s = float(stamp_s)

    def clear_state(self) -> None:
        """Forget the measured state, e.g. after an invalid one: refuse until a good one."""
        self._state = None
        self._stamp_s = -math.inf

    def measured(self) -> np.ndarray | None:
        """The last good measured state in command order, or None."""
        return None if self._state is None else self._state.copy()

    def state_age(self, now_s: float) -> float:
        """Seconds since the last good state's stamp (inf when there is none)."""
        return now_s - self._stamp_s

    def has_fresh_state(self, now_s: float) -> bool:
        """True when a good state no older than ``joint_state_timeout_s`` is known."""
        return self._state is not None and \
            self.state_age(now_s) <= self.params.joint_state_timeout_s

    def validate(self, names: Sequence[str], positions: Sequence[float],
                 now_s: float) -> np.ndarray:
        """Return the commanded positions in command order, or raise ``CommandError``.

        ``names`` must hold exactly the commanded joints, in any order: a partial command
        would leave the controller to guess the others.
        """
        values = np.asarray(positions, dtype=float).reshape(-1)
        index = _index_names(names, values.size, CommandError)
        missing = [n for n in self.command_order if n not in index]
        unknown = [n for n in names if n not in self.command_order]
        if missing or unknown:
            raise CommandError('names', f'command must name exactly {list(self.command_order)}'
                               f'; missing {missing}, unknown {unknown}')
        state = self._state
        if state is None:
            raise CommandError('no_state', 'no fresh joint state: no valid joint state known')
        if not self.has_fresh_state(now_s):
            raise CommandError('no_state', 'no fresh joint state: last valid joint state is '
                               f'{self.state_age(now_s):.3f} s old (timeout '
                               f'{self.params.joint_state_timeout_s:g} s)')
        x = values[[index[n] for n in self.command_order]]
        finite = np.isfinite(x)
        if not finite.all():
            bad = {self.command_order[i]: float(x[i]) for i in np.flatnonzero(~finite)}
            raise CommandError('nonfinite', f'commanded positions not finite: {bad}')
        outside = self._limits.outside(x)
        if outside:
            raise CommandError('limits', f'commanded positions outside limits: {outside}')
        step = np.abs(x - state)
        too_far = np.flatnonzero(step > self._max_step)
        if too_far.size:
            detail = [f'{self.command_order[i]} moves {step[i]:.6g} > {self._max_step[i]:g}'
                      for i in too_far]
            raise CommandError('step', f'command step too large: {detail}')
        return x


def make_guards(chain: Any, section: Mapping[str, Any],
                command_order: Sequence[str]) -> tuple[JointStateGuard, CommandGuard]:
    """Build both guards for ``chain`` from config's ``arm_interface`` section."""
    limits = JointLimits.from_chain(chain)
    params = GuardParams.from_config(section)
    return JointStateGuard(limits, params), CommandGuard(limits, params, command_order)
