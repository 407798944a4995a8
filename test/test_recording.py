"""Recording tests: contract topics of several types into a rosbag2 MCAP recording, read
back with the third-party readers (rosbags, mcap_ros2); the recorder node as its own
process keeps up with 1 kHz joint states, wrenches and clock plus images (none dropped)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import spin_until
from rclpy.node import Node

from ir_guidance import config
from ir_guidance.nodes.conversions import (
    LOCKSTEP_QOS,
    cloud_msg,
    image_msg,
    message_class,
)
from ir_guidance.nodes.recorder import record, resolve_topics
from ir_guidance.nodes.sim import stamp_msg
from ir_guidance.recording import RecordingError, bag_paths, find_mcap, message_definition

TOPICS = ('joint_states', 'us_image', 'us_vessels', 'ft_wrench', 'arm_status')
COUNTS = {'joint_states': 40, 'us_image': 4, 'us_vessels': 4, 'ft_wrench': 40,
          'arm_status': 3}
JOINTS = config.joint_names()


def _messages(key: str, k: int):
    """The k-th test message of topic ``key`` (content derived from k, checked on read)."""
    stamp = stamp_msg(1.0 + k * 1e-3)
    if key == 'joint_states':
        msg = message_class('sensor_msgs/msg/JointState')()
        msg.header.stamp = stamp
        msg.name = list(JOINTS)
        msg.position = [k * 1e-3 + j for j in range(len(JOINTS))]
        return msg
    if key == 'ft_wrench':
        msg = message_class('geometry_msgs/msg/WrenchStamped')()
        msg.header.stamp = stamp
        msg.header.frame_id = 'ft_sensor_frame'
        msg.wrench.force.z = 0.5 * k
        msg.wrench.torque.x = -0.01 * k
        return msg
    if key == 'us_image':
        image = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) + k).astype(np.uint8)
        return image_msg(image, 'mono8', 'us_image_frame', stamp)
    if key == 'us_vessels':
        points = np.zeros(k + 1, dtype=[(n, np.float32) for n in ('x', 'y', 'z', 'radius')])
        points['x'] = np.arange(k + 1) * 1e-3
        points['radius'] = 2e-3
        return cloud_msg(points, 'us_image_frame', stamp)
    msg = message_class('std_msgs/msg/String')()
    msg.data = f'status {k}'
    return msg


def test_bag_paths_and_topics():
    assert bag_paths('/tmp/x/run.mcap') == (Path('/tmp/x/run'), Path('/tmp/x/run/run_0.mcap'))
    assert bag_paths('/tmp/x/run') == (Path('/tmp/x/run'), Path('/tmp/x/run/run_0.mcap'))
    assert set(resolve_topics(None)) == {s['name'] for s in config.load()['topics'].values()}
    assert list(resolve_topics(['ft_wrench', '/joint_states'])) == ['/ft_sensor/wrench',
                                                                   '/joint_states']
    with pytest.raises(RecordingError, match='not a contract topic'):
        resolve_topics(['/no/such/topic'])
    with pytest.raises(RecordingError, match='no MCAP recording'):
        find_mcap('/nonexistent/run.mcap')


def test_message_definitions_match_rosbags():
    """Schemas from the installed .msg files, with the installed type hashes."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    for spec in config.load()['topics'].values():
        text, digest = message_definition(spec['type'])
        assert digest == store.hash_rihs01(spec['type']), spec['type']
        theirs = store.generate_msgdef(spec['type'], ros_version=2)[0]
        assert text.count('\nMSG: ') == theirs.count('\nMSG: '), spec['type']


