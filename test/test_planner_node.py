"""Node tests of trajectory_planner over real rclpy topics: a vessel-map target and its
status in, the path, three trajectories and an OK status out, all with the target's
stamp; bad targets and missing joint states refused with a reason and no trajectory."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from conftest import spin_for, spin_until
from rclpy.node import Node

from ir_guidance import config
from ir_guidance.nodes.conversions import (
    contract_publisher,
    contract_subscription,
    fill_pose,
    message_class,
    stamp_seconds,
)
from ir_guidance.nodes.sim import stamp_msg
from ir_guidance.nodes.trajectory_planner import TrajectoryPlanner
from ir_guidance.rig_description import rig_chain

HOME = np.array(config.load()['robot']['home'], dtype=float)
BASE = config.load()['frames']['base']
TARGET = np.array([0.431, 0.1333, 0.2635])   # a vein centre 6.5 mm below the skin
SKIN = 0.27
QUIET_S = 0.4
OUTPUTS = ('planner_path', 'planner_approach', 'planner_insertion', 'planner_retraction',
           'planner_status')
TRAJECTORIES = OUTPUTS[1:4]


class Mapper:
    """Plays the vessel mapper and the robot: joint states, targets, statuses; records."""

    def __init__(self, context) -> None:
        self.node = Node('planner_test_mapper', context=context)
        self.pub = {key: contract_publisher(self.node, key) for key in (
            'joint_states', 'vessel_map_target', 'vessel_map_status')}
        self.received = defaultdict(list)
        for key in OUTPUTS:
            contract_subscription(self.node, key, lambda m, key=key: self.received[key].append(m))

    def joint_state(self, stamp: float, q: np.ndarray) -> None:
        msg = message_class('sensor_msgs/msg/JointState')()
        msg.header.stamp = stamp_msg(stamp)
        msg.name = config.joint_names()
        msg.position = [float(v) for v in q]
        self.pub['joint_states'].publish(msg)

    def answer(self, stamp: float, position, skin: float = SKIN, radius: float = 0.002) -> None:
        target = message_class('geometry_msgs/msg/PoseStamped')()
        target.header.stamp = stamp_msg(stamp)
        target.header.frame_id = BASE
        pose = np.eye(4)
        pose[:3, 3] = position
        pose[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # x axis (the vessel) along +y
        fill_pose(target.pose, pose)
        status_class = message_class('diagnostic_msgs/msg/DiagnosticStatus')
        kv = message_class('diagnostic_msgs/msg/KeyValue')
        status = message_class('diagnostic_msgs/msg/DiagnosticArray')()
        status.header.stamp = stamp_msg(stamp)
        status.status = [status_class(level=status_class.OK, name='vessel_mapper',
                                      message='ok', values=[
                                          kv(key='skin_height_m', value=repr(skin)),
                                          kv(key='vessel_radius_m', value=repr(radius))])]
        self.pub['vessel_map_target'].publish(target)
        self.pub['vessel_map_status'].publish(status)

    def statuses(self) -> list:
        return [m.status[0] for m in self.received['planner_status']]


@pytest.fixture
def rig(ros_context, executor):
    node = TrajectoryPlanner(context=ros_context)
    mapper = Mapper(ros_context)
    executor.add_node(node)
    executor.add_node(mapper.node)
    assert spin_until(executor, lambda: all(
        mapper.node.count_subscribers(config.topic(k)['name']) > 0
        for k in ('joint_states', 'vessel_map_target', 'vessel_map_status')) and all(
        mapper.node.count_publishers(config.topic(k)['name']) > 0 for k in OUTPUTS))
    try:
        yield node, mapper
    finally:
        executor.remove_node(node)
        executor.remove_node(mapper.node)
        node.destroy_node()
        mapper.node.destroy_node()


def send_joints(executor, node, mapper, stamps, q=HOME) -> None:
    for stamp in stamps:
        mapper.joint_state(stamp, q)
    assert spin_until(executor, lambda: len(node._joints) >= len(stamps))


def test_target_in_trajectories_out(executor, rig) -> None:
    node, mapper = rig
    send_joints(executor, node, mapper, [9.99, 10.0, 10.01])
    mapper.answer(10.0, TARGET)
    assert spin_until(executor, lambda: all(mapper.received[k] for k in OUTPUTS), timeout_s=10)
    status = mapper.statuses()[0]
    assert status.level == status.OK and status.message == 'ok', status.message
    values = {kv.key: kv.value for kv in status.values}
    travel = float(values['stage_travel'])
    assert 0.0 < travel < 0.04 and float(values['plan_ms']) > 0
    for key in OUTPUTS:
        assert stamp_seconds(mapper.received[key][0].header.stamp) == 10.0, key
    chain = rig_chain()
    order = [config.joint_names().index(n) for n in chain.joint_names]
    trajectories = {}
    for key in TRAJECTORIES:
        msg = mapper.received[key][0]
        assert list(msg.joint_names) == config.joint_names()
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        assert times[0] == 0.0 and np.all(np.diff(times) > 0)
        assert all(len(p.velocities) == len(msg.joint_names) for p in msg.points)
        trajectories[key] = np.array([p.positions for p in msg.points])[:, order]
    assert np.allclose(trajectories['planner_approach'][0], HOME)
    tip = chain.fk(trajectories['planner_insertion'][-1], 'needle_tip')[:3, 3]
    assert np.linalg.norm(tip - TARGET) <= 0.2e-3
    assert np.isclose(trajectories['planner_insertion'][-1][-1], travel)
    path = mapper.received['planner_path'][0]
    last = path.poses[-1].pose.position
    first = path.poses[0].pose.position
    assert np.allclose([last.x, last.y, last.z], TARGET, atol=1e-9)
    assert np.isclose(first.z, SKIN) and len(path.poses) > 5


def test_nan_target_is_refused(executor, rig) -> None:
    node, mapper = rig
    send_joints(executor, node, mapper, [10.0])
    mapper.answer(10.0, np.array([np.nan, 0.13, 0.26]))
    assert spin_until(executor, lambda: mapper.received['planner_status'])
    status = mapper.statuses()[0]
    assert status.level == status.ERROR and status.message.startswith('invalid target')
    assert stamp_seconds(mapper.received['planner_status'][0].header.stamp) == 10.0
    spin_for(executor, QUIET_S)
    assert not any(mapper.received[k] for k in (*TRAJECTORIES, 'planner_path'))


def test_unreachable_target_is_refused(executor, rig) -> None:
    node, mapper = rig
    send_joints(executor, node, mapper, [10.0])
    mapper.answer(10.0, np.array([1.5, 0.13, 0.26]), skin=0.27)
    assert spin_until(executor, lambda: mapper.received['planner_status'], timeout_s=10)
    status = mapper.statuses()[0]
    assert status.level == status.ERROR and status.message.startswith('unreachable'), \
        status.message
    spin_for(executor, QUIET_S)
    assert not any(mapper.received[k] for k in TRAJECTORIES)


def test_no_joint_state_at_the_target_time(executor, rig) -> None:
    node, mapper = rig
    send_joints(executor, node, mapper, [10.0])
    gap = config.load()['planner']['max_stamp_gap_s']
    mapper.answer(10.0 + 2 * gap, TARGET)   # newer than any joint state by 2 gaps
    mapper.answer(9.0, TARGET)              # older than every joint state
    assert spin_until(executor, lambda: len(mapper.received['planner_status']) == 2)
    for status in mapper.statuses():
        assert status.level == status.ERROR
        assert status.message.startswith('no joint state at the target time'), status.message
    spin_for(executor, QUIET_S)
    assert not any(mapper.received[k] for k in TRAJECTORIES)
    # Within the gap, the latest older joint state is used.
    mapper.answer(10.0 + 0.5 * gap, TARGET)
    assert spin_until(executor, lambda: len(mapper.received['planner_status']) == 3,
                      timeout_s=10)
    assert mapper.statuses()[2].level == mapper.statuses()[2].OK


def test_target_waits_for_its_status(executor, rig) -> None:
    node, mapper = rig
    send_joints(executor, node, mapper, [10.0])
    target = message_class('geometry_msgs/msg/PoseStamped')()
    target.header.stamp = stamp_msg(10.0)
    target.header.frame_id = BASE
    target.pose.position.x, target.pose.position.y, target.pose.position.z = TARGET
    target.pose.orientation.w = 1.0
    mapper.pub['vessel_map_target'].publish(target)
    spin_for(executor, QUIET_S)
    assert not mapper.received['planner_status']
