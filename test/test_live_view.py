"""The Foxglove live view: conversions without ROS, then the node over real rclpy topics
with a WebSocket client on loopback speaking the Foxglove protocol, and the layout file
checked against the channels the node serves.

Payloads are decoded here independently of the code under test: JSON channels with
``json``, Foxglove protobuf messages with a few lines of wire-format parsing and the field
numbers of the published foxglove schemas (RawImage: 2 width, 3 height, 4 encoding,
5 step, 6 data, 7 frame_id; SceneUpdate: 2 entities; SceneEntity: 2 frame_id, 3 id,
11 lines; LinePrimitive: 3 thickness, 5 points; Log: 2 level, 3 message, 4 name;
PoseInFrame: 2 frame_id, 3 pose; Pose: 1 position, 2 orientation; FrameTransforms:
1 transforms; FrameTransform: 2 parent, 3 child, 4 translation, 5 rotation; vectors and
quaternions x, y, z(, w) = 1, 2, 3(, 4)).
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import struct
import threading

import cv2
import numpy as np
import pytest
from conftest import spin_until
from rclpy.node import Node
from rclpy.parameter import Parameter

from ir_guidance import config
from ir_guidance.live import foxglove_view as fv
from ir_guidance.nodes.conversions import contract_publisher, image_msg, message_class

LAYOUT = config.share_dir() / 'sim' / 'foxglove' / 'ir_guidance_layout.json'
SUBPROTOCOL = 'foxglove.sdk.v1'  # what foxglove-sdk 0.30 accepts (renamed foxglove.websocket.v1)


# --- protobuf wire format (just enough to read Foxglove messages) ----------------------

def pb_fields(buf: bytes) -> dict[int, list]:
    out: dict[int, list] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            byte = buf[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 1:
            value = struct.unpack_from('<d', buf, i)[0]
            i += 8
        elif wire == 5:
            value = struct.unpack_from('<I', buf, i)[0]
            i += 4
        elif wire == 2:
            n = varint()
            value = bytes(buf[i:i + n])
            i += n
        else:
            raise ValueError(f'wire type {wire}')
        out.setdefault(number, []).append(value)
    return out


def components(payload: bytes, n: int) -> list[float]:
    """x, y, z(, w) of a Vector3/Point3/Quaternion (proto3 leaves zeros out)."""
    f = pb_fields(payload)
    return [f.get(i, [0.0])[0] for i in range(1, n + 1)]


def raw_image_fields(payload: bytes) -> dict:
    f = pb_fields(payload)
    return {'width': f[2][0], 'height': f[3][0], 'encoding': f[4][0].decode(),
            'step': f[5][0], 'data': f[6][0], 'frame_id': f.get(7, [b''])[0].decode()}


# --- ROS-free conversions --------------------------------------------------------------

def test_raw_image_payload_carries_the_pixels():
    image = (np.arange(48 * 64) % 251).astype(np.uint8).reshape(48, 64)
    msg = fv.image_message(image, 'us_image_frame', 1_500_000_000)
    f = raw_image_fields(msg.encode())
    assert (f['width'], f['height'], f['encoding'], f['step']) == (64, 48, 'mono8', 64)
    assert f['frame_id'] == 'us_image_frame'
    assert np.array_equal(np.frombuffer(f['data'], np.uint8).reshape(48, 64), image)
    deep = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    f = raw_image_fields(fv.image_message(deep, 'f', 0).encode())
    assert f['encoding'] == 'mono16' and f['step'] == 8
    assert np.array_equal(np.frombuffer(f['data'], '<u2').reshape(3, 4), deep)


@pytest.mark.parametrize('shape,dtype', [((30, 40), np.uint8), ((30, 40), np.uint16),
                                         ((30, 40, 3), np.uint8)])
def test_png_is_lossless_and_jpeg_close(shape, dtype):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 200, size=shape).astype(dtype)
    msg = fv.image_message(image, 'f', 0, 'png')
    f = pb_fields(msg.encode())
    assert f[3][0] == b'png'
    decoded = cv2.imdecode(np.frombuffer(f[2][0], np.uint8), cv2.IMREAD_UNCHANGED)
    if image.ndim == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    assert decoded.dtype == image.dtype and np.array_equal(decoded, image)
    smooth = np.tile(np.linspace(0, 255, shape[1]), (shape[0], 1)).astype(np.uint8)
    f = pb_fields(fv.image_message(smooth, 'f', 0, 'jpeg', 95).encode())
    decoded = cv2.imdecode(np.frombuffer(f[2][0], np.uint8), cv2.IMREAD_GRAYSCALE)
    assert f[3][0] == b'jpeg' and decoded.shape == smooth.shape
    assert np.abs(decoded.astype(int) - smooth).mean() < 3.0


def test_bad_images_are_refused():
    with pytest.raises(fv.LiveViewError, match='float32'):
        fv.image_message(np.zeros((4, 4), np.float32), 'f', 0)
    with pytest.raises(fv.LiveViewError, match='empty'):
        fv.image_message(np.zeros((0, 4), np.uint8), 'f', 0)
    with pytest.raises(fv.LiveViewError, match='format'):
        fv.image_message(np.zeros((4, 4), np.uint8), 'f', 0, 'bmp')


def test_overlay_tints_the_mask_only():
    image = np.full((40, 60), 100, np.uint8)
    mask = np.zeros((20, 30), np.uint8)  # half size: resized to the image
    mask[5:15, 10:20] = 255
    rgb = fv.overlay_image(image, mask, color=(255, 0, 0), alpha=0.5)
    assert rgb.shape == (40, 60, 3)
    assert tuple(rgb[20, 30]) == (178, 50, 50)  # inside: half way to red
    assert tuple(rgb[2, 2]) == (100, 100, 100)  # outside: unchanged grey
    assert tuple(rgb[10, 20]) == (255, 0, 0)  # the outline


def _marker(kind=fv.LINE_STRIP, points=((0.4, 0.0, 0.25), (0.4, 0.1, 0.25)), action=0,
            frame='base_link', ns='veins', ident=3, stamp=(2, 5)):
    """A visualization_msgs/Marker (the conversions only read its fields)."""
    marker = message_class('visualization_msgs/msg/Marker')()
    marker.header.frame_id = frame
    marker.header.stamp.sec, marker.header.stamp.nanosec = stamp
    marker.ns, marker.id, marker.type, marker.action = ns, ident, kind, action
    marker.scale.x = 0.003
    marker.color.r, marker.color.g, marker.color.b, marker.color.a = 0.2, 0.3, 0.9, 0.8
    point = message_class('geometry_msgs/msg/Point')
    marker.points = [point(x=x, y=y, z=z) for x, y, z in points]
    return marker


def test_markers_become_scene_entities():
    update = fv.scene_update([_marker(), _marker(kind=fv.SPHERE, ident=4, points=()),
                              _marker(action=2, ident=9)])
    f = pb_fields(update.encode())
    entities = [pb_fields(e) for e in f[2]]
    assert [e[3][0] for e in entities] == [b'veins/3', b'veins/4']
    assert entities[0][2][0] == b'base_link'
    line = pb_fields(entities[0][11][0])
    assert math.isclose(line[3][0], 0.003)
    ends = [pb_fields(p) for p in line[5]]  # proto3 leaves zeros out
    assert [(p[1][0], p.get(2, [0.0])[0], p[3][0]) for p in ends] == \
        [(0.4, 0.0, 0.25), (0.4, 0.1, 0.25)]
    deletion = pb_fields(f[1][0])
    assert deletion[3][0] == b'veins/9'


def test_marker_errors_name_the_marker():
    with pytest.raises(fv.LiveViewError, match='veins/3: unknown marker type 42'):
        fv.scene_update([_marker(kind=42)])
    with pytest.raises(fv.LiveViewError, match='NaN'):
        fv.scene_update([_marker(points=((0.4, math.nan, 0.2), (0.0, 0.0, 0.0)))])
    with pytest.raises(fv.LiveViewError, match='frame_id'):
        fv.scene_update([_marker(frame='')])


def test_arrow_marker_from_two_points_points_along_them():
    update = fv.scene_update([_marker(kind=fv.ARROW, points=((0.0, 0.0, 0.0), (0.0, 0.1, 0.0)))])
    entity = pb_fields(pb_fields(update.encode())[2][0])
    arrow = pb_fields(entity[7][0])
    pose = pb_fields(arrow[1][0])
    q = pb_fields(pose[2][0])
    w, z = q.get(4, [0.0])[0], q.get(3, [0.0])[0]
    assert math.isclose(w, math.sqrt(0.5), abs_tol=1e-9)  # +x turned 90 deg about z
    assert math.isclose(z, math.sqrt(0.5), abs_tol=1e-9)


def _pose_stamped(frame='base_link', xyz=(0.43, 0.1, 0.27), wxyz=(0.0, 1.0, 0.0, 0.0)):
    msg = message_class('geometry_msgs/msg/PoseStamped')()
    msg.header.frame_id = frame
    msg.header.stamp.sec = 4
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = xyz
    q.w, q.x, q.y, q.z = wxyz
    return msg


def test_poses_and_transforms():
    msg = _pose_stamped()
    f = pb_fields(fv.pose_in_frame(msg.pose, 'base_link', 4_000_000_000).encode())
    pose = pb_fields(f[3][0])
    assert f[2][0] == b'base_link'
    assert components(pose[1][0], 3) == [0.43, 0.1, 0.27]
    assert components(pose[2][0], 4) == [1.0, 0.0, 0.0, 0.0]  # x, y, z, w: 180 deg about x
    t = pb_fields(fv.frame_transform('base_link', 'needle_tip', msg.pose, 0).encode())
    assert (t[2][0], t[3][0]) == (b'base_link', b'needle_tip')
    assert components(t[4][0], 3) == [0.43, 0.1, 0.27]
    msg.pose.orientation.x = math.nan
    with pytest.raises(fv.LiveViewError, match='needle_tip rotation has NaN'):
        fv.frame_transform('base_link', 'needle_tip', msg.pose, 0)
    msg.pose.orientation.x = msg.pose.orientation.w = 0.0
    with pytest.raises(fv.LiveViewError, match='zero quaternion'):
        fv.pose_in_frame(msg.pose, 'base_link', 0)


def test_json_records_and_state_parsing():
    w = fv.wrench_record((0.0, 0.3, -0.4), (0, 0, 0.01), 'ft_sensor_frame', 2_500_000_000)
    assert w['force']['z'] == -0.4 and math.isclose(w['force_norm'], 0.5)
    assert w['stamp_s'] == 2.5
    with pytest.raises(fv.LiveViewError, match='NaN'):
        fv.wrench_record((math.nan, 0, 0), (0, 0, 0), 'f', 0)
    j = fv.joints_record(['a', 'b'], [0.1, 0.02], [], [], 0)
    assert j['by_name'] == {'a': 0.1, 'b': 0.02}
    with pytest.raises(fv.LiveViewError, match='2 joint names but 1'):
        fv.joints_record(['a', 'b'], [0.1], [], [], 0)
    s = fv.parse_state('INSERT t=1.234: advancing to the vessel | puncture skin; force 1.2 N')
    assert s['phase'] == 'INSERT' and s['time_s'] == 1.234
    assert s['reason'] == 'advancing to the vessel'
    assert s['events'] == ['puncture skin', 'force 1.2 N']
    assert fv.parse_state('hello world')['phase'] == 'hello'
    assert fv.log_level('SAFE t=2: force limit') == fv.fm.LogLevel.Error
    assert fv.log_level('SCAN t=0.1: looking') == fv.fm.LogLevel.Info


def test_rate_limiter_uses_its_clock():
    now = [0.0]
    limiter = fv.RateLimiter(10.0, clock=lambda: now[0])
    assert limiter.ready('a') and not limiter.ready('a') and limiter.ready('b')
    now[0] = 0.099
    assert not limiter.ready('a')
    now[0] = 0.1
    assert limiter.ready('a')
    with pytest.raises(fv.LiveViewError):
        fv.RateLimiter(0.0)


def test_server_binds_loopback_and_reports_a_busy_port():
    assert fv.is_loopback('127.0.0.1') and fv.is_loopback('localhost')
    assert fv.is_loopback('::1') and not fv.is_loopback('0.0.0.0')
    assert config.load()['live_view']['host'] == '127.0.0.1'
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        with pytest.raises(OSError, match='cannot serve Foxglove'):
            fv.LiveServer(port=busy.getsockname()[1]).start()
    server = fv.LiveServer(port=0).start()
    try:
        assert server.url == f'ws://127.0.0.1:{server.port}' and server.port > 0
    finally:
        server.stop()
        server.stop()  # idempotent


# --- the node over ROS, seen by a Foxglove WebSocket client ----------------------------

class FoxgloveClient:
    """A WebSocket client speaking the Foxglove protocol on a thread; collects frames."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(url, subprotocols=[SUBPROTOCOL], open_timeout=5).__enter__()
        self.server_info = json.loads(self.ws.recv(timeout=5))
        self.channels: dict[str, dict] = {}
        while not self.channels:  # the advertise of the channels that exist at connect
            msg = json.loads(self.ws.recv(timeout=5))
            if msg['op'] == 'advertise':
                self.channels = {c['topic']: c for c in msg['channels']}
        self.by_subscription: dict[int, str] = {}
        self.messages: dict[str, list[tuple[int, bytes]]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def subscribe(self, topics: list[str]) -> None:
        subs = []
        for i, topic in enumerate(topics, start=1):
            self.by_subscription[i] = topic
            subs.append({'id': i, 'channelId': self.channels[topic]['id']})
        self.ws.send(json.dumps({'op': 'subscribe', 'subscriptions': subs}))

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):  # the server went away: reading ends
            for frame in self.ws:
                if isinstance(frame, bytes) and frame[0] == 0x01:  # messageData
                    sub_id, log_time = struct.unpack_from('<IQ', frame, 1)
                    with self._lock:
                        self.messages.setdefault(self.by_subscription[sub_id], []).append(
                            (log_time, frame[13:]))

    def got(self, topic: str) -> list[tuple[int, bytes]]:
        with self._lock:
            return list(self.messages.get(topic, []))

    def close(self) -> None:
        self.ws.__exit__(None, None, None)  # closes the connection
        self._thread.join(timeout=5)


