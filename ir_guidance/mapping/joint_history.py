"""Joint states over time, interpolated at an image's capture stamp (algorithms layer).

An ultrasound or NIR frame is stamped with its capture time, which falls between two
joint-state samples (1 kHz in the simulator, 500 Hz on a UR). The probe's pose at that
instant is FK of the joint vector interpolated linearly between the bracketing samples:
at the arm's speeds (≤ 0.1 m/s of the probe) linear interpolation over 1-2 ms is exact
to well under a micrometre. A stamp further than ``max_gap_s`` from every sample (a
dropped joint-state stream, a clock mismatch) raises :class:`StampError` rather than
placing the image with a stale pose.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np


class StampError(ValueError):
    """No joint state close enough to a stamp to place the image there."""


class JointHistory:
    """A time-sorted buffer of joint vectors (``joint_names`` order), kept ``max_age_s``."""

    def __init__(self, joint_names: Sequence[str], max_age_s: float = 5.0) -> None:
        self.joint_names = tuple(joint_names)
        if not self.joint_names:
            raise ValueError('JointHistory needs at least one joint name')
        if not (math.isfinite(max_age_s) and max_age_s > 0):
            raise ValueError(f'max_age_s must be finite and > 0, got {max_age_s}')
        self.max_age_s = float(max_age_s)
        self._stamps: list[float] = []
        self._positions: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def latest_stamp(self) -> float | None:
        """Stamp of the newest sample (None when empty)."""
        return self._stamps[-1] if self._stamps else None

    def add(self, stamp_s: float, positions: np.ndarray) -> None:
        """Record the joint vector measured at ``stamp_s`` (any order; same stamp replaces).

        NaN/inf values or a wrong length raise ValueError and nothing is recorded.
        """
        if not math.isfinite(stamp_s):
            raise ValueError(f'joint state stamp is not finite: {stamp_s}')
        q = np.array(positions, dtype=float)
        if q.shape != (len(self.joint_names),):
            raise ValueError(f'expected {len(self.joint_names)} joint positions '
                             f'{list(self.joint_names)}, got shape {q.shape}')
        if not np.all(np.isfinite(q)):
            raise ValueError(f'joint state at {stamp_s:.6f} s has NaN/inf: {q.tolist()}')
        i = bisect.bisect_left(self._stamps, stamp_s)
        if i < len(self._stamps) and self._stamps[i] == stamp_s:
            self._positions[i] = q
        else:
            self._stamps.insert(i, stamp_s)
            self._positions.insert(i, q)
        cutoff = self._stamps[-1] - self.max_age_s
        drop = bisect.bisect_left(self._stamps, cutoff)
        if drop:
            del self._stamps[:drop]
            del self._positions[:drop]

    def at(self, stamp_s: float, max_gap_s: float) -> np.ndarray:
        """The joint vector at ``stamp_s``, linear between the bracketing samples.

        Raises :class:`StampError` when no sample lies within ``max_gap_s`` of the stamp.
        Across a gap in the stream (bracketing samples more than ``2 * max_gap_s`` apart)
        the nearest sample is held instead of interpolating over the gap; outside the
        buffer's span the nearest sample is held too.
        """
        if not math.isfinite(stamp_s):
            raise StampError(f'image stamp is not finite: {stamp_s}')
        if not self._stamps:
            raise StampError(f'no joint states received: cannot place the image at '
                             f'{stamp_s:.6f} s')
        i = bisect.bisect_left(self._stamps, stamp_s)
        if i < len(self._stamps) and self._stamps[i] == stamp_s:
            return self._positions[i].copy()
        if i == 0 or i == len(self._stamps):
            j = 0 if i == 0 else i - 1
            gap = abs(self._stamps[j] - stamp_s)
            if gap > max_gap_s:
                side = 'before the first' if i == 0 else 'after the last'
                raise StampError(f'image stamp {stamp_s:.6f} s is {gap * 1e3:.1f} ms '
                                 f'{side} joint state (max {max_gap_s * 1e3:.1f} ms)')
            return self._positions[j].copy()
        t0, t1 = self._stamps[i - 1], self._stamps[i]
        nearest = min(stamp_s - t0, t1 - stamp_s)
        if nearest > max_gap_s:
            raise StampError(f'image stamp {stamp_s:.6f} s is {nearest * 1e3:.1f} ms from the '
                             f'nearest joint state, in a {(t1 - t0) * 1e3:.1f} ms gap of the '
                             f'stream (max {max_gap_s * 1e3:.1f} ms)')
        if t1 - t0 > 2.0 * max_gap_s:
            return self._positions[i - 1 if stamp_s - t0 <= t1 - stamp_s else i].copy()
        f = (stamp_s - t0) / (t1 - t0)
        return (1.0 - f) * self._positions[i - 1] + f * self._positions[i]
