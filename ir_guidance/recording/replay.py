"""Bench replay: feed one node its recorded inputs, compare its outputs with the recording.

Layer: recording (an entry point like ``runs/insertion.py``: rclpy is imported only when
:func:`replay` runs). The node (by name, ``ir_guidance.nodes.NODES``) is started in this
process from its module's node class with ``lockstep:=false`` and ``use_sim_time:=true``,
on a fresh context and a free domain id; a feeder node publishes the recorded serialized
inputs (reliable, deep queue: accepted by best-effort and reliable subscriptions) and,
before each, ``/clock`` = the input's recorded log time, so a node that checks stamps
against its clock (force_monitor's stale check) sees the recorded timing.

Pacing: ``rate`` = R replays at R x the recorded timing (1.0: as recorded); ``rate`` =
None as fast as possible, one input at a time: after each input that yields one output
(the ``trigger`` topics of :data:`NODE_TOPICS` with the same stamp) it waits for that
output, or an error report, or ``timeout_s``.

Comparison (``compare``): per output topic, recorded and replayed messages are matched by
header stamp (force events by their ``stamp`` value); only recorded outputs of inputs that
were fed count. PointCloud2: same point count, every point within ``point_tol_m`` of a
point of the other cloud (x, y, z and radius fields; both ways), confidence within
``confidence_tol``, label fields (``id``, ``vein``) ignored. Image: same size and encoding;
a binary mask (0/255) may differ in at most ``image_mismatch`` of its foreground (1 - IoU),
another image in at most that fraction of its pixels. WrenchStamped: every component within
``wrench_tol``. Force events (DiagnosticArray): the same kinds at the same stamps, peak
and drop within ``event_tol``. A topic passes with no missing, extra or mismatched
message; the replay passes when every output topic does.
"""

from __future__ import annotations

import importlib
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ir_guidance import config, ros_env
from ir_guidance.recording.recorder import (
    BagMessage,
    RecordingError,
    find_mcap,
    read_messages,
    stamp_reader,
)


@dataclass(frozen=True)
class NodeTopics:
    """A node's recorded inputs and compared outputs (contract topic keys)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    trigger: tuple[str, ...]   # inputs that, all with one stamp, make one of each `results`
    results: tuple[str, ...]   # outputs stamped like the trigger inputs
    errors: tuple[str, ...]    # where the node reports an input it refused


# The one table of what each replayable node reads and writes (docs/recording.md).
NODE_TOPICS: dict[str, NodeTopics] = {
    'ultrasound': NodeTopics(inputs=('us_image',), outputs=('us_vessels', 'us_vessel_mask'),
                             trigger=('us_image',), results=('us_vessels', 'us_vessel_mask'),
                             errors=('perception_status',)),
    'nir': NodeTopics(inputs=('nir_camera_info', 'nir_image', 'nir_depth'),
                      outputs=('nir_veins', 'nir_vein_mask'),
                      trigger=('nir_image', 'nir_depth'),
                      results=('nir_veins', 'nir_vein_mask'),
                      errors=('perception_status',)),
    'force_monitor': NodeTopics(inputs=('joint_states', 'ft_wrench'),
                                outputs=('force_filtered', 'force_events'),
                                trigger=('ft_wrench',), results=('force_filtered',),
                                errors=('force_events',)),
}
LABEL_FIELDS = ('id', 'vein')
POINT_FIELDS = ('x', 'y', 'z', 'radius', 'radius_minor')


def tolerances() -> dict[str, float]:
    """The comparison tolerances of config ``recording.replay``."""
    return dict(config.load()['recording']['replay'])


def exit_code(result: dict[str, Any]) -> int:
    """The CLI's exit status: 1 on a regression beyond tolerance (or lost outputs), else 0."""
    return 1 if result.get('pass') is False else 0