@pytest.fixture
def live(ros_context, executor):
    from ir_guidance.nodes.live_view import LiveViewNode

    node = LiveViewNode(context=ros_context, parameter_overrides=[
        Parameter('port', value=0), Parameter('image_rate_hz', value=1000.0)])
    source = Node('live_view_test_source', context=ros_context)
    executor.add_node(node)
    executor.add_node(source)
    try:
        yield node, source
    finally:
        executor.remove_node(node)
        executor.remove_node(source)
        node.destroy_node()
        source.destroy_node()


def test_client_receives_image_marker_and_state(live, executor):
    node, source = live
    topics = config.load()['topics']
    names = {k: topics[k]['name'] for k in ('us_image', 'us_vessel_mask', 'vessel_map_markers',
                                            'guidance_state', 'force_filtered',
                                            'needle_tip_pose')}
    assert node.server.url.startswith('ws://127.0.0.1:')
    client = FoxgloveClient(node.server.url)
    try:
        assert client.server_info['op'] == 'serverInfo'
        assert client.server_info['capabilities'] == []  # look only: no publish, no services
        ch = client.channels
        assert ch[names['us_image']]['schemaName'] == 'foxglove.RawImage'
        assert ch[names['vessel_map_markers']]['schemaName'] == 'foxglove.SceneUpdate'
        assert ch[names['guidance_state']]['encoding'] == 'json'
        assert ch['/live/us_overlay']['schemaName'] == 'foxglove.RawImage'
        assert ch['/live/log']['schemaName'] == 'foxglove.Log'
        wanted = [*names.values(), '/live/us_overlay', '/live/log', '/live/tf']
        client.subscribe(wanted)
        assert spin_until(executor, lambda: all(node.server.wanted(t) for t in wanted))

        pubs = {k: contract_publisher(source, k) for k in names}
        assert spin_until(executor, lambda: all(
            p.get_subscription_count() > 0 for p in pubs.values()))
        stamp = message_class('builtin_interfaces/msg/Time')(sec=7, nanosec=250_000_000)
        image = (np.arange(48 * 64) % 200).astype(np.uint8).reshape(48, 64)
        mask = np.zeros_like(image)
        mask[10:20, 30:40] = 255
        pubs['us_image'].publish(image_msg(image, 'mono8', 'us_image_frame', stamp))
        assert spin_until(executor, lambda: client.got(names['us_image']))
        pubs['us_vessel_mask'].publish(image_msg(mask, 'mono8', 'us_image_frame', stamp))
        markers = message_class('visualization_msgs/msg/MarkerArray')()
        marker = message_class('visualization_msgs/msg/Marker')()
        marker.header.frame_id, marker.header.stamp = 'base_link', stamp
        marker.ns, marker.id, marker.type = 'vessel_map', 2, marker.LINE_STRIP
        marker.scale.x = 0.004
        marker.color.b = marker.color.a = 1.0
        point = message_class('geometry_msgs/msg/Point')
        marker.points = [point(x=0.43, y=0.10, z=0.255), point(x=0.43, y=0.16, z=0.256)]
        markers.markers.append(marker)
        pubs['vessel_map_markers'].publish(markers)
        state = message_class('std_msgs/msg/String')(
            data='INSERT t=3.125: advancing | puncture skin')
        pubs['guidance_state'].publish(state)
        wrench = message_class('geometry_msgs/msg/WrenchStamped')()
        wrench.header.frame_id, wrench.header.stamp = 'ft_sensor_frame', stamp
        wrench.wrench.force.z = -1.25
        pubs['force_filtered'].publish(wrench)
        pubs['needle_tip_pose'].publish(_pose_stamped())
        assert spin_until(executor, lambda: all(client.got(t) for t in wanted)), \
            {t: len(client.got(t)) for t in wanted}

        log_time, payload = client.got(names['us_image'])[0]
        assert log_time == 7_250_000_000  # the header stamp
        f = raw_image_fields(payload)
        assert (f['width'], f['height'], f['encoding']) == (64, 48, 'mono8')
        assert np.array_equal(np.frombuffer(f['data'], np.uint8).reshape(48, 64), image)
        overlay = raw_image_fields(client.got('/live/us_overlay')[0][1])
        assert overlay['encoding'] == 'rgb8' and overlay['width'] == 64
        rgb = np.frombuffer(overlay['data'], np.uint8).reshape(48, 64, 3)
        assert np.array_equal(rgb[0, 0], [image[0, 0]] * 3)  # outside the mask: grey
        assert rgb[15, 35, 0] > rgb[15, 35, 2]  # inside: tinted orange

        entity = pb_fields(pb_fields(client.got(names['vessel_map_markers'])[0][1])[2][0])
        assert entity[3][0] == b'vessel_map/2' and entity[2][0] == b'base_link'
        line = pb_fields(entity[11][0])
        ys = [pb_fields(p)[2][0] for p in line[5]]
        assert ys == [0.10, 0.16] and math.isclose(line[3][0], 0.004)

        text = json.loads(client.got(names['guidance_state'])[0][1])
        assert text['text'] == state.data and text['phase'] == 'INSERT'
        assert text['time_s'] == 3.125 and text['events'] == ['puncture skin']
        logs = [pb_fields(p) for _, p in client.got('/live/log')]
        assert any(entry[3][0].decode() == state.data and entry[2][0] == 3 for entry in logs)
        force = json.loads(client.got(names['force_filtered'])[0][1])
        assert force['force']['z'] == -1.25 and force['frame_id'] == 'ft_sensor_frame'
        pose = pb_fields(client.got(names['needle_tip_pose'])[0][1])
        assert pose[2][0] == b'base_link'
        assert components(pb_fields(pose[3][0])[1][0], 3) == [0.43, 0.1, 0.27]
        tf = pb_fields(pb_fields(client.got('/live/tf')[0][1])[1][0])
        assert (tf[2][0], tf[3][0]) == (b'base_link', b'needle_tip')
        assert node.errors == 0
    finally:
        client.close()