def test_record_and_read_with_rosbags_and_mcap(ros_context, executor, tmp_path):
    pub_node = Node('recording_test_publisher', context=ros_context)
    pubs = {key: pub_node.create_publisher(message_class(config.topic(key)['type']),
                                           config.topic(key)['name'], LOCKSTEP_QOS)
            for key in TOPICS}
    executor.add_node(pub_node)
    path = tmp_path / 'run.mcap'
    recording = record(list(TOPICS), path, context=ros_context, executor=executor,
                       lockstep=True)
    try:
        assert spin_until(executor, lambda: all(p.get_subscription_count() for p in
                                                pubs.values()))
        for key in TOPICS:
            for k in range(COUNTS[key]):
                pubs[key].publish(_messages(key, k))
        received = recording.node.received
        names = {key: config.topic(key)['name'] for key in TOPICS}
        assert spin_until(executor, lambda: all(received[names[k]] == COUNTS[k]
                                                for k in TOPICS))
    finally:
        summary = recording.stop()
        executor.remove_node(pub_node)
        pub_node.destroy_node()
    assert summary.dropped == 0 and summary.message_count == sum(COUNTS.values())
    directory, mcap_file = bag_paths(path)
    assert summary.directory == directory and mcap_file.is_file()

    # metadata.yaml in the rosbag2 format
    info = yaml.safe_load((directory / 'metadata.yaml').read_text())[
        'rosbag2_bagfile_information']
    assert info['storage_identifier'] == 'mcap' and info['version'] == 9
    assert info['relative_file_paths'] == ['run_0.mcap']
    assert info['message_count'] == sum(COUNTS.values()) and info['duration']['nanoseconds'] > 0
    meta = {t['topic_metadata']['name']: t for t in info['topics_with_message_count']}
    for key in TOPICS:
        entry = meta[names[key]]
        assert entry['message_count'] == COUNTS[key]
        assert entry['topic_metadata']['type'] == config.topic(key)['type']
        assert entry['topic_metadata']['serialization_format'] == 'cdr'
        assert entry['topic_metadata']['offered_qos_profiles'][0]['reliability'] == 'reliable'

    # rosbags: its rosbag2 reader and CDR deserializer
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    by_topic: dict[str, list] = {}
    with Reader(directory) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert types == {names[k]: config.topic(k)['type'] for k in TOPICS}
        for connection, _, raw in reader.messages():
            by_topic.setdefault(connection.topic, []).append(
                store.deserialize_cdr(raw, connection.msgtype))
    _check_contents(by_topic, names, lambda m: np.asarray(m.position),
                    lambda m: bytes(m.data))

    # mcap + mcap_ros2: the Foxglove reader with its ros2msg decoder
    from mcap_ros2.reader import read_ros2_messages

    by_topic = {}
    for item in read_ros2_messages(str(mcap_file)):
        assert item.schema.name == config.load()['topics'][
            {v: k for k, v in names.items()}[item.channel.topic]]['type']
        by_topic.setdefault(item.channel.topic, []).append(item.ros_msg)
    _check_contents(by_topic, names, lambda m: np.asarray(m.position),
                    lambda m: bytes(m.data))


def _check_contents(by_topic, names, positions, data) -> None:
    assert {t: len(v) for t, v in by_topic.items()} == {names[k]: COUNTS[k] for k in TOPICS}
    for k, msg in enumerate(by_topic[names['joint_states']]):
        assert list(msg.name) == list(JOINTS)
        np.testing.assert_allclose(positions(msg), k * 1e-3 + np.arange(len(JOINTS)))
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == \
            10**9 + k * 10**6
    for k, msg in enumerate(by_topic[names['ft_wrench']]):
        assert (msg.wrench.force.z, msg.wrench.torque.x) == (0.5 * k, -0.01 * k)
        assert msg.header.frame_id == 'ft_sensor_frame'
    for k, msg in enumerate(by_topic[names['us_image']]):
        assert (msg.encoding, msg.height, msg.width) == ('mono8', 48, 64)
        assert data(msg) == bytes(_messages('us_image', k).data)
    for k, msg in enumerate(by_topic[names['us_vessels']]):
        assert msg.width == k + 1 and [f.name for f in msg.fields] == ['x', 'y', 'z', 'radius']
        x = np.frombuffer(data(msg), dtype=np.float32).reshape(-1, 4)[:, 0]
        np.testing.assert_allclose(x, np.arange(k + 1) * 1e-3, rtol=1e-6)
    assert [m.data for m in by_topic[names['arm_status']]] == [f'status {k}' for k in range(3)]


def test_existing_path_is_refused(ros_context, tmp_path):
    bag_paths(tmp_path / 'old.mcap')[0].mkdir()
    with pytest.raises(RecordingError, match='exists already'):
        record(['arm_status'], tmp_path / 'old.mcap', context=ros_context)


# -- the recorder node as its own process, at lockstep rates ----------------------------
# The NIR images (0.9 MB per frame pair) are left out: with them, on this 2-core machine,
# Fast DDS itself loses 1 kHz samples (a bare raw subscriber that only counts loses them
# too: docs/recording.md), which would not measure the recorder.
RATE_TOPICS = ('clock', 'joint_states', 'ft_wrench', 'us_image')
RUN_S = 3.0