def _node_class(name: str) -> type:
    from rclpy.node import Node

    from ir_guidance.nodes import NODES

    if name not in NODES:
        raise ValueError(f'unknown node {name!r}; known nodes: {sorted(NODES)}')
    module = importlib.import_module(NODES[name].partition(':')[0])
    cls = getattr(module, 'NODE_CLASS', None)
    if cls is None:  # a module without the alias: its one Node subclass
        found = [v for v in vars(module).values() if isinstance(v, type) and
                 issubclass(v, Node) and v is not Node and v.__module__ == module.__name__]
        if len(found) != 1:
            raise ValueError(f'cannot tell the node class of {module.__name__}')
        cls = found[0]
    return cls


def _stamp_ns(header_stamp: Any) -> int:
    return header_stamp.sec * 1_000_000_000 + header_stamp.nanosec


def replay(bag: Path | str, node: str, compare: bool = True, rate: float | None = None,
           params: dict[str, Any] | None = None, timeout_s: float | None = None,
           drain_s: float | None = None, quiet: bool = True) -> dict[str, Any]:
    """Replay ``bag``'s inputs of ``node`` into it; returns a summary (``pass`` with compare).

    ``params``: parameter overrides for the node (e.g. ``{'segmenter': 'classical'}``).
    Raises ValueError (RecordingError) for an unknown node, a missing file, or a
    recording without the node's inputs.
    """
    if node not in NODE_TOPICS:
        raise ValueError(f'no replay table for node {node!r}; replayable: '
                         f'{sorted(NODE_TOPICS)}')
    if rate is not None and not rate > 0:
        raise ValueError(f'rate must be > 0 (or None: as fast as possible), got {rate!r}')
    tol = tolerances()
    timeout_s = float(tol['timeout_s'] if timeout_s is None else timeout_s)
    drain_s = float(tol['drain_s'] if drain_s is None else drain_s)
    table = NODE_TOPICS[node]
    names = {key: config.topic(key)['name'] for key in
             (*table.inputs, *table.outputs, *table.errors, 'clock')}
    mcap_file = find_mcap(bag)
    messages = read_messages(mcap_file, [names[k] for k in (*table.inputs, *table.outputs)])
    inputs = [m for m in messages if m.topic in {names[k] for k in table.inputs}]
    if not inputs:
        raise RecordingError(f'{mcap_file} has none of the inputs of {node} '
                             f'({[names[k] for k in table.inputs]})')
    session = _Session(node, table, names, params or {}, quiet)
    try:
        feed = session.feed(inputs, rate, timeout_s, drain_s)
    finally:
        session.close()
    result: dict[str, Any] = {
        'node': node, 'bag': str(mcap_file), 'rate': rate, 'params': params or {},
        'inputs': {t: sum(m.topic == t for m in inputs) for t in sorted({m.topic for m in
                                                                          inputs})},
        'outputs': {names[k]: len(session.outputs[names[k]]) for k in table.outputs},
        **feed}
    fed = result.pop('_fed_stamps')
    if not compare:
        result['pass'] = None if not feed['timeouts'] else False
        return result
    recorded = defaultdict(list)
    for m in messages:
        if m.topic in {names[k] for k in table.outputs}:
            recorded[m.topic].append(m)
    span = (min(fed), max(fed)) if fed else (0, -1)
    result['compare'] = {names[k]: _compare_topic(config.topic(k)['type'],
                                                  recorded[names[k]],
                                                  session.outputs[names[k]], fed, span, tol)
                         for k in table.outputs}
    result['pass'] = all(c['pass'] for c in result['compare'].values()) and \
        not feed['timeouts']
    return result


