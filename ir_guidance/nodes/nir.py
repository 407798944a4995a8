"""nir: NIR vein detection as a ROS 2 node (a thin adapter over ir_guidance.perception).

Sources (parameter ``source``): ``topic`` takes ``/nir/image_raw`` (mono8), ``/nir/depth``
(16UC1 in mm, or 32FC1 in metres) and ``/nir/camera_info``, pairing image and depth by
stamp (the simulator and the RealSense driver stamp both with the capture time);
``realsense`` reads a RealSense camera (or a .bag) through ``ir_guidance.drivers``.

Outputs: ``/nir/vein_mask`` (mono8, the image's header) and ``/nir/veins`` (PointCloud2
with x, y, z, vein, confidence in the camera's optical frame). A bad input (wrong
encoding, size mismatch between image and depth, NaN depth, no camera info yet) gets
a clear error on ``/perception/status`` and produces no output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rclpy.node import Node

from ir_guidance import config
from ir_guidance.drivers import DriverError, FrameTimeout
from ir_guidance.nodes import runner
from ir_guidance.nodes.conversions import (
    cloud_msg,
    contract_publisher,
    contract_subscription,
    declare_section,
    image_array,
    image_msg,
    message_class,
    report_error,
    stamp_seconds,
)
from ir_guidance.perception.nir_veins import NirParams, NirVeinDetector

NODE_NAME = 'nir'
SOURCES = ('topic', 'realsense')
PENDING = 8  # unpaired images/depths kept while waiting for their partner
# Lockstep may not drop a frame: a sample DDS lost and resent (reliable) can come a second
# or more after its partner, while the sim runs on at several frames a second.
PENDING_LOCKSTEP = 200
CLOUD_FIELDS = ('x', 'y', 'z', 'vein', 'confidence')


def veins_cloud(points: list[np.ndarray], confidence: np.ndarray) -> np.ndarray:
    """One structured float32 array of every back-projected centreline point."""
    count = sum(len(p) for p in points)
    cloud = np.zeros(count, dtype=[(name, np.float32) for name in CLOUD_FIELDS])
    start = 0
    for vein, line in enumerate(points):
        end = start + len(line)
        cloud['x'][start:end], cloud['y'][start:end], cloud['z'][start:end] = line.T
        cloud['vein'][start:end] = vein
        cloud['confidence'][start:end] = confidence[vein]
        start = end
    return cloud


class NirNode(Node):
    """Detects veins in each NIR frame and publishes the mask and 3D centrelines."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        section = config.load()['nir']
        self.declare_parameter('source', section['source'])
        self.declare_parameter('lockstep', bool(config.load()['lockstep']['enabled']))
        source = self.get_parameter('source').value
        lockstep = bool(self.get_parameter('lockstep').value)
        self._pending_max = PENDING_LOCKSTEP if lockstep else PENDING
        if source not in SOURCES:
            raise ValueError(f'source must be one of {SOURCES}, got {source!r}')
        self.detector = NirVeinDetector(NirParams.from_config(section))
        self._mask_pub = contract_publisher(self, 'nir_vein_mask', lockstep)
        self._cloud_pub = contract_publisher(self, 'nir_veins', lockstep)
        self._status_pub = contract_publisher(self, 'perception_status')
        self._k: np.ndarray | None = None
        self._depth_scale = 0.001
        self._images: dict[float, Any] = {}
        self._depths: dict[float, Any] = {}
        self._device = None
        # Frames that arrived before the first camera info (topics have no mutual order).
        self._waiting_for_info: list[tuple[np.ndarray, np.ndarray, Any]] = []
        if source == 'topic':
            contract_subscription(self, 'nir_image', self._on_image, lockstep)
            contract_subscription(self, 'nir_depth', self._on_depth, lockstep)
            contract_subscription(self, 'nir_camera_info', self._on_info, lockstep)
        else:
            from ir_guidance.drivers.realsense import RealSenseSource

            camera = declare_section(self, 'realsense', section['realsense'])
            self._device = RealSenseSource(camera)
            info = self._device.camera_info()
            self._k = np.asarray(info['K'], dtype=float).reshape(3, 3)
            self._depth_scale = self._device.depth_scale
            self.create_timer(1.0 / float(camera['fps']), self._poll_device)

    def destroy_node(self) -> None:
        """Release the camera with the node."""
        if self._device is not None:
            self._device.close()
        super().destroy_node()

    def _error(self, text: str) -> None:
        report_error(self, self._status_pub, text)

    # -- topic source -------------------------------------------------------------------
    def _on_info(self, msg: Any) -> None:
        k = np.asarray(msg.k, dtype=float).reshape(3, 3)
        if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
            self._error(f'camera info has an unusable K: {k.ravel().tolist()}')
            return
        self._k = k
        waiting, self._waiting_for_info = self._waiting_for_info, []
        for ir, depth, header in waiting:
            self._process(ir, depth, header)

    def _on_image(self, msg: Any) -> None:
        self._pair(self._images, self._depths, stamp_seconds(msg.header.stamp), msg, None)

    def _on_depth(self, msg: Any) -> None:
        self._pair(self._depths, self._images, stamp_seconds(msg.header.stamp), None, msg)

    def _pair(self, mine: dict, other: dict, stamp: float, image: Any, depth: Any) -> None:
        """Process an image and a depth with the same stamp once both have arrived."""
        partner = other.pop(stamp, None)
        if partner is None:
            mine[stamp] = image if image is not None else depth
            while len(mine) > self._pending_max:
                dropped = min(mine)
                mine.pop(dropped)
                self.get_logger().warning(
                    f'dropped the unpaired {"image" if image is not None else "depth"} '
                    f'stamped {dropped:.6f} s: its partner never came', throttle_duration_sec=1.0)
            return
        image, depth = (image, partner) if image is not None else (partner, depth)
        try:
            ir = image_array(image, ('mono8', '8UC1'))
            raw = image_array(depth, ('16UC1', 'mono16', '32FC1'))
        except ValueError as error:
            self._error(str(error))
            return
        if raw.dtype == np.float32:  # metres (NaN already refused)
            raw = np.round(np.clip(raw, 0.0, 65.535) / self._depth_scale).astype(np.uint16)
        self._process(ir, raw, image.header)

    # -- device source ------------------------------------------------------------------
    def _poll_device(self) -> None:
        try:
            frame = self._device.read(timeout_ms=5)
        except FrameTimeout:
            return
        header = message_class('std_msgs/msg/Header')()
        header.frame_id = config.load()['frames']['camera_optical']
        header.stamp = self.get_clock().now().to_msg()
        self._process(frame.ir, frame.depth, header)

    # -- detection ----------------------------------------------------------------------
    def _process(self, ir: np.ndarray, depth: np.ndarray, header: Any) -> None:
        if self._k is None:
            self._error('no camera info received yet: cannot place veins in 3D')
            if self._device is None and len(self._waiting_for_info) < PENDING:
                self._waiting_for_info.append((ir, depth, header))
            return
        if ir.shape != depth.shape:
            self._error(f'image {ir.shape} and depth {depth.shape} sizes differ')
            return
        try:
            detection, points = self.detector.detect_points(ir, depth, self._k,
                                                            self._depth_scale)
        except ValueError as error:
            self._error(str(error))
            return
        self._mask_pub.publish(image_msg(detection.mask, 'mono8', header.frame_id,
                                         header.stamp))
        self._cloud_pub.publish(cloud_msg(veins_cloud(points, detection.confidence),
                                          header.frame_id, header.stamp))


NODE_CLASS = NirNode  # for in-process runs (ir-guidance sim --single-process)


def main(args: list[str] | None = None) -> int:
    """Run the NIR node until Ctrl-C; a bad parameter or missing device exits with 1."""
    return runner.spin(NirNode, NODE_NAME, args, (ValueError, OSError, DriverError))
