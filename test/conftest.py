"""Shared pytest fixtures: an isolated rclpy context and a spin-until helper.

Every test module that touches ROS gets its own ``rclpy.Context`` on a domain id no
other process on this machine is using, with discovery kept on loopback, so parallel
test runs (and a robot on the lab network) never see each other's traffic.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

import pytest

from ir_guidance import ros_env

# Before any rclpy.init: the rmw reads the discovery range when a context is initialised.
os.environ[ros_env.DISCOVERY_VAR] = 'LOCALHOST'

SPIN_TIMEOUT_S = 5.0


@pytest.fixture(scope='module')
def ros_context() -> Iterator[object]:
    import rclpy

    domain_id = ros_env.free_domain_id()
    ros_env.configure(domain_id=domain_id)
    context = rclpy.Context()
    rclpy.init(args=[], context=context, domain_id=domain_id)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture
def executor(ros_context: object) -> Iterator[object]:
    from rclpy.executors import SingleThreadedExecutor

    exe = SingleThreadedExecutor(context=ros_context)
    try:
        yield exe
    finally:
        exe.shutdown()


def spin_until(executor: object, predicate: Callable[[], bool],
               timeout_s: float = SPIN_TIMEOUT_S, period_s: float = 0.005) -> bool:
    """Spin ``executor`` until ``predicate()`` is true (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        executor.spin_once(timeout_sec=period_s)


@contextlib.contextmanager
def spinning(executor: object, *nodes: object) -> Iterator[tuple]:
    """``nodes`` on ``executor`` for the block; removed and destroyed after it."""
    for node in nodes:
        executor.add_node(node)
    try:
        yield nodes
    finally:
        for node in nodes:
            executor.remove_node(node)
            node.destroy_node()


def spin_for(executor: object, seconds: float) -> None:
    """Spin ``executor`` for a fixed time (to show that something does *not* happen)."""
    spin_until(executor, lambda: False, timeout_s=seconds)


@pytest.fixture(scope='module')
def rig():
    """The rig's 7-DoF pinocchio chain (arm + needle stage) from the URDF."""
    from ir_guidance.rig_description import rig_chain

    return rig_chain()


@pytest.fixture(scope='module')
def home():
    """The robot's home joint positions (config ``robot.home``)."""
    import numpy as np

    from ir_guidance import config

    return np.array(config.load()['robot']['home'], dtype=float)
