"""arm_interface: joint states in, tool poses out; joint commands checked, then forwarded.

The only node that talks to the ros2_control controllers. It owns no algorithm: the
checks live in ``ir_guidance.joint_guard`` and the kinematics in
``ir_guidance.kinematics``. Topics, types, QoS and defaults come from
``config/ir_guidance.yaml``; the ``arm_interface`` section is declared as ROS parameters
so ``--ros-args -p name:=value`` overrides them (read once, at start-up).

Status on the ``arm_status`` topic (std_msgs/String) starts with ``OK``, ``STALE``,
``ERROR`` (a joint state was rejected) or ``REFUSED`` (a command was not forwarded). A
status is published when it changes and repeated at most once a second otherwise.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from transforms3d.quaternions import mat2quat

from ir_guidance import config
from ir_guidance.joint_guard import CommandError, GuardParams, JointStateError, make_guards
from ir_guidance.nodes import runner
from ir_guidance.nodes.conversions import (
    contract_publisher,
    contract_subscription,
    duration_msg,
    fill_pose,
    message_class,
    stamp_seconds,
)
from ir_guidance.rig_description import rig_chain

try:  # Not in the pip-wheel ROS install; present on a full ROS 2 install.
    from tf2_ros import TransformBroadcaster
except ImportError:
    TransformBroadcaster = None

NODE_NAME = 'arm_interface'
# (topic key, frames key) of each tool pose this node publishes.
POSE_OUTPUTS = (('needle_tip_pose', 'needle_tip'), ('probe_pose', 'us_image'),
                ('camera_pose', 'camera_optical'))
COMMAND_TOPICS = {'position': 'position_commands', 'trajectory': 'trajectory_commands'}
# The staleness watchdog only reports; the guard itself refuses commands on old state,
# so this rate bounds how late a STALE status is, not how late a refusal is.
WATCHDOG_HZ = 10.0
STATUS_REPEAT_S = 1.0
LOG_THROTTLE_S = 1.0

PARAMETER_DESCRIPTIONS = {
    'command_interface': "'position': Float64MultiArray to the forward position controller; "
                         "'trajectory': one-point JointTrajectory to the trajectory controller",
    'joint_state_timeout_s': 'a joint state older than this (by its stamp) is rejected, '
                             'and commands are refused while no newer one is known',
    'pose_rate_hz': 'maximum tool-pose publication rate (by joint state stamp); 0: every state',
    'max_step_rad': 'largest move of a revolute joint from the measured state in one command',
    'max_step_m': 'largest move of a prismatic joint from the measured state in one command',
    'trajectory_point_time_s': 'time_from_start of the single trajectory point',
    'publish_tf': 'broadcast base -> tool frames on /tf (needs tf2_ros); leave false when '
                  'robot_state_publisher runs, it already publishes the whole tree',
}


class ArmInterface(Node):
    """Publishes the tool poses of each valid joint state and forwards checked commands.

    ``kwargs`` go to ``rclpy.node.Node`` (``context``, ``parameter_overrides``,
    ``cli_args``...), so tests can run the node in-process with their own context.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        cfg = config.load()
        # Lockstep simulation: stamps are sim time and sim time only moves when the stack
        # answers, so "now" is the newest stamp received (no 1 kHz /clock to follow).
        self.declare_parameter('lockstep', bool(cfg['lockstep']['enabled']))
        self.lockstep = bool(self.get_parameter('lockstep').value)
        self._newest = 0.0
        self.params = self._declare_parameters(cfg['arm_interface'])
        interface = self.params['command_interface']
        if interface not in COMMAND_TOPICS:
            raise ValueError(f'command_interface must be one of {sorted(COMMAND_TOPICS)}, '
                             f'got {interface!r}')
        if not self.params['pose_rate_hz'] >= 0.0:
            raise ValueError(f"pose_rate_hz must be >= 0, got {self.params['pose_rate_hz']}")
        if not self.params['trajectory_point_time_s'] > 0.0:
            raise ValueError('trajectory_point_time_s must be > 0, got '
                             f"{self.params['trajectory_point_time_s']}")
        self.command_interface = interface
        self.joint_order = config.joint_names()
        self.chain = rig_chain()
        self.state_guard, self.command_guard = make_guards(
            self.chain, self.params, self.joint_order)
        frames = cfg['frames']
        self.base_frame = frames['base']
        self.pose_frames = [frames[frame_key] for _, frame_key in POSE_OUTPUTS]
        self._min_pose_period = 0.0 if self.params['pose_rate_hz'] == 0.0 else \
            1.0 / self.params['pose_rate_hz']
        self._last_pose_stamp = -math.inf

        self._pose_outputs = [
            (contract_publisher(self, topic_key),
             message_class(config.topic(topic_key)['type']), frame)
            for (topic_key, _), frame in zip(POSE_OUTPUTS, self.pose_frames, strict=True)]
        self._status_pub = contract_publisher(self, 'arm_status')
        self._command_key = COMMAND_TOPICS[interface]
        self._command_pub = contract_publisher(self, self._command_key)
        contract_subscription(self, 'joint_states', self._on_joint_state)
        contract_subscription(self, 'joint_command', self._on_joint_command)
        self._tf = None
        if self.params['publish_tf']:
            if TransformBroadcaster is None:
                self.get_logger().warning('publish_tf is set but tf2_ros is not importable: '
                                          'tool frames are not broadcast (poses still are)')
            else:
                self._tf = TransformBroadcaster(self)

        # (key, text, monotonic time of last publication) per status channel.
        self._health = ('stale', 'STALE: no joint state received yet; commands refused', -1.0)
        self._health_published = False
        self._command_status = ('', '', -math.inf)
        self._watchdog = self.create_timer(1.0 / WATCHDOG_HZ, self._check_staleness)
        self.get_logger().info(f'forwarding {interface} commands to '
                               f"{config.topic(self._command_key)['name']}")

    # -- setup ------------------------------------------------------------------------------
    def _declare_parameters(self, section: dict[str, Any]) -> dict[str, Any]:
        """Declare every key of config's section as a read-only parameter; return values."""
        for name, default in section.items():
            descriptor = ParameterDescriptor(
                description=PARAMETER_DESCRIPTIONS.get(name, 'see config/ir_guidance.yaml'),
                read_only=True)
            self.declare_parameter(name, default, descriptor)
        values = {name: self.get_parameter(name).value for name in section}
        # Validate the guard's values now, so a bad override fails at start-up.
        GuardParams.from_config(values)
        return values

    def _now(self) -> float:
        if self.lockstep:
            return self._newest
        return self.get_clock().now().nanoseconds * 1e-9

    # -- status ---------------------------------------------------------------------------
    def _publish_status(self, text: str) -> None:
        msg = message_class(config.topic('arm_status')['type'])()
        msg.data = text
        self._status_pub.publish(msg)

    def _set_health(self, key: str, text: str) -> None:
        """Publish the joint-state health when it changes, else at most once a second."""
        last_key, _, last_time = self._health
        now = time.monotonic()
        if key != last_key or not self._health_published or \
                now - last_time >= STATUS_REPEAT_S:
            self._publish_status(text)
            self._health = (key, text, now)
            self._health_published = True
        else:
            self._health = (key, text, last_time)

    def _refuse_command(self, error: CommandError) -> None:
        text = f'REFUSED: command not forwarded ({error.reason}): {error}'
        self.get_logger().error(text, throttle_duration_sec=LOG_THROTTLE_S)
        last_key, _, last_time = self._command_status
        now = time.monotonic()
        if error.reason != last_key or now - last_time >= STATUS_REPEAT_S:
            self._publish_status(text)
            self._command_status = (error.reason, text, now)

    def _check_staleness(self) -> None:
        now = self._now()
        key, text, _ = self._health
        if not self.command_guard.has_fresh_state(now) and key in ('ok', 'stale'):
            age = self.command_guard.state_age(now)
            since = 'none received yet' if math.isinf(age) else f'last is {age:.3f} s old'
            self._set_health('stale', f'STALE: no fresh joint state ({since}, timeout '
                             f"{self.params['joint_state_timeout_s']:g} s); commands refused")
        else:
            self._set_health(key, text)

    # -- joint states ---------------------------------------------------------------------
    def _on_joint_state(self, msg: Any) -> None:
        stamp = stamp_seconds(msg.header.stamp)
        self._newest = max(self._newest, stamp)
        try:
            positions = self.state_guard.validate(msg.name, msg.position, stamp, self._now())
        except JointStateError as error:
            self.command_guard.clear_state()
            text = f'ERROR: joint state rejected ({error.reason}): {error}'
            self.get_logger().error(text, throttle_duration_sec=LOG_THROTTLE_S)
            self._set_health(f'state:{error.reason}', text)
            return
        self.command_guard.update_state(positions, stamp)
        self._set_health('ok', 'OK: joint states valid; commands accepted')
        # Stamps going backwards (a bag looping, a sim reset) restart the rate limit.
        if stamp < self._last_pose_stamp or \
                stamp - self._last_pose_stamp >= 0.9 * self._min_pose_period:
            self._last_pose_stamp = stamp
            self._publish_poses(positions, msg.header.stamp)

    def _publish_poses(self, positions: np.ndarray, stamp: Time) -> None:
        # Only the poses someone looks at (or TF carries): FK and messages cost at 100 Hz.
        wanted = [output for output in self._pose_outputs
                  if self._tf is not None or output[0].get_subscription_count()]
        if not wanted:
            return
        poses = self.chain.fk_all(positions, self.pose_frames)
        transforms = []
        for publisher, msg_class, frame in wanted:
            msg = msg_class()
            msg.header.stamp = stamp
            msg.header.frame_id = self.base_frame
            fill_pose(msg.pose, poses[frame])
            publisher.publish(msg)
            if self._tf is not None:
                transforms.append(self._transform(poses[frame], frame, stamp))
        if transforms:
            self._tf.sendTransform(transforms)

    def _transform(self, matrix: np.ndarray, child: str, stamp: Time) -> Any:
        msg = message_class('geometry_msgs/msg/TransformStamped')()
        msg.header.stamp = stamp
        msg.header.frame_id = self.base_frame
        msg.child_frame_id = child
        t, q = msg.transform.translation, msg.transform.rotation
        t.x, t.y, t.z = (float(v) for v in matrix[:3, 3])
        q.w, q.x, q.y, q.z = (float(v) for v in mat2quat(matrix[:3, :3]))
        return msg

    # -- commands -------------------------------------------------------------------------
    def _on_joint_command(self, msg: Any) -> None:
        try:
            positions = self.command_guard.validate(msg.name, msg.position, self._now())
        except CommandError as error:
            self._refuse_command(error)
            return
        out = message_class(config.topic(self._command_key)['type'])()
        if self.command_interface == 'position':
            out.data = positions.tolist()
        else:
            # A zero header stamp tells joint_trajectory_controller to start now.
            out.joint_names = list(self.joint_order)
            point = message_class('trajectory_msgs/msg/JointTrajectoryPoint')()
            point.positions = positions.tolist()
            point.time_from_start = duration_msg(self.params['trajectory_point_time_s'])
            out.points = [point]
        self._command_pub.publish(out)


NODE_CLASS = ArmInterface  # for in-process runs (ir-guidance sim --single-process)


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C or an external shutdown; returns the exit status."""
    return runner.spin(ArmInterface, NODE_NAME, args)
