"""Recording and bench replay (issue 7): rosbag2 MCAP recordings of contract topics.

Layer: recording. :mod:`.recorder` writes and reads the rosbag2 MCAP layout without ROS;
the ``recorder`` node (``ir_guidance/nodes/recorder.py``) subscribes and feeds it, and
:func:`record` starts one in this process. :mod:`.replay` feeds one node its recorded
inputs and compares its outputs with the recorded ones (it imports rclpy only when
called, like the ``runs`` entry points). See docs/recording.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ir_guidance.recording.recorder import (
    BagMessage,
    BagSummary,
    BagWriter,
    RecordingError,
    bag_paths,
    find_mcap,
    message_definition,
    read_messages,
)

__all__ = ['BagMessage', 'BagSummary', 'BagWriter', 'RecordingError', 'bag_paths',
           'find_mcap', 'message_definition', 'read_messages', 'record', 'replay']


def record(topics: list[str] | None, path: Path | str, context: Any = None,
           executor: Any = None, lockstep: bool = False,
           parameters: dict[str, Any] | None = None) -> Any:
    """Start a recorder node in this process (``nodes.recorder.record``); see there."""
    from ir_guidance.nodes.recorder import record as start

    return start(topics, path, context=context, executor=executor, lockstep=lockstep,
                 parameters=parameters)


def replay(bag: Path | str, node: str, compare: bool = True, rate: float | None = None,
           **kwargs: Any) -> dict[str, Any]:
    """Bench replay of one node (:func:`ir_guidance.recording.replay.replay`)."""
    from ir_guidance.recording.replay import replay as run

    return run(bag, node, compare=compare, rate=rate, **kwargs)
