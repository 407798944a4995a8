"""live_view: the contract topics on a Foxglove WebSocket server (thin ROS adapter).

Subscribes to the images and masks, markers, poses, path, wrenches, joint states and
state/status text of ``config/`` ``topics:`` and forwards them with
``ir_guidance.live.foxglove_view`` (conversions and server, ROS-free). Foxglove channels
carry the ROS topic names, plus ``/live/us_overlay`` and ``/live/nir_overlay`` (image with
its mask tinted, paired by stamp), ``/live/tf`` (base -> tool frames from the pose
topics) and ``/live/log`` (state and status lines). ``docs/live_view.md`` lists them.

A viewer must never slow the run it shows: every subscription is the contract QoS (sensor
topics best effort, so no reliable writer ever waits for this node), images are forwarded
at most ``image_rate_hz``, poses/joints/forces at their own rates (wall clock), nothing is
converted for a channel no client subscribes to, and the SDK drops the oldest messages of
a client that falls behind. The server binds to ``host`` (127.0.0.1 by default: this
machine only); any other address is the user's explicit choice and is logged as a warning.
Inputs it cannot show (bad image, NaN pose, unknown marker) are logged (throttled) and
put on ``/live/log``, and so is an unexpected exception in a handler (with its traceback):
a viewer fault never stops the node, so it can never end the run it shows.
"""

from __future__ import annotations

import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from rclpy.node import Node

from ir_guidance import config
from ir_guidance.live import foxglove_view as fv
from ir_guidance.nodes import runner
from ir_guidance.nodes.conversions import contract_subscription, image_array

NODE_NAME = 'live_view'
PARAMETERS = ('host', 'port', 'server_name', 'image_format', 'jpeg_quality', 'image_rate_hz',
              'pose_rate_hz', 'joint_rate_hz', 'force_rate_hz', 'message_backlog',
              'exclude_topics')
IMAGE_ENCODINGS = ('mono8', '8UC1', 'mono16', '16UC1')
US_OVERLAY, NIR_OVERLAY = '/live/us_overlay', '/live/nir_overlay'
TF_TOPIC, LOG_TOPIC = '/live/tf', '/live/log'
# image key -> (mask key, overlay channel); mask key -> (image key, overlay channel)
IMAGE_MASKS = {'us_image': ('us_vessel_mask', US_OVERLAY),
               'nir_image': ('nir_vein_mask', NIR_OVERLAY)}
MASK_IMAGES = {mask: (image, overlay) for image, (mask, overlay) in IMAGE_MASKS.items()}
OVERLAY_CACHE = 8  # images kept per stream to pair with their mask (same stamp)
# Pose topic -> frames key of the child frame it places in /live/tf ('' = not a frame).
POSE_FRAMES = {'needle_tip_pose': 'needle_tip', 'probe_pose': 'us_image',
               'camera_pose': 'camera_optical', 'gt_needle_tip': '', 'vessel_map_target': ''}
WRENCHES = ('force_filtered', 'ft_wrench')
STATUS_TEXT = ('sim_status', 'arm_status', 'perception_status')
DIAGNOSTIC_LEVELS = {0: fv.fm.LogLevel.Info, 1: fv.fm.LogLevel.Warning,
                     2: fv.fm.LogLevel.Error, 3: fv.fm.LogLevel.Warning}


