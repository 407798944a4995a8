"""The lockstep schedule and the barrier consumers wait on (ir_guidance/lockstep.py)."""

import itertools

import numpy as np
import pytest

from ir_guidance.lockstep import StreamBarrier, capture_stamps, capture_tick, tick_key

PHYSICS_HZ = 1000.0


@pytest.mark.parametrize('rate_hz', [30.0, 15.0, 7.0])
def test_capture_stamps_are_the_capture_ticks_in_the_window(rate_hz):
    ticks = [capture_tick(k, rate_hz, PHYSICS_HZ) for k in range(200)]
    assert ticks[0] == 1 and all(b > a for a, b in itertools.pairwise(ticks))
    stamps = capture_stamps(rate_hz, PHYSICS_HZ, 0.5, 2.0)
    expected = [t / PHYSICS_HZ for t in ticks if 0.5 <= t / PHYSICS_HZ <= 2.0]
    assert stamps == pytest.approx(expected)
    assert capture_stamps(rate_hz, PHYSICS_HZ, 2.0, 0.5) == []


def _reference_missing(barrier, seen, lost, now_s):
    """What the barrier must answer: every due frame without a result, from scratch."""
    done = {tick_key(s, PHYSICS_HZ) for s in seen | lost}
    return [s for s in capture_stamps(barrier.rate_hz, PHYSICS_HZ, barrier.since_s,
                                      now_s - barrier.latency_s)
            if tick_key(s, PHYSICS_HZ) not in done]


def test_barrier_matches_a_from_scratch_answer_under_any_arrival_order():
    """Results arrive late and out of order, some are lost, the stream restarts: the
    barrier (which skips the frames known complete) answers as a full recount would."""
    rng = np.random.default_rng(0)
    barrier = StreamBarrier(30.0, PHYSICS_HZ, latency_s=0.06)
    frames = capture_stamps(30.0, PHYSICS_HZ, 0.0, 6.0)
    pending = list(frames)
    seen, lost = set(), set()
    for tick in range(1, 6000, 7):
        now = tick / PHYSICS_HZ
        arrived = [s for s in pending if s <= now - 0.01 and rng.random() < 0.1]
        for s in arrived:
            pending.remove(s)
            if rng.random() < 0.05:
                lost.add(s)
                barrier.declare_lost([s])
            else:
                seen.add(s)
                barrier.received(s)
        if tick in (2801, 2808):
            barrier.restart(now - 0.5 if tick == 2801 else now)
        assert barrier.missing(now) == _reference_missing(barrier, seen, lost, now)
    assert seen and lost


def test_barrier_waits_for_a_frame_until_it_arrives():
    barrier = StreamBarrier(30.0, PHYSICS_HZ, latency_s=0.06)
    first = capture_stamps(30.0, PHYSICS_HZ, 0.0, 1.0)[:3]
    assert barrier.missing(0.03) == []           # nothing due yet: latency
    assert barrier.missing(1.0)[:3] == first
    barrier.received(first[1])
    assert barrier.missing(1.0)[:2] == [first[0], first[2]]
    barrier.received(first[0])
    assert barrier.missing(1.0)[0] == first[2]
    barrier.declare_lost([first[2]])
    assert first[2] not in barrier.missing(1.0)