def test_bad_input_is_reported_not_fatal(live, executor):
    node, source = live
    client = FoxgloveClient(node.server.url)
    try:
        topic = config.topic('us_image')['name']
        client.subscribe([topic, '/live/log'])
        assert spin_until(executor, lambda: node.server.wanted(topic))
        pub = contract_publisher(source, 'us_image')
        assert spin_until(executor, lambda: pub.get_subscription_count() > 0)
        bad = image_msg(np.zeros((4, 4), np.uint8), 'mono8', 'f', source.get_clock().now()
                        .to_msg())
        bad.encoding = 'rgb8'
        pub.publish(bad)
        assert spin_until(executor, lambda: client.got('/live/log'))
        entry = pb_fields(client.got('/live/log')[0][1])
        assert entry[2][0] == 4 and b'not shown' in entry[3][0] and b'rgb8' in entry[3][0]
        assert node.errors == 1 and not client.got(topic)
    finally:
        client.close()


def test_stopping_the_node_frees_the_port(ros_context):
    from ir_guidance.nodes.live_view import LiveViewNode

    node = LiveViewNode(context=ros_context, parameter_overrides=[Parameter('port', value=0)])
    port = node.server.port
    node.destroy_node()
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(('127.0.0.1', port))  # would fail while the server still listened


