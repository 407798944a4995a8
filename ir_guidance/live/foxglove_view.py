"""Foxglove live view: message conversions and the WebSocket server (visualization layer).

ROS-free, so that it is tested without a ROS graph: the functions take numpy arrays and
plain values, or (for markers, poses and stamps) any object with the fields of the ROS
message they are named after (``visualization_msgs/Marker``, ``geometry_msgs/Pose``,
``builtin_interfaces/Time``), which is what ``ir_guidance.nodes.live_view`` hands them.

Foxglove's own schemas are used wherever one exists (RawImage/CompressedImage,
SceneUpdate, PoseInFrame, PosesInFrame, FrameTransforms, Log) so that the Image, 3D and
Log panels show them without configuration; wrenches, joint states and the guidance
state are JSON with a JSON schema, so that every field is a Plot or State Transitions path.

The server (:class:`LiveServer`) is the foxglove-sdk WebSocket server with its own
``foxglove.Context`` (two servers in one process never share channels), no client
capabilities (clients can look, not publish, call services or set parameters), and by
default bound to loopback. Publishing never blocks: the SDK queues messages per client
and drops the oldest data when a slow client falls behind, and a channel nobody
subscribes to costs nothing (:meth:`LiveServer.wanted` lets callers skip the conversion).
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cv2
import foxglove
import numpy as np
from foxglove import channels as fc
from foxglove import messages as fm
from transforms3d.quaternions import axangle2quat, rotate_vector

IMAGE_FORMATS = ('raw', 'png', 'jpeg')
# Channel kinds a LiveServer can advertise; 'image' is raw or compressed by image_format.
CHANNEL_KINDS = ('image', 'scene', 'pose', 'poses', 'tf', 'log', 'json')
_TYPED_CHANNELS: dict[str, Callable[..., Any]] = {
    'raw_image': fc.RawImageChannel, 'compressed_image': fc.CompressedImageChannel,
    'scene': fc.SceneUpdateChannel, 'pose': fc.PoseInFrameChannel,
    'poses': fc.PosesInFrameChannel, 'tf': fc.FrameTransformsChannel, 'log': fc.LogChannel}

# visualization_msgs/Marker type and action constants.
ARROW, CUBE, SPHERE, CYLINDER, LINE_STRIP, LINE_LIST = 0, 1, 2, 3, 4, 5
CUBE_LIST, SPHERE_LIST, POINTS, TEXT_VIEW_FACING, MESH_RESOURCE, TRIANGLE_LIST = range(6, 12)
ADD, DELETE, DELETEALL = 0, 2, 3

_VECTOR = {'type': 'object', 'properties': {k: {'type': 'number'} for k in 'xyz'}}
# JSON schemas of the JSON channels (what Foxglove offers as message paths).
WRENCH_SCHEMA = {
    'title': 'ir_guidance.Wrench', 'type': 'object',
    'properties': {'frame_id': {'type': 'string'}, 'stamp_s': {'type': 'number'},
                   'force': _VECTOR, 'torque': _VECTOR, 'force_norm': {'type': 'number'}}}
JOINTS_SCHEMA = {
    'title': 'ir_guidance.JointStates', 'type': 'object',
    'properties': {'stamp_s': {'type': 'number'},
                   'name': {'type': 'array', 'items': {'type': 'string'}},
                   'position': {'type': 'array', 'items': {'type': 'number'}},
                   'velocity': {'type': 'array', 'items': {'type': 'number'}},
                   'effort': {'type': 'array', 'items': {'type': 'number'}},
                   'by_name': {'type': 'object',
                               'additionalProperties': {'type': 'number'}}}}
STATE_SCHEMA = {
    'title': 'ir_guidance.GuidanceState', 'type': 'object',
    'properties': {'text': {'type': 'string'}, 'phase': {'type': 'string'},
                   'time_s': {'type': ['number', 'null']}, 'reason': {'type': 'string'},
                   'events': {'type': 'array', 'items': {'type': 'string'}}}}
FLAG_SCHEMA = {'title': 'ir_guidance.Flag', 'type': 'object',
               'properties': {'data': {'type': 'boolean'}, 'value': {'type': 'integer'}}}


class LiveViewError(ValueError):
    """An input the live view cannot show (wrong shape or type, NaN, unknown marker)."""


# --- small conversions -----------------------------------------------------------------

def stamp_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` (fields ``sec``, ``nanosec``) as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def timestamp(ns: int) -> fm.Timestamp:
    """Integer nanoseconds as a Foxglove Timestamp."""
    if ns < 0:
        raise LiveViewError(f'negative timestamp {ns} ns')
    sec, nsec = divmod(int(ns), 1_000_000_000)
    return fm.Timestamp(sec, nsec)


def _finite(values: Iterable[float], what: str) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    if not np.all(np.isfinite(array)):
        raise LiveViewError(f'{what} has NaN or infinite values: {array.tolist()}')
    return array


def _xyz(point: Any) -> np.ndarray:
    return np.array([point.x, point.y, point.z], dtype=float)


def _wxyz(q: Any) -> np.ndarray:
    return np.array([q.w, q.x, q.y, q.z], dtype=float)


def _vector3(position: Sequence[float], what: str) -> fm.Vector3:
    p = _finite(position, what)
    return fm.Vector3(x=p[0], y=p[1], z=p[2])


def _quaternion(quaternion_wxyz: Sequence[float], what: str) -> fm.Quaternion:
    """Normalised; a zero quaternion is an error."""
    q = _finite(quaternion_wxyz, what)
    norm = float(np.linalg.norm(q))
    if norm < 1e-9:
        raise LiveViewError(f'{what} is a zero quaternion')
    w, x, y, z = q / norm
    return fm.Quaternion(x=x, y=y, z=z, w=w)


def fox_pose(position: Sequence[float], quaternion_wxyz: Sequence[float],
             what: str = 'pose') -> fm.Pose:
    """A Foxglove Pose; the quaternion is normalised (a zero one is an error)."""
    return fm.Pose(position=_vector3(position, f'{what} position'),
                   orientation=_quaternion(quaternion_wxyz, f'{what} orientation'))


def ros_pose(pose: Any, what: str = 'pose') -> fm.Pose:
    """A ``geometry_msgs/Pose`` as a Foxglove Pose."""
    return fox_pose(_xyz(pose.position), _wxyz(pose.orientation), what)


def pose_in_frame(pose: Any, frame_id: str, ns: int) -> fm.PoseInFrame:
    """A ``geometry_msgs/Pose`` in ``frame_id`` at ``ns`` (a PoseStamped's content)."""
    return fm.PoseInFrame(timestamp=timestamp(ns), frame_id=frame_id,
                          pose=ros_pose(pose, f'pose in {frame_id!r}'))


def poses_in_frame(poses: Sequence[Any], frame_id: str, ns: int) -> fm.PosesInFrame:
    """Several ``geometry_msgs/Pose`` (a nav_msgs/Path's poses) in one frame."""
    return fm.PosesInFrame(timestamp=timestamp(ns), frame_id=frame_id,
                           poses=[ros_pose(p, f'path pose {i}') for i, p in enumerate(poses)])


def frame_transform(parent: str, child: str, pose: Any, ns: int) -> fm.FrameTransform:
    """The transform parent -> child whose child origin/axes are ``pose`` in ``parent``."""
    what = f'transform {parent} -> {child}'
    return fm.FrameTransform(
        timestamp=timestamp(ns), parent_frame_id=parent, child_frame_id=child,
        translation=_vector3(_xyz(pose.position), f'{what} translation'),
        rotation=_quaternion(_wxyz(pose.orientation), f'{what} rotation'))


# --- images -----------------------------------------------------------------------------

def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.size == 0:
        raise LiveViewError('empty image')
    if image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3
                                                        and image.shape[2] == 3)):
        return image
    if image.dtype == np.uint16 and image.ndim == 2:
        return image
    raise LiveViewError(f'image {image.shape} {image.dtype} not shown (expected HxW uint8 or '
                        f'uint16, or HxWx3 uint8 RGB)')


