"""recorder: contract topics into a rosbag2 MCAP recording (a thin adapter).

Subscribes with raw subscriptions (the serialized CDR bytes as they came off the wire:
nothing is deserialized or re-serialized) to every contract topic of ``config/`` or the
chosen ``topics`` (keys like ``joint_states`` or names like ``/joint_states``), and hands
each message to :class:`ir_guidance.recording.recorder.BagWriter`, which writes on its own
thread. ``path`` (``OUT.mcap`` -> directory ``OUT/`` with ``OUT_0.mcap`` and
``metadata.yaml``) must not exist. The bag is finished when the node is destroyed
(Ctrl-C / SIGINT / shutdown of its process).

QoS: reliable topics are recorded reliable; sensor topics reliable too when ``lockstep``
(lockstep publishers are reliable with a deep queue: nothing may be lost), best effort
otherwise. A reliable subscription does not match a best-effort publisher, so a graph
check every ``qos_check_s`` switches such a topic to best effort, and it notes the
publishers' offered QoS profiles for the metadata (as rosbag2 does). Every subscription
keeps ``depth`` messages, so a slow executor turn does not lose any.

Time: log time = receive time on the node clock (simulated time with ``use_sim_time``,
as ``ir-guidance sim`` runs every node); publish time = the message's stamp where it has
one (docs/recording.md).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ir_guidance import config
from ir_guidance.nodes import runner
from ir_guidance.nodes.conversions import message_class
from ir_guidance.recording.recorder import (
    BagSummary,
    BagWriter,
    RecordingError,
    qos_dict,
    stamp_reader,
)

NODE_NAME = 'recorder'
CLOCK_TOPIC = '/clock'
RELIABILITY = {ReliabilityPolicy.RELIABLE: 'reliable',
               ReliabilityPolicy.BEST_EFFORT: 'best_effort'}
DURABILITY = {DurabilityPolicy.VOLATILE: 'volatile',
              DurabilityPolicy.TRANSIENT_LOCAL: 'transient_local'}
HISTORY = {HistoryPolicy.KEEP_LAST: 'keep_last', HistoryPolicy.KEEP_ALL: 'keep_all'}


def resolve_topics(topics: list[str] | None) -> dict[str, dict[str, Any]]:
    """Contract specs (name, type, qos, key) of ``topics`` (keys or names); None/[]: all."""
    contract = config.load()['topics']
    by_name = {spec['name']: key for key, spec in contract.items()}
    keys = list(contract) if not topics else []
    for item in topics or []:
        key = item if item in contract else by_name.get(item)
        if key is None:
            raise RecordingError(f'{item!r} is not a contract topic (a key or name from the '
                                 f'topics: section of config/ir_guidance.yaml)')
        if key not in keys:
            keys.append(key)
    return {contract[k]['name']: dict(contract[k], key=k) for k in keys}


def _profile_dict(qos: QoSProfile) -> dict[str, Any]:
    return qos_dict(RELIABILITY.get(qos.reliability, 'unknown'),
                    DURABILITY.get(qos.durability, 'unknown'),
                    HISTORY.get(qos.history, 'unknown'), qos.depth,
                    qos.deadline.nanoseconds, qos.lifespan.nanoseconds, 'automatic',
                    qos.liveliness_lease_duration.nanoseconds)


class RecorderNode(Node):
    """Raw subscriptions to contract topics, written to an MCAP recording."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        section = config.load()['recording']
        self.declare_parameter('path', '')
        if section['topics']:
            self.declare_parameter('topics', list(section['topics']))
        else:
            self.declare_parameter('topics', Parameter.Type.STRING_ARRAY)
        for name in ('compression', 'chunk_size', 'max_queue_mb', 'depth', 'qos_check_s'):
            self.declare_parameter(name, section[name])
        self.declare_parameter('lockstep', bool(config.load()['lockstep']['enabled']))
        value = {name: self.get_parameter(name).value for name in (
            'path', 'compression', 'chunk_size', 'max_queue_mb', 'depth', 'qos_check_s',
            'lockstep')}
        # An array parameter with no default and none given is uninitialized: every topic.
        topics = self.get_parameter_or('topics', None)
        value['topics'] = topics.value if topics is not None else []
        if not value['path']:
            raise RecordingError('parameter path is empty: where should the recording go '
                                 '(e.g. -p path:=run.mcap)?')
        if int(value['depth']) < 1 or float(value['qos_check_s']) <= 0:
            raise RecordingError(f"depth must be >= 1 and qos_check_s > 0, got "
                                 f"{value['depth']!r}, {value['qos_check_s']!r}")
        self.specs = resolve_topics(list(value['topics'] or []))
        self.depth = int(value['depth'])
        self.lockstep = bool(value['lockstep'])
        self.writer = BagWriter(Path(value['path']), str(value['compression']),
                                int(value['chunk_size']), float(value['max_queue_mb']))
        self.received: dict[str, int] = dict.fromkeys(self.specs, 0)
        self._stamp = {name: stamp_reader(spec['type']) for name, spec in self.specs.items()}
        self._reliable: dict[str, bool] = {}
        self._qos_known: set[str] = set()
        self._summary: BagSummary | None = None
        self._lock = threading.Lock()
        for name, spec in self.specs.items():
            reliable = spec['qos'] == 'reliable' or self.lockstep
            self._reliable[name] = reliable
            self.writer.add_topic(name, spec['type'], [_profile_dict(self._qos(reliable))])
        self._use_sim_time = bool(self.get_parameter('use_sim_time').value)
        self._sim_now = 0
        taken = {name: (message_class(spec['type']), self._qos(self._reliable[name]))
                 for name, spec in self.specs.items()}
        if self._use_sim_time and CLOCK_TOPIC not in taken:
            taken[CLOCK_TOPIC] = (message_class(config.topic('clock')['type']),
                                  self._qos(reliable=False))
            self._stamp[CLOCK_TOPIC] = stamp_reader(config.topic('clock')['type'])
        self._taker = _Taker(self, taken)
        self._check_timer = self.create_timer(float(value['qos_check_s']), self._check_graph)
        self.get_logger().info(f'recording {len(self.specs)} topics to '
                               f'{self.writer.directory}')

    def _qos(self, reliable: bool) -> QoSProfile:
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.depth,
                          reliability=ReliabilityPolicy.RELIABLE if reliable
                          else ReliabilityPolicy.BEST_EFFORT)

    def on_message(self, name: str, data: bytes) -> None:
        """One serialized message taken from ``name`` (taker thread): queue it.

        The receive time: with ``use_sim_time`` the last ``/clock`` this thread has taken
        (the same value the node clock would give, without its cost of ~30 us a call
        here); otherwise the system time, which is what the node clock reads then.
        """
        reader = self._stamp[name]
        stamp = reader(data) if reader is not None else None
        if name == CLOCK_TOPIC and stamp is not None:
            self._sim_now = stamp
            if name not in self.specs:
                return  # only followed for the time, not recorded
        now = self._sim_now if self._use_sim_time else time.time_ns()
        self.received[name] += 1
        self.writer.write(name, data, now, now if stamp is None else stamp)

    def _check_graph(self) -> None:
        """Best effort where a publisher offers only that; note offered QoS for metadata."""
        for name in self.specs:
            infos = self.get_publishers_info_by_topic(name)
            if not infos:
                continue
            offered = [info.qos_profile for info in infos]
            if name not in self._qos_known and self.received[name] == 0:
                self.writer.set_qos(name, [_profile_dict(q) for q in offered])
                self._qos_known.add(name)
            best_effort = any(q.reliability == ReliabilityPolicy.BEST_EFFORT for q in offered)
            if best_effort and self._reliable[name]:
                self.get_logger().info(f'{name}: a publisher offers best effort; '
                                       f'recording it best effort')
                self._reliable[name] = False
                self._taker.resubscribe(name, self._qos(reliable=False))

    def finish(self) -> BagSummary:
        """Stop subscribing and finish the recording (idempotent)."""
        with self._lock:
            if self._summary is None:
                self._check_timer.cancel()
                self._taker.stop()
                self._summary = self.writer.close()
                dropped = self._summary.dropped
                self.get_logger().info(
                    f'wrote {self._summary.message_count} messages to '
                    f'{self._summary.directory}' + (f'; DROPPED {dropped} (writer backlog '
                                                    f'full)' if dropped else ''))
        return self._summary

    def destroy_node(self) -> None:
        """Finish the recording with the node (Ctrl-C, shutdown)."""
        self.finish()
        super().destroy_node()


