"""Message and QoS helpers shared by the nodes (ROS adapters, no algorithms)."""

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


def contract_publisher(node: Any, key: str) -> Any:
    """A publisher on the contract topic ``key`` (name, type and QoS from config/)."""
    from ir_guidance import config

    spec = config.topic(key)
    return node.create_publisher(message_class(spec['type']), spec['name'],
                                 qos_profile(spec['qos']))


def contract_subscription(node: Any, key: str, callback: Any) -> Any:
    """A subscription to the contract topic ``key`` (name, type and QoS from config/)."""
    from ir_guidance import config

    spec = config.topic(key)
    return node.create_subscription(message_class(spec['type']), spec['name'], callback,
                                    qos_profile(spec['qos']))