def display_image(image: np.ndarray) -> np.ndarray:
    """8-bit pixels for display: uint8 as is, uint16 scaled so that its maximum is 255."""
    image = _check_image(image)
    if image.dtype == np.uint8:
        return image
    peak = int(image.max())
    if peak == 0:
        return np.zeros(image.shape, np.uint8)
    return (image.astype(np.float32) * (255.0 / peak)).round().astype(np.uint8)


def overlay_image(image: np.ndarray, mask: np.ndarray, color: Sequence[int] = (255, 80, 0),
                  alpha: float = 0.4) -> np.ndarray:
    """The grey ``image`` as RGB with ``mask`` (non-zero = vessel) tinted and outlined.

    A mask of another size than the image (a perception node working on a scaled copy)
    is resized to it with nearest-neighbour interpolation.
    """
    grey = display_image(image)
    if grey.ndim != 2:
        raise LiveViewError('overlay needs a single-channel image')
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise LiveViewError(f'mask must be a non-empty 2D array, got shape {mask.shape}')
    if mask.dtype != np.uint8:
        mask = (mask > 0).astype(np.uint8)
    if mask.shape != grey.shape:
        mask = cv2.resize(mask, (grey.shape[1], grey.shape[0]),
                          interpolation=cv2.INTER_NEAREST)
    inside = cv2.compare(mask, 0, cv2.CMP_GT)  # 255 in the mask
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    # (1 - alpha) * pixel + alpha * color with OpenCV per-channel scalars (numpy
    # broadcasting of a 3-vector over a frame is ~10x slower)
    keep = 1.0 - alpha
    tinted = cv2.add(cv2.multiply(rgb, (keep, keep, keep, 0.0)),
                     (*(alpha * float(c) for c in color), 0.0))
    cv2.copyTo(tinted, inside, rgb)
    # the outline: mask pixels with a non-mask 8-neighbour (constant time, unlike contours)
    edge = cv2.subtract(inside, cv2.erode(inside, np.ones((3, 3), np.uint8)))
    rgb[edge > 0] = color
    return rgb


