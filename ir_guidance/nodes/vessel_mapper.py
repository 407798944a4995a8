"""vessel_mapper: the 3D vessel map and the insertion target as a ROS 2 node (thin adapter).

Inputs (topic keys in ``config/``): ``us_vessels`` (PointCloud2 x, y, z, radius (= the
major semi-axis), radius_minor, confidence, id in ``us_image_frame``), ``nir_veins``
(PointCloud2 x, y, z, vein, confidence in the camera's optical frame), ``joint_states``
and ``vessel_map_request`` (std_msgs/Header: stamp S = "answer with every observation
captured up to S"). Each image is placed by FK of the joint state interpolated at its
stamp (``JointHistory``; ``us_image_frame`` / ``nir_camera_optical_frame``) and fed to
``ir_guidance.mapping.VesselMap``, which keeps observations in stamp order.

On a request the node answers from the map of the observations stamped <= S:
``vessel_map_centerlines`` (PointCloud2 x, y, z, radius, vessel_id, confidence, sigma in
base_link), ``vessel_map_markers`` (a LINE_STRIP per vessel, spheres for the radius, an
arrow at the target), ``vessel_map_target`` (PoseStamped: position = vessel centre at the
site, x axis = vessel direction, z up) and ``vessel_map_status`` (DiagnosticArray, stamp S,
one status: OK 'ok' or ERROR with the reason; values ``skin_height_m`` (skin height above
the target), ``vessel_radius_m``, ``depth_m``, ``score``, ``vessel_id``, ``vessels``,
``observations`` and ``rejected <candidate>`` for every ruled-out vessel). No target is
published with an ERROR. Outside requests the map is published for visualization at most
``publish_hz``.

Bad inputs (NaN in a detection, an image stamp further than ``max_stamp_gap_s`` from any
joint state, a malformed cloud) are not used and reported as an ERROR status stamped 0
(so that it never answers a request; the image stamp is in its values).

Lockstep (parameter ``lockstep``, default ``lockstep.enabled``): the perception outputs
are subscribed reliable with a deep queue, and a request is answered only once every US
and NIR frame of the simulator's schedule (``sim.us_hz``, ``sim.nir_hz``,
``sim.physics_hz``) captured up to S has its result (``lockstep.StreamBarrier``), checked
on every arriving result and on a timer, never blocking the executor. After
``lockstep.stall_timeout_s`` of wall time the answer is ERROR 'stalled: missing results
for ...' and those frames are declared lost.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node

from ir_guidance import config, rig_description
from ir_guidance.lockstep import StreamBarrier
from ir_guidance.mapping import JointHistory, Target, VesselMap, select_target
from ir_guidance.nodes import runner
from ir_guidance.nodes.conversions import (
    cloud_array,
    cloud_msg,
    contract_publisher,
    contract_subscription,
    declare_section,
    fill_pose,
    message_class,
    stamp_seconds,
)

NODE_NAME = 'vessel_mapper'
CENTERLINE_FIELDS = ('x', 'y', 'z', 'radius', 'vessel_id', 'confidence', 'sigma')
US_FIELDS = ('x', 'y', 'radius', 'radius_minor', 'confidence', 'id')
NIR_FIELDS = ('x', 'y', 'z', 'vein', 'confidence')
CHECK_HZ = 20.0
READY = 'READY'  # lockstep start-up handshake with the controller (status stamped 0)
SPHERE_STEP = 4  # a radius sphere every this many centreline samples


def _stamp(seconds: float) -> Any:
    msg = message_class('builtin_interfaces/msg/Time')()
    msg.sec, msg.nanosec = divmod(round(seconds * 1e9), 1_000_000_000)
    return msg


def target_pose(target: Target) -> np.ndarray:
    """4x4 pose: origin at the site, x along the vessel, z as close to world up as possible."""
    x = target.direction / np.linalg.norm(target.direction)
    up = np.array([0.0, 0.0, 1.0])
    z = up - (up @ x) * x
    z = z / np.linalg.norm(z) if np.linalg.norm(z) > 1e-6 else np.array([1.0, 0.0, 0.0])
    pose = np.eye(4)
    pose[:3, :3] = np.column_stack((x, np.cross(z, x), z))
    pose[:3, 3] = target.position
    return pose


class VesselMapperNode(Node):
    """Places US and NIR results by FK, maps the vessels, answers map requests."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        cfg = config.load()
        self.map_params = declare_section(self, 'vessel_mapper', cfg['vessel_mapper'])
        self.target_params = declare_section(self, 'target', cfg['target'])
        self.lockstep_params = declare_section(self, 'lockstep', cfg['lockstep'])
        self.declare_parameter('lockstep', bool(cfg['lockstep']['enabled']))
        self.lockstep = bool(self.get_parameter('lockstep').value)
        self.frames = cfg['frames']
        self.chain = rig_description.rig_chain()
        self.history = JointHistory(self.chain.joint_names, max_age_s=10.0)
        self.map = VesselMap(self.map_params)
        self.max_gap = float(self.map_params['max_stamp_gap_s'])
        sim = cfg['sim']
        physics = float(sim['physics_hz'])
        self.barriers = {
            'us': StreamBarrier(float(sim['us_hz']), physics,
                                float(self.lockstep_params['us_latency_s'])),
            'nir': StreamBarrier(float(sim['nir_hz']), physics,
                                 float(self.lockstep_params['nir_latency_s']))}
        self._pending: list[tuple[float, float]] = []  # (request stamp, wall time it came)
        self.us_frames = 0
        self.nir_frames = 0
        self._dirty = False
        self._pub = {key: contract_publisher(self, key) for key in (
            'vessel_map_centerlines', 'vessel_map_markers', 'vessel_map_target',
            'vessel_map_status')}
        contract_subscription(self, 'joint_states', self._on_joints, self.lockstep)
        self._inputs = [contract_subscription(self, 'us_vessels', self._on_us, self.lockstep),
                        contract_subscription(self, 'nir_veins', self._on_nir, self.lockstep)]
        self._requested = False
        contract_subscription(self, 'vessel_map_request', self._on_request, self.lockstep)
        # Wall clock: in a lockstep run sim time stands still while a request waits.
        self.create_timer(1.0 / CHECK_HZ, self._check_pending,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        # Lockstep: results that arrive before the joint states of their stamp wait here.
        self._deferred: list[tuple[float, Any, Any]] = []
        self.create_timer(1.0 / float(self.map_params['publish_hz']), self._publish_view)

    # -- inputs ---------------------------------------------------------------------------
    def _on_joints(self, msg: Any) -> None:
        by_name = dict(zip(msg.name, msg.position, strict=False))
        if any(n not in by_name for n in self.chain.joint_names):
            return  # another robot's joints (or a partial message): not ours to place images
        try:
            self.history.add(stamp_seconds(msg.header.stamp),
                             np.array([by_name[n] for n in self.chain.joint_names]))
        except ValueError as error:
            self._input_error(str(error), stamp_seconds(msg.header.stamp))
        if self._deferred:
            ready = [d for d in self._deferred if self._covered(d[0])]
            self._deferred = [d for d in self._deferred if not self._covered(d[0])]
            for _, handler, deferred in sorted(ready, key=lambda d: d[0]):
                handler(deferred)

    def _covered(self, stamp: float) -> bool:
        """The joint history reaches ``stamp`` (so its pose can be interpolated)."""
        latest = self.history.latest_stamp
        return latest is not None and latest >= stamp - 1e-9

    def _defer(self, stamp: float, handler: Any, msg: Any) -> bool:
        """Lockstep: keep a result until the joint states of its stamp have arrived."""
        if not self.lockstep or self._covered(stamp):
            return False
        self._deferred.append((stamp, handler, msg))
        return True

    def _pose_at(self, stamp: float, frame: str) -> np.ndarray:
        return self.chain.fk(self.history.at(stamp, self.max_gap), frame)

    def _fields(self, msg: Any, names: tuple[str, ...]) -> np.ndarray:
        cloud = cloud_array(msg)
        missing = [n for n in names if n not in (cloud.dtype.names or ())]
        if missing:
            raise ValueError(f'cloud lacks the fields {missing}')
        return cloud

    def _on_us(self, msg: Any) -> None:
        stamp = stamp_seconds(msg.header.stamp)
        if self._defer(stamp, self._on_us, msg):
            return
        self.barriers['us'].received(stamp)
        try:
            cloud = self._fields(msg, US_FIELDS)
            values = np.array([cloud[n] for n in US_FIELDS], dtype=float).reshape(6, -1)
            if not np.all(np.isfinite(values)):
                raise ValueError(f'NaN/inf in a US detection at {stamp:.6f} s')
            pose = self._pose_at(stamp, self.frames['us_image'])
            sections = [SimpleNamespace(x=c[0], y=c[1], radius_major=c[2], radius_minor=c[3],
                                        confidence=c[4], id=int(c[5])) for c in values.T]
            self.map.add_us(stamp, pose, sections)
        except ValueError as error:  # StampError is one
            self._input_error(f'us_vessels: {error}', stamp)
        else:
            self.us_frames += 1
            self._dirty = True
        self._check_pending()

    def _on_nir(self, msg: Any) -> None:
        stamp = stamp_seconds(msg.header.stamp)
        if self._defer(stamp, self._on_nir, msg):
            return
        self.barriers['nir'].received(stamp)
        try:
            cloud = self._fields(msg, NIR_FIELDS)
            xyz = np.column_stack([cloud[n].astype(float) for n in ('x', 'y', 'z')])
            vein = cloud['vein'].astype(float)
            conf = cloud['confidence'].astype(float)
            if not (np.all(np.isfinite(xyz)) and np.all(np.isfinite(vein))
                    and np.all(np.isfinite(conf))):
                raise ValueError(f'NaN/inf in a NIR vein point at {stamp:.6f} s')
            camera = self._pose_at(stamp, self.frames['camera_optical'])
            base = xyz @ camera[:3, :3].T + camera[:3, 3]
            lines, confidence = [], []
            for v in np.unique(vein):
                sel = vein == v
                lines.append(base[sel])
                confidence.append(float(conf[sel].mean()))
            self.map.add_nir(stamp, lines, confidence, view_origin=camera[:3, 3])
        except ValueError as error:
            self._input_error(f'nir_veins: {error}', stamp)
        else:
            self.nir_frames += 1
            self._dirty = True
        self._check_pending()

    def _on_request(self, msg: Any) -> None:
        stamp = stamp_seconds(msg.stamp)
        if not math.isfinite(stamp):
            self._input_error('request stamp is not finite', 0.0)
            return
        self._pending.append((stamp, time.monotonic()))
        self._requested = True
        self._check_pending()

    # -- answers --------------------------------------------------------------------------
    def _announce_ready(self) -> None:
        """Lockstep: say READY (status stamped 0) once both perception streams are matched.

        The controller registers with the simulator only after this, so no perception
        result of the first frames can be lost to discovery still going on.
        """
        if self.lockstep and not self._requested and all(
                sub.get_publisher_count() > 0 for sub in self._inputs):
            self._publish_status(0.0, True, READY, {})

    def _check_pending(self) -> None:
        """Answer the requests whose observations are complete (lockstep) or all (else)."""
        self._ready_ticks = getattr(self, '_ready_ticks', 0) + 1
        if self._ready_ticks % round(CHECK_HZ / 2) == 0:
            self._announce_ready()
        while self._pending:
            stamp, since = self._pending[0]
            if self.lockstep:
                missing = {name: b.missing(stamp + b.latency_s)
                           for name, b in self.barriers.items()}
                if any(missing.values()):
                    if time.monotonic() - since < float(self.lockstep_params['stall_timeout_s']):
                        return
                    text = '; '.join(f'{name} {[round(s, 4) for s in m][:10]}'
                                     for name, m in missing.items() if m)
                    for name, m in missing.items():
                        self.barriers[name].declare_lost(m)
                    self._pending.pop(0)
                    self._publish_status(stamp, False, f'stalled: missing results for {text}',
                                         {})
                    continue
            self._pending.pop(0)
            self._answer(stamp)

    def _answer(self, stamp: float) -> None:
        vessels = self.map.vessels(until_s=stamp)
        skin = self.map.skin_points(until_s=stamp)
        self._publish_map(vessels, stamp, None)
        values: dict[str, Any] = {'vessels': len(vessels), 'observations': sum(
            v.observations for v in vessels)}
        if not vessels:
            self._publish_status(stamp, False, 'empty map: no vessel mapped from the '
                                 f'observations up to {stamp:.3f} s', values)
            return
        try:
            target = select_target(vessels, skin, self.target_params)
        except ValueError as error:
            self._publish_status(stamp, False, f'target selection failed: {error}', values)
            return
        values.update({f'rejected {k}': r for k, r in target.rejected.items()})
        if not target.ok:
            self._publish_status(stamp, False, target.reason, values)
            return
        self._publish_map(vessels, stamp, target)
        values.update({'skin_height_m': float(target.position[2] + target.depth),
                       'vessel_radius_m': target.radius, 'depth_m': target.depth,
                       'score': target.score, 'vessel_id': target.vessel_id})
        msg = message_class('geometry_msgs/msg/PoseStamped')()
        msg.header.stamp = _stamp(stamp)
        msg.header.frame_id = self.frames['base']
        fill_pose(msg.pose, target_pose(target))
        self._pub['vessel_map_target'].publish(msg)
        self._publish_status(stamp, True, 'ok', values)

    def _publish_view(self) -> None:
        if self._dirty:
            self._dirty = False
            self._publish_map(self.map.vessels(), self.map.latest_stamp, None)

    def _publish_map(self, vessels: list, stamp: float, target: Target | None) -> None:
        base = self.frames['base']
        count = sum(len(v.points) for v in vessels)
        cloud = np.zeros(count, dtype=[(n, np.float32) for n in CENTERLINE_FIELDS])
        start = 0
        for v in vessels:
            end = start + len(v.points)
            cloud['x'][start:end], cloud['y'][start:end], cloud['z'][start:end] = v.points.T
            cloud['radius'][start:end] = v.radius
            cloud['vessel_id'][start:end] = v.id
            cloud['confidence'][start:end] = v.confidence
            cloud['sigma'][start:end] = v.sigma
            start = end
        self._pub['vessel_map_centerlines'].publish(cloud_msg(cloud, base, _stamp(stamp)))
        self._pub['vessel_map_markers'].publish(self._markers(vessels, stamp, target))

    def _markers(self, vessels: list, stamp: float, target: Target | None) -> Any:
        marker_cls = message_class('visualization_msgs/msg/Marker')
        point_cls = message_class('geometry_msgs/msg/Point')
        array = message_class('visualization_msgs/msg/MarkerArray')()
        clear = marker_cls()
        clear.action = marker_cls.DELETEALL
        array.markers.append(clear)

        def marker(ns: str, mid: int, kind: int) -> Any:
            m = marker_cls()
            m.header.frame_id = self.frames['base']
            m.header.stamp = _stamp(stamp)
            m.ns, m.id, m.type, m.action = ns, mid, kind, marker_cls.ADD
            m.pose.orientation.w = 1.0
            m.color.r, m.color.g, m.color.b, m.color.a = 0.2, 0.4, 1.0, 0.8
            return m

        for v in vessels:
            line = marker('centerline', v.id, marker_cls.LINE_STRIP)
            line.scale.x = 0.0005
            line.points = [point_cls(x=float(p[0]), y=float(p[1]), z=float(p[2]))
                           for p in v.points]
            array.markers.append(line)
            for k in range(0, len(v.points), SPHERE_STEP):
                sphere = marker('radius', v.id * 10_000 + k, marker_cls.SPHERE)
                sphere.pose.position = point_cls(x=float(v.points[k, 0]),
                                                 y=float(v.points[k, 1]),
                                                 z=float(v.points[k, 2]))
                sphere.scale.x = sphere.scale.y = sphere.scale.z = float(2 * v.radius[k])
                sphere.color.a = 0.3
                array.markers.append(sphere)
        if target is not None:
            arrow = marker('target', 0, marker_cls.ARROW)
            fill_pose(arrow.pose, target_pose(target))
            arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.015, 0.001, 0.001
            arrow.color.r, arrow.color.g, arrow.color.b = 1.0, 0.2, 0.2
            array.markers.append(arrow)
        return array

    def _publish_status(self, stamp: float, ok: bool, message: str,
                        values: dict[str, Any]) -> None:
        status_cls = message_class('diagnostic_msgs/msg/DiagnosticStatus')
        key_value = message_class('diagnostic_msgs/msg/KeyValue')
        msg = message_class('diagnostic_msgs/msg/DiagnosticArray')()
        msg.header.stamp = _stamp(stamp)
        msg.header.frame_id = self.frames['base']
        status = status_cls(level=status_cls.OK if ok else status_cls.ERROR,
                            name=NODE_NAME, message=message, hardware_id='')
        status.values = [key_value(key=str(k), value=str(v)) for k, v in values.items()]
        msg.status = [status]
        if not ok:
            self.get_logger().error(message, throttle_duration_sec=1.0)
        self._pub['vessel_map_status'].publish(msg)

    def _input_error(self, text: str, stamp: float) -> None:
        """A refused observation: ERROR stamped 0 (never an answer), image stamp in values."""
        status_cls = message_class('diagnostic_msgs/msg/DiagnosticStatus')
        key_value = message_class('diagnostic_msgs/msg/KeyValue')
        msg = message_class('diagnostic_msgs/msg/DiagnosticArray')()
        msg.header.frame_id = self.frames['base']
        status = status_cls(level=status_cls.ERROR, name=f'{NODE_NAME}/input', message=text,
                            hardware_id='')
        status.values = [key_value(key='stamp', value=f'{stamp:.6f}')]
        msg.status = [status]
        self.get_logger().error(text, throttle_duration_sec=1.0)
        self._pub['vessel_map_status'].publish(msg)


NODE_CLASS = VesselMapperNode  # for in-process runs (ir-guidance sim --single-process)


def main(args: list[str] | None = None) -> int:
    """Run the vessel mapper until Ctrl-C; a bad parameter exits with 1."""
    return runner.spin(VesselMapperNode, NODE_NAME, args)
