"""Unit tests of ir_guidance.joint_guard: every rejection, and the happy paths (no ROS)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ir_guidance import config
from ir_guidance.joint_guard import (
    CommandError,
    CommandGuard,
    GuardParams,
    JointLimits,
    JointStateError,
    JointStateGuard,
    make_guards,
)
from ir_guidance.rig_description import rig_chain

NOW = 1_700_000_000.25
SECTION = config.load()['arm_interface']
TIMEOUT = SECTION['joint_state_timeout_s']
STEP_RAD = SECTION['max_step_rad']
STEP_M = SECTION['max_step_m']


@pytest.fixture(scope='module')
def chain():
    return rig_chain()


@pytest.fixture(scope='module')
def order() -> list[str]:
    return config.joint_names()


@pytest.fixture
def guards(chain, order):
    return make_guards(chain, SECTION, order)


@pytest.fixture
def state_guard(guards) -> JointStateGuard:
    return guards[0]


@pytest.fixture
def command_guard(guards, state_guard, order, home) -> CommandGuard:
    """A command guard holding a fresh measured state at home."""
    _, guard = guards
    guard.update_state(state_guard.validate(order, home, NOW, NOW), NOW)
    return guard


def reason(excinfo) -> str:
    return excinfo.value.reason


# -- JointLimits / GuardParams -----------------------------------------------------------------

def test_limits_from_chain_mark_only_the_stage_prismatic(chain):
    limits = JointLimits.from_chain(chain)
    assert limits.names == tuple(chain.joint_names)
    prismatic = dict(zip(limits.names, limits.prismatic, strict=True))
    assert bool(prismatic.pop(config.load()['robot']['stage_joint']))
    assert not any(prismatic.values())


def test_limits_reject_inconsistent_input():
    with pytest.raises(ValueError, match='one entry per joint'):
        JointLimits(('a', 'b'), np.zeros(2), np.ones(3), np.zeros(2, dtype=bool))
    with pytest.raises(ValueError, match='duplicate'):
        JointLimits(('a', 'a'), np.zeros(2), np.ones(2), np.zeros(2, dtype=bool))
    with pytest.raises(ValueError, match='above'):
        JointLimits(('a',), np.ones(1), np.zeros(1), np.zeros(1, dtype=bool))


@pytest.mark.parametrize('field', ['joint_state_timeout_s', 'max_step_rad', 'max_step_m'])
@pytest.mark.parametrize('value', [0.0, -1.0, math.nan, math.inf])
def test_guard_params_must_be_positive(field, value):
    values = {'joint_state_timeout_s': 0.1, 'max_step_rad': 0.05, 'max_step_m': 0.002}
    values[field] = value
    with pytest.raises(ValueError, match=field):
        GuardParams(**values)


def test_guard_params_from_config():
    params = GuardParams.from_config(SECTION)
    assert (params.joint_state_timeout_s, params.max_step_rad, params.max_step_m) == \
        (TIMEOUT, STEP_RAD, STEP_M)


def test_command_order_must_be_a_permutation_of_the_chain(chain, order):
    with pytest.raises(ValueError, match='permutation'):
        make_guards(chain, SECTION, order[:-1])
    with pytest.raises(ValueError, match='permutation'):
        make_guards(chain, SECTION, [*order[:-1], order[0]])


# -- joint states ----------------------------------------------------------------------------

def test_state_in_chain_order_with_extra_joints_ignored(state_guard, chain, order, home):
    by_name = dict(zip(order, home, strict=True))
    names = ['gripper_finger_joint', *reversed(order), 'other_arm_joint']
    positions = [math.nan, *(by_name[n] for n in reversed(order)), 1e9]
    out = state_guard.validate(names, positions, NOW - 0.01, NOW)
    np.testing.assert_array_equal(out, [by_name[n] for n in chain.joint_names])


def test_state_tolerates_tiny_limit_overshoot(state_guard, order, home):
    x = home.copy()
    x[-1] = -0.5e-4  # stage 0.05 mm below its lower limit of 0
    out = state_guard.validate(order, x, NOW, NOW)
    assert out[-1] == -0.5e-4


def test_state_missing_joints_are_listed(state_guard, order, home):
    with pytest.raises(JointStateError, match='wrist_2_joint') as excinfo:
        state_guard.validate(order[:4] + order[5:], np.delete(home, 4), NOW, NOW)
    assert reason(excinfo) == 'missing'
    assert 'shoulder_pan_joint' not in str(excinfo.value)


def test_state_duplicate_names(state_guard, order, home):
    with pytest.raises(JointStateError, match='elbow_joint') as excinfo:
        state_guard.validate([*order, 'elbow_joint'], [*home, 0.0], NOW, NOW)
    assert reason(excinfo) == 'duplicate'


def test_state_length_mismatch(state_guard, order, home):
    with pytest.raises(JointStateError, match='7 joint names but 6 positions') as excinfo:
        state_guard.validate(order, home[:6], NOW, NOW)
    assert reason(excinfo) == 'length'


@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf])
def test_state_not_finite(state_guard, order, home, bad):
    x = home.copy()
    x[2] = bad
    with pytest.raises(JointStateError, match='elbow_joint') as excinfo:
        state_guard.validate(order, x, NOW, NOW)
    assert reason(excinfo) == 'nonfinite'


@pytest.mark.parametrize(('joint', 'value'), [
    ('elbow_joint', math.pi + 2e-3), ('elbow_joint', -math.pi - 2e-3),
    ('needle_insertion_joint', -2e-4), ('needle_insertion_joint', 0.04 + 2e-4)])
def test_state_outside_limits(state_guard, order, home, joint, value):
    x = home.copy()
    x[order.index(joint)] = value
    with pytest.raises(JointStateError, match=joint) as excinfo:
        state_guard.validate(order, x, NOW, NOW)
    assert reason(excinfo) == 'limits'


def test_state_stale(state_guard, order, home):
    state_guard.validate(order, home, NOW - TIMEOUT + 1e-3, NOW)  # just inside: accepted
    with pytest.raises(JointStateError, match='old') as excinfo:
        state_guard.validate(order, home, NOW - TIMEOUT - 1e-3, NOW)
    assert reason(excinfo) == 'stale'


def test_state_from_the_future(state_guard, order, home):
    tolerance = state_guard.params.future_tol_s
    state_guard.validate(order, home, NOW + 0.5 * tolerance, NOW)  # clock jitter: accepted
    with pytest.raises(JointStateError, match='future') as excinfo:
        state_guard.validate(order, home, NOW + tolerance + 1e-3, NOW)
    assert reason(excinfo) == 'future'


# -- commands ----------------------------------------------------------------------------------

def test_command_reordered_to_config_order(command_guard, order, home):
    target = home.copy()
    target[0] += 0.9 * STEP_RAD
    target[-1] += 0.9 * STEP_M
    names = list(reversed(order))
    out = command_guard.validate(names, target[::-1], NOW + 0.01)
    np.testing.assert_allclose(out, target, rtol=0, atol=0)


def test_command_order_differs_from_chain_order(chain, state_guard, home):
    """The guard's mapping between the two orders is exercised, not assumed equal."""
    order = config.joint_names()
    shuffled = order[3:] + order[:3]
    _, guard = make_guards(chain, SECTION, shuffled)
    guard.update_state(state_guard.validate(order, home, NOW, NOW), NOW)
    by_name = dict(zip(order, home, strict=True))
    expected = [by_name[n] for n in shuffled]
    np.testing.assert_array_equal(guard.validate(order, home, NOW), expected)
    np.testing.assert_array_equal(guard.measured(), expected)