def image_message(image: np.ndarray, frame_id: str, ns: int, fmt: str = 'raw',
                  jpeg_quality: int = 85) -> fm.RawImage | fm.CompressedImage:
    """An image as Foxglove RawImage (``raw``) or CompressedImage (``png`` | ``jpeg``).

    HxW uint8 -> mono8, HxW uint16 -> mono16 (little-endian), HxWx3 uint8 -> rgb8. PNG is
    lossless (16-bit kept); JPEG takes 8 bits (:func:`display_image`).
    """
    image = _check_image(image)
    if fmt == 'raw':
        encoding = {(np.uint8, 2): 'mono8', (np.uint16, 2): 'mono16',
                    (np.uint8, 3): 'rgb8'}[(image.dtype.type, image.ndim)]
        data = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder('<'))
        return fm.RawImage(timestamp=timestamp(ns), frame_id=frame_id,
                           width=image.shape[1], height=image.shape[0], encoding=encoding,
                           step=data.strides[0], data=data.tobytes())
    if fmt not in IMAGE_FORMATS:
        raise LiveViewError(f'image format {fmt!r} unknown (expected one of {IMAGE_FORMATS})')
    pixels = image if fmt == 'png' else display_image(image)
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == 'jpeg' else []
    ok, encoded = cv2.imencode(f'.{"jpg" if fmt == "jpeg" else "png"}', pixels, params)
    if not ok:
        raise LiveViewError(f'OpenCV could not encode a {image.shape} image as {fmt}')
    return fm.CompressedImage(timestamp=timestamp(ns), frame_id=frame_id,
                              data=encoded.tobytes(), format=fmt)


# --- markers ----------------------------------------------------------------------------

