"""Bench replay tests: the ultrasound node's inputs and outputs recorded, then the node
replayed from the recording and compared: the same node passes; a changed segmenter or
tampered recorded outputs are flagged."""

from __future__ import annotations

import pytest
from conftest import spin_until
from rclpy.node import Node
from rclpy.serialization import deserialize_message, serialize_message

from ir_guidance import config
from ir_guidance.nodes.conversions import (
    cloud_array,
    cloud_msg,
    contract_publisher,
    contract_subscription,
    image_msg,
    message_class,
)
from ir_guidance.nodes.recorder import record
from ir_guidance.nodes.sim import stamp_msg
from ir_guidance.nodes.ultrasound import UltrasoundNode
from ir_guidance.perception import us_data
from ir_guidance.recording import BagWriter, read_messages
from ir_guidance.recording.replay import NODE_TOPICS, exit_code, replay

FRAMES = 6
FRAME_ID = config.load()['frames']['us_image']
VESSELS = config.topic('us_vessels')['name']
MASK = config.topic('us_vessel_mask')['name']


@pytest.fixture(scope='module')
def us_bag(ros_context, tmp_path_factory):
    """Simulated B-mode frames through the ultrasound node (U-Net), recorded."""
    return _record_us(ros_context, tmp_path_factory.mktemp('unet') / 'us.mcap', 'unet')


@pytest.fixture(scope='module')
def classical_bag(ros_context, tmp_path_factory):
    """The same with the classical segmenter (fast: no network to load)."""
    return _record_us(ros_context, tmp_path_factory.mktemp('classical') / 'us.mcap',
                      'classical')


def _record_us(ros_context, path, segmenter):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    executor = SingleThreadedExecutor(context=ros_context)
    node = UltrasoundNode(context=ros_context, parameter_overrides=[
        Parameter('segmenter', value=segmenter)])
    scanner = Node('replay_test_scanner', context=ros_context)
    pub = contract_publisher(scanner, 'us_image')
    clouds = []
    contract_subscription(scanner, 'us_vessels', clouds.append)
    executor.add_node(node)
    executor.add_node(scanner)
    recording = record(['us_image', 'us_vessels', 'us_vessel_mask'], path,
                       context=ros_context, executor=executor)
    try:
        assert spin_until(executor, lambda: pub.get_subscription_count() >= 2)
        frames = [us_data.make_frame(seed, k)[0] for seed in us_data.test_seeds(2)
                  for k in range(FRAMES // 2)]
        for k, image in enumerate(frames):
            pub.publish(image_msg(image, 'mono8', FRAME_ID, stamp_msg(2.0 + k / 30)))
            assert spin_until(executor, lambda k=k: len(clouds) > k, timeout_s=10)
        names = recording.node.received
        assert spin_until(executor, lambda: names[VESSELS] == FRAMES and names[MASK] == FRAMES)
    finally:
        summary = recording.stop()
        executor.remove_node(node)
        executor.remove_node(scanner)
        node.destroy_node()
        scanner.destroy_node()
        executor.shutdown()
    assert summary.topics == {config.topic('us_image')['name']: FRAMES, VESSELS: FRAMES,
                              MASK: FRAMES}
    return summary.directory


def test_table_uses_contract_keys():
    keys = set(config.load()['topics'])
    for table in NODE_TOPICS.values():
        assert set(table.inputs) | set(table.outputs) | set(table.errors) <= keys
        assert set(table.trigger) <= set(table.inputs) and set(table.results) <= set(table.outputs)


def test_same_node_passes(us_bag):
    result = replay(us_bag, 'ultrasound', compare=True, rate=None)
    print(f"\nreplay ultrasound x{FRAMES}: {result['wall_s']} s, "
          f"{result['per_input_ms']} ms/input")
    assert result["pass"] is True and exit_code(result) == 0, result
    assert result['triggers'] == FRAMES and result['timeouts'] == 0
    for topic in (VESSELS, MASK):
        c = result['compare'][topic]
        assert (c['recorded'], c['replayed'], c['mismatched']) == (FRAMES, FRAMES, 0)


def test_recorded_timing_passes(classical_bag):
    result = replay(classical_bag, 'ultrasound', compare=True, rate=1.0,
                    params={'segmenter': 'classical'})
    print(f"\nreplay ultrasound at rate 1.0: {result['wall_s']} s, late by at most "
          f"{result['max_late_s']} s")
    assert result['pass'] is True, result


def test_changed_segmenter_is_flagged(us_bag):
    """A regression: the classical baseline instead of the recorded U-Net."""
    result = replay(us_bag, 'ultrasound', compare=True, rate=None,
                    params={'segmenter': 'classical'})
    assert result['pass'] is False and exit_code(result) == 1
    assert not result['compare'][MASK]['pass'] and result['compare'][MASK]['worst'] > 0.01


def test_tampered_outputs_are_flagged(classical_bag, tmp_path):
    """The recorded vessel centres moved by 0.5 mm in one frame: that frame is flagged."""
    assert replay(classical_bag, 'ultrasound', params={'segmenter': 'classical'})['pass']
    messages = read_messages(classical_bag)
    cls = message_class('sensor_msgs/msg/PointCloud2')
    writer = BagWriter(tmp_path / 'tampered.mcap', compression='none')
    for topic, type_name in {(m.topic, m.type) for m in messages}:
        writer.add_topic(topic, type_name, [])
    tampered = 0
    for m in messages:
        data = m.data
        if m.topic == VESSELS and not tampered:
            msg = deserialize_message(data, cls)
            points = cloud_array(msg).copy()
            if len(points):
                points['x'] += 5e-4
                data = serialize_message(cloud_msg(points, msg.header.frame_id,
                                                   msg.header.stamp))
                tampered = 1
        writer.write(m.topic, data, m.log_time_ns, m.publish_time_ns)
    writer.close()
    assert tampered
    result = replay(tmp_path / 'tampered.mcap', 'ultrasound', compare=True,
                    params={'segmenter': 'classical'})
    assert result['pass'] is False and exit_code(result) == 1
    vessels = result['compare'][VESSELS]
    assert vessels['mismatched'] == 1 and abs(vessels['worst'] - 5e-4) < 1e-5, vessels
    assert result['compare'][MASK]['pass']


def test_unknown_node_and_missing_inputs(classical_bag):
    with pytest.raises(ValueError, match='no replay table'):
        replay(classical_bag, 'controller')
    with pytest.raises(ValueError, match='none of the inputs'):
        replay(classical_bag, 'force_monitor')