class _Session:
    """The node under test, a feeder/collector node, and one executor, on a fresh domain."""

    def __init__(self, node: str, table: NodeTopics, names: dict[str, str],
                 params: dict[str, Any], quiet: bool) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.parameter import Parameter
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        from ir_guidance.nodes.conversions import LOCKSTEP_QOS, message_class

        self.table, self.names = table, names
        domain = ros_env.free_domain_id()
        ros_env.configure(domain_id=domain)
        self.context = rclpy.Context()
        rclpy.init(args=[] if not quiet else ['--ros-args', '--log-level', 'warn'],
                   context=self.context, domain_id=domain)
        self.executor = SingleThreadedExecutor(context=self.context)
        overrides = {'lockstep': False, 'use_sim_time': True, **params}
        self.node = _node_class(node)(context=self.context, parameter_overrides=[
            Parameter(k, value=v) for k, v in overrides.items()])
        self.feeder = Node('replay_feeder', context=self.context)
        self.pubs = {names[k]: self.feeder.create_publisher(
            message_class(config.topic(k)['type']), names[k], LOCKSTEP_QOS)
            for k in (*table.inputs, 'clock')}
        self.outputs: dict[str, list[Any]] = {names[k]: [] for k in table.outputs}
        self.errors = 0
        self.result_stamps: dict[str, set[int]] = {names[k]: set() for k in table.results}
        for key in (*table.outputs, *table.errors):
            spec = config.topic(key)
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=(
                ReliabilityPolicy.RELIABLE if spec['qos'] == 'reliable'
                else ReliabilityPolicy.BEST_EFFORT))
            self.feeder.create_subscription(message_class(spec['type']), spec['name'],
                                            lambda m, key=key: self._on_output(key, m), qos)
        self.clock_cls = message_class(config.topic('clock')['type'])
        self.executor.add_node(self.node)
        self.executor.add_node(self.feeder)
        deadline = time.monotonic() + 10.0
        while not all(p.get_subscription_count() for p in self.pubs.values()):
            self.executor.spin_once(timeout_sec=0.01)
            if time.monotonic() > deadline:
                missing = [n for n, p in self.pubs.items() if not p.get_subscription_count()]
                raise RecordingError(f'{node} did not subscribe to {missing} within 10 s')

    def _on_output(self, key: str, msg: Any) -> None:
        name = self.names[key]
        if key in self.table.outputs:
            self.outputs[name].append(msg)
            if key in self.table.results:
                self.result_stamps[name].add(_stamp_ns(msg.header.stamp))
        if key in self.table.errors and self._is_error(key, msg):
            self.errors += 1

    @staticmethod
    def _is_error(key: str, msg: Any) -> bool:
        if key == 'force_events':
            return any(s.name == 'invalid' for s in msg.status)
        return True

    def _answered(self, stamp: int) -> bool:
        return all(stamp in stamps for stamps in self.result_stamps.values())

    def _publish(self, message: BagMessage, last_clock: list[int]) -> None:
        if message.log_time_ns > last_clock[0]:
            from builtin_interfaces.msg import Time

            clock = self.clock_cls()
            clock.clock = Time(sec=message.log_time_ns // 1_000_000_000,
                               nanosec=message.log_time_ns % 1_000_000_000)
            self.pubs[self.names['clock']].publish(clock)
            last_clock[0] = message.log_time_ns
        self.pubs[message.topic].publish(message.data)

    def feed(self, inputs: list[BagMessage], rate: float | None, timeout_s: float,
             drain_s: float) -> dict[str, Any]:
        trigger = {self.names[k] for k in self.table.trigger}
        readers = {m.topic: stamp_reader(m.type) for m in inputs}
        fed: dict[int, set[str]] = defaultdict(set)
        complete: list[int] = []
        timeouts = 0
        late = 0.0
        last_clock = [-1]
        start = time.monotonic()
        for message in inputs:
            if rate is not None:
                due = start + (message.log_time_ns - inputs[0].log_time_ns) * 1e-9 / rate
                while time.monotonic() < due:
                    self.executor.spin_once(timeout_sec=max(0.0, min(
                        0.005, due - time.monotonic())))
                late = max(late, time.monotonic() - due)
            errors_before = self.errors
            self._publish(message, last_clock)
            if message.topic not in trigger:
                continue
            stamp = readers[message.topic](message.data)
            fed[stamp].add(message.topic)
            if fed[stamp] != trigger:
                continue
            complete.append(stamp)
            if rate is None:
                deadline = time.monotonic() + timeout_s
                while not self._answered(stamp) and self.errors == errors_before:
                    self.executor.spin_once(timeout_sec=0.005)
                    if time.monotonic() > deadline:
                        timeouts += 1
                        break
        fed_s = time.monotonic() - start
        # outputs still on their way: until every complete input has its result (or an
        # error was reported for it) or nothing more comes for drain_s
        quiet_since, seen = time.monotonic(), -1
        while True:
            total = sum(len(v) for v in self.outputs.values()) + self.errors
            if total != seen:
                seen, quiet_since = total, time.monotonic()
            done = all(self._answered(s) for s in complete)
            if done or time.monotonic() - quiet_since > drain_s:
                break
            self.executor.spin_once(timeout_sec=0.01)
        missing = sum(not self._answered(s) for s in complete)
        if rate is not None:
            timeouts = missing - min(missing, self.errors)
        return {'wall_s': round(time.monotonic() - start, 3), 'feed_s': round(fed_s, 3),
                'per_input_ms': round(1e3 * fed_s / max(1, len(complete)), 2),
                'triggers': len(complete), 'timeouts': timeouts,
                'errors_reported': self.errors,
                'max_late_s': round(late, 4) if rate is not None else None,
                '_fed_stamps': sorted(complete)}

    def close(self) -> None:
        self.executor.remove_node(self.node)
        self.executor.remove_node(self.feeder)
        self.node.destroy_node()
        self.feeder.destroy_node()
        self.executor.shutdown()
        self.context.try_shutdown()