class _Taker:
    """Takes serialized messages off the recorder's subscriptions on its own thread.

    The subscriptions are rcl subscriptions of the node that no executor sees, polled:
    measured on this 2-core machine, an rclpy executor turn or an rcl wait-set cycle costs
    ~120 us while a take costs ~3 us, and at 3 kHz of small messages plus images the
    executor fell behind (~1.7 kHz) and lost samples. Each round takes one message per
    subscription until all are empty (a backlog stays interleaved in arrival order), then
    the thread sleeps ``MIN_SLEEP_S``, doubling to ``MAX_SLEEP_S`` while nothing comes.
    The subscription queues (``depth``) hold what arrives in between.
    """

    MIN_SLEEP_S = 0.001
    MAX_SLEEP_S = 0.01

    def __init__(self, node: RecorderNode, topics: dict[str, tuple[type, QoSProfile]]) -> None:
        from rclpy.impl.implementation_singleton import rclpy_implementation

        self._rclpy = rclpy_implementation
        self.node = node
        self.types = {name: msg_type for name, (msg_type, _) in topics.items()}
        self.subs = {name: self._create(name, qos) for name, (_, qos) in topics.items()}
        self._pending: list[tuple[str, QoSProfile]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='recorder_take', daemon=True)
        self._thread.start()

    def _create(self, name: str, qos: QoSProfile) -> Any:
        from rclpy.type_support import check_is_valid_msg_type

        check_is_valid_msg_type(self.types[name])  # imports the type support
        with self.node.handle:
            return self._rclpy.Subscription(self.node.handle, self.types[name], name,
                                            qos.get_c_qos_profile())

    def resubscribe(self, name: str, qos: QoSProfile) -> None:
        """Replace a subscription with one of another QoS (done by the taker thread)."""
        self._pending.append((name, qos))

    def _drain(self) -> int:
        count = 0
        active = [(name, sub, self.types[name]) for name, sub in self.subs.items()]
        while active:
            still = []
            for name, sub, msg_type in active:
                taken = sub.take_message(msg_type, True)
                if taken is not None:
                    self.node.on_message(name, taken[0])
                    still.append((name, sub, msg_type))
            count += len(still)
            active = still
        return count

    def _run(self) -> None:
        sleep = self.MIN_SLEEP_S
        while not self._stop.is_set() and self.node.context.ok():
            while self._pending:
                name, qos = self._pending.pop(0)
                self.subs[name].destroy_when_not_in_use()
                self.subs[name] = self._create(name, qos)
            sleep = self.MIN_SLEEP_S if self._drain() else min(2 * sleep, self.MAX_SLEEP_S)
            self._stop.wait(sleep)

    def stop(self) -> None:
        """Take what the subscriptions still hold, stop, and destroy them."""
        self._stop.set()
        self._thread.join()
        if self.node.context.ok():
            self._drain()
        for sub in self.subs.values():
            sub.destroy_when_not_in_use()


