"""Node tests of vessel_mapper over real rclpy topics: a transverse sweep of a known straight
vessel in, the target near the truth out; NaN, stale stamps, an empty map and a stalled
lockstep stream refused with a reason."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from conftest import spin_until
from rclpy.node import Node
from rclpy.parameter import Parameter
from transforms3d.quaternions import quat2mat

from ir_guidance import config, rig_description
from ir_guidance.kinematics import PoseIk
from ir_guidance.nodes.conversions import (
    cloud_array,
    cloud_msg,
    contract_publisher,
    contract_subscription,
    message_class,
)
from ir_guidance.nodes.sim import stamp_msg
from ir_guidance.nodes.ultrasound import CLOUD_FIELDS
from ir_guidance.nodes.vessel_mapper import VesselMapperNode
from ir_guidance.planning.motion import interpolate_pose
from ir_guidance.planning.scan import sweep_poses

ERROR = message_class('diagnostic_msgs/msg/DiagnosticStatus').ERROR
FRAMES = 61
T0 = 1.0
SKIN_Z = 0.27
US_FRAME = config.load()['frames']['us_image']


@pytest.fixture(scope='module')
def sweep():
    """Joint states of a 30 mm transverse sweep (face on the skin) and the true vessel."""
    chain = rig_description.rig_chain()
    home = np.array(config.load()['robot']['home'])
    probe = chain.fk(home, US_FRAME)
    start, end = sweep_poses(probe, 0.03, SKIN_Z)
    ik = PoseIk(chain, US_FRAME)
    q = ik.solve_or_raise(start, home, frozen=['needle_insertion_joint'])
    qs = []
    for k in range(FRAMES):
        q = ik.solve_or_raise(interpolate_pose(start, end, k / (FRAMES - 1)), q,
                              frozen=['needle_insertion_joint'])
        qs.append(q)
    x0, y0 = probe[0, 3], probe[1, 3]

    def vessel(y):
        return np.array([x0 + 0.002 + 0.05 * (y - y0), y, SKIN_Z - 0.005])

    return chain, qs, vessel


class Rig:
    """Publishes joint states, US results and requests like the sim and perception do."""

    def __init__(self, context) -> None:
        self.node = Node('mapper_test_rig', context=context)
        self.joints = contract_publisher(self.node, 'joint_states')
        self.us = contract_publisher(self.node, 'us_vessels')
        self.request = contract_publisher(self.node, 'vessel_map_request')
        self.received = defaultdict(list)
        for key in ('vessel_map_status', 'vessel_map_target', 'vessel_map_centerlines',
                    'vessel_map_markers'):
            contract_subscription(self.node, key,
                                  lambda m, key=key: self.received[key].append(m))

    def statuses(self, name='vessel_mapper'):
        return [m.status[0] for m in self.received['vessel_map_status']
                if m.status[0].name == name]

    def publish_joints(self, stamp, q):
        msg = message_class('sensor_msgs/msg/JointState')()
        msg.header.stamp = stamp_msg(stamp)
        msg.name = config.joint_names()
        msg.position = [float(v) for v in q]
        self.joints.publish(msg)

    def publish_sections(self, stamp, rows):
        cloud = np.zeros(len(rows), dtype=[(n, np.float32) for n in CLOUD_FIELDS])
        for i, row in enumerate(rows):
            cloud[i] = row
        self.us.publish(cloud_msg(cloud, US_FRAME, stamp_msg(stamp)))

    def ask(self, stamp):
        msg = message_class('std_msgs/msg/Header')()
        msg.stamp = stamp_msg(stamp)
        self.request.publish(msg)


@pytest.fixture
def running(ros_context, executor):
    started = []

    def start(**params):
        node = VesselMapperNode(context=ros_context, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()])
        rig = Rig(ros_context)
        executor.add_node(node)
        executor.add_node(rig.node)
        started.append((node, rig))
        assert spin_until(executor, lambda: rig.node.count_subscribers(
            config.topic('us_vessels')['name']) > 0)
        for key in ('vessel_map_request', 'joint_states'):
            assert spin_until(executor, lambda key=key: rig.node.count_subscribers(
                config.topic(key)['name']) > 0)
        assert spin_until(executor, lambda: all(rig.node.count_publishers(
            config.topic(key)['name']) > 0 for key in ('vessel_map_status',)))
        return node, rig

    yield start
    for node, rig in started:
        executor.remove_node(node)
        executor.remove_node(rig.node)
        node.destroy_node()
        rig.node.destroy_node()


def _deliver(executor, send, arrived):
    """Publish (best effort, as the contract's sensor QoS) until the node has it."""
    for _ in range(20):
        send()
        if spin_until(executor, arrived, timeout_s=0.25):
            return
    raise AssertionError('message never arrived')


def _feed(executor, node, rig, chain, qs, vessel):
    for k, q in enumerate(qs):
        stamp = T0 + k / 30.0
        _deliver(executor, lambda s=stamp, q=q: rig.publish_joints(s, q),
                 lambda s=stamp: abs((node.history.latest_stamp or -1.0) - s) < 1e-6)
        pose = chain.fk(q, US_FRAME)
        centre = pose[:3, :3].T @ (vessel(pose[1, 3]) - pose[:3, 3])
        row = (centre[0], centre[1], 0.0, 0.002, 0.0012, 0.9, 3)
        _deliver(executor, lambda s=stamp, row=row: rig.publish_sections(s, [row]),
                 lambda k=k: node.us_frames == k + 1)


def test_sweep_then_request_gives_the_target(running, executor, sweep):
    chain, qs, vessel = sweep
    node, rig = running()
    _feed(executor, node, rig, chain, qs, vessel)
    stamp = T0 + FRAMES / 30.0
    rig.ask(stamp)
    assert spin_until(executor, lambda: rig.statuses() and rig.received['vessel_map_target'])
    status = rig.statuses()[-1]
    assert status.level == message_class('diagnostic_msgs/msg/DiagnosticStatus').OK, \
        status.message
    values = {kv.key: kv.value for kv in status.values}
    assert float(values['skin_height_m']) == pytest.approx(SKIN_Z, abs=1e-4)
    assert float(values['vessel_radius_m']) == pytest.approx(np.sqrt(0.002 * 0.0012), rel=1e-3)
    assert values['vessels'] == '1'
    target = rig.received['vessel_map_target'][-1]
    assert target.header.frame_id == 'base_link'
    assert abs(target.header.stamp.sec + target.header.stamp.nanosec * 1e-9 - stamp) < 1e-9
    p = np.array([target.pose.position.x, target.pose.position.y, target.pose.position.z])
    assert np.linalg.norm(p - vessel(p[1])) < 2e-4
    o = target.pose.orientation
    axes = quat2mat([o.w, o.x, o.y, o.z])
    truth = np.array([0.05, 1.0, 0.0]) / np.linalg.norm([0.05, 1.0, 0.0])
    assert abs(abs(axes[:, 0] @ truth) - 1.0) < 1e-4 and axes[2, 2] > 0.999
    # The answer's map carries the request stamp (periodic views may come before or after,
    # and topics have no mutual order: wait for each).
    def answered(key):
        return [m for m in rig.received[key] if abs(
            m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 - stamp) < 1e-9]

    assert spin_until(executor, lambda: answered('vessel_map_centerlines'))
    cloud = cloud_array(answered('vessel_map_centerlines')[-1])
    assert set(cloud.dtype.names) == {'x', 'y', 'z', 'radius', 'vessel_id', 'confidence',
                                      'sigma'} and len(cloud) > 50
    def answered_markers():
        return [a for a in rig.received['vessel_map_markers'] if any(
            abs(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 - stamp) < 1e-9
            and m.type == 0 for m in a.markers)]  # the one with the target arrow

    assert spin_until(executor, lambda: answered_markers())
    kinds = {m.type for m in answered_markers()[-1].markers}
    assert {4, 2, 0} <= kinds  # LINE_STRIP, SPHERE, ARROW
    # An early request answers from the observations up to then: too short a stretch.
    rig.ask(T0 + 10 / 30.0)
    assert spin_until(executor, lambda: len(rig.statuses()) >= 2)
    assert rig.statuses()[-1].level == ERROR and 'mapped before the site' in \
        ' '.join(kv.value for kv in rig.statuses()[-1].values)


def test_nan_and_stale_detections_are_refused(running, executor, sweep):
    _, qs, _ = sweep
    node, rig = running()
    _deliver(executor, lambda: rig.publish_joints(T0, qs[0]),
             lambda: node.history.latest_stamp == T0)
    rig.publish_sections(T0, [(np.nan, 0.005, 0.0, 0.002, 0.001, 0.9, 1)])
    assert spin_until(executor, lambda: any('NaN' in s.message for s in
                                            rig.statuses('vessel_mapper/input')))
    rig.publish_sections(T0 + 1.0, [(0.0, 0.005, 0.0, 0.002, 0.001, 0.9, 1)])
    assert spin_until(executor, lambda: any('joint state' in s.message for s in
                                            rig.statuses('vessel_mapper/input')))
    assert all(s.level == ERROR for s in rig.statuses('vessel_mapper/input'))
    assert node.us_frames == 0 and node.map.observation_count == 0


def test_request_on_an_empty_map(running, executor):
    _, rig = running()
    rig.ask(2.0)
    assert spin_until(executor, lambda: rig.statuses())
    status = rig.statuses()[-1]
    assert status.level == ERROR and 'empty map' in status.message
    assert not rig.received['vessel_map_target']


def test_lockstep_waits_for_every_frame_then_reports_the_stall(running, executor, sweep):
    _, qs, _ = sweep
    _, rig = running(**{'lockstep': True, 'lockstep.stall_timeout_s': 0.5})
    rig.publish_joints(0.0, qs[0])
    rig.ask(0.05)  # US and NIR frames at ticks 1 and 34 are due; none has come
    assert spin_until(executor, lambda: rig.statuses(), timeout_s=5.0)
    status = rig.statuses()[-1]
    assert status.level == ERROR and status.message.startswith('stalled: missing results for')
    assert 'us' in status.message and 'nir' in status.message