# -- comparison ---------------------------------------------------------------------------
def _compare_topic(type_name: str, recorded: list[BagMessage], replayed: list[Any],
                   fed: list[int], span: tuple[int, int], tol: dict[str, float]
                   ) -> dict[str, Any]:
    from rclpy.serialization import deserialize_message

    from ir_guidance.nodes.conversions import message_class

    cls = message_class(type_name)
    old = [deserialize_message(m.data, cls) for m in recorded]
    if type_name == 'diagnostic_msgs/msg/DiagnosticArray':
        return _compare_events(old, replayed, span, tol)
    wanted = set(fed)
    kept = [m for m in old if _stamp_ns(m.header.stamp) in wanted]
    check = {'sensor_msgs/msg/PointCloud2': _cloud_error,
             'sensor_msgs/msg/Image': _image_error,
             'geometry_msgs/msg/WrenchStamped': _wrench_error}.get(type_name)
    if check is None:
        raise ValueError(f'no comparison for {type_name}')
    by_old = defaultdict(list)
    by_new = defaultdict(list)
    for m in kept:
        by_old[_stamp_ns(m.header.stamp)].append(m)
    for m in replayed:
        by_new[_stamp_ns(m.header.stamp)].append(m)
    missing = extra = mismatched = 0
    worst = 0.0
    first_bad = None
    for stamp in sorted(set(by_old) | set(by_new)):
        a, b = by_old.get(stamp, []), by_new.get(stamp, [])
        missing += max(0, len(a) - len(b))
        extra += max(0, len(b) - len(a))
        for x, y in zip(a, b, strict=False):
            error, ok = check(x, y, tol)
            worst = max(worst, error)
            if not ok:
                mismatched += 1
                first_bad = stamp if first_bad is None else first_bad
    return {'recorded': len(kept), 'replayed': len(replayed),
            'skipped': len(old) - len(kept), 'missing': missing, 'extra': extra,
            'mismatched': mismatched, 'worst': worst,
            'first_bad_stamp_s': None if first_bad is None else first_bad * 1e-9,
            'pass': missing == 0 and extra == 0 and mismatched == 0}


def _cloud_error(a: Any, b: Any, tol: dict[str, float]) -> tuple[float, bool]:
    """Largest point/field distance between two clouds (m, both ways), and whether OK."""
    from scipy.spatial import cKDTree

    from ir_guidance.nodes.conversions import cloud_array

    pa, pb = cloud_array(a), cloud_array(b)
    if pa.dtype.names != pb.dtype.names or len(pa) != len(pb):
        return float('inf'), False
    if len(pa) == 0:
        return 0.0, True
    xyz = [n for n in ('x', 'y', 'z') if n in pa.dtype.names]
    ca = np.column_stack([pa[n] for n in xyz]).astype(float)
    cb = np.column_stack([pb[n] for n in xyz]).astype(float)
    d_ab, i_ab = cKDTree(cb).query(ca)
    d_ba, _ = cKDTree(ca).query(cb)
    worst = float(max(d_ab.max(), d_ba.max()))
    ok = worst <= tol['point_tol_m']
    for name in pa.dtype.names:
        if name in xyz or name in LABEL_FIELDS:
            continue
        diff = float(np.max(np.abs(pa[name].astype(float) - pb[name][i_ab].astype(float))))
        limit = tol['point_tol_m'] if name in POINT_FIELDS else tol['confidence_tol']
        ok = ok and diff <= limit
        if name in POINT_FIELDS:
            worst = max(worst, diff)
    return worst, ok


