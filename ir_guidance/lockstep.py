"""The lockstep schedule: which sensor frames a deterministic simulated run produces.

In a lockstep run the simulator advances one physics tick only when the controller has
answered the last one, so simulated time is the same in every run. Results that come
from other processes (US cross-sections, NIR veins, the vessel map) arrive at wall-clock
moments that differ between runs, though. To keep a run a pure function of its seed,
a consumer uses the result of a frame captured at ``s`` only from sim time
``s + latency`` on, and before it answers that tick it waits until *every* frame of the
schedule up to then has its result. This module is that schedule, shared by the
simulator (which captures on it) and by the consumers (which wait on it). ROS-free.

Frame ``k`` of a stream at ``rate_hz`` is captured on the first tick at or after
``k / rate_hz``; ticks start at 1 (the first :meth:`Simulator.step`), so frame 0 is
captured at tick 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def capture_tick(frame: int, rate_hz: float, physics_hz: float) -> int:
    """The physics tick on which frame ``frame`` is captured."""
    return max(1, math.ceil(frame * physics_hz / rate_hz - 1e-9))


def capture_stamps(rate_hz: float, physics_hz: float, start_s: float, end_s: float
                   ) -> list[float]:
    """Capture times (tick-exact seconds) of the frames captured in ``[start_s, end_s]``."""
    if end_s < start_s:
        return []
    first = max(0, math.floor(start_s * rate_hz) - 1)
    stamps = []
    k = first
    while True:
        t = capture_tick(k, rate_hz, physics_hz) / physics_hz
        if t > end_s + 0.5 / physics_hz:
            return stamps
        if t >= start_s - 0.5 / physics_hz:
            stamps.append(t)
        k += 1


def tick_key(stamp_s: float, physics_hz: float) -> int:
    """A stamp as its tick number: the exact key results are matched on."""
    return round(stamp_s * physics_hz)


@dataclass
class StreamBarrier:
    """Which frames of one stream a consumer still waits for.

    ``received(stamp)`` records a result; ``missing(now_s)`` lists the scheduled capture
    times up to ``now_s - latency_s`` (and not before ``since_s``, when the consumer
    started needing the stream) that have no result yet. Lost frames (declared by the
    caller after a stall) are not waited for again.
    """

    rate_hz: float
    physics_hz: float
    latency_s: float
    since_s: float = 0.0
    _seen: set[int] = field(default_factory=set)
    _lost: set[int] = field(default_factory=set)
    # Every frame captured up to here has its result (or is lost): the next check starts
    # there, so a check a tick costs the frames still open, not the whole run so far.
    _complete_s: float = field(default=-math.inf, init=False)

    def received(self, stamp_s: float) -> None:
        self._seen.add(tick_key(stamp_s, self.physics_hz))

    def due(self, now_s: float) -> list[float]:
        """Capture times whose results are due by ``now_s``."""
        return capture_stamps(self.rate_hz, self.physics_hz, self.since_s,
                              now_s - self.latency_s)

    def missing(self, now_s: float) -> list[float]:
        """Due capture times with no result yet (and not declared lost)."""
        stamps = capture_stamps(self.rate_hz, self.physics_hz,
                                max(self.since_s, self._complete_s), now_s - self.latency_s)
        open_ = [s for s in stamps if not self._done(s)]
        closed = [s for s in stamps if not open_ or s < open_[0]]
        if closed:
            self._complete_s = closed[-1]
        return open_

    def _done(self, stamp_s: float) -> bool:
        key = tick_key(stamp_s, self.physics_hz)
        return key in self._seen or key in self._lost

    def declare_lost(self, stamps: list[float]) -> None:
        self._lost.update(tick_key(s, self.physics_hz) for s in stamps)

    def restart(self, since_s: float) -> None:
        """Start needing the stream again from ``since_s`` (older frames are not awaited)."""
        self.since_s = since_s
        self._complete_s = -math.inf