def _color(c: Any) -> fm.Color:
    return fm.Color(r=float(c.r), g=float(c.g), b=float(c.b), a=float(c.a))


def _point(p: np.ndarray) -> fm.Point3:
    return fm.Point3(x=float(p[0]), y=float(p[1]), z=float(p[2]))


def _arrow_from_points(start: np.ndarray, end: np.ndarray, scale: np.ndarray,
                       color: fm.Color, what: str) -> fm.ArrowPrimitive:
    """RViz semantics: scale.x shaft diameter, scale.y head diameter, scale.z head length."""
    direction = end - start
    length = float(np.linalg.norm(direction))
    if length < 1e-12:
        raise LiveViewError(f'{what}: arrow with coincident start and end points')
    unit = direction / length
    axis = np.cross([1.0, 0.0, 0.0], unit)
    if np.linalg.norm(axis) < 1e-9:  # along +x or -x
        quat = np.array([1.0, 0, 0, 0]) if unit[0] > 0 else np.array([0.0, 0, 0, 1])
    else:
        quat = axangle2quat(axis, math.atan2(np.linalg.norm(axis), unit[0]))
    head = float(scale[2]) if scale[2] > 0 else 0.23 * length
    return fm.ArrowPrimitive(pose=fox_pose(start, quat, what),
                             shaft_length=max(length - head, 0.0),
                             shaft_diameter=float(scale[0]), head_length=min(head, length),
                             head_diameter=float(scale[1]), color=color)


def _marker_entity(marker: Any, ns: int, entity_id: str) -> fm.SceneEntity:
    what = f'marker {entity_id}'
    frame_id = marker.header.frame_id
    if not frame_id:
        raise LiveViewError(f'{what} has no header.frame_id')
    position, quat = _xyz(marker.pose.position), _wxyz(marker.pose.orientation)
    if not np.any(quat):  # an unset orientation in a marker means identity (RViz)
        quat = np.array([1.0, 0.0, 0.0, 0.0])
    pose = fox_pose(position, quat, what)
    scale = _finite([marker.scale.x, marker.scale.y, marker.scale.z], f'{what} scale')
    size = fm.Vector3(x=scale[0], y=scale[1], z=scale[2])
    color = _color(marker.color)
    points = [_finite(_xyz(p), f'{what} point') for p in marker.points]
    colors = [_color(c) for c in marker.colors]
    if colors and len(colors) != len(points):
        raise LiveViewError(f'{what}: {len(colors)} colors for {len(points)} points')
    kind = int(marker.type)
    fields: dict[str, list[Any]] = {}
    if kind == ARROW:
        if len(points) == 2:
            # points are in the marker's frame after its pose; fold the pose in
            start = position + rotate_vector(points[0], quat)
            end = position + rotate_vector(points[1], quat)
            arrow = _arrow_from_points(start, end, scale, color, what)
        elif not points:
            arrow = fm.ArrowPrimitive(pose=pose, shaft_length=0.77 * scale[0],
                                      shaft_diameter=scale[1], head_length=0.23 * scale[0],
                                      head_diameter=scale[2], color=color)
        else:
            raise LiveViewError(f'{what}: an ARROW takes 0 or 2 points, got {len(points)}')
        fields['arrows'] = [arrow]
    elif kind in (CUBE, SPHERE, CYLINDER):
        key, cls = {CUBE: ('cubes', fm.CubePrimitive), SPHERE: ('spheres', fm.SpherePrimitive),
                    CYLINDER: ('cylinders', fm.CylinderPrimitive)}[kind]
        extra = {'bottom_scale': 1.0, 'top_scale': 1.0} if kind == CYLINDER else {}
        fields[key] = [cls(pose=pose, size=size, color=color, **extra)]
    elif kind in (LINE_STRIP, LINE_LIST):
        line_type = (fm.LinePrimitiveLineType.LineStrip if kind == LINE_STRIP
                     else fm.LinePrimitiveLineType.LineList)
        fields['lines'] = [fm.LinePrimitive(type=line_type, pose=pose, thickness=scale[0],
                                            points=[_point(p) for p in points], color=color,
                                            colors=colors or None)]
    elif kind in (CUBE_LIST, SPHERE_LIST, POINTS):
        cls = fm.CubePrimitive if kind == CUBE_LIST else fm.SpherePrimitive
        if kind == POINTS:
            size = fm.Vector3(x=scale[0], y=scale[1], z=scale[0])
        prims = []
        for i, p in enumerate(points):
            at = position + rotate_vector(p, quat)
            prims.append(cls(pose=fox_pose(at, quat, what), size=size,
                             color=colors[i] if colors else color))
        fields['cubes' if kind == CUBE_LIST else 'spheres'] = prims
    elif kind == TEXT_VIEW_FACING:
        fields['texts'] = [fm.TextPrimitive(pose=pose, billboard=True, font_size=scale[2],
                                            scale_invariant=False, color=color,
                                            text=str(marker.text))]
    elif kind == TRIANGLE_LIST:
        if len(points) % 3:
            raise LiveViewError(f'{what}: TRIANGLE_LIST with {len(points)} points (not 3k)')
        fields['triangles'] = [fm.TriangleListPrimitive(
            pose=pose, points=[_point(p) for p in points], color=color,
            colors=colors or None)]
    elif kind == MESH_RESOURCE:
        fields['models'] = [fm.ModelPrimitive(
            pose=pose, scale=size, color=color,
            override_color=not marker.mesh_use_embedded_materials,
            url=str(marker.mesh_resource))]
    else:
        raise LiveViewError(f'{what}: unknown marker type {kind}')
    lifetime = stamp_ns(marker.lifetime)  # builtin_interfaces/Duration: 0 = forever
    return fm.SceneEntity(timestamp=timestamp(ns), frame_id=frame_id, id=entity_id,
                          lifetime=fm.Duration(*divmod(lifetime, 1_000_000_000)),
                          frame_locked=bool(marker.frame_locked), **fields)


