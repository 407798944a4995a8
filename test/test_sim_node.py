"""Node tests of the sim node over real rclpy pub/sub on loopback (in-process).

A controller node registers for lockstep, acknowledges ticks, sends position commands
and records what the simulator publishes.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from conftest import spin_for, spin_until
from rclpy.node import Node
from rclpy.parameter import Parameter

from ir_guidance import config
from ir_guidance.nodes.conversions import LOCKSTEP_QOS, message_class, qos_profile
from ir_guidance.nodes.sim import SimNode

OUTPUTS = ('clock', 'joint_states', 'lockstep_joint_states', 'ft_wrench', 'us_image',
           'nir_image', 'nir_depth', 'nir_camera_info', 'gt_needle_tip', 'gt_tip_in_lumen',
           'gt_vessels', 'sim_status')
HOME = np.array(config.load()['robot']['home'], dtype=float)


def seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class Controller:
    """A lockstep controller: acks every tick it sees, optionally after commanding."""

    def __init__(self, context, name: str = 'test_controller', lockstep: bool = True) -> None:
        self.node = Node(name, context=context)
        self.name = name
        self.received: dict[str, list] = defaultdict(list)
        self.acking = True
        self.command: list[float] | None = None
        # Called with each clock message before the answer: a scripted controller's
        # command for that tick (one callback, so the order is fixed).
        self.on_tick = None
        self._pub = {key: self._publisher(key) for key in (
            'lockstep_register', 'lockstep_ack', 'position_commands')}
        for key in OUTPUTS:
            spec = config.topic(key)
            self.node.create_subscription(
                message_class(spec['type']), spec['name'],
                lambda msg, key=key: self._on(key, msg),
                LOCKSTEP_QOS if lockstep else qos_profile(spec['qos']))

    def _publisher(self, key: str):
        spec = config.topic(key)
        return self.node.create_publisher(message_class(spec['type']), spec['name'],
                                          qos_profile(spec['qos']))

    def register(self) -> None:
        msg = message_class('std_msgs/msg/String')()
        msg.data = self.name
        self._pub['lockstep_register'].publish(msg)

    def send(self, positions) -> None:
        msg = message_class('std_msgs/msg/Float64MultiArray')()
        msg.data = [float(v) for v in positions]
        self._pub['position_commands'].publish(msg)

    def _on(self, key: str, msg) -> None:
        self.received[key].append(msg)
        if key == 'clock' and self.acking:
            if self.on_tick is not None:
                self.on_tick(msg)
            ack = message_class('sensor_msgs/msg/JointState')()
            ack.header.frame_id = self.name
            ack.header.stamp = msg.clock
            if self.command is not None:  # the command travels with the answer
                ack.name = config.joint_names()
                ack.position = [float(v) for v in self.command]
            self._pub['lockstep_ack'].publish(ack)

    def statuses(self) -> list[str]:
        return [m.data for m in self.received['sim_status']]


@pytest.fixture
def lockstep(ros_context, executor):
    sim = SimNode(context=ros_context, parameter_overrides=[
        Parameter('mode', value='lockstep'), Parameter('us_hz', value=100.0),
        Parameter('nir_hz', value=50.0), Parameter('consumers', value='')])
    controller = Controller(ros_context)
    executor.add_node(sim)
    executor.add_node(controller.node)
    yield sim, controller
    executor.remove_node(sim)
    executor.remove_node(controller.node)
    sim.destroy_node()
    controller.node.destroy_node()


def clock_times(controller) -> list[float]:
    return [seconds(m.clock) for m in controller.received['clock']]


def test_lockstep_advances_only_when_answered(lockstep, executor):
    sim, controller = lockstep
    spin_for(executor, 0.3)
    assert sim.sim.tick == 0  # nobody registered: the sim holds
    controller.register()
    assert spin_until(executor, lambda: sim.sim.tick >= 60, timeout_s=20)
    controller.acking = False
    spin_for(executor, 0.3)
    stopped = sim.sim.tick
    spin_for(executor, 0.3)
    assert sim.sim.tick == stopped  # no answer, no tick
    times = clock_times(controller)
    assert np.allclose(np.diff(times), 0.001)  # one tick per answer, none skipped
    # Every tick's joint state arrives on the lockstep topic (publishing is asynchronous:
    # wait for the last); /joint_states has every n-th tick's, from the first on.
    every = round(config.load()['sim']['physics_hz'] / config.load()['sim']['joint_state_hz'])
    assert every > 1
    received = controller.received
    assert spin_until(executor, lambda: len(received['lockstep_joint_states']) >= stopped)
    states = received['lockstep_joint_states']
    assert len(states) == stopped
    assert list(states[0].name) == config.joint_names()
    np.testing.assert_allclose(states[0].position, HOME, atol=1e-3)
    decimated = (stopped - 1) // every + 1
    assert spin_until(executor, lambda: len(received['joint_states']) >= decimated)
    assert [seconds(m.header.stamp) for m in received['joint_states']] == pytest.approx(
        [seconds(m.header.stamp) for m in states[::every]])
    wrench = controller.received['ft_wrench'][-1]
    assert wrench.header.frame_id == config.load()['frames']['ft_sensor']


def test_images_and_ground_truth_are_published(lockstep, executor):
    _, controller = lockstep
    controller.register()
    assert spin_until(executor, lambda: len(controller.received['nir_image']) >= 2,
                      timeout_s=30)
    us = controller.received['us_image'][0]
    assert (us.encoding, us.height, us.width) == ('mono8', 256, 256)
    assert us.header.frame_id == config.load()['frames']['us_image']
    assert len(us.data) == 256 * 256
    depth = controller.received['nir_depth'][0]
    assert depth.encoding == '16UC1' and depth.step == 2 * depth.width
    info = controller.received['nir_camera_info'][0]
    assert info.header.stamp == depth.header.stamp
    assert info.k[0] > 0 and info.k[8] == 1.0
    # Images carry their capture time, earlier than the tick that delivered them.
    assert seconds(us.header.stamp) < clock_times(controller)[-1]
    assert controller.received['gt_needle_tip'] and controller.received['gt_vessels']
    assert controller.received['gt_tip_in_lumen'][0].data is False


@pytest.mark.parametrize('bad', [
    [0.0] * 6,
    [0.0, -1.7, 1.9, -1.77, -1.5708, 0.0, math.nan],
    [0.0, -1.7, 1.9, -1.77, -1.5708, 0.0, 0.5],
])
def test_bad_command_is_refused_and_the_arm_holds(lockstep, executor, bad):
    sim, controller = lockstep
    good = HOME.copy()
    good[0] += 0.02
    controller.command = good
    controller.register()
    assert spin_until(executor, lambda: sim.sim.tick >= 300, timeout_s=30)
    assert sim.sim.last_command[0] == pytest.approx(good[0])  # positive control
    controller.command = bad
    assert spin_until(executor, lambda: any('REFUSED' in s for s in controller.statuses()),
                      timeout_s=10)
    tick = sim.sim.tick
    assert spin_until(executor, lambda: sim.sim.tick >= tick + 200, timeout_s=30)
    np.testing.assert_allclose(sim.sim.last_command, good)
    last = controller.received['joint_states'][-1]
    assert last.position[0] == pytest.approx(good[0], abs=2e-3)


def test_unknown_phantom_key_stops_the_node(ros_context, tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('veins: [{x: 0.43, depth: 0.005, width: 0.004, height: 0.003}]\n'
                   'colour: pink\n')
    with pytest.raises(ValueError, match='unknown phantom keys'):
        SimNode(context=ros_context, parameter_overrides=[Parameter('phantom',
                                                                    value=str(bad))])


def test_realtime_mode_runs_by_itself(ros_context, executor):
    sim = SimNode(context=ros_context, parameter_overrides=[
        Parameter('mode', value='realtime'), Parameter('sensors', value=False)])
    controller = Controller(ros_context, 'observer', lockstep=False)
    executor.add_node(sim)
    executor.add_node(controller.node)
    try:
        spin_for(executor, 0.5)
        assert sim.sim.tick > 100
        assert len(controller.received['joint_states']) > 50
    finally:
        executor.remove_node(sim)
        executor.remove_node(controller.node)
        sim.destroy_node()
        controller.node.destroy_node()


def test_lockstep_runs_repeat_command_for_command(ros_context, executor):
    """Two lockstep runs with the same seed and controller give identical joint states."""
    runs = []
    for attempt in range(2):
        sim = SimNode(context=ros_context, parameter_overrides=[
            Parameter('mode', value='lockstep'), Parameter('sensors', value=False),
            Parameter('consumers', value='')])
        controller = Controller(ros_context, f'scripted_{attempt}')
        executor.add_node(sim)
        executor.add_node(controller.node)

        def script(msg, controller=controller):
            t = seconds(msg.clock)
            command = HOME.copy()
            command[0] += 0.05 * math.sin(20.0 * t)
            command[-1] = min(0.01, 0.02 * t)
            controller.command = command

        controller.on_tick = script
        try:
            controller.register()
            assert spin_until(executor, lambda sim=sim: sim.sim.tick >= 150, timeout_s=30)
            controller.acking = False
            spin_for(executor, 0.1)
            states = controller.received['lockstep_joint_states'][:150]
            runs.append([list(m.position) for m in states])
        finally:
            executor.remove_node(sim)
            executor.remove_node(controller.node)
            sim.destroy_node()
            controller.node.destroy_node()
    assert len(runs[0]) == 150
    assert runs[0] == runs[1]
    assert runs[0][-1] != runs[0][0]  # the arm really moved


def test_first_tick_waits_for_the_named_consumers(ros_context, executor):
    """A consumer named in ``consumers`` gets the first frame: the sim does not tick
    before that node subscribes, however early the controller registers."""
    stack = [item.split(':')[1].strip() for item in config.load()['sim']['consumers'].split(',')]
    assert set(stack) <= set(OUTPUTS)  # the stack's consumers name streams the sim publishes
    sim = SimNode(context=ros_context, parameter_overrides=[
        Parameter('mode', value='lockstep'), Parameter('sensors', value=False),
        Parameter('consumers', value='late_consumer:ft_wrench')])
    controller = Controller(ros_context)
    late = None
    executor.add_node(sim)
    executor.add_node(controller.node)
    try:
        controller.register()
        spin_for(executor, 1.0)
        assert sim.sim.tick == 0
        assert any('ft_wrench (late_consumer)' in s for s in controller.statuses())
        late = Node('late_consumer', context=ros_context)
        got = []
        spec = config.topic('ft_wrench')
        late.create_subscription(message_class(spec['type']), spec['name'], got.append,
                                 LOCKSTEP_QOS)
        executor.add_node(late)
        assert spin_until(executor, lambda: sim.sim.tick >= 5, timeout_s=20)
        assert spin_until(executor, lambda: len(got) >= 5)
        assert seconds(got[0].header.stamp) == pytest.approx(0.001)  # the very first
    finally:
        for node in (sim, controller.node, late):
            if node is not None:
                executor.remove_node(node)
                node.destroy_node()


@pytest.mark.parametrize(('overrides', 'message'), [
    ({'consumers': 'nir:no_such_topic'}, 'does not publish'),
    ({'joint_state_hz': 300.0}, 'must divide'),
    ({'joint_state_hz': 100.0}, 'lockstep_delay_ticks'),
])
def test_bad_lockstep_parameters_stop_the_node(ros_context, overrides, message):
    params = [Parameter('mode', value='lockstep'), Parameter('sensors', value=False)]
    params += [Parameter(k, value=v) for k, v in overrides.items()]
    with pytest.raises(ValueError, match=message):
        SimNode(context=ros_context, parameter_overrides=params)


def test_settled_is_said_settle_after_s_of_sim_time_after_done_or_safe(lockstep, executor):
    """The run's scorer needs the arm at rest: SETTLED comes settle_after_s of sim time
    after the controller's DONE/SAFE (its own stamp in the state, not arrival time)."""
    sim, controller = lockstep
    settle = config.load()['sim']['settle_after_s']
    state = controller.node.create_publisher(
        message_class('std_msgs/msg/String'), config.topic('guidance_state')['name'],
        qos_profile(config.topic('guidance_state')['qos']))
    controller.register()
    assert spin_until(executor, lambda: sim.sim.tick >= 100, timeout_s=20)
    assert not any(s.startswith('SETTLED') for s in controller.statuses())
    state.publish(message_class('std_msgs/msg/String')(data='SAFE t=0.050: test'))
    assert spin_until(executor, lambda: any(
        s.startswith('SETTLED') for s in controller.statuses()), timeout_s=30)
    assert sim.sim.time_s >= 0.05 + settle - 1e-9
    said = [s for s in controller.statuses() if s.startswith('SETTLED')]
    assert said == [f'SETTLED: {settle:g} s after SAFE at t=0.050 s']
