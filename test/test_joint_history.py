"""JointHistory: interpolation at an image stamp, refusal of stale stamps and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from ir_guidance.mapping import JointHistory, StampError

NAMES = ('a', 'b')


def _history() -> JointHistory:
    h = JointHistory(NAMES, max_age_s=1.0)
    for t in np.arange(0.0, 0.5, 0.002):
        h.add(float(t), np.array([t, -2.0 * t]))
    return h


def test_interpolates_between_samples():
    h = _history()
    np.testing.assert_allclose(h.at(0.1231, max_gap_s=0.01), [0.1231, -0.2462], atol=1e-12)
    np.testing.assert_allclose(h.at(0.1, max_gap_s=0.01), [0.1, -0.2], atol=1e-12)


def test_out_of_order_adds_are_sorted():
    h = JointHistory(NAMES)
    h.add(0.02, [2.0, 0.0])
    h.add(0.0, [0.0, 0.0])
    h.add(0.01, [1.0, 0.0])
    assert h.at(0.015, 0.01)[0] == pytest.approx(1.5)
    h.add(0.01, [3.0, 0.0])  # the same stamp replaces
    assert h.at(0.01, 0.01)[0] == pytest.approx(3.0)


@pytest.mark.parametrize('stamp', [0.6, -0.2])
def test_stamp_far_from_the_samples_is_refused(stamp):
    with pytest.raises(StampError, match='joint state'):
        _history().at(stamp, max_gap_s=0.05)


def test_gap_in_the_stream_is_not_bridged():
    h = JointHistory(NAMES)
    h.add(0.0, [0.0, 0.0])
    h.add(1.0, [1.0, 0.0])
    with pytest.raises(StampError, match='gap'):
        h.at(0.5, max_gap_s=0.05)
    assert h.at(0.99, max_gap_s=0.05)[0] == pytest.approx(1.0)  # held, not interpolated


def test_empty_history_and_old_samples_dropped():
    h = JointHistory(NAMES, max_age_s=0.1)
    with pytest.raises(StampError, match='no joint states'):
        h.at(0.0, 0.05)
    for t in (0.0, 0.05, 0.2):
        h.add(t, [t, t])
    assert len(h) == 1 and h.latest_stamp == 0.2


@pytest.mark.parametrize(('q', 'match'), [([np.nan, 0.0], 'NaN'), ([0.0], 'shape'),
                                           ([0.0, np.inf], 'NaN')])
def test_bad_joint_state_is_refused(q, match):
    h = JointHistory(NAMES)
    with pytest.raises(ValueError, match=match):
        h.add(0.0, q)
    assert len(h) == 0
