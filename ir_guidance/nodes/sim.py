"""sim: the embedded simulator as a ROS 2 node (a thin adapter over ir_guidance.sim).

Publishes the F/T wrench and (to listeners) ``/clock`` every tick, ``/joint_states`` every
``joint_state_hz`` (a joint_state_broadcaster; in lockstep every tick's state also goes
to the controller on ``lockstep_joint_states``), the
ultrasound, NIR and depth images with the camera info on their own schedules, and the
ground truth under ``/sim/ground_truth/``; takes ros2_control-style position commands
on the topic named in ``config/``. Two modes:

- ``realtime``: a wall-clock timer advances as many ticks as wall time has passed.
- ``lockstep``: tick k runs only after every registered controller has answered tick
  k - d (``lockstep_ack``: a JointState whose header names the controller and the tick's
  time, carrying the command the arm gets from tick k on; d = ``lockstep_delay_ticks``,
  a fixed controller-to-arm delay; command and answer travel together, so they cannot
  be reordered). Controllers register by publishing their name on
  ``lockstep_register``. With no controller registered the sim holds still: a lockstep
  run never advances unobserved; the first tick also waits until every subscriber in the
  graph (and every consumer named in ``consumers``) is matched.

A bad command (wrong joint count, NaN, outside limits) is refused with a reason on
``/sim/status`` and the arm keeps tracking the last good command.

In lockstep the sensor topics are published reliable with a deep queue: a
deterministic run may not lose a sample. ``truth_log`` (a path) gets the ground truth of
every tick (needle tip, distance to the nearest vein centre, in-lumen, forces, stage,
punctures) as a ``.npz`` when the node stops: the scorer of ``ir-guidance sim``.
``fault`` injects one fault for safety tests (``FAULTS``): sensor dropouts, a stale or
spiking F/T, a NaN joint state, the forearm jumping, or an operator e-stop; sensor
faults start ``fault_delay_s`` after the controller reports INSERT on /guidance/state.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.utilities import remove_ros_args

from ir_guidance import config
from ir_guidance.nodes import runner
from ir_guidance.nodes.conversions import (
    contract_publisher,
    contract_subscription,
    fill_pose,
    image_msg,
    message_class,
)
from ir_guidance.sim.phantom import Phantom
from ir_guidance.sim.simulator import SimCommandError, SimSettings, Simulator, TickOutput

NODE_NAME = 'sim'
MODES = ('realtime', 'lockstep')
REALTIME_TIMER_HZ = 250.0
MAX_CATCH_UP_TICKS = 50       # realtime: never run more than this per timer callback
GROUND_TRUTH_DECIMATION = 10  # tip pose / in-lumen at physics_hz / 10, events at once
VESSEL_MARKER_PERIOD_S = 1.0
FAULTS = ('us_dropout', 'nir_dropout', 'ft_stale', 'ft_spike', 'joint_nan', 'target_jump',
          'estop_at:<seconds>')
FT_SPIKE_N = 40.0             # ft_spike: this much force along the needle for 3 ticks
TARGET_JUMP_M = 0.004         # target_jump: the forearm moves sideways by this
TRUTH_MIN_STAGE_M = 5e-4      # truth log: tip-to-vein distance once the stage is this far out


def load_phantom(spec: str) -> Phantom:
    """A phantom from a YAML path (relative paths: the package share) or ``random:SEED``."""
    if spec.startswith('random:'):
        return Phantom.random(int(spec.split(':', 1)[1]))
    path = config.share_dir() / spec if not spec.startswith('/') else spec
    return Phantom.from_yaml(path)


def stamp_msg(seconds: float) -> Any:
    """A ``builtin_interfaces/Time`` for sim time ``seconds``."""
    msg = message_class('builtin_interfaces/msg/Time')()
    nanoseconds = round(seconds * 1e9)
    msg.sec, msg.nanosec = divmod(nanoseconds, 1_000_000_000)
    return msg


class SimNode(Node):
    """Owns a :class:`Simulator`; publishes its outputs and feeds it commands."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        section = config.load()['sim']
        self.declare_parameter('phantom', section['phantom'])
        self.declare_parameter('seed', int(section['seed']))
        self.declare_parameter('mode', section['mode'])
        self.declare_parameter('lockstep_warn_s', float(section['lockstep_warn_s']))
        self.declare_parameter('lockstep_delay_ticks', int(section['lockstep_delay_ticks']))
        self.delay_ticks = int(self.get_parameter('lockstep_delay_ticks').value)
        if self.delay_ticks < 1:
            raise ValueError(f'lockstep_delay_ticks must be >= 1, got {self.delay_ticks}')
        for key in ('physics_hz', 'us_hz', 'nir_hz', 'joint_state_hz'):
            self.declare_parameter(key, float(section[key]))
        self.declare_parameter('sensors', True)
        self.declare_parameter('truth_log', '')
        self.declare_parameter('fault', '')
        self.declare_parameter('fault_delay_s', 0.3)
        # 'node:topic_key,...': lockstep consumers the first tick waits for by name.
        self.declare_parameter('consumers', str(section['consumers']))
        self.consumers = [tuple(item.strip().split(':', 1)) for item in
                          str(self.get_parameter('consumers').value).split(',')
                          if item.strip()]
        value = {p: self.get_parameter(p).value for p in (
            'phantom', 'seed', 'mode', 'physics_hz', 'us_hz', 'nir_hz', 'sensors',
            'lockstep_warn_s')}
        if value['mode'] not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {value['mode']!r}")
        phantom = load_phantom(value['phantom'])
        settings = SimSettings(seed=value['seed'], physics_hz=value['physics_hz'],
                               us_hz=value['us_hz'], nir_hz=value['nir_hz'],
                               sensors=value['sensors'])
        self.sim = Simulator(phantom, settings)
        self.mode = value['mode']
        self.lockstep_warn_s = value['lockstep_warn_s']
        self.frames = config.load()['frames']
        lockstep = self.mode == 'lockstep'
        self.joint_state_every = self._joint_state_every(lockstep)
        self._pub = {key: contract_publisher(self, key, lockstep) for key in (
            'clock', 'joint_states', 'lockstep_joint_states', 'ft_wrench', 'us_image',
            'nir_image', 'nir_depth', 'nir_camera_info', 'gt_vessels', 'gt_needle_tip',
            'gt_tip_in_lumen', 'sim_status', 'guidance_estop')}
        unknown = [key for _, key in self.consumers if key not in self._pub]
        if unknown:
            raise ValueError(f'consumers name topics the sim does not publish: {unknown}')
        self.truth_log = str(self.get_parameter('truth_log').value)
        self._truth: list[tuple[float, ...]] = []
        self._truth_events: list[tuple[float, str]] = []
        self.fault = str(self.get_parameter('fault').value)
        self.fault_delay_s = float(self.get_parameter('fault_delay_s').value)
        self.fault_at_s = self._parse_fault(self.fault)
        self.declare_parameter('settle_after_s', float(section['settle_after_s']))
        self.settle_after_s = float(self.get_parameter('settle_after_s').value)
        self._terminal: tuple[str, float] | None = None  # the controller's DONE/SAFE, time
        self._settled = False
        self._fault_started = False
        self._stale_wrench: Any = None
        self._stop_frame: tuple | None = None
        # Reused every tick (publish serializes at once): the names and frame stay set.
        self._joints_msg = message_class('sensor_msgs/msg/JointState')()
        self._joints_msg.name = list(self.sim.joint_names)
        self._wrench_msg = message_class('geometry_msgs/msg/WrenchStamped')()
        self._wrench_msg.header.frame_id = self.frames['ft_sensor']
        contract_subscription(self, 'guidance_state', self._on_guidance_state)
        contract_subscription(self, 'position_commands', self._on_command)
        self._camera_info = self._make_camera_info()
        self._last_markers = -np.inf
        self._controllers: set[str] = set()
        self._answers: dict[int, dict[str, tuple[list, list] | None]] = {}
        self._applied = -1   # the last tick whose answers were applied
        self._waiting_since = time.monotonic()
        if self.mode == 'lockstep':
            contract_subscription(self, 'lockstep_register', self._on_register)
            contract_subscription(self, 'lockstep_ack', self._on_ack)
            self._watchdog = self.create_timer(0.1, self._check_lockstep)
        else:
            self._wall_start = time.monotonic()
            self._timer = self.create_timer(1.0 / REALTIME_TIMER_HZ, self._on_realtime_timer)
        self._status(f'OK: {self.mode} simulation of {len(phantom.veins)} vein(s), '
                     f'seed {settings.seed}')
        self._publish_tick(None)

    def _joint_state_every(self, lockstep: bool) -> int:
        """Ticks between two ``/joint_states`` (``joint_state_hz`` must divide physics_hz)."""
        every = self.sim.settings.physics_hz / float(self.get_parameter('joint_state_hz').value)
        if every < 1 - 1e-9 or abs(every - round(every)) > 1e-6:
            raise ValueError(f'joint_state_hz must divide physics_hz '
                             f'({self.sim.settings.physics_hz:g} Hz)')
        if lockstep and round(every) > self.delay_ticks:
            raise ValueError(f'lockstep: /joint_states every {round(every)} ticks is more '
                             f'than lockstep_delay_ticks ({self.delay_ticks}): a paused run '
                             'could hold back the state of a stamp that a consumer waits for')
        return round(every)

    # -- faults and truth -----------------------------------------------------------------
    @staticmethod
    def _parse_fault(fault: str) -> float | None:
        """When the fault starts (sim s), None = at INSERT + delay; ValueError if unknown."""
        if not fault:
            return None
        if fault.startswith('estop_at:'):
            return float(fault.split(':', 1)[1])
        if fault == 'nir_dropout':
            return 0.0
        if fault not in FAULTS:
            raise ValueError(f'unknown fault {fault!r}; known: {list(FAULTS)}')
        return None

    def _on_guidance_state(self, msg: Any) -> None:
        match = re.match(r'(\w+) t=([0-9.]+)', msg.data)
        if match and match.group(1) == 'VERIFY' and self._stop_frame is None:
            self._stop_frame = ()  # keep the next US frame: the report shows it
        if match and match.group(1) == 'INSERT' and self.fault and self.fault_at_s is None:
            self.fault_at_s = float(match.group(2)) + self.fault_delay_s
        if match and match.group(1) in ('DONE', 'SAFE') and self._terminal is None:
            self._terminal = (match.group(1), float(match.group(2)))

    def _fault_active(self) -> bool:
        if self.fault_at_s is None or self.sim.time_s + 1e-9 < self.fault_at_s:
            return False
        if not self._fault_started:
            self._fault_started = True
            self._truth_events.append((self.sim.time_s, f'fault {self.fault}'))
            self._status(f'FAULT: {self.fault} injected at t={self.sim.time_s:.3f} s')
            if self.fault == 'target_jump':
                self.sim.state.shift = (TARGET_JUMP_M, 0.0, 0.0)
            if self.fault.startswith('estop_at:'):
                flag = message_class('std_msgs/msg/Bool')()
                flag.data = True
                self._pub['guidance_estop'].publish(flag)
        return True

    def _record_truth(self, out: TickOutput) -> None:
        truth = out.truth
        tip = truth.needle_tip[:3, 3]
        phantom, state = self.sim.phantom, self.sim.state
        err = np.nan  # the distance to a vein matters only once the needle is out
        if out.joint_positions[-1] > TRUTH_MIN_STAGE_M:
            err = min((float(np.hypot(tip[0] - g['x'], tip[2] - g['z']))
                       for g in (phantom.vein_geometry(i, tip[1], state)
                                 for i in range(len(phantom.veins)))), default=np.inf)
        self._truth.append((out.time_s, *tip.tolist(), float(truth.tip_in_lumen), err,
                            float(truth.needle.axial_n), float(truth.probe_force_n),
                            float(out.joint_positions[-1])))
        for event in truth.events:
            self._truth_events.append((out.time_s, event))

    def write_truth(self) -> None:
        """The ground truth of the run as .npz (columns named in ``columns``)."""
        if not self.truth_log:
            return
        columns = ('t', 'tip_x', 'tip_y', 'tip_z', 'in_lumen', 'tip_err_m', 'axial_n',
                   'probe_force_n', 'stage_m')
        phantom = self.sim.phantom
        ys = np.linspace(phantom.center_y - 0.03, phantom.center_y + 0.03, 61)
        centerlines = np.array([phantom.centerline(i, ys, self.sim.state)
                                for i in range(len(phantom.veins))])
        Path(self.truth_log).parent.mkdir(parents=True, exist_ok=True)
        image, pose, captured = self._stop_frame or (np.zeros((0, 0), np.uint8), np.eye(4),
                                                     np.nan)
        np.savez_compressed(
            self.truth_log, columns=np.array(columns),
            ticks=np.array(self._truth, dtype=float).reshape(-1, len(columns)),
            event_t=np.array([e[0] for e in self._truth_events], dtype=float),
            event_kind=np.array([e[1] for e in self._truth_events], dtype=str),
            centerlines=centerlines, fault=np.array(self.fault),
            fault_at_s=np.array(np.nan if not self._fault_started else self.fault_at_s),
            us_stop_image=image, us_stop_pose=pose, us_stop_time_s=np.array(captured))

    def destroy_node(self) -> None:
        self.write_truth()
        super().destroy_node()

    # -- plumbing -------------------------------------------------------------------------
    def _status(self, text: str) -> None:
        msg = message_class('std_msgs/msg/String')()
        msg.data = text
        self._pub['sim_status'].publish(msg)

    def _make_camera_info(self) -> Any:
        info = self.sim.nir.camera_info()
        msg = message_class('sensor_msgs/msg/CameraInfo')()
        msg.header.frame_id = self.frames['camera_optical']
        msg.width, msg.height = int(info['width']), int(info['height'])
        msg.distortion_model = 'plumb_bob'
        msg.d = [float(v) for v in info['D']]
        k = np.asarray(info['K'], dtype=float)
        msg.k = k.ravel().tolist()
        msg.r = np.eye(3).ravel().tolist()
        msg.p = np.hstack((k, np.zeros((3, 1)))).ravel().tolist()
        return msg

    # -- commands -------------------------------------------------------------------------
    def _on_command(self, msg: Any) -> None:
        self._apply_command(None, msg.data)

    def _apply_command(self, names: list[str] | None, positions: Any) -> None:
        """Pass a command to the simulator (in its joint order); refuse a bad one."""
        try:
            if names:
                if sorted(names) != sorted(self.sim.joint_names) or len(names) != len(
                        positions):
                    raise SimCommandError(f'command joints {names} are not '
                                          f'{self.sim.joint_names}')
                by_name = dict(zip(names, positions, strict=True))
                positions = [by_name[n] for n in self.sim.joint_names]
            self.sim.command(np.asarray(positions, dtype=float))
        except SimCommandError as error:
            text = f'REFUSED: command ignored, holding the last one ({error})'
            self.get_logger().error(text, throttle_duration_sec=1.0)
            self._status(text)

    # -- stepping -------------------------------------------------------------------------
    def _on_realtime_timer(self) -> None:
        due = round((time.monotonic() - self._wall_start) * self.sim.settings.physics_hz)
        for _ in range(min(MAX_CATCH_UP_TICKS, due - self.sim.tick)):
            self._publish_tick(self.sim.step())

    def _on_register(self, msg: Any) -> None:
        name = msg.data.strip()
        if not name or name in self._controllers:
            return
        self._controllers.add(name)
        self._status(f'OK: controller {name!r} registered for lockstep')
        # Registering answers every tick up to now (with "keep the command").
        for tick in range(self.sim.tick + 1):
            self._answers.setdefault(tick, {})[name] = None
        self._advance_if_answered()

    def _on_ack(self, msg: Any) -> None:
        name = msg.header.frame_id
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if name not in self._controllers:
            return
        tick = round(stamp * self.sim.settings.physics_hz)
        if abs(tick * self.sim.dt - stamp) > 0.25 * self.sim.dt or not (
                self._applied < tick <= self.sim.tick):
            return  # not an answer to a tick still open
        command = (list(msg.name), list(msg.position)) if len(msg.position) else None
        self._answers.setdefault(tick, {})[name] = command
        self._advance_if_answered()

    def _unmatched(self) -> list[str]:
        """Topics whose subscribers are not all in the graph and matched to us yet.

        The first tick waits for them: a lockstep run must not publish a frame that a
        consumer would miss only because discovery had not finished. A node's name in
        the graph does not say its subscriptions are discovered yet, so the consumers
        named in ``consumers`` are waited for by name.
        """
        absent = [f'{key} ({node})' for node, key in self.consumers
                  if node not in {info.node_name for info in
                                  self.get_subscriptions_info_by_topic(
                                      self._pub[key].topic_name)}]
        return absent + [
            pub.topic_name for pub in self._pub.values()
            if pub.get_subscription_count() < self.count_subscribers(pub.topic_name)]

    def _advance_if_answered(self) -> None:
        """Step every tick whose command is known: tick k needs the answers to k - delay.

        The answer to tick j carries the command the arm gets from tick j + delay on: a
        fixed transport delay of ``lockstep_delay_ticks``, as between a real controller
        and its arm. It lets the sim run that many ticks ahead of the controller (the
        round trips overlap), and every run still applies every command on the same tick.
        """
        if not self._controllers:
            return
        if self.sim.tick == 0 and self._unmatched():
            return  # the watchdog timer retries
        while True:
            due = self.sim.tick + 1 - self.delay_ticks
            if due > self._applied:
                answers = self._answers.get(due, {})
                if set(answers) < self._controllers:
                    return
                for name in sorted(answers):
                    if answers[name] is not None:
                        self._apply_command(*answers[name])
                del self._answers[due]
                self._applied = due
            self._waiting_since = time.monotonic()
            self._publish_tick(self.sim.step())

    def _check_lockstep(self) -> None:
        if self.sim.tick == 0 and self._controllers:
            unmatched = self._unmatched()
            if unmatched:
                self._status(f'WAITING: subscribers of {unmatched} not matched yet')
            else:
                self._advance_if_answered()
                return
        waited = time.monotonic() - self._waiting_since
        if waited < self.lockstep_warn_s:
            return
        due = self.sim.tick + 1 - self.delay_ticks
        missing = sorted(self._controllers - set(self._answers.get(due, {}))) or [
            '(no controller registered)']
        self._status(f'WAITING: lockstep tick {self.sim.tick} for {waited:.1f} s on {missing}')

    # -- publishing -----------------------------------------------------------------------
    def _publish_tick(self, out: TickOutput | None) -> None:
        stamp = stamp_msg(self.sim.time_s)
        # Only for listeners (use_sim_time nodes, a recorder): in a lockstep run no node
        # follows /clock, and a publish per tick is a tenth of the sim's own time.
        if self._pub['clock'].get_subscription_count():
            clock = message_class('rosgraph_msgs/msg/Clock')()
            clock.clock = stamp
            self._pub['clock'].publish(clock)
        if out is None:
            return
        fault = self.fault if self._fault_active() else ''
        if self.truth_log:
            self._record_truth(out)
        joints = self._joints_msg
        joints.header.stamp = stamp
        joints.position = out.joint_positions.tolist()
        if fault == 'joint_nan':
            joints.position[1] = float('nan')
        joints.velocity = out.joint_velocities.tolist()
        if self.mode == 'lockstep':
            self._pub['lockstep_joint_states'].publish(joints)
        if (out.tick - 1) % self.joint_state_every == 0:  # the first tick's state too
            self._pub['joint_states'].publish(joints)
        wrench = self._wrench_msg
        wrench.header.stamp = stamp
        f, tq = wrench.wrench.force, wrench.wrench.torque
        values = np.array(out.wrench, dtype=float)
        if fault == 'ft_spike' and self.sim.time_s < self.fault_at_s + 0.003:
            values[:3] += FT_SPIKE_N * self._needle_axis_in_sensor()
        f.x, f.y, f.z, tq.x, tq.y, tq.z = (float(v) for v in values)
        if fault == 'ft_stale':  # a frozen driver: the same old sample again and again
            if self._stale_wrench is None:
                self._stale_wrench = copy.deepcopy(wrench)
            wrench = self._stale_wrench
        self._pub['ft_wrench'].publish(wrench)
        # Images carry their capture time; they arrive image_latency_s later, as on a rig.
        if out.us_image is not None and self._stop_frame == ():
            self._stop_frame = (out.us_image, out.us_pose, out.us_time_s)
        if out.us_image is not None and fault != 'us_dropout':
            self._pub['us_image'].publish(image_msg(
                out.us_image, 'mono8', self.frames['us_image'], stamp_msg(out.us_time_s)))
        if out.nir_image is not None and fault != 'nir_dropout':
            frame, captured = self.frames['camera_optical'], stamp_msg(out.nir_time_s)
            self._camera_info.header.stamp = captured
            self._pub['nir_camera_info'].publish(self._camera_info)
            self._pub['nir_image'].publish(image_msg(out.nir_image, 'mono8', frame, captured))
            self._pub['nir_depth'].publish(
                image_msg(out.depth_image, '16UC1', frame, captured))
        self._publish_truth(out, stamp)
        if self._terminal and not self._settled and \
                self.sim.time_s + 1e-9 >= self._terminal[1] + self.settle_after_s:
            # The arm has had time to stop where it was sent: the truth log holds where
            # the needle really ended, not where it was at the moment of the verdict.
            self._settled = True
            self._status(f'SETTLED: {self.settle_after_s:g} s after {self._terminal[0]} at '
                         f't={self._terminal[1]:.3f} s')

    def _needle_axis_in_sensor(self) -> np.ndarray:
        """The needle axis in the F/T frame (the tool is rigid: from the current pose)."""
        ft = self.sim.physics.frame_pose(self.frames['ft_sensor'])
        tip = self.sim.physics.frame_pose(self.frames['needle_tip'])
        return ft[:3, :3].T @ tip[:3, 2]

    def _publish_truth(self, out: TickOutput, stamp: Any) -> None:
        truth = out.truth
        if out.tick % GROUND_TRUTH_DECIMATION == 0 or truth.events:
            pose = message_class('geometry_msgs/msg/PoseStamped')()
            pose.header.stamp = stamp
            pose.header.frame_id = self.frames['base']
            fill_pose(pose.pose, truth.needle_tip)
            self._pub['gt_needle_tip'].publish(pose)
            flag = message_class('std_msgs/msg/Bool')()
            flag.data = truth.tip_in_lumen
            self._pub['gt_tip_in_lumen'].publish(flag)
        for event in truth.events:
            self._status(f'EVENT: {event} at t={out.time_s:.3f} s')
        if out.time_s - self._last_markers >= VESSEL_MARKER_PERIOD_S:
            self._last_markers = out.time_s
            self._pub['gt_vessels'].publish(self._vessel_markers(stamp))

    def _vessel_markers(self, stamp: Any) -> Any:
        """Each vein's true centreline as a LINE_STRIP whose width is its diameter."""
        marker_cls = message_class('visualization_msgs/msg/Marker')
        point_cls = message_class('geometry_msgs/msg/Point')
        array = message_class('visualization_msgs/msg/MarkerArray')()
        phantom = self.sim.phantom
        ys = np.linspace(phantom.center_y - phantom.length / 2,
                         phantom.center_y + phantom.length / 2, 61)
        for i, vein in enumerate(phantom.veins):
            marker = marker_cls()
            marker.header.stamp = stamp
            marker.header.frame_id = self.frames['base']
            marker.ns = 'ground_truth_veins'
            marker.id = i
            marker.type = marker_cls.LINE_STRIP
            marker.action = marker_cls.ADD
            marker.pose.orientation.w = 1.0
            marker.scale.x = float(vein.width)
            marker.color.r, marker.color.b, marker.color.a = 0.2, 0.9, 0.8
            line = phantom.centerline(i, ys, self.sim.state)
            for x, y, z in line[np.all(np.isfinite(line), axis=1)]:  # off the arm: NaN
                marker.points.append(point_cls(x=float(x), y=float(y), z=float(z)))
            array.markers.append(marker)
        return array


NODE_CLASS = SimNode  # for in-process runs (ir-guidance sim --single-process)


def main(args: list[str] | None = None) -> int:
    """Run the simulator node until Ctrl-C; a bad parameter or phantom exits with 1.

    ``--phantom FILE|random:SEED``, ``--seed N`` and ``--mode realtime|lockstep`` are
    shorthands for the ROS parameters of the same names.
    """
    argv = sys.argv[1:] if args is None else list(args)
    parser = argparse.ArgumentParser(prog='sim', description='the embedded simulator')
    parser.add_argument('--phantom', help='phantom YAML file or random:SEED')
    parser.add_argument('--seed', type=int)
    parser.add_argument('--mode', choices=MODES)
    options = parser.parse_args(remove_ros_args(argv))
    overrides = [Parameter(name, value=value) for name, value in vars(options).items()
                 if value is not None]
    return runner.spin(lambda: SimNode(parameter_overrides=overrides), NODE_NAME,
                       ['sim', *argv])