class LiveViewNode(Node):
    """Forwards the contract topics to Foxglove clients (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        section = config.load()['live_view']
        for name in PARAMETERS:
            self.declare_parameter(name, section[name])
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        self.params = p
        self.frames = config.load()['frames']
        exclude = {k.strip() for k in str(p['exclude_topics']).split(',') if k.strip()}
        topics = config.load()['topics']
        unknown = exclude - set(topics)
        if unknown:
            raise ValueError(f'exclude_topics names unknown topic keys {sorted(unknown)}')
        self.rates = {kind: fv.RateLimiter(p[f'{kind}_rate_hz'])
                      for kind in ('image', 'pose', 'joint', 'force')}
        self.server = fv.LiveServer(host=p['host'], port=int(p['port']),
                                    name=p['server_name'], image_format=p['image_format'],
                                    jpeg_quality=int(p['jpeg_quality']),
                                    message_backlog=int(p['message_backlog']))
        try:
            self._connect(topics, exclude)
        except BaseException:
            self.server.stop()  # the port is free again for the next try
            raise
        if not fv.is_loopback(p['host']):
            self.get_logger().warning(
                f"serving on {p['host']}: other machines can connect and see every image "
                f'and pose (no authentication); use 127.0.0.1 unless that is intended')
        self.get_logger().info(f'Foxglove live view on {self.server.url} '
                               f'({len(self.server.topics)} channels)')

    def _connect(self, topics: dict[str, Any], exclude: set[str]) -> None:
        """Advertise the channels, start the server, subscribe to the topics not excluded."""
        self._cache: dict[str, OrderedDict[int, Any]] = {k: OrderedDict() for k in IMAGE_MASKS}
        self.errors = 0
        self._name: dict[str, str] = {}
        handlers: dict[str, tuple[str, Any, Callable[[str, Any], None]]] = {}
        for key in ('us_image', 'nir_image', 'us_vessel_mask', 'nir_vein_mask'):
            handlers[key] = ('image', None, self._on_image)
        for key in ('vessel_map_markers', 'gt_vessels'):
            handlers[key] = ('scene', None, self._on_markers)
        for key in POSE_FRAMES:
            handlers[key] = ('pose', None, self._on_pose)
        handlers['planner_path'] = ('poses', None, self._on_path)
        for key in WRENCHES:
            handlers[key] = ('json', fv.WRENCH_SCHEMA, self._on_wrench)
        handlers['joint_states'] = ('json', fv.JOINTS_SCHEMA, self._on_joints)
        handlers['guidance_state'] = ('json', fv.STATE_SCHEMA, self._on_state)
        handlers['gt_tip_in_lumen'] = ('json', fv.FLAG_SCHEMA, self._on_flag)
        for key in (*STATUS_TEXT, 'force_events'):
            handlers[key] = ('', None, self._on_status)
        for overlay in (US_OVERLAY, NIR_OVERLAY):
            self.server.advertise(overlay, 'image')
        self.server.advertise(TF_TOPIC, 'tf')
        self.server.advertise(LOG_TOPIC, 'log')
        handlers = {k: v for k, v in handlers.items() if k not in exclude}
        for key, (kind, schema, _) in handlers.items():
            self._name[key] = topics[key]['name']
            if kind:
                self.server.advertise(self._name[key], kind, schema)
        self.server.start()
        for key, (_, _, handler) in handlers.items():
            contract_subscription(self, key, self._guarded(key, handler))

    # --- plumbing -----------------------------------------------------------------------

    def destroy_node(self) -> None:
        """Stop the server (clients are disconnected) with the node."""
        self.server.stop()
        super().destroy_node()

    def _guarded(self, key: str, handler: Callable[[str, Any], None]) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            try:
                handler(key, msg)
            except ValueError as error:  # LiveViewError and image_array's errors
                self._report(f'{self._name[key]} not shown: {error}')
            except Exception as error:  # a viewer bug must not end the run it shows
                self._report(f'{self._name[key]}: internal error {type(error).__name__}: '
                             f'{error}\n{traceback.format_exc()}')
        return callback

    def _report(self, text: str) -> None:
        """Count, log (throttled) and show on /live/log a message that was not shown."""
        self.errors += 1
        self.get_logger().error(f'live_view: {text}', throttle_duration_sec=1.0)
        if self.server.wanted(LOG_TOPIC):
            ns = self._now()
            self.server.publish(LOG_TOPIC, fv.log_message(
                f'live_view: {text}', NODE_NAME, ns, fv.fm.LogLevel.Error), ns)

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _stamp(self, header: Any) -> int:
        """The header's stamp in ns, or the node clock (sim time in a sim) when unset."""
        return fv.stamp_ns(header.stamp) or self._now()

    def _wanted(self, topic: str, rate: str, key: str | None = None) -> bool:
        return self.server.wanted(topic) and self.rates[rate].ready(key or topic)

    # --- handlers -----------------------------------------------------------------------

    def _on_image(self, key: str, msg: Any) -> None:
        topic = self._name[key]
        if key in IMAGE_MASKS:
            overlay = IMAGE_MASKS[key][1]
            send = self._wanted(topic, 'image')
            keep = self.server.wanted(overlay)
            if not (send or keep):
                return
            image, ns = image_array(msg, IMAGE_ENCODINGS), self._stamp(msg.header)
            if send:
                self.server.image(topic, image, msg.header.frame_id, ns)
            if keep:
                cache = self._cache[key]
                cache[ns] = image
                while len(cache) > OVERLAY_CACHE:
                    cache.popitem(last=False)
            return
        image_key, overlay = MASK_IMAGES[key]
        send = self._wanted(topic, 'image')
        ns = self._stamp(msg.header)
        base = self._cache[image_key].get(ns)
        paint = base is not None and self._wanted(overlay, 'image')
        if not (send or paint):
            return
        mask = image_array(msg, IMAGE_ENCODINGS)
        if send:
            self.server.image(topic, mask, msg.header.frame_id, ns)
        if paint:
            self.server.image(overlay, fv.overlay_image(base, mask), msg.header.frame_id, ns)

    def _on_markers(self, key: str, msg: Any) -> None:
        topic = self._name[key]
        if self.server.wanted(topic):
            self.server.publish(topic, fv.scene_update(msg.markers, self._now()), self._now())

    def _on_pose(self, key: str, msg: Any) -> None:
        topic, child = self._name[key], POSE_FRAMES[key]
        send = self.server.wanted(topic)
        tf = bool(child) and self.server.wanted(TF_TOPIC)
        if not (send or tf) or not self.rates['pose'].ready(key):
            return
        ns, frame_id = self._stamp(msg.header), msg.header.frame_id
        if send:
            self.server.publish(topic, fv.pose_in_frame(msg.pose, frame_id, ns), ns)
        if tf:
            transform = fv.frame_transform(frame_id, self.frames[child], msg.pose, ns)
            self.server.publish(TF_TOPIC, fv.fm.FrameTransforms(transforms=[transform]), ns)

    def _on_path(self, key: str, msg: Any) -> None:
        topic = self._name[key]
        if self.server.wanted(topic):
            ns = self._stamp(msg.header)
            self.server.publish(topic, fv.poses_in_frame(
                [p.pose for p in msg.poses], msg.header.frame_id, ns), ns)

    def _on_wrench(self, key: str, msg: Any) -> None:
        topic = self._name[key]
        if self._wanted(topic, 'force'):
            ns, w = self._stamp(msg.header), msg.wrench
            self.server.publish(topic, fv.wrench_record(
                (w.force.x, w.force.y, w.force.z), (w.torque.x, w.torque.y, w.torque.z),
                msg.header.frame_id, ns), ns)

    def _on_joints(self, key: str, msg: Any) -> None:
        topic = self._name[key]
        if self._wanted(topic, 'joint'):
            ns = self._stamp(msg.header)
            self.server.publish(topic, fv.joints_record(
                msg.name, msg.position, msg.velocity, msg.effort, ns), ns)

    def _on_flag(self, key: str, msg: Any) -> None:
        topic = self._name[key]
        if self._wanted(topic, 'pose'):
            self.server.publish(topic, {'data': bool(msg.data), 'value': int(msg.data)},
                                self._now())

    def _on_state(self, key: str, msg: Any) -> None:
        ns = self._now()
        if self.server.wanted(self._name[key]):
            self.server.publish(self._name[key], fv.parse_state(msg.data), ns)
        if self.server.wanted(LOG_TOPIC):
            self.server.publish(LOG_TOPIC, fv.log_message(msg.data, self._name[key], ns), ns)

    def _on_status(self, key: str, msg: Any) -> None:
        if not self.server.wanted(LOG_TOPIC):
            return
        if key != 'force_events':
            ns = self._now()
            self.server.publish(LOG_TOPIC, fv.log_message(msg.data, self._name[key], ns), ns)
            return
        ns = self._stamp(msg.header)
        for status in msg.status:  # diagnostic_msgs/DiagnosticStatus
            values = ' '.join(f'{kv.key}={kv.value}' for kv in status.values if kv.value)
            text = f'{status.name}: {status.message} {values}'.strip()
            raw = status.level  # a ROS byte: bytes of length 1 in rclpy
            level = DIAGNOSTIC_LEVELS.get(raw[0] if isinstance(raw, bytes) else int(raw),
                                          fv.fm.LogLevel.Unknown)
            self.server.publish(LOG_TOPIC, fv.log_message(text, self._name[key], ns, level), ns)


NODE_CLASS = LiveViewNode  # for in-process runs (ir-guidance sim --single-process)


def main(args: list[str] | None = None) -> int:
    """Serve the live view until Ctrl-C; a bad parameter or a port in use exits with 1."""
    return runner.spin(LiveViewNode, NODE_NAME, args)
