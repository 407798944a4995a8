"""Message, QoS and parameter helpers shared by the nodes (ROS adapters, no algorithms)."""

from __future__ import annotations

import functools
import importlib
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration, Time
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from transforms3d.quaternions import mat2quat


@functools.cache
def message_class(type_name: str) -> type:
    """Import a message class from its ROS name, e.g. ``sensor_msgs/msg/JointState``."""
    package, kind, name = type_name.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)


def qos_profile(kind: str) -> QoSProfile:
    """The QoS of a config ``qos`` value: ``sensor`` (best effort) or ``reliable``."""
    if kind == 'sensor':
        return qos_profile_sensor_data
    if kind == 'reliable':
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                          reliability=ReliabilityPolicy.RELIABLE)
    raise ValueError(f'unknown qos {kind!r} in config (expected sensor or reliable)')


def stamp_seconds(stamp: Time) -> float:
    """A ``builtin_interfaces/Time`` as float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def duration_msg(seconds: float) -> Duration:
    """Float seconds as a ``builtin_interfaces/Duration``."""
    nanoseconds = round(seconds * 1e9)
    return Duration(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def fill_pose(pose: Any, matrix: np.ndarray) -> None:
    """Write a 4x4 homogeneous transform into a ``geometry_msgs/Pose``."""
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in matrix[:3, 3])
    w, x, y, z = mat2quat(matrix[:3, :3])
    pose.orientation.w, pose.orientation.x = float(w), float(x)
    pose.orientation.y, pose.orientation.z = float(y), float(z)


# Lockstep runs must not lose a sample: sensor topics become reliable with a deep queue.
LOCKSTEP_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                          reliability=ReliabilityPolicy.RELIABLE)


def contract_publisher(node: Any, key: str, lockstep: bool = False) -> Any:
    """A publisher on the contract topic ``key`` (name, type and QoS from config/).

    ``lockstep``: a sensor topic is published reliable with a deep queue (a reliable
    writer still serves best-effort readers).
    """
    from ir_guidance import config

    spec = config.topic(key)
    qos = LOCKSTEP_QOS if lockstep else qos_profile(spec['qos'])
    return node.create_publisher(message_class(spec['type']), spec['name'], qos)


def contract_subscription(node: Any, key: str, callback: Any, lockstep: bool = False) -> Any:
    """A subscription to the contract topic ``key`` (name, type and QoS from config/).

    ``lockstep``: reliable with a deep queue, so that no result is ever dropped.
    """
    from ir_guidance import config

    spec = config.topic(key)
    qos = LOCKSTEP_QOS if lockstep else qos_profile(spec['qos'])
    return node.create_subscription(message_class(spec['type']), spec['name'], callback, qos)


def image_msg(image: np.ndarray, encoding: str, frame_id: str, stamp: Any) -> Any:
    """A ``sensor_msgs/Image`` holding ``image`` (mono8 or 16UC1)."""
    msg = message_class('sensor_msgs/msg/Image')()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = image.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = image.strides[0]
    msg.data = np.ascontiguousarray(image).tobytes()
    return msg


# Image encodings the nodes accept, with their numpy type and channel count.
ENCODINGS = {'mono8': (np.uint8, 1), '8UC1': (np.uint8, 1), 'mono16': (np.uint16, 1),
             '16UC1': (np.uint16, 1), '32FC1': (np.float32, 1)}


def image_array(msg: Any, encodings: tuple[str, ...]) -> np.ndarray:
    """The pixels of a ``sensor_msgs/Image`` as a 2D array, or ValueError saying why not.

    Checks what a sender can get wrong: an encoding this node does not take, an empty
    image, a row step or data size that does not match the header, and NaN/inf pixels
    in a float image.
    """
    if msg.encoding not in encodings:
        raise ValueError(f'encoding {msg.encoding!r} not accepted (expected one of '
                         f'{list(encodings)})')
    dtype, channels = ENCODINGS[msg.encoding]
    itemsize = np.dtype(dtype).itemsize
    if msg.height == 0 or msg.width == 0:
        raise ValueError('empty image (0 rows or columns)')
    if msg.step < msg.width * channels * itemsize or len(msg.data) != msg.step * msg.height:
        raise ValueError(f'image data ({len(msg.data)} bytes, step {msg.step}) does not match '
                         f'{msg.height}x{msg.width} {msg.encoding}')
    rows = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)
    image = rows[:, :msg.width * channels * itemsize].copy().view(dtype)
    if msg.is_bigendian != (np.dtype(dtype).byteorder == '>') and itemsize > 1:
        image = image.byteswap()
    if image.dtype.kind == 'f' and not np.all(np.isfinite(image)):
        raise ValueError('image has NaN or infinite pixels')
    return image.reshape(msg.height, msg.width)


def cloud_msg(points: np.ndarray, frame_id: str, stamp: Any) -> Any:
    """A ``sensor_msgs/PointCloud2`` holding a structured float32 array (one field each).

    (sensor_msgs_py is not available as a wheel; this is the few lines it would be.)
    """
    cloud = message_class('sensor_msgs/msg/PointCloud2')()
    field_cls = message_class('sensor_msgs/msg/PointField')
    cloud.header.frame_id = frame_id
    cloud.header.stamp = stamp
    cloud.height, cloud.width = 1, len(points)
    cloud.fields = [field_cls(name=name, offset=4 * i, datatype=field_cls.FLOAT32, count=1)
                    for i, name in enumerate(points.dtype.names)]
    cloud.is_bigendian = False
    cloud.point_step = 4 * len(points.dtype.names)
    cloud.row_step = cloud.point_step * len(points)
    cloud.is_dense = True
    cloud.data = np.ascontiguousarray(points).tobytes()
    return cloud


def cloud_array(msg: Any) -> np.ndarray:
    """The points of a PointCloud2 written by :func:`cloud_msg` (float32 fields)."""
    names = [f.name for f in msg.fields]
    dtype = np.dtype({'names': names, 'formats': [np.float32] * len(names),
                      'offsets': [f.offset for f in msg.fields], 'itemsize': msg.point_step})
    return np.frombuffer(bytes(msg.data), dtype=dtype, count=msg.width * msg.height)


def declare_section(node: Any, prefix: str, section: dict[str, Any]) -> dict[str, Any]:
    """Declare a config subsection as parameters ``<prefix>.<key>``; return their values.

    The YAML gives the defaults; ``--ros-args -p prefix.key:=value`` overrides them.
    """
    values = {}
    for key, default in section.items():
        name = f'{prefix}.{key}'
        node.declare_parameter(name, default)
        values[key] = node.get_parameter(name).value
    return values


def report_error(node: Any, status_publisher: Any, text: str) -> None:
    """Log ``text`` as an error (throttled) and publish it as a String status."""
    node.get_logger().error(text, throttle_duration_sec=1.0)
    msg = message_class('std_msgs/msg/String')()
    msg.data = f'ERROR {node.get_name()}: {text}'
    status_publisher.publish(msg)