def scene_update(markers: Sequence[Any], default_ns: int = 0) -> fm.SceneUpdate:
    """A ``visualization_msgs/MarkerArray``'s markers as one Foxglove SceneUpdate.

    Entity ids are ``<ns>/<id>`` like RViz's marker identity; ADD/MODIFY become entities,
    DELETE and DELETEALL deletions. A marker stamped 0 gets ``default_ns``. A marker the
    3D panel could not draw (unknown type, NaN, wrong point count, no frame) raises
    :class:`LiveViewError` naming it.
    """
    entities, deletions = [], []
    for marker in markers:
        ns = stamp_ns(marker.header.stamp) or default_ns
        entity_id = f'{marker.ns}/{marker.id}'
        action = int(marker.action)
        if action == DELETEALL:
            entities.clear()
            deletions.append(fm.SceneEntityDeletion(
                timestamp=timestamp(ns), type=fm.SceneEntityDeletionType.All))
        elif action == DELETE:
            deletions.append(fm.SceneEntityDeletion(
                timestamp=timestamp(ns), type=fm.SceneEntityDeletionType.MatchingId,
                id=entity_id))
        elif action in (ADD, 1):  # 1: the deprecated MODIFY, same as ADD
            entities.append(_marker_entity(marker, ns, entity_id))
        else:
            raise LiveViewError(f'marker {entity_id}: unknown action {action}')
    return fm.SceneUpdate(deletions=deletions, entities=entities)


# --- JSON records -----------------------------------------------------------------------

def wrench_record(force: Sequence[float], torque: Sequence[float], frame_id: str,
                  ns: int) -> dict[str, Any]:
    """A wrench as a plot-friendly JSON object (``force.z``, ``force_norm``...)."""
    f, t = _finite(force, 'force'), _finite(torque, 'torque')
    if f.shape != (3,) or t.shape != (3,):
        raise LiveViewError(f'force and torque need 3 values each, got {f.shape} {t.shape}')
    return {'frame_id': frame_id, 'stamp_s': ns * 1e-9,
            'force': dict(zip('xyz', f.tolist(), strict=True)),
            'torque': dict(zip('xyz', t.tolist(), strict=True)),
            'force_norm': float(np.linalg.norm(f))}