def _rate_messages():
    """Per-tick messages of a 1 kHz run and the 30 Hz US image (size as the simulator's)."""
    joints = message_class('sensor_msgs/msg/JointState')(name=list(JOINTS))
    wrench = message_class('geometry_msgs/msg/WrenchStamped')()
    wrench.header.frame_id = 'ft_sensor_frame'
    clock = message_class('rosgraph_msgs/msg/Clock')()
    rng = np.random.default_rng(0)
    images = {'us_image': image_msg(rng.integers(0, 255, (256, 256), np.uint8), 'mono8',
                                    'us_image_frame', stamp_msg(0.0))}
    return joints, wrench, clock, images


def test_recorder_process_keeps_up_at_1khz(ros_context, executor, tmp_path):
    """Joint states, wrench and clock at 1 kHz and US images at 30 Hz, reliable (as in
    lockstep) into the recorder node process: nothing dropped, SIGINT finishes the bag."""
    path = tmp_path / 'rate.mcap'
    topics = '[' + ','.join(RATE_TOPICS) + ']'
    code = 'import sys; from ir_guidance.nodes.recorder import main; sys.exit(main(sys.argv[1:]))'
    proc = subprocess.Popen(
        [sys.executable, '-c', code, '--ros-args', '-p', f'path:={path}', '-p',
         'lockstep:=true', '-p', f'topics:={topics}'], env=dict(os.environ),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = Node('recording_rate_publisher', context=ros_context)
    pubs = {key: node.create_publisher(message_class(config.topic(key)['type']),
                                       config.topic(key)['name'], LOCKSTEP_QOS)
            for key in RATE_TOPICS}
    executor.add_node(node)
    try:
        assert spin_until(executor, lambda: all(p.get_subscription_count() for p in
                                                pubs.values()), timeout_s=20), \
            'the recorder process did not subscribe'
        time.sleep(1.0)  # matched here; let the recorder's side of discovery finish too
        joints, wrench, clock, images = _rate_messages()
        ticks = int(RUN_S * 1000)
        sent = dict.fromkeys(RATE_TOPICS, 0)
        start = time.monotonic()
        for tick in range(1, ticks + 1):
            stamp = stamp_msg(tick * 1e-3)
            clock.clock = stamp
            joints.header.stamp = stamp
            joints.position = [tick * 1e-3] * len(JOINTS)
            wrench.header.stamp = stamp
            wrench.wrench.force.x = float(tick)
            for key, msg in (('clock', clock), ('joint_states', joints),
                             ('ft_wrench', wrench)):
                pubs[key].publish(msg)
                sent[key] += 1
            if tick % 33 == 1:
                for key, msg in images.items():
                    msg.header.stamp = stamp
                    pubs[key].publish(msg)
                    sent[key] += 1
            delay = start + tick * 1e-3 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        publish_s = time.monotonic() - start
        time.sleep(1.0)  # let the recorder take what is in flight
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
        executor.remove_node(node)
        node.destroy_node()
    assert proc.returncode == 0, output
    directory, _ = bag_paths(path)
    info = yaml.safe_load((directory / 'metadata.yaml').read_text())[
        'rosbag2_bagfile_information']
    counts = {t['topic_metadata']['name']: t['message_count']
              for t in info['topics_with_message_count']}
    recorded = {key: counts[config.topic(key)['name']] for key in RATE_TOPICS}
    dropped = {key: sent[key] - recorded[key] for key in RATE_TOPICS}
    total = sum(sent.values())
    image_bytes = sum(len(msg.data) for msg in images.values()) * sent['us_image']
    print(f'\nrecorder process: {total} messages in {publish_s:.2f} s ({total / publish_s:.0f} '
          f'msg/s, images {image_bytes / publish_s / 1e6:.1f} MB/s), dropped {dropped}')
    assert dropped == dict.fromkeys(RATE_TOPICS, 0), output
    # every tick once, in order, with its content
    from mcap_ros2.reader import read_ros2_messages

    forces = [m.ros_msg.wrench.force.x for m in read_ros2_messages(
        str(find_mcap(directory)), topics=[config.topic('ft_wrench')['name']])]
    assert forces == [float(t) for t in range(1, int(RUN_S * 1000) + 1)]
