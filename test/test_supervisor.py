"""The supervisor's checks, one by one (no ROS, no simulator)."""

from __future__ import annotations

import numpy as np
import pytest

from ir_guidance import config
from ir_guidance.control import supervisor

NAMES = config.joint_names()
LOWER = np.array([-6.28, -6.28, -3.14, -6.28, -6.28, -6.28, 0.0])
UPPER = np.array([6.28, 6.28, 3.14, 6.28, 6.28, 6.28, 0.04])
HOME = np.array(config.load()['robot']['home'], dtype=float)
STEP = np.full(7, 0.003)


def test_workspace_from_config_accepts_home_tip_and_refuses_outside():
    box = supervisor.Workspace.from_config(config.load()['controller'])
    assert box.violation(np.array([0.43, 0.16, 0.28])) is None
    reason = box.violation(np.array([0.43, 0.16, 0.05]))
    assert reason and 'outside the workspace' in reason and "'z'" in reason
    assert 'not finite' in box.violation(np.array([np.nan, 0.1, 0.3]))


@pytest.mark.parametrize('value, words', [
    (None, 'no joint state'),
    (np.zeros(6), 'shape'),
    (np.array([0, 0, 0, 0, np.nan, 0, 0.0]), 'not finite'),
    (np.array([0, 0, 4.0, 0, 0, 0, 0.0]), 'outside limits'),
])
def test_check_joints_refuses_bad_states(value, words):
    assert words in supervisor.check_joints(value, LOWER, UPPER, NAMES)


def test_check_joints_accepts_home():
    assert supervisor.check_joints(HOME, LOWER, UPPER, NAMES) is None


def test_check_fresh():
    assert supervisor.check_fresh('x', 1.0, 1.005, 0.01) is None
    assert 'stale' in supervisor.check_fresh('x', 1.0, 1.02, 0.01)
    assert 'future' in supervisor.check_fresh('x', 1.1, 1.0, 0.01)
    assert 'no x' in supervisor.check_fresh('x', None, 1.0, 0.01)


def test_check_command_limits_and_step():
    assert supervisor.check_command(HOME, HOME, LOWER, UPPER, STEP, NAMES) is None
    fast = HOME.copy()
    fast[0] += 0.01
    assert 'shoulder_pan_joint' in supervisor.check_command(fast, HOME, LOWER, UPPER, STEP,
                                                             NAMES)
    out = HOME.copy()
    out[6] = 0.05
    assert 'outside limits' in supervisor.check_command(out, out, LOWER, UPPER, STEP, NAMES)
    bad = HOME.copy()
    bad[2] = np.inf
    assert 'not finite' in supervisor.check_command(bad, HOME, LOWER, UPPER, STEP, NAMES)