def test_layout_uses_only_served_channels(ros_context):
    from ir_guidance.nodes.live_view import LiveViewNode

    node = LiveViewNode(context=ros_context, parameter_overrides=[Parameter('port', value=0)])
    served = set(node.server.topics)
    node.destroy_node()
    layout = json.loads(LAYOUT.read_text(encoding='utf-8'))
    configs = layout['configById']

    def leaves(tree):
        if isinstance(tree, str):
            return [tree]
        return leaves(tree['first']) + leaves(tree['second'])

    assert sorted(leaves(layout['layout'])) == sorted(configs)
    used = set()
    for panel, cfg in configs.items():
        kind = panel.split('!')[0]
        if kind == 'Image':
            used.add(cfg['imageMode']['imageTopic'])
        elif kind == '3D':
            used.update(cfg['topics'])
        elif kind in ('Plot', 'StateTransitions'):
            used.update(p['value'].split('.')[0] for p in cfg['paths'])
        elif kind == 'RosOut':
            used.add(cfg['topicToRender'])
        elif kind == 'RawMessages':
            used.add(cfg['topicPath'])
    assert {'Image', '3D', 'Plot', 'RosOut'} <= {p.split('!')[0] for p in configs}
    assert used <= served, used - served
    assert {'/live/us_overlay', '/live/nir_overlay', '/vessel_map/markers',
            '/arm/needle_tip_pose', '/force_monitor/wrench_filtered', '/live/log'} <= used


def test_exclude_topics(ros_context):
    from ir_guidance.nodes.live_view import LiveViewNode

    with pytest.raises(ValueError, match="unknown topic keys \\['bogus'\\]"):
        LiveViewNode(context=ros_context, parameter_overrides=[
            Parameter('port', value=0), Parameter('exclude_topics', value='joint_states,bogus')])
    node = LiveViewNode(context=ros_context, parameter_overrides=[
        Parameter('port', value=0), Parameter('exclude_topics', value='joint_states, ft_wrench')])
    try:
        served = set(node.server.topics)
        assert '/joint_states' not in served and '/ft_sensor/wrench' not in served
        assert '/us/image_raw' in served
        subscribed = {sub.topic_name for sub in node.subscriptions}
        assert '/joint_states' not in subscribed and '/us/image_raw' in subscribed
    finally:
        node.destroy_node()