class Recording:
    """A recorder running in this process (from :func:`record`); ``stop()`` finishes it."""

    def __init__(self, node: RecorderNode, executor: Any, own_executor: bool) -> None:
        self.node = node
        self.executor = executor
        self._own = own_executor
        self._thread: threading.Thread | None = None
        if own_executor:
            self._thread = threading.Thread(target=self._spin, daemon=True,
                                            name='recorder_spin')
            self._running = True
            self._thread.start()

    def _spin(self) -> None:
        while self._running:
            self.executor.spin_once(timeout_sec=0.05)

    def stop(self) -> BagSummary:
        """Finish the recording and remove the node; returns what was written."""
        if self._thread is not None:
            self._running = False
            self._thread.join()
            self._thread = None
        summary = self.node.finish()
        self.executor.remove_node(self.node)
        if self._own:
            self.executor.shutdown()
        self.node.destroy_node()
        return summary

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def record(topics: list[str] | None, path: Path | str, context: Any = None,
           executor: Any = None, lockstep: bool = False,
           parameters: dict[str, Any] | None = None) -> Recording:
    """Start recording ``topics`` (contract keys or names; None: all) to ``path``.

    With ``executor`` the recorder node is added to it (the caller spins); without, it
    spins on its own executor thread in ``context``. Returns a :class:`Recording`
    (a context manager); its ``stop()`` returns the :class:`BagSummary`.
    """
    params = {'path': str(path), 'lockstep': lockstep, **(parameters or {})}
    if topics:
        params['topics'] = list(topics)
    node = RecorderNode(context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in params.items()])
    own = executor is None
    if own:
        from rclpy.executors import SingleThreadedExecutor

        executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    return Recording(node, executor, own)


NODE_CLASS = RecorderNode  # for in-process runs (ir-guidance sim --single-process)


def main(args: list[str] | None = None) -> int:
    """Record until Ctrl-C; a bad parameter or an existing path exits with 1."""
    return runner.spin(RecorderNode, NODE_NAME, args)