def _image_error(a: Any, b: Any, tol: dict[str, float]) -> tuple[float, bool]:
    """Mismatch of two images (1.0 for another size or encoding).

    Binary masks (0/255): 1 - IoU of the foreground; other images: the fraction of
    differing pixels.
    """
    from ir_guidance.nodes.conversions import ENCODINGS, image_array

    if (a.height, a.width, a.encoding) != (b.height, b.width, b.encoding):
        return 1.0, False
    if a.encoding not in ENCODINGS:
        return (0.0, True) if bytes(a.data) == bytes(b.data) else (1.0, False)
    ia, ib = image_array(a, (a.encoding,)), image_array(b, (b.encoding,))
    binary = a.encoding in ('mono8', '8UC1') and all(
        np.isin(np.unique(i), (0, 255)).all() for i in (ia, ib))
    if binary:
        union = np.count_nonzero((ia > 0) | (ib > 0))
        fraction = np.count_nonzero((ia > 0) != (ib > 0)) / union if union else 0.0
    else:
        fraction = float(np.mean(ia != ib))
    return float(fraction), fraction <= tol['image_mismatch']


def _wrench_error(a: Any, b: Any, tol: dict[str, float]) -> tuple[float, bool]:
    def vec(m: Any) -> np.ndarray:
        f, t = m.wrench.force, m.wrench.torque
        return np.array([f.x, f.y, f.z, t.x, t.y, t.z])

    error = float(np.max(np.abs(vec(a) - vec(b))))
    return error, error <= tol['wrench_tol'] and a.header.frame_id == b.header.frame_id


def _events(arrays: list[Any]) -> dict[tuple[str, str], list[dict[str, str]]]:
    out: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for array in arrays:
        for status in array.status:
            values = {kv.key: kv.value for kv in status.values}
            out[(status.name, values.get('stamp', ''))].append(values)
    return out


def _compare_events(old: list[Any], new: list[Any], span: tuple[int, int],
                    tol: dict[str, float]) -> dict[str, Any]:
    """Force events matched by (kind, event stamp); only events within the fed stamps."""
    def inside(key: tuple[str, str]) -> bool:
        try:
            stamp = round(float(key[1]) * 1e9)
        except ValueError:
            return False
        return span[0] - 1_000_000 <= stamp <= span[1] + 1_000_000

    a = {k: v for k, v in _events(old).items() if inside(k)}
    b = _events(new)
    missing = sum(max(0, len(v) - len(b.get(k, []))) for k, v in a.items())
    extra = sum(max(0, len(v) - len(a.get(k, []))) for k, v in b.items())
    mismatched, worst = 0, 0.0
    for key in set(a) & set(b):
        for x, y in zip(a[key], b[key], strict=False):
            for name in ('peak_n', 'drop_n'):
                try:
                    diff = abs(float(x.get(name, 0)) - float(y.get(name, 0)))
                except ValueError:
                    diff = 0.0 if x.get(name) == y.get(name) else float('inf')
                worst = max(worst, diff)
                mismatched += diff > tol['event_tol']
    count = sum(len(v) for v in a.values())
    return {'recorded': count, 'replayed': sum(len(v) for v in b.values()),
            'skipped': sum(len(v) for v in _events(old).values()) - count,
            'missing': missing, 'extra': extra, 'mismatched': mismatched, 'worst': worst,
            'first_bad_stamp_s': None,
            'pass': missing == 0 and extra == 0 and mismatched == 0}