def joints_record(names: Sequence[str], position: Sequence[float],
                  velocity: Sequence[float], effort: Sequence[float],
                  ns: int) -> dict[str, Any]:
    """Joint states as JSON; ``by_name.<joint>`` is the position of one joint."""
    names = [str(n) for n in names]
    pos = _finite(position, 'joint positions')
    if len(pos) != len(names):
        raise LiveViewError(f'{len(names)} joint names but {len(pos)} positions')
    vel, eff = _finite(velocity, 'joint velocities'), _finite(effort, 'joint efforts')
    return {'stamp_s': ns * 1e-9, 'name': names, 'position': pos.tolist(),
            'velocity': vel.tolist(), 'effort': eff.tolist(),
            'by_name': dict(zip(names, pos.tolist(), strict=True))}


_STATE_HEAD = re.compile(r'(?P<phase>\S+)(?:\s+t=(?P<t>[^:\s]+))?:?\s*(?P<reason>.*)', re.S)


def parse_state(text: str) -> dict[str, Any]:
    """The controller's state line ``PHASE t=<s>: reason[ | event; event]`` as JSON.

    Text in another form keeps its first word as the phase and the rest as the reason.
    """
    head, _, tail = text.strip().partition(' | ')
    match = _STATE_HEAD.fullmatch(head)
    if match is None:
        return {'text': text, 'phase': '', 'time_s': None, 'reason': '', 'events': []}
    try:
        time_s = float(match['t']) if match['t'] is not None else None
    except ValueError:
        time_s = None
    if time_s is not None and not math.isfinite(time_s):
        time_s = None
    return {'text': text, 'phase': match['phase'], 'time_s': time_s,
            'reason': match['reason'].strip(),
            'events': [e.strip() for e in tail.split(';') if e.strip()]}


def log_level(text: str) -> fm.LogLevel:
    """Severity of a status/state line: errors and SAFE -> Error, warnings/events -> Warning."""
    upper = text.lstrip().upper()
    if upper.startswith(('ERROR', 'FATAL', 'SAFE')):
        return fm.LogLevel.Error
    if upper.startswith('WARN') or ' | ' in text or upper.startswith('EVENT'):
        return fm.LogLevel.Warning
    return fm.LogLevel.Info


def log_message(text: str, source: str, ns: int,
                level: fm.LogLevel | None = None) -> fm.Log:
    """A Foxglove Log line from ``source`` (a topic or node name)."""
    return fm.Log(timestamp=timestamp(ns), level=log_level(text) if level is None else level,
                  message=text, name=source)


# --- rate limiting and the server -------------------------------------------------------

class RateLimiter:
    """At most ``rate_hz`` passes per key (wall clock: it protects the CPU, not sim time)."""

    def __init__(self, rate_hz: float, clock: Callable[[], float] = time.monotonic) -> None:
        rate_hz = float(rate_hz)
        if not rate_hz > 0.0:  # also refuses NaN
            raise LiveViewError(f'rate must be > 0 Hz, got {rate_hz}')
        self.period = 0.0 if math.isinf(rate_hz) else 1.0 / rate_hz
        self._clock = clock
        self._last: dict[str, float] = {}

    def ready(self, key: str) -> bool:
        """True (and the key's period restarts) when ``key`` may pass now."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            return False
        self._last[key] = now
        return True


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and 127.0.0.0/8 / ::1 addresses."""
    if host.strip().lower() == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return False


