"""Node test of force_monitor over real rclpy topics: a synthetic skin-puncture profile as
WrenchStamped -> filtered wrenches and a puncture event; NaN or stale -> error, no output;
the tare service."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from conftest import spin_for, spin_until, spinning
from rclpy.node import Node
from rclpy.parameter import Parameter

from ir_guidance import config
from ir_guidance.force import ForceMonitor
from ir_guidance.nodes.conversions import contract_publisher, contract_subscription, message_class
from ir_guidance.nodes.force_monitor import ForceMonitorNode
from ir_guidance.nodes.sim import stamp_msg

FRAME = config.load()['frames']['ft_sensor']
TARE = config.load()['force_monitor']['tare_service']
QUIET_S = 0.3


def skin_profile() -> np.ndarray:
    """Axial force of a 5 mm/s skin puncture (Okamura spring to 1.5 N, drop to 0.4 N)."""
    d = np.arange(0.0, 0.0025, 5e-6)
    force = np.concatenate([np.zeros(100), 200 * d + 1.6e5 * d ** 2, np.full(100, 0.4)])
    return np.minimum(force, 1.5) + np.random.default_rng(0).normal(0, 0.006, force.size)


class Sensor:
    """Publishes WrenchStamped like the F/T driver or the simulator; records outputs."""

    def __init__(self, context) -> None:
        self.node = Node('force_test_sensor', context=context)
        self.pub = contract_publisher(self.node, 'ft_wrench')
        self.received = defaultdict(list)
        for key in ('force_filtered', 'force_events', 'diagnostics'):
            contract_subscription(self.node, key, lambda m, key=key: self.received[key].append(m))
        self.tare = self.node.create_client(message_class('std_srvs/srv/Trigger'), TARE)

    def publish(self, stamp_s: float, wrench, frame: str = FRAME) -> None:
        msg = message_class('geometry_msgs/msg/WrenchStamped')()
        msg.header.stamp = stamp_msg(stamp_s)
        msg.header.frame_id = frame
        f, t = msg.wrench.force, msg.wrench.torque
        f.x, f.y, f.z, t.x, t.y, t.z = (float(v) for v in wrench)
        self.pub.publish(msg)

    def send(self, executor, stamp_s: float, wrench) -> None:
        """Publish one valid wrench and wait for its filtered output (sensor QoS keeps
        only the last few messages: a burst would be thinned out)."""
        count = len(self.received['force_filtered'])
        self.publish(stamp_s, wrench)
        assert spin_until(executor, lambda: len(self.received['force_filtered']) > count,
                          timeout_s=2.0)

    def events(self, kind: str):
        return [s for m in self.received['force_events'] for s in m.status if s.name == kind]


@pytest.fixture
def rig(ros_context, executor):
    # The node's clock is the wall clock here: stamps are taken from it, the staleness
    # limit relaxed so that a slow test machine does not make the wrenches stale.
    node = ForceMonitorNode(context=ros_context, parameter_overrides=[
        Parameter('force_monitor.stale_after_s', value=5.0)])
    sensor = Sensor(ros_context)
    with spinning(executor, node, sensor.node):
        assert spin_until(executor, lambda: sensor.node.count_subscribers(
            config.topic('ft_wrench')['name']) > 0)
        yield node, sensor


def now_s(node) -> float:
    return node.get_clock().now().nanoseconds * 1e-9


def test_puncture_profile_gives_filtered_output_and_an_event(rig, executor):
    node, sensor = rig
    axis = ForceMonitor.from_config().needle_axis
    profile = skin_profile()
    t0 = now_s(node)
    for k, axial in enumerate(profile):
        force = -axial * axis                         # resisting insertion, sensor frame
        sensor.send(executor, t0 + k * 1e-3, [*force, 0.0, 0.0, 0.0])
    assert len(sensor.received['force_filtered']) == len(profile)
    assert spin_until(executor, lambda: sensor.events('puncture'), timeout_s=5)
    (event,) = sensor.events('puncture')
    values = {kv.key: kv.value for kv in event.values}
    assert values['membrane'] == 'skin'
    assert float(values['peak_n']) == pytest.approx(1.5, abs=0.1)
    assert float(values['drop_n']) >= 0.15
    pop = t0 + (len(profile) - 100) * 1e-3
    assert 0.0 <= float(values['stamp']) - pop <= 0.012
    filtered = sensor.received['force_filtered']
    assert all(m.header.frame_id == FRAME for m in filtered)
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in filtered]
    assert min(stamps) >= t0 - 1e-6 and max(stamps) <= t0 + len(profile) * 1e-3
    assert not sensor.events('invalid')


def test_nan_and_stale_wrenches_are_refused(rig, executor):
    node, sensor = rig
    t0 = now_s(node)
    sensor.publish(t0, [0.0, 0.0, math.nan, 0.0, 0.0, 0.0])
    assert spin_until(executor, lambda: sensor.events('invalid'))
    assert 'NaN' in sensor.events('invalid')[0].message
    sensor.publish(t0 - 60.0, [0.0] * 6)                # a minute old
    assert spin_until(executor, lambda: any('stale' in s.message
                                            for s in sensor.events('invalid')))
    sensor.publish(t0 + 1e-3, [0.0] * 6, frame='tool0')
    assert spin_until(executor, lambda: any('frame' in s.message
                                            for s in sensor.events('invalid')))
    spin_for(executor, QUIET_S)
    assert sensor.received['force_filtered'] == []
    assert all(s.level == b'\x02' for s in sensor.events('invalid'))
    # Diagnostics report the error (2 Hz).
    assert spin_until(executor, lambda: any(s.level == b'\x02' for m in
                                            sensor.received['diagnostics'] for s in m.status),
                      timeout_s=2.0)


def test_tare_service(rig, executor):
    node, sensor = rig
    assert sensor.tare.wait_for_service(timeout_sec=5.0)
    future = sensor.tare.call_async(message_class('std_srvs/srv/Trigger').Request())
    assert spin_until(executor, future.done)
    assert future.result().success is False            # nothing received yet
    offset = np.array([0.3, -0.2, 1.1, 0.01, 0.0, -0.02])
    t0 = now_s(node)
    for k in range(150):
        sensor.send(executor, t0 + k * 1e-3, offset)
    future = sensor.tare.call_async(message_class('std_srvs/srv/Trigger').Request())
    assert spin_until(executor, future.done)
    assert future.result().success, future.result().message
    np.testing.assert_allclose(node.monitor.bias, offset, atol=1e-9)
    for k in range(150, 200):
        sensor.send(executor, t0 + k * 1e-3, offset)
    last = sensor.received['force_filtered'][-1].wrench.force
    assert abs(last.x) + abs(last.y) + abs(last.z) < 1e-6
