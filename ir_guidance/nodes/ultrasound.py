"""ultrasound: vessel segmentation and tracking as a ROS 2 node (thin adapter).

Sources (parameter ``source``): ``topic`` takes ``/us/image_raw`` (mono8, from the
simulator or any scanner driver); ``device`` grabs the scanner's video output with
OpenCV; ``igtl`` receives IMAGE messages over OpenIGTLink (PLUS Server, 3D Slicer).
The segmenter (``segmenter``: the trained U-Net or the classical baseline), the
cross-section extraction and the tracker are ``ir_guidance.perception``.

Outputs, stamped and framed like the input image: ``/us/vessel_mask`` (mono8, 255 =
lumen) and ``/us/vessels`` (PointCloud2: x, y, z, radius, radius_minor, confidence, id in
the image frame: x lateral, y depth, z = 0). A bad image (wrong encoding or size, empty)
gets a clear error on ``/perception/status`` and no output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rclpy.node import Node

from ir_guidance import config
from ir_guidance.drivers import DriverError, EndOfStream, FrameTimeout
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
)
from ir_guidance.perception import us_vessels

NODE_NAME = 'ultrasound'
SOURCES = ('topic', 'device', 'igtl')
SEGMENTERS = ('unet', 'classical')
CLOUD_FIELDS = ('x', 'y', 'z', 'radius', 'radius_minor', 'confidence', 'id')
DEVICE_POLL_HZ = 60.0


def vessels_cloud(tracks: list[us_vessels.Track]) -> np.ndarray:
    """One structured float32 point per tracked cross-section (image frame, metres)."""
    cloud = np.zeros(len(tracks), dtype=[(name, np.float32) for name in CLOUD_FIELDS])
    for i, track in enumerate(tracks):
        section = track.filtered
        cloud[i] = (section.x, section.y, 0.0, section.radius_major, section.radius_minor,
                    section.confidence, track.id)
    return cloud


class UltrasoundNode(Node):
    """Segments each B-mode frame, tracks the vessels, publishes mask and cross-sections."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        section = config.load()['ultrasound']
        for name in ('source', 'segmenter', 'weights', 'width_m', 'depth_m',
                     'track_gate_mm', 'min_area_mm2', 'mask_threshold'):
            self.declare_parameter(name, section[name])
        p = {name: self.get_parameter(name).value for name in (
            'source', 'segmenter', 'weights', 'width_m', 'depth_m', 'track_gate_mm',
            'min_area_mm2', 'mask_threshold')}
        if p['source'] not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {p['source']!r}")
        if p['segmenter'] not in SEGMENTERS:
            raise ValueError(f"segmenter must be one of {SEGMENTERS}, got {p['segmenter']!r}")
        self.declare_parameter('lockstep', bool(config.load()['lockstep']['enabled']))
        lockstep = bool(self.get_parameter('lockstep').value)
        self.params = p
        self.frame_id = config.load()['frames']['us_image']
        if p['segmenter'] == 'unet':
            from ir_guidance.perception.us_model import UsSegmenter

            weights = p['weights']  # relative paths: see us_model.resolve_weights
            self.declare_parameter('threads', int(section['threads']))
            self._unet = UsSegmenter(weights, threshold=float(p['mask_threshold']),
                                     threads=int(self.get_parameter('threads').value))
        self.tracker = us_vessels.VesselTracker(gate_mm=float(p['track_gate_mm']))
        self._mask_pub = contract_publisher(self, 'us_vessel_mask', lockstep)
        self._cloud_pub = contract_publisher(self, 'us_vessels', lockstep)
        self._status_pub = contract_publisher(self, 'perception_status')
        self._device = None
        if p['source'] == 'topic':
            contract_subscription(self, 'us_image', self._on_image, lockstep)
        else:
            self._device = self._open_device(p['source'], section)
            self._poll_timer = self.create_timer(1.0 / DEVICE_POLL_HZ, self._poll_device)

    def _open_device(self, source: str, section: dict) -> Any:
        sub = declare_section(self, source, section[source])
        if source == 'device':
            from ir_guidance.drivers.us_capture import VideoCaptureSource

            return VideoCaptureSource(sub, self.params['width_m'], self.params['depth_m'])
        from ir_guidance.drivers.igtl import IgtlImageSource

        # A short wait per poll: the executor must not block on a silent server.
        return IgtlImageSource.from_section(sub, timeout_s=0.001)

    def destroy_node(self) -> None:
        """Release the capture device with the node."""
        if self._device is not None:
            self._device.close()
        super().destroy_node()

    def _error(self, text: str) -> None:
        report_error(self, self._status_pub, text)

    def _on_image(self, msg: Any) -> None:
        try:
            image = image_array(msg, ('mono8', '8UC1'))
        except ValueError as error:
            self._error(str(error))
            return
        self._process(image, msg.header)

    def _poll_device(self) -> None:
        try:
            frame = self._device.read()
        except FrameTimeout:
            return
        except EndOfStream:
            self._error('end of the recording: no more frames')
            self._poll_timer.cancel()
            return
        except DriverError as error:
            self._error(str(error))
            return
        header = message_class('std_msgs/msg/Header')()
        header.frame_id = self.frame_id
        header.stamp = self.get_clock().now().to_msg()
        self._process(frame.image, header)

    def _process(self, image: np.ndarray, header: Any) -> None:
        width, depth = float(self.params['width_m']), float(self.params['depth_m'])
        try:
            if self.params['segmenter'] == 'unet':
                result = self._unet.segment(image)
                mask, probability = result.mask, result.probability
            else:
                from ir_guidance.perception.us_classical import segment_classical

                mask, probability = segment_classical(image, width, depth), None
            sections = us_vessels.cross_sections(
                mask, width, depth, probability=probability,
                min_area_mm2=float(self.params['min_area_mm2']))
        except ValueError as error:
            self._error(str(error))
            return
        tracks = self.tracker.update(sections)
        self._mask_pub.publish(image_msg((mask > 0).astype(np.uint8) * 255, 'mono8',
                                         header.frame_id or self.frame_id, header.stamp))
        self._cloud_pub.publish(cloud_msg(vessels_cloud(tracks),
                                          header.frame_id or self.frame_id, header.stamp))


NODE_CLASS = UltrasoundNode  # for in-process runs (ir-guidance sim --single-process)


def main(args: list[str] | None = None) -> int:
    """Run the ultrasound node until Ctrl-C; a bad parameter or device exits with 1."""
    return runner.spin(UltrasoundNode, NODE_NAME, args, (ValueError, OSError, DriverError))