def test_command_without_any_state(guards, order, home):
    _, guard = guards
    assert not guard.has_fresh_state(NOW)
    with pytest.raises(CommandError, match='no valid joint state') as excinfo:
        guard.validate(order, home, NOW)
    assert reason(excinfo) == 'no_state'


def test_command_with_stale_state(command_guard, order, home):
    command_guard.validate(order, home, NOW + TIMEOUT - 1e-3)
    with pytest.raises(CommandError, match='old') as excinfo:
        command_guard.validate(order, home, NOW + TIMEOUT + 1e-3)
    assert reason(excinfo) == 'no_state'


def test_command_after_state_cleared(command_guard, order, home):
    command_guard.clear_state()
    with pytest.raises(CommandError) as excinfo:
        command_guard.validate(order, home, NOW)
    assert reason(excinfo) == 'no_state'


@pytest.mark.parametrize('bad', [math.nan, math.inf])
def test_command_not_finite(command_guard, order, home, bad):
    target = home.copy()
    target[3] = bad
    with pytest.raises(CommandError, match='wrist_1_joint') as excinfo:
        command_guard.validate(order, target, NOW)
    assert reason(excinfo) == 'nonfinite'


def test_command_outside_limits_gets_no_tolerance(command_guard, order, home):
    target = home.copy()
    target[-1] = -1e-6  # within max_step_m of home, just below the stage's lower limit
    with pytest.raises(CommandError, match='needle_insertion_joint') as excinfo:
        command_guard.validate(order, target, NOW)
    assert reason(excinfo) == 'limits'


@pytest.mark.parametrize(('index', 'delta', 'joint'), [
    (0, 1.01 * STEP_RAD, 'shoulder_pan_joint'), (5, -1.01 * STEP_RAD, 'wrist_3_joint'),
    (6, 1.01 * STEP_M, 'needle_insertion_joint')])
def test_command_step_too_large(command_guard, order, home, index, delta, joint):
    target = home.copy()
    target[index] += delta
    with pytest.raises(CommandError, match=joint) as excinfo:
        command_guard.validate(order, target, NOW)
    assert reason(excinfo) == 'step'


def test_prismatic_step_uses_metres_not_radians(command_guard, order, home):
    """0.01 m is far under max_step_rad's number, but 5x max_step_m: refused."""
    target = home.copy()
    target[-1] += 0.01
    assert 0.01 < STEP_RAD
    with pytest.raises(CommandError) as excinfo:
        command_guard.validate(order, target, NOW)
    assert reason(excinfo) == 'step'


@pytest.mark.parametrize('names_of', [
    lambda order: order[:-1],                       # a joint missing
    lambda order: [*order[:-1], 'gripper_joint'],   # an unknown joint instead
])
def test_command_must_name_exactly_the_commanded_joints(command_guard, order, home, names_of):
    names = names_of(order)
    with pytest.raises(CommandError) as excinfo:
        command_guard.validate(names, home[:len(names)], NOW)
    assert reason(excinfo) == 'names'


def test_command_extra_joint_refused(command_guard, order, home):
    with pytest.raises(CommandError, match='gripper_joint') as excinfo:
        command_guard.validate([*order, 'gripper_joint'], [*home, 0.0], NOW)
    assert reason(excinfo) == 'names'


def test_command_duplicates_and_length(command_guard, order, home):
    with pytest.raises(CommandError) as excinfo:
        command_guard.validate([*order[:-1], order[0]], home, NOW)
    assert reason(excinfo) == 'duplicate'
    with pytest.raises(CommandError) as excinfo:
        command_guard.validate(order, home[:-1], NOW)
    assert reason(excinfo) == 'length'


def test_errors_are_value_errors():
    assert issubclass(JointStateError, ValueError)
    assert issubclass(CommandError, ValueError)
