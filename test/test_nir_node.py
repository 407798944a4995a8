"""Node tests of the nir node over real rclpy topics: a simulated NIR frame in, the vein
mask and 3D centrelines out in the camera frame; each bad input refused."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from conftest import spin_for, spin_until
from rclpy.node import Node

from ir_guidance import config
from ir_guidance.nodes.conversions import (
    cloud_array,
    contract_publisher,
    contract_subscription,
    image_msg,
    message_class,
)
from ir_guidance.nodes.nir import NirNode
from ir_guidance.nodes.sim import stamp_msg
from ir_guidance.perception.nir_metrics import looking_down_pose
from ir_guidance.sim.nir import CameraConfig, NirSimulator
from ir_guidance.sim.phantom import Phantom, Vein

FRAME = config.load()['frames']['camera_optical']
QUIET_S = 0.4


@pytest.fixture(scope='module')
def scene():
    """A shallow vein (2.5 mm to its lumen) under a camera 10 cm above the arm."""
    phantom = Phantom(veins=(Vein(x=0.43, depth=4.0e-3, width=4.5e-3, height=3.0e-3),))
    sim = NirSimulator(phantom, CameraConfig(), seed=0)
    pose = looking_down_pose(phantom, 0.10)
    ir, depth = sim.render(pose, None, 0)
    return phantom, sim, pose, ir, depth


class Camera:
    """Publishes frames like the simulator or the RealSense driver, records outputs."""

    def __init__(self, context) -> None:
        self.node = Node('nir_test_camera', context=context)
        self.pub = {key: contract_publisher(self.node, key)
                    for key in ('nir_image', 'nir_depth', 'nir_camera_info')}
        self.received = defaultdict(list)
        for key in ('nir_vein_mask', 'nir_veins', 'perception_status'):
            contract_subscription(self.node, key, lambda m, key=key: self.received[key].append(m))

    def info(self, k: np.ndarray, stamp) -> None:
        msg = message_class('sensor_msgs/msg/CameraInfo')()
        msg.header.stamp, msg.header.frame_id = stamp, FRAME
        msg.k = np.asarray(k, dtype=float).ravel().tolist()
        self.pub['nir_camera_info'].publish(msg)

    def frame(self, ir, depth, stamp, ir_encoding='mono8', depth_encoding='16UC1') -> None:
        self.pub['nir_image'].publish(image_msg(ir, ir_encoding, FRAME, stamp))
        self.pub['nir_depth'].publish(image_msg(depth, depth_encoding, FRAME, stamp))

    def errors(self) -> list[str]:
        return [m.data for m in self.received['perception_status']]


@pytest.fixture
def rig(ros_context, executor):
    node = NirNode(context=ros_context)
    camera = Camera(ros_context)
    executor.add_node(node)
    executor.add_node(camera.node)
    yield node, camera
    executor.remove_node(node)
    executor.remove_node(camera.node)
    node.destroy_node()
    camera.node.destroy_node()


def test_frame_in_veins_out(rig, executor, scene):
    phantom, sim, pose, ir, depth = scene
    _, camera = rig
    k = np.asarray(sim.camera_info()['K'], dtype=float).reshape(3, 3)
    assert spin_until(executor, lambda: camera.node.count_subscribers(
        config.topic('nir_image')['name']) > 0)
    camera.info(k, stamp_msg(1.0))
    spin_for(executor, 0.1)
    camera.frame(ir, depth, stamp_msg(1.0))
    assert spin_until(executor, lambda: camera.received['nir_veins'], timeout_s=10)
    mask = camera.received['nir_vein_mask'][0]
    assert (mask.encoding, mask.height, mask.width) == ('mono8', 480, 640)
    cloud = camera.received['nir_veins'][0]
    assert cloud.header.frame_id == FRAME
    points = cloud_array(cloud)
    assert len(points) > 50
    # In the world, the centreline lies on the skin above the vein.
    xyz = np.column_stack((points['x'], points['y'], points['z'])).astype(float)
    world = xyz @ pose[:3, :3].T + pose[:3, 3]
    assert np.median(np.abs(world[:, 0] - 0.43)) < 1.5e-3
    skin = phantom.skin_z(world[:, 0], world[:, 1])
    assert np.median(np.abs(world[:, 2] - skin)) < 2e-3
    assert not camera.errors()


@pytest.mark.parametrize(('case', 'match'), [
    ('encoding', 'not accepted'),
    ('size', 'sizes differ'),
    ('nan_depth', 'NaN'),
    ('no_info', 'no camera info'),
])
def test_bad_input_is_refused(rig, executor, scene, case, match):
    _, sim, _, ir, depth = scene
    _, camera = rig
    k = np.asarray(sim.camera_info()['K'], dtype=float).reshape(3, 3)
    assert spin_until(executor, lambda: camera.node.count_subscribers(
        config.topic('nir_image')['name']) > 0)
    if case != 'no_info':
        camera.info(k, stamp_msg(1.0))
        spin_for(executor, 0.1)
    stamp = stamp_msg(2.0)
    if case == 'encoding':
        camera.frame(np.dstack([ir] * 3), depth, stamp, ir_encoding='rgb8')
    elif case == 'size':
        camera.frame(ir, depth[:240, :320].copy(), stamp)
    elif case == 'nan_depth':
        metres = depth.astype(np.float32) / 1000.0
        metres[100:110, 100:110] = np.nan
        camera.frame(ir, metres, stamp, depth_encoding='32FC1')
    else:
        camera.frame(ir, depth, stamp)
    assert spin_until(executor, lambda: any(match in e for e in camera.errors()), timeout_s=10)
    spin_for(executor, QUIET_S)
    assert not camera.received['nir_veins'] and not camera.received['nir_vein_mask']


def test_realsense_source_without_a_camera_fails_clearly(ros_context):
    import pyrealsense2 as rs
    from rclpy.parameter import Parameter

    from ir_guidance.drivers import DeviceError

    if len(rs.context().query_devices()):
        pytest.skip('a RealSense camera is connected')
    with pytest.raises(DeviceError, match='RealSense'):
        NirNode(context=ros_context, parameter_overrides=[Parameter('source', value='realsense')])