class LiveServer:
    """A Foxglove WebSocket server with named channels (see the module docstring).

    :meth:`advertise` the channels, then :meth:`start`: a client's first advertise then
    lists them all. ``port`` 0 lets the OS pick a free port (:attr:`port` tells which). A
    port in use or a host that cannot be bound raises OSError from :meth:`start`.
    """

    def __init__(self, host: str = '127.0.0.1', port: int = 8765, name: str = 'ir_guidance',
                 image_format: str = 'raw', jpeg_quality: int = 85,
                 message_backlog: int = 256) -> None:
        if not host:
            raise LiveViewError('host must not be empty (127.0.0.1 for this machine only)')
        if not 0 <= int(port) <= 65535:
            raise LiveViewError(f'port {port} outside 0..65535')
        if image_format not in IMAGE_FORMATS:
            raise LiveViewError(f'image_format {image_format!r} unknown (expected one of '
                                f'{IMAGE_FORMATS})')
        if not 1 <= int(jpeg_quality) <= 100:
            raise LiveViewError(f'jpeg_quality {jpeg_quality} outside 1..100')
        self.host, self._port, self._name = host, int(port), name
        self.image_format = image_format
        self.jpeg_quality = int(jpeg_quality)
        self._backlog = int(message_backlog)
        self.context = foxglove.Context()
        self.server: Any = None
        self._channels: dict[str, Any] = {}
        self._stopped = False

    def start(self) -> LiveServer:
        """Bind and serve (clients may connect from now on); returns self."""
        if self.server is not None or self._stopped:
            raise LiveViewError('a LiveServer starts once')
        try:
            self.server = foxglove.start_server(
                name=self._name, host=self.host, port=self._port, capabilities=[],
                context=self.context, message_backlog_size=self._backlog)
        except RuntimeError as error:  # the SDK's FoxgloveError (bind failures)
            raise OSError(f'cannot serve Foxglove on {self.host}:{self._port}: '
                          f'{error}') from error
        return self

    @property
    def port(self) -> int:
        """The port the server listens on."""
        if self.server is None:
            raise LiveViewError('the server is not started')
        return self.server.port

    @property
    def url(self) -> str:
        """What to enter in Foxglove's Open connection dialog."""
        host = f'[{self.host}]' if ':' in self.host else self.host
        return f'ws://{host}:{self.port}'

    def advertise(self, topic: str, kind: str, schema: dict[str, Any] | None = None) -> None:
        """Create the channel ``topic`` of ``kind`` (one of CHANNEL_KINDS; json needs schema)."""
        if topic in self._channels:
            raise LiveViewError(f'channel {topic!r} advertised twice')
        if kind == 'json':
            if schema is None:
                raise LiveViewError(f'json channel {topic!r} needs a JSON schema')
            channel = foxglove.Channel(topic, schema=schema, message_encoding='json',
                                       context=self.context)
        elif kind in CHANNEL_KINDS:
            if kind == 'image':
                kind = 'raw_image' if self.image_format == 'raw' else 'compressed_image'
            channel = _TYPED_CHANNELS[kind](topic, context=self.context)
        else:
            raise LiveViewError(f'channel kind {kind!r} unknown (expected one of '
                                f'{CHANNEL_KINDS})')
        self._channels[topic] = channel

    @property
    def topics(self) -> list[str]:
        """The advertised channel topics."""
        return list(self._channels)

    def wanted(self, topic: str) -> bool:
        """True when a client subscribes to ``topic`` (else converting it is wasted work)."""
        channel = self._channels.get(topic)
        return channel is not None and not self._stopped and channel.has_sinks()

    def publish(self, topic: str, message: Any, ns: int) -> None:
        """Send ``message`` (a Foxglove message, or a dict on a json channel) at ``ns``."""
        if self._stopped:
            return
        self._channels[topic].log(message, log_time=int(ns))

    def image(self, topic: str, image: np.ndarray, frame_id: str, ns: int) -> None:
        """Encode ``image`` in the server's image format and publish it on ``topic``."""
        self.publish(topic, image_message(image, frame_id, ns, self.image_format,
                                          self.jpeg_quality), ns)

    def stop(self) -> None:
        """Close the channels and stop the server if started (clients are disconnected).

        Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        for channel in self._channels.values():
            channel.close()
        if self.server is not None:
            self.server.stop()
