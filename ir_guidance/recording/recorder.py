"""Recordings in the rosbag2 MCAP layout: the ROS-free bag writer behind the recorder node.

Layer: recording (ROS-free; ``nodes/recorder.py`` subscribes and feeds this). A recording
is what ``ros2 bag record -s mcap`` writes, so ``ros2 bag info/play`` on a full install
and the third-party readers (``rosbags``, ``mcap``/``mcap_ros2``) read it:

- a directory ``NAME/`` with ``metadata.yaml`` (rosbag2 format version 9: storage
  ``mcap``, file list, duration, start, message counts, and per topic its name, type,
  ``cdr`` serialization, the offered QoS profiles and the type hash) and ``NAME_0.mcap``;
- the MCAP file has profile ``ros2``, one ``ros2msg`` schema per type (the ``.msg`` text
  of the type and every type it uses, read from the installed interface packages, as
  rosbag2 does), one ``cdr`` channel per topic with its ``offered_qos_profiles``, the
  messages as the serialized CDR bytes that came off the wire (never re-serialized) and
  a ``rosbag2`` metadata record holding the same metadata.

Time base (docs/recording.md): ``log_time`` is the receive time on the recorder's ROS
clock, which is simulated time when the recorder runs with ``use_sim_time`` (as
``ros2 bag record --use-sim-time``); ``publish_time`` is the message's own stamp (its
``header.stamp``, or a leading ``builtin_interfaces/Time`` like ``/clock``) where it has
one, else the log time.

Writing happens on a background thread fed by a queue, so a subscriber callback only
appends bytes: the recorder keeps up with 1 kHz joint states and wrenches plus images.
A backlog over ``max_queue_mb`` drops messages; they are counted and reported, never lost
silently.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROSBAG2_VERSION = 9
COMPRESSIONS = ('zstd', 'lz4', 'none')
# rmw "infinite" duration as rosbag2 writes it in metadata.yaml.
INFINITE = {'sec': 9223372036, 'nsec': 854775807}
_MSG_SEPARATOR = '=' * 80
_QOS_WORDS = {'reliability': ('reliable', 'best_effort', 'system_default', 'unknown'),
              'durability': ('volatile', 'transient_local', 'system_default', 'unknown'),
              'history': ('keep_last', 'keep_all', 'system_default', 'unknown')}


class RecordingError(ValueError):
    """A recording cannot be written or read (path exists, unknown type, bad file)."""


def bag_paths(path: Path | str) -> tuple[Path, Path]:
    """The rosbag2 directory and its MCAP file for a requested recording path.

    ``OUT.mcap`` -> ``OUT/`` holding ``OUT_0.mcap`` (and ``metadata.yaml``); any other
    path ``DIR`` -> ``DIR/DIR_0.mcap``. This is how ``--record OUT.mcap`` maps to the
    rosbag2 layout.
    """
    path = Path(path)
    directory = path.with_suffix('') if path.suffix == '.mcap' else path
    return directory, directory / f'{directory.name}_0.mcap'


def find_mcap(path: Path | str) -> Path:
    """The MCAP file of a recording given as its directory, its ``OUT.mcap`` name or the file.

    Raises RecordingError when there is none.
    """
    path = Path(path)
    if path.is_file():
        return path
    directory, default = bag_paths(path)
    if default.is_file():
        return default
    if directory.is_dir():
        meta = directory / 'metadata.yaml'
        if meta.is_file():
            info = yaml.safe_load(meta.read_text())['rosbag2_bagfile_information']
            files = [directory / f for f in info['relative_file_paths']]
            if files and files[0].is_file():
                return files[0]
        found = sorted(directory.glob('*.mcap'))
        if found:
            return found[0]
    raise RecordingError(f'no MCAP recording at {path} (expected a rosbag2 directory, '
                         f'its .mcap name, or an .mcap file)')


# -- message definitions ------------------------------------------------------------------
def _share_dirs() -> list[Path]:
    prefixes = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    return [Path(p) / 'share' for p in [*prefixes, sys.prefix]]


def _interface_file(type_name: str, suffix: str) -> Path | None:
    package, kind, name = _split_type(type_name)
    for share in _share_dirs():
        candidate = share / package / kind / f'{name}{suffix}'
        if candidate.is_file():
            return candidate
    return None


def _split_type(type_name: str) -> tuple[str, str, str]:
    parts = type_name.split('/')
    if len(parts) == 2:
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) != 3 or not all(parts):
        raise RecordingError(f'bad message type name {type_name!r} (expected pkg/msg/Name)')
    return parts[0], parts[1], parts[2]


_PRIMITIVES = frozenset((
    'bool', 'byte', 'char', 'float32', 'float64', 'int8', 'uint8', 'int16', 'uint16',
    'int32', 'uint32', 'int64', 'uint64', 'string', 'wstring'))


def _dependencies(package: str, text: str) -> list[str]:
    """The message types a ``.msg`` text uses, as ``pkg/msg/Name``, in order of use."""
    found = []
    for line in text.splitlines():
        tokens = line.split('#', 1)[0].split()
        if not tokens:
            continue
        base = re.sub(r'<=\d+$', '', re.sub(r'\[.*\]$', '', tokens[0]))
        if base in _PRIMITIVES:
            continue  # constants are always primitive
        if '/' not in base:
            base = 'std_msgs/Header' if base == 'Header' else f'{package}/{base}'
        full = f'{base.split("/")[0]}/msg/{base.split("/")[-1]}'
        if full not in found:
            found.append(full)
    return found


@functools.cache
def message_definition(type_name: str) -> tuple[str, str]:
    """The ``ros2msg`` schema text of a type (with its dependencies) and its RIHS01 hash.

    The text is what rosbag2 stores: the type's ``.msg`` file, then for every type it
    uses (depth first, each once) a separator line and ``MSG: pkg/Name`` and that file.
    The ``.msg``/``.json`` files come from the installed interface packages
    (``$AMENT_PREFIX_PATH`` and this Python's prefix: ``share/<pkg>/msg``); a type not
    installed that way comes from the ``rosbags`` Jazzy type store.
    """
    package, _, name = _split_type(type_name)
    full = f'{package}/msg/{name}'
    msg_file = _interface_file(full, '.msg')
    if msg_file is None:
        return _rosbags_definition(full)
    parts = [msg_file.read_text().rstrip('\n')]
    seen = {full}
    stack = list(reversed(_dependencies(package, parts[0])))
    while stack:
        dep = stack.pop()
        if dep in seen:
            continue
        seen.add(dep)
        dep_file = _interface_file(dep, '.msg')
        if dep_file is None:
            return _rosbags_definition(full)
        text = dep_file.read_text().rstrip('\n')
        pkg, _, dep_name = dep.split('/')
        parts.append(f'{_MSG_SEPARATOR}\nMSG: {pkg}/{dep_name}\n{text}')
        stack.extend(reversed(_dependencies(pkg, text)))
    json_file = _interface_file(full, '.json')
    digest = ''
    if json_file is not None:
        description = json.loads(json_file.read_text())
        hashes = {h['type_name']: h['hash_string'] for h in description.get('type_hashes', [])}
        digest = hashes.get(full, '')
    if not digest:
        digest = _rosbags_definition(full)[1]
    return '\n'.join(parts) + '\n', digest


def _rosbags_definition(type_name: str) -> tuple[str, str]:
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    if type_name not in store.fielddefs:
        raise RecordingError(f'no message definition for {type_name!r}: neither installed '
                             f'(share/<pkg>/msg) nor in the rosbags Jazzy type store')
    return store.generate_msgdef(type_name, ros_version=2)[0], store.hash_rihs01(type_name)


def stamp_reader(type_name: str) -> Any:
    """A function ``cdr bytes -> stamp ns | None`` for types that start with a time stamp.

    A ``std_msgs/Header`` or ``builtin_interfaces/Time`` as the first field is the first
    8 bytes after the 4-byte CDR encapsulation header (int32 sec, uint32 nanosec).
    """
    text = message_definition(type_name)[0]
    first = next((line.split('#', 1)[0].split() for line in text.splitlines()
                  if line.split('#', 1)[0].strip()), [''])[0]
    if first not in ('std_msgs/Header', 'Header', 'builtin_interfaces/Time'):
        return None

    def read(data: bytes) -> int | None:
        if len(data) < 12:
            return None
        fmt = '<iI' if data[1] & 1 else '>iI'
        sec, nanosec = struct.unpack_from(fmt, data, 4)
        return sec * 1_000_000_000 + nanosec

    return read


def qos_dict(reliability: str, durability: str, history: str, depth: int,
             deadline_ns: int | None = None, lifespan_ns: int | None = None,
             liveliness: str = 'automatic', lease_ns: int | None = None) -> dict[str, Any]:
    """One offered QoS profile as rosbag2 (version 9) writes it; None = infinite."""
    for key, value in (('reliability', reliability), ('durability', durability),
                       ('history', history)):
        if value not in _QOS_WORDS[key]:
            raise RecordingError(f'{key} {value!r} is not one of {_QOS_WORDS[key]}')

    def duration(ns: int | None) -> dict[str, int]:
        if ns is None or ns <= 0 or ns >= 9223372036854775807:
            return dict(INFINITE)
        return {'sec': ns // 1_000_000_000, 'nsec': ns % 1_000_000_000}

    return {'history': history, 'depth': int(depth), 'reliability': reliability,
            'durability': durability, 'deadline': duration(deadline_ns),
            'lifespan': duration(lifespan_ns), 'liveliness': liveliness,
            'liveliness_lease_duration': duration(lease_ns),
            'avoid_ros_namespace_conventions': False}


# -- the writer ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BagSummary:
    """What a finished recording holds and how the recording went."""

    directory: Path
    mcap: Path
    message_count: int
    start_ns: int
    duration_ns: int
    topics: dict[str, int]          # topic name -> messages written
    dropped: int                    # messages refused because the writer backlog was full
    wall_s: float                   # from open to close
    max_backlog: int                # most messages ever waiting for the writer thread


@dataclass
class _Topic:
    name: str
    type: str
    qos: list[dict[str, Any]]
    channel: int | None = None
    count: int = 0
    sequence: int = 0


@dataclass
class _State:
    topics: dict[str, _Topic] = field(default_factory=dict)
    schemas: dict[str, int] = field(default_factory=dict)
    start_ns: int = 2**63 - 1
    end_ns: int = 0


class BagWriter:
    """Writes one recording (rosbag2 directory + MCAP) from serialized CDR messages.

    ``add_topic`` declares a topic; ``write`` only queues (any thread); a writer thread
    encodes the MCAP; ``close`` drains the queue and writes the summary and
    ``metadata.yaml``. The directory must not exist (like rosbag2, never overwrites).
    """

    def __init__(self, path: Path | str, compression: str = 'zstd',
                 chunk_size: int = 1 << 20, max_queue_mb: float = 1024.0) -> None:
        from mcap.writer import CompressionType, Writer

        if compression not in COMPRESSIONS:
            raise RecordingError(f'compression must be one of {COMPRESSIONS}, '
                                 f'got {compression!r}')
        self.directory, self.mcap_path = bag_paths(path)
        if self.directory.exists():
            raise RecordingError(f'{self.directory} exists already: a recording never '
                                 f'overwrites one (choose another name)')
        self.directory.mkdir(parents=True)
        self._file = self.mcap_path.open('wb')
        kind = {'zstd': CompressionType.ZSTD, 'lz4': CompressionType.LZ4,
                'none': CompressionType.NONE}[compression]
        self._mcap = Writer(self._file, chunk_size=int(chunk_size), compression=kind)
        self._mcap.start(profile='ros2', library='ir_guidance recorder')
        self._state = _State()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._max_bytes = int(max_queue_mb * 1e6)
        self._in_bytes = self._out_bytes = self._in_count = 0
        self.max_backlog = 0
        self.dropped = 0
        self.written = 0
        self._error: BaseException | None = None
        self._opened = time.monotonic()
        self._closed: BagSummary | None = None
        self._thread = threading.Thread(target=self._run, name='bag_writer', daemon=True)
        self._thread.start()

    # -- producer side (any thread) ---------------------------------------------------------
    def add_topic(self, name: str, type_name: str, qos: list[dict[str, Any]]) -> None:
        """Declare a topic (its schema is resolved now, so a bad type fails here)."""
        message_definition(type_name)
        with self._lock:
            if name in self._state.topics:
                raise RecordingError(f'topic {name} added twice')
            self._state.topics[name] = _Topic(name, type_name, list(qos))

    def set_qos(self, name: str, qos: list[dict[str, Any]]) -> None:
        """The publishers' offered QoS, once known (before the topic's first message)."""
        with self._lock:
            self._state.topics[name].qos = list(qos)

    def write(self, name: str, data: bytes, log_time_ns: int, publish_time_ns: int) -> bool:
        """Queue one serialized message; False (and counted) when the backlog is full.

        Call from one thread (the recorder's taker): the backlog counters are updated
        without a lock, each by one thread only.
        """
        if self._error is not None:
            raise RecordingError(f'the bag writer failed: {self._error}')
        size = len(data)
        if self._in_bytes - self._out_bytes + size > self._max_bytes:
            self.dropped += 1
            return False
        self._in_bytes += size
        self._in_count += 1
        self.max_backlog = max(self.max_backlog, self._in_count - self.written)
        self._queue.put((name, data, log_time_ns, publish_time_ns))
        return True

    @property
    def backlog(self) -> int:
        """Messages queued and not yet written."""
        return self._in_count - self.written

    # -- writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                self._write_one(*item)
        except BaseException as error:  # reported by write() and close()
            self._error = error

    def _channel(self, topic: _Topic) -> int:
        if topic.channel is None:
            schema = self._state.schemas.get(topic.type)
            if schema is None:
                text = message_definition(topic.type)[0]
                schema = self._mcap.register_schema(topic.type, 'ros2msg', text.encode())
                self._state.schemas[topic.type] = schema
            topic.channel = self._mcap.register_channel(
                topic.name, 'cdr', schema,
                {'offered_qos_profiles': _qos_text(topic.qos)})
        return topic.channel

    def _write_one(self, name: str, data: bytes, log_ns: int, pub_ns: int) -> None:
        topic = self._state.topics[name]
        channel = self._channel(topic)
        self._mcap.add_message(channel, log_time=log_ns, data=data, publish_time=pub_ns,
                               sequence=topic.sequence)
        topic.sequence += 1
        topic.count += 1
        self.written += 1
        self._state.start_ns = min(self._state.start_ns, log_ns)
        self._state.end_ns = max(self._state.end_ns, log_ns)
        self._out_bytes += len(data)

    # -- close ------------------------------------------------------------------------------
    def close(self) -> BagSummary:
        """Write what is queued, finish the MCAP and write ``metadata.yaml``."""
        if self._closed is not None:
            return self._closed
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            self._file.close()
            raise RecordingError(f'the bag writer failed: {self._error}') from self._error
        state = self._state
        for topic in state.topics.values():
            self._channel(topic)  # topics without messages are listed too, like rosbag2
        count = sum(t.count for t in state.topics.values())
        start = state.start_ns if count else 0
        duration = state.end_ns - start if count else 0
        info = self._metadata(start, duration, count)
        self._mcap.add_metadata('rosbag2', {'serialized_metadata': yaml.safe_dump(
            info, sort_keys=False)})
        self._mcap.finish()
        self._file.close()
        meta = self.directory / 'metadata.yaml'
        meta.write_text(yaml.safe_dump({'rosbag2_bagfile_information': info},
                                       sort_keys=False))
        self._closed = BagSummary(
            directory=self.directory, mcap=self.mcap_path, message_count=count,
            start_ns=start, duration_ns=duration,
            topics={t.name: t.count for t in state.topics.values()}, dropped=self.dropped,
            wall_s=time.monotonic() - self._opened, max_backlog=self.max_backlog)
        return self._closed

    def _metadata(self, start: int, duration: int, count: int) -> dict[str, Any]:
        topics = [{'topic_metadata': {
            'name': t.name, 'type': t.type, 'serialization_format': 'cdr',
            'offered_qos_profiles': t.qos,
            'type_description_hash': message_definition(t.type)[1]},
            'message_count': t.count} for t in self._state.topics.values()]
        name = self.mcap_path.name
        return {'version': ROSBAG2_VERSION, 'storage_identifier': 'mcap',
                'duration': {'nanoseconds': duration},
                'starting_time': {'nanoseconds_since_epoch': start},
                'message_count': count, 'topics_with_message_count': topics,
                'compression_format': '', 'compression_mode': '',
                'relative_file_paths': [name],
                'files': [{'path': name, 'starting_time': {'nanoseconds_since_epoch': start},
                           'duration': {'nanoseconds': duration}, 'message_count': count}],
                'custom_data': None, 'ros_distro': 'jazzy'}


def _qos_text(qos: list[dict[str, Any]]) -> str:
    """Offered QoS profiles as the YAML text rosbag2 puts in an MCAP channel."""
    return yaml.safe_dump(qos, sort_keys=False).strip() if qos else ''


# -- reading ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BagMessage:
    """One recorded message: topic, type, serialized CDR bytes and its two times."""

    topic: str
    type: str
    data: bytes
    log_time_ns: int
    publish_time_ns: int


def read_messages(path: Path | str, topics: list[str] | None = None) -> list[BagMessage]:
    """Every message of a recording (optionally only ``topics``), in log-time order."""
    from mcap.reader import make_reader

    mcap_file = find_mcap(path)
    wanted = None if topics is None else set(topics)
    out = []
    with mcap_file.open('rb') as stream:
        reader = make_reader(stream)
        for schema, channel, message in reader.iter_messages(log_time_order=True):
            if wanted is not None and channel.topic not in wanted:
                continue
            if channel.message_encoding != 'cdr' or schema is None:
                raise RecordingError(f'{mcap_file}: topic {channel.topic} is not ROS 2 CDR '
                                     f'({channel.message_encoding!r})')
            out.append(BagMessage(channel.topic, schema.name, message.data,
                                  message.log_time, message.publish_time))
    return out
