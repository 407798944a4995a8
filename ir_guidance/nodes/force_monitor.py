"""force_monitor: the F/T wrench in, filtered wrench, force events and diagnostics out.

A thin adapter around :class:`ir_guidance.force.ForceMonitor` (the guidance controller
runs the same class in-process; this node serves everything else: operators, the
supervisor, recordings). Parameters: the ``force_monitor`` config section, declared as
``force_monitor.<key>`` (``--ros-args -p force_monitor.max_axial_force_n:=2.5``).

- ``ft_wrench`` (WrenchStamped) -> ``force_filtered`` (WrenchStamped: filtered, tared,
  weight-compensated, ``ft_sensor_frame``, stamped with the input's stamp).
- ``joint_states`` gives the sensor's attitude (FK) for the weight compensation; with
  ``gravity_compensation`` on, a wrench with no joint state younger than
  ``joint_state_timeout_s`` is refused.
- ``force_events`` (DiagnosticArray): one status per event, ``name`` = kind
  (``puncture``, ``force_limit``, ``rate_limit``, ``invalid``), values ``peak_n``,
  ``drop_n``, ``stamp``, ``membrane``, ``depth_m``; the message says what happened.
- ``diagnostics`` (DiagnosticArray, ``diagnostics_hz``): filter delay, axial force,
  tare offset, samples and errors.
- ``tare_service`` (std_srvs/Trigger): tare on the mean of the readings of the last
  ``tare_window_s``.

A bad wrench (NaN/inf, wrong frame, stamp older than ``stale_after_s`` by the node's
clock, or not after the previous one) gets an ERROR ``invalid`` status on
``force_events`` and no filtered output.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from rclpy.node import Node

from ir_guidance import config
from ir_guidance.force import ForceEvent, ForceInputError, ForceMonitor
from ir_guidance.nodes import runner
from ir_guidance.nodes.conversions import (
    contract_publisher,
    contract_subscription,
    declare_section,
    message_class,
    stamp_seconds,
)
from ir_guidance.rig_description import rig_chain

NODE_NAME = 'force_monitor'
# DiagnosticStatus levels (bytes in the message).
OK, WARN, ERROR = b'\x00', b'\x01', b'\x02'
LEVELS = {'puncture': WARN, 'force_limit': ERROR, 'rate_limit': ERROR, 'invalid': ERROR}


class ForceMonitorNode(Node):
    """Runs every F/T sample through a ForceMonitor; publishes what it finds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        cfg = config.load()
        # Lockstep simulation: stamps are sim time and sim time only moves when the stack
        # answers, so "now" is the newest stamp received (no 1 kHz /clock to follow).
        self.declare_parameter('lockstep', bool(cfg['lockstep']['enabled']))
        self.lockstep = bool(self.get_parameter('lockstep').value)
        self._newest = 0.0
        section = dict(cfg['force_monitor'])
        puncture = section.pop('puncture')
        self.params = declare_section(self, NODE_NAME, section)
        self.params['puncture'] = declare_section(self, f'{NODE_NAME}.puncture', puncture)
        for name in ('tare_window_s', 'stale_after_s', 'joint_state_timeout_s',
                     'diagnostics_hz'):
            if not (math.isfinite(self.params[name]) and self.params[name] > 0):
                raise ValueError(f'{name} must be > 0, got {self.params[name]!r}')
        base = ForceMonitor.from_config()
        self.monitor = ForceMonitor(self.params, base.needle_axis, base.tool_mass_kg,
                                    base.tool_com)
        self.frame = cfg['frames']['ft_sensor']
        self.joint_order = config.joint_names()
        self.chain = rig_chain()
        self._rotation: np.ndarray | None = None
        self._rotation_stamp = -math.inf
        window = max(1, round(self.params['tare_window_s'] * self.params['sample_rate_hz']))
        self._recent: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=window)
        self._samples = 0
        self._errors = 0
        self._last_error = ''

        self._filtered_pub = contract_publisher(self, 'force_filtered')
        self._events_pub = contract_publisher(self, 'force_events')
        self._diag_pub = contract_publisher(self, 'diagnostics')
        self._wrench_cls = message_class(config.topic('force_filtered')['type'])
        self._array_cls = message_class(config.topic('force_events')['type'])
        self._status_cls = message_class('diagnostic_msgs/msg/DiagnosticStatus')
        self._kv_cls = message_class('diagnostic_msgs/msg/KeyValue')
        contract_subscription(self, 'ft_wrench', self._on_wrench)
        contract_subscription(self, 'joint_states', self._on_joint_state)
        trigger = message_class('std_srvs/srv/Trigger')
        self.create_service(trigger, self.params['tare_service'], self._on_tare)
        self.create_timer(1.0 / self.params['diagnostics_hz'], self._publish_diagnostics)
        self.get_logger().info(f'filter delay {self.monitor.delay_s * 1e3:.1f} ms; tare on '
                               f"{self.params['tare_service']}")

    def _now(self) -> float:
        if self.lockstep:
            return self._newest
        return self.get_clock().now().nanoseconds * 1e-9

    # -- inputs ------------------------------------------------------------------------------
    def _on_joint_state(self, msg: Any) -> None:
        index = {name: i for i, name in enumerate(msg.name)}
        if any(name not in index for name in self.joint_order) or \
                len(msg.position) != len(msg.name):
            return  # arm_interface reports malformed joint states; no attitude from this one
        positions = np.array([msg.position[index[n]] for n in self.joint_order])
        if not np.all(np.isfinite(positions)):
            return
        self._rotation = self.chain.fk(positions, self.frame)[:3, :3]
        self._rotation_stamp = stamp_seconds(msg.header.stamp)
        self._newest = max(self._newest, self._rotation_stamp)

    def _attitude(self, stamp: float) -> np.ndarray:
        if not self.params['gravity_compensation']:
            return np.eye(3) if self._rotation is None else self._rotation
        if self._rotation is None or \
                abs(stamp - self._rotation_stamp) > self.params['joint_state_timeout_s']:
            raise ForceInputError('no joint state within '
                                  f"{self.params['joint_state_timeout_s']:g} s of the wrench: "
                                  'sensor attitude unknown for the weight compensation', stamp)
        return self._rotation

    def _on_wrench(self, msg: Any) -> None:
        stamp = stamp_seconds(msg.header.stamp)
        self._newest = max(self._newest, stamp)
        f, t = msg.wrench.force, msg.wrench.torque
        wrench = np.array([f.x, f.y, f.z, t.x, t.y, t.z])
        try:
            if msg.header.frame_id != self.frame:
                raise ForceInputError(f'wrench in frame {msg.header.frame_id!r}, expected '
                                      f'{self.frame!r}', stamp)
            age = self._now() - stamp
            if age > self.params['stale_after_s']:
                raise ForceInputError(f'stale wrench: stamped {age:.3f} s ago (limit '
                                      f"{self.params['stale_after_s']:g} s)", stamp)
            rotation = self._attitude(stamp)
            sample = self.monitor.update(stamp, wrench, rotation)
        except ForceInputError as error:
            self._errors += 1
            self._last_error = str(error)
            self.get_logger().error(f'wrench refused: {error}', throttle_duration_sec=1.0)
            self._publish_events([error.event])
            return
        self._samples += 1
        self._recent.append((wrench, rotation))
        if self._filtered_pub.get_subscription_count():  # a plot, a recorder: not a 1 kHz no-op
            out = self._wrench_cls()
            out.header.stamp = msg.header.stamp
            out.header.frame_id = self.frame
            w = sample.wrench.tolist()
            (out.wrench.force.x, out.wrench.force.y, out.wrench.force.z,
             out.wrench.torque.x, out.wrench.torque.y, out.wrench.torque.z) = w
            self._filtered_pub.publish(out)
        if sample.events:
            self._publish_events(sample.events)

    def _on_tare(self, request: Any, response: Any) -> Any:
        if not self._recent:
            response.success = False
            response.message = 'no valid wrench received yet: nothing to tare on'
            return response
        wrenches = np.array([w for w, _ in self._recent])
        try:
            self.monitor.tare(wrenches, self._recent[-1][1])
        except ForceInputError as error:
            response.success, response.message = False, str(error)
            return response
        self._recent.clear()
        response.success = True
        response.message = (f'tared on {len(wrenches)} readings; offset '
                            f'{np.round(self.monitor.bias, 4).tolist()}')
        self.get_logger().info(response.message)
        return response

    # -- outputs -----------------------------------------------------------------------------
    def _status(self, name: str, level: bytes, message: str, values: dict[str, str]) -> Any:
        status = self._status_cls()
        status.name, status.level, status.message = name, level, message
        status.hardware_id = self.frame
        status.values = [self._kv_cls(key=k, value=v) for k, v in values.items()]
        return status

    def _publish_events(self, events: tuple[ForceEvent, ...] | list[ForceEvent]) -> None:
        array = self._array_cls()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [self._status(
            e.kind, LEVELS.get(e.kind, ERROR), e.detail,
            {'peak_n': f'{e.peak_n:.4f}', 'drop_n': f'{e.drop_n:.4f}',
             'stamp': f'{e.stamp_s:.6f}', 'membrane': e.membrane,
             'depth_m': '' if e.depth_m is None else f'{e.depth_m:.5f}'}) for e in events]
        self._events_pub.publish(array)

    def _publish_diagnostics(self) -> None:
        last = self.monitor.last
        level = ERROR if self._last_error else OK
        message = self._last_error or ('tared' if self.monitor.tared else 'not tared')
        values = {'filter_delay_s': f'{self.monitor.delay_s:.5f}',
                  'axial_n': '' if last is None else f'{last.axial_n:.4f}',
                  'axial_rate_n_s': '' if last is None else f'{last.axial_rate_n_s:.3f}',
                  'bias': ' '.join(f'{v:.4f}' for v in self.monitor.bias),
                  'tared': str(self.monitor.tared).lower(),
                  'punctures': ','.join(e.membrane for e in self.monitor.punctures),
                  'samples': str(self._samples), 'errors': str(self._errors)}
        array = self._array_cls()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [self._status(NODE_NAME, level, message, values)]
        self._diag_pub.publish(array)
        self._last_error = ''


NODE_CLASS = ForceMonitorNode  # for in-process runs (ir-guidance sim --single-process)


def main(args: list[str] | None = None) -> int:
    """Run the force monitor until Ctrl-C; a bad parameter exits with 1."""
    return runner.spin(ForceMonitorNode, NODE_NAME, args)
