"""The guidance state machine on synthetic inputs (no ROS, no simulator).

A tiny "plant" (``ir_guidance.bench.plant.Plant``, here without a vein: no US frames)
stands in for the rig: joints follow the command exactly, and the F/T feels a 1 N/mm
skin under the probe. That is enough to drive SCAN and MAP (touch-down, sweep, the map
request) and to hand PLAN synthetic answers, and to check every safety reaction: bad or
stale inputs, e-stop, abort, force limits, refused commands.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from ir_guidance import config, rig_description
from ir_guidance.bench.plant import SKIN_Z, Plant
from ir_guidance.control.guidance import Phase, PlanAnswer
from ir_guidance.planning.motion import JointTrajectory

FRAMES = config.load()['frames']
CHAIN = rig_description.rig_chain()
HOME = np.array(config.load()['robot']['home'], dtype=float)


@pytest.fixture(scope='module')
def mapped() -> Plant:
    """A plant driven through SCAN and MAP until the controller asks for a plan."""
    plant = Plant()
    plant.run_until(lambda out: out.map_request_s is not None)
    return plant


def test_idle_holds_until_start():
    plant = Plant()
    for _ in range(5):
        out = plant.tick(start=False)
    assert out.phase == Phase.IDLE
    np.testing.assert_array_equal(out.command, HOME)
    assert plant.tick().phase == Phase.SCAN


def test_map_touches_down_sweeps_and_requests(mapped):
    g = mapped.g
    assert g.phase == Phase.PLAN
    events = [text for _, text in g.trace.events]
    assert any(text.startswith('skin contact') for text in events)
    probe = CHAIN.fk(mapped.q, FRAMES['us_image'])
    # On the skin (0.6 N contact threshold on a 1 N/mm skin), image plane across the arm.
    assert SKIN_Z - 0.002 < probe[2, 3] < SKIN_Z
    assert abs(probe[:3, 0] @ np.array([1.0, 0.0, 0.0])) > 0.99
    request = mapped.outputs[-1].map_request_s
    assert request == pytest.approx(mapped.t - config.load()['controller']['map_request_lag_s'],
                                    abs=1e-6)
    # The sweep moved the probe along the arm by the configured length.
    ys = [CHAIN.fk(o.command, FRAMES['us_image'])[1, 3] for o in mapped.outputs]
    assert max(ys) - min(ys) == pytest.approx(
        config.load()['controller']['sweep']['length_m'], abs=1e-3)


def test_every_command_respects_velocity_limits(mapped):
    commands = np.array([o.command for o in mapped.outputs])
    steps = np.abs(np.diff(commands, axis=0)).max(axis=0)
    assert np.all(steps <= np.asarray(CHAIN.velocity_limit) * mapped.g.dt * 1.5 + 1e-12)


def test_same_inputs_same_commands(mapped):
    again = Plant()
    again.run_until(lambda out: out.map_request_s is not None)
    assert len(again.outputs) == len(mapped.outputs)
    for a, b in zip(again.outputs, mapped.outputs, strict=True):
        np.testing.assert_array_equal(a.command, b.command)


def test_refused_plan_aborts_to_safe_without_moving(mapped):
    plant = copy.deepcopy(mapped)
    held = plant.q.copy()
    request = plant.outputs[-1].map_request_s
    plant.tick(plan=PlanAnswer(request, False, 'too deep: 45 mm of stage travel'))
    out = plant.run_until(lambda o: o.phase == Phase.SAFE, 100)
    assert 'no plan: too deep' in out.reason
    np.testing.assert_allclose(out.command, held)


def test_plan_answer_for_another_request_is_ignored(mapped):
    plant = copy.deepcopy(mapped)
    request = plant.outputs[-1].map_request_s
    out = plant.tick(plan=PlanAnswer(request - 0.5, False, 'old'))
    assert out.phase == Phase.PLAN


def test_plan_that_jumps_is_refused_by_the_supervisor(mapped):
    plant = copy.deepcopy(mapped)
    request = plant.outputs[-1].map_request_s
    far = plant.q.copy()
    far[0] += 0.5  # the first sample is 0.5 rad away: no 1 ms step may do that
    traj = JointTrajectory(tuple(config.joint_names()), np.array([0.0, 1.0]),
                           np.array([far, far]), np.zeros((2, 7)))
    held = plant.q.copy()
    out = plant.tick(plan=PlanAnswer(request, True, 'ok', traj, traj, 0.02,
                                     np.array([0.43, 0.13, 0.262])))
    assert out.phase == Phase.SAFE and 'command refused' in out.reason
    np.testing.assert_allclose(out.command, held)


@pytest.mark.parametrize('override, words', [
    ({'joints': np.array([0, np.nan, 0, 0, 0, 0, 0.0])}, 'not finite'),
    ({'joints': None}, 'no joint state'),
    ({'wrench': np.full(6, np.nan)}, 'F/T wrench not finite'),
    ({'wrench_stamp_s': -1.0}, 'F/T wrench stale'),
    ({'joints_stamp_s': -1.0}, 'joint state stale'),
    ({'estop': True}, 'emergency stop'),
    ({'fault': 'stalled: no US results'}, 'stalled'),
])
def test_bad_input_or_estop_holds_and_goes_safe_in_one_tick(override, words):
    plant = Plant()
    for _ in range(400):  # into MAP: the arm is moving
        plant.tick()
    assert plant.g.phase == Phase.MAP
    held = plant.q.copy()
    out = plant.tick(**override)
    assert out.phase == Phase.SAFE and words in out.reason
    np.testing.assert_array_equal(out.command, held)
    # It stays SAFE and keeps holding, whatever comes next.
    for _ in range(10):
        out = plant.tick()
    assert out.phase == Phase.SAFE
    np.testing.assert_array_equal(out.command, held)


def test_operator_abort_retracts_then_safe():
    plant = Plant()
    for _ in range(400):
        plant.tick()
    out = plant.tick(abort='operator')
    assert out.phase in (Phase.ABORT, Phase.SAFE) and 'abort requested' in out.reason
    out = plant.run_until(lambda o: o.phase == Phase.SAFE, 100)
    assert out.command[6] == 0.0


def test_force_over_limit_aborts():
    plant = Plant()
    for _ in range(400):
        plant.tick()
    axis = plant.g.force.needle_axis
    spike = np.concatenate((axis * 30.0, np.zeros(3)))
    phases = [plant.tick(wrench=plant.wrench() + spike).phase for _ in range(20)]
    assert Phase.SAFE in phases or Phase.ABORT in phases
    assert 'limit' in plant.g.reason
