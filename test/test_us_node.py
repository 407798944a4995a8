"""Node tests of the ultrasound node over real rclpy topics: a simulated B-mode frame in,
the lumen mask and tracked cross-sections out in the image frame; bad images refused."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from conftest import spin_for, spin_until
from rclpy.node import Node
from rclpy.parameter import Parameter

from ir_guidance import config
from ir_guidance.nodes.conversions import (
    cloud_array,
    contract_publisher,
    contract_subscription,
    image_msg,
)
from ir_guidance.nodes.sim import stamp_msg
from ir_guidance.nodes.ultrasound import UltrasoundNode
from ir_guidance.perception import us_data

FRAME = config.load()['frames']['us_image']
QUIET_S = 0.4


def _frame_with_vein():
    """A held-out frame (a test seed) at the default 40 mm depth with a sizeable vein."""
    for seed in us_data.test_seeds(20):
        for index in range(6):
            image, _, meta = us_data.make_frame(seed, index)
            big = [c for c, a in zip(meta['centres'], meta['areas_m2'], strict=True)
                   if a > 6e-6]
            if abs(meta['depth_m'] - 0.040) < 1e-9 and big and not meta['shadow']:
                return image, big
    raise AssertionError('no suitable frame among the held-out seeds')


@pytest.fixture(scope='module')
def frame():
    return _frame_with_vein()


class Scanner:
    """Publishes B-mode frames like the simulator or a scanner driver; records outputs."""

    def __init__(self, context) -> None:
        self.node = Node('us_test_scanner', context=context)
        self.pub = contract_publisher(self.node, 'us_image')
        self.received = defaultdict(list)
        for key in ('us_vessel_mask', 'us_vessels', 'perception_status'):
            contract_subscription(self.node, key, lambda m, key=key: self.received[key].append(m))

    def errors(self) -> list[str]:
        return [m.data for m in self.received['perception_status']]


def _start(ros_context, executor, segmenter):
    node = UltrasoundNode(context=ros_context,
                          parameter_overrides=[Parameter('segmenter', value=segmenter)])
    scanner = Scanner(ros_context)
    executor.add_node(node)
    executor.add_node(scanner.node)
    assert spin_until(executor, lambda: scanner.node.count_subscribers(
        config.topic('us_image')['name']) > 0)
    return node, scanner


def _stop(executor, node, scanner):
    executor.remove_node(node)
    executor.remove_node(scanner.node)
    node.destroy_node()
    scanner.node.destroy_node()


@pytest.mark.parametrize('segmenter', ['unet', 'classical'])
def test_frame_in_vessels_out(ros_context, executor, frame, segmenter):
    image, centres = frame
    node, scanner = _start(ros_context, executor, segmenter)
    try:
        for k in range(3):  # the same vessel in three frames keeps its track id
            scanner.pub.publish(image_msg(image, 'mono8', FRAME, stamp_msg(1.0 + k / 30)))
            assert spin_until(executor, lambda k=k: len(scanner.received['us_vessels']) > k,
                              timeout_s=10)
        mask = scanner.received['us_vessel_mask'][0]
        assert (mask.encoding, mask.height, mask.width, mask.header.frame_id) == \
            ('mono8', 256, 256, FRAME)
        clouds = [cloud_array(c) for c in scanner.received['us_vessels']]
        assert scanner.received['us_vessels'][0].header.frame_id == FRAME
        for x, y in centres:
            dist = np.hypot(clouds[0]['x'] - x, clouds[0]['y'] - y)
            assert dist.size and dist.min() < 1e-3, f'vessel at ({x:.4f}, {y:.4f}) missed'
        assert np.all(clouds[0]['z'] == 0.0) and np.all(clouds[0]['radius'] > 0)
        np.testing.assert_array_equal(np.sort(clouds[0]['id']), np.sort(clouds[2]['id']))
        assert not scanner.errors()
    finally:
        _stop(executor, node, scanner)


@pytest.mark.parametrize(('make', 'match'), [
    (lambda img: image_msg(np.dstack([img] * 3), 'rgb8', FRAME, stamp_msg(1.0)),
     'not accepted'),
    (lambda img: image_msg(img[:0], 'mono8', FRAME, stamp_msg(1.0)), 'empty'),
    (lambda img: _truncated(image_msg(img, 'mono8', FRAME, stamp_msg(1.0))), 'does not match'),
])
def test_bad_image_is_refused(ros_context, executor, frame, make, match):
    image, _ = frame
    node, scanner = _start(ros_context, executor, 'classical')
    try:
        scanner.pub.publish(make(image))
        assert spin_until(executor, lambda: any(match in e for e in scanner.errors()),
                          timeout_s=10)
        spin_for(executor, QUIET_S)
        assert not scanner.received['us_vessels'] and not scanner.received['us_vessel_mask']
    finally:
        _stop(executor, node, scanner)


def _truncated(msg):
    msg.data = bytes(msg.data)[:-10]
    return msg


def test_openigtlink_source(ros_context, executor, frame):
    """A PLUS/Slicer-like OpenIGTLink server streams the frame; the node segments it."""
    import signal

    import pyigtl

    image, centres = frame
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    server = pyigtl.OpenIGTLinkServer(port=0, local_server=True)
    try:
        node = UltrasoundNode(context=ros_context, parameter_overrides=[
            Parameter('source', value='igtl'), Parameter('segmenter', value='classical'),
            Parameter('igtl.port', value=server.server_address[1])])
        node_igtl = node._device
        scanner = Scanner(ros_context)
        executor.add_node(node)
        executor.add_node(scanner.node)
        try:
            assert node_igtl is not None and spin_until(executor, server.is_connected)
            spacing = np.diag([0.038 / 256 * 1e3, 0.040 / 256 * 1e3, 1.0, 1.0])
            server.send_message(pyigtl.ImageMessage(
                image[np.newaxis], ijk_to_world_matrix=spacing, device_name='Image_Reference'))
            assert spin_until(executor, lambda: scanner.received['us_vessels'], timeout_s=10)
            cloud = cloud_array(scanner.received['us_vessels'][0])
            x, y = centres[0]
            assert np.hypot(cloud['x'] - x, cloud['y'] - y).min() < 1e-3
        finally:
            _stop(executor, node, scanner)
    finally:
        server.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
