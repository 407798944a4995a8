"""How every node process starts and stops: the ROS environment, spin, clean shutdown.

One place, so that every node keeps DDS on loopback (``ros_env``), exits 1 with a clear
fatal log when it cannot start (a bad parameter, a missing device or file), and exits 0
on Ctrl-C, SIGTERM or an external shutdown.

A stop signal only sets a flag that the spin loop checks between callbacks: rclpy's own
handler would shut the context down, and Python raise KeyboardInterrupt, in the middle
of whatever callback was running (a simulator tick half stepped, a log half written).
The node then finishes its current callback and is destroyed normally (it writes its
logs in ``destroy_node``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import traceback
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from ir_guidance import ros_env


def make_executor(context: object | None = None) -> object:
    """The executor every process spins: rclpy's EventsExecutor where it exists.

    The default SingleThreadedExecutor rebuilds its wait set (every subscription, timer
    and QoS event of every node) for each callback it runs; at the simulator's 1 kHz that
    was most of a lockstep run's time (profiled: 32 of 72 s). The EventsExecutor queues
    events as they arrive instead. Falls back to the default one on older rclpy.
    Spin it with ``spin_once`` in a loop (see :func:`spin`).
    """
    try:
        from rclpy.experimental import EventsExecutor
    except ImportError:  # pragma: no cover - rclpy before the backport
        from rclpy.executors import SingleThreadedExecutor

        return SingleThreadedExecutor(context=context)
    return EventsExecutor(context=context)


def spin(make_node: Callable[[], Node], name: str, args: list[str] | None,
         startup_errors: tuple[type[BaseException], ...] = (ValueError, OSError)) -> int:
    """Run the node ``make_node()`` builds until shutdown; returns the exit status."""
    ros_env.configure()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    node = None
    try:
        with contextlib.suppress(ExternalShutdownException):
            node = make_node()
    except startup_errors as error:
        rclpy.logging.get_logger(name).fatal(f'cannot start: {error}')
        rclpy.try_shutdown()
        return 1
    try:
        with contextlib.suppress(ExternalShutdownException):
            if node is not None:
                executor = make_executor(node.context)
                executor.add_node(node)
                # spin_once in a loop, not spin(): the EventsExecutor's spin() polls (a
                # quarter of a core per idle node, measured) and ignores shutdown.
                while node.context.ok() and not stop.is_set():
                    executor.spin_once(timeout_sec=0.1)
    except Exception as error:
        if node is not None and not node.context.ok():
            return 0  # shut down from outside under a callback: a normal stop
        # A callback failed: say where, then stop (a node must not run on half its state).
        rclpy.logging.get_logger(name).fatal(
            f'stopped: {type(error).__name__}: {error}\n{traceback.format_exc()}')
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
