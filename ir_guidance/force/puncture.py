"""Membrane puncture detection from the axial needle force (algorithm layer, ROS-free).

The signature (Okamura et al. 2004; Saito & Togawa 2005; Kobayashi et al. 2013; see
docs/needle_tissue.md): while the needle tents a membrane (skin, a vein wall) the force
along the needle *rises* steadily, the membrane's stiffness growing with its deflection;
when it gives, that stiffness term is gone at once and the force *drops* within a
millisecond, by most of what the membrane had built up. Cutting and friction go on on
both sides of the event.

The detector runs on the low-pass filtered axial force (so its answers come about the
filter's delay after the event) and declares a puncture when all of these hold:

1. **peak**: the force at the candidate peak is at least ``min_peak_n``;
2. **rise**: the peak stands at least ``min_rise_n`` above the lowest force of the
   ``rise_window_s`` before it (the membrane's loading; friction growing along the
   shaft, or a change of tissue under the tip, rise far more slowly);
3. **fast drop**: within ``drop_window_s`` after the peak the force has fallen by at
   least ``max(min_drop_n, drop_ratio * rise)``;
4. **advancing** (only when the caller gives the needle speed): the needle is still
   moving in at ``min_advance_speed_m_s`` or faster when the drop completes. When the
   stage stops, cutting and viscous friction vanish as abruptly as a membrane gives
   (rise and drop then look like a puncture if the stage had only just started); this
   rule keeps such a stop from reading as a puncture, while at a real puncture the
   stage keeps going;
5. **refractory**: no puncture was declared in the last ``refractory_s``.

A candidate peak is the highest force since the last reset; it is replaced by any higher
force, and given up (the current force becomes the new candidate) when the drop window
passes without a qualifying drop. The detector only knows peaks and drops: which
membrane gave is the caller's bookkeeping (:class:`ir_guidance.force.monitor.ForceMonitor`
counts punctures since the last tare).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class PunctureParams:
    """Thresholds of :class:`PunctureDetector` (SI units); see the module docstring."""

    min_peak_n: float = 0.3
    min_rise_n: float = 0.15
    rise_window_s: float = 0.3
    min_drop_n: float = 0.15
    drop_ratio: float = 0.4
    drop_window_s: float = 0.03
    refractory_s: float = 0.1
    min_advance_speed_m_s: float = 5.0e-4

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f'puncture.{f.name} must be finite and >= 0, got {value!r}')
        for name in ('rise_window_s', 'drop_window_s', 'min_drop_n'):
            if getattr(self, name) <= 0:
                raise ValueError(f'puncture.{name} must be > 0')
        if self.drop_ratio > 1:
            raise ValueError(f'puncture.drop_ratio must be <= 1, got {self.drop_ratio}')

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PunctureParams:
        """Parameters from a config mapping; unknown keys are an error (a typo)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'unknown puncture parameters {unknown}; known: {sorted(known)}')
        return cls(**{k: float(v) for k, v in values.items()})


@dataclass(frozen=True)
class Puncture:
    """One detected puncture: when it was declared, its peak and the drop seen so far."""

    stamp_s: float          # the sample that completed the signature
    peak_stamp_s: float     # the sample of the peak (the membrane gave just after it)
    peak_n: float
    drop_n: float           # peak minus the force at stamp_s (the drop is still going on)
    rise_n: float


class PunctureDetector:
    """Peak-rise-drop detector over a stream of (stamp, axial force) samples."""

    def __init__(self, params: PunctureParams | None = None) -> None:
        self.params = params or PunctureParams()
        self.reset()

    def reset(self) -> None:
        """Forget the history: no candidate peak, no refractory period."""
        self._window: deque[tuple[float, float]] = deque()   # increasing forces: sliding min
        self._peak = -math.inf
        self._peak_t = -math.inf
        self._peak_rise = 0.0
        self._quiet_until = -math.inf

    def update(self, stamp_s: float, axial_n: float, speed_m_s: float | None = None
               ) -> Puncture | None:
        """Feed one sample; returns the puncture it completes, if any.

        ``speed_m_s``: the needle's insertion speed (None: unknown, rule 4 is skipped).
        Stamps must increase (the caller checks).
        """
        p = self.params
        window = self._window
        # Sliding minimum of the last rise_window_s (a monotonic deque: O(1) amortised).
        while window and window[-1][1] >= axial_n:
            window.pop()
        window.append((stamp_s, axial_n))
        horizon = stamp_s - p.rise_window_s
        while window[0][0] < horizon:
            window.popleft()
        if axial_n >= self._peak or stamp_s - self._peak_t > p.drop_window_s:
            self._peak = axial_n
            self._peak_t = stamp_s
            self._peak_rise = axial_n - window[0][1]
            return None
        drop = self._peak - axial_n
        rise = self._peak_rise
        if (drop >= p.min_drop_n and drop >= p.drop_ratio * rise and rise >= p.min_rise_n
                and self._peak >= p.min_peak_n
                and (speed_m_s is None or speed_m_s >= p.min_advance_speed_m_s)
                and stamp_s >= self._quiet_until):
            event = Puncture(stamp_s=stamp_s, peak_stamp_s=self._peak_t, peak_n=self._peak,
                             drop_n=drop, rise_n=rise)
            self._quiet_until = stamp_s + p.refractory_s
            # Start afresh from here: the next membrane builds up from this level.
            self._peak = axial_n
            self._peak_t = stamp_s
            self._peak_rise = 0.0
            return event
        return None
