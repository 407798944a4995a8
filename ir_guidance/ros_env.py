"""Decide the ROS 2 environment for every process this project starts.

DDS discovery must stay on loopback: a needle robot's control traffic has no business
on a hospital or lab network, and parallel test runs must not see each other. Every
entry point (CLI, nodes, tests) calls :func:`configure` before ``rclpy.init``.
"""

from __future__ import annotations

import os
import random
import socket

DISCOVERY_VAR = 'ROS_AUTOMATIC_DISCOVERY_RANGE'
DOMAIN_VAR = 'ROS_DOMAIN_ID'
DEFAULT_DOMAIN_ID = 42
# Domain ids whose DDS ports stay below the ephemeral range on Linux (0-101 for Fast DDS).
MAX_DOMAIN_ID = 101


def configure(env: dict[str, str] | None = None, domain_id: int | None = None) -> dict[str, str]:
    """Set loopback discovery and a domain id unless the user already chose them.

    ``env`` defaults to ``os.environ`` and is modified in place; the result is returned
    so that a child process can be given the same environment.
    """
    env = os.environ if env is None else env
    env.setdefault(DISCOVERY_VAR, 'LOCALHOST')
    if domain_id is not None:
        env[DOMAIN_VAR] = str(domain_id)
    else:
        env.setdefault(DOMAIN_VAR, str(DEFAULT_DOMAIN_ID))
    value = int(env[DOMAIN_VAR])
    if not 0 <= value <= MAX_DOMAIN_ID:
        raise ValueError(f'{DOMAIN_VAR}={value} outside 0..{MAX_DOMAIN_ID}')
    env.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    # Publish from Fast DDS's own thread: a synchronous publish to seven readers took about
    # 1 ms in the caller (measured), which a 1 kHz lockstep run pays on every tick.
    env.setdefault('RMW_FASTRTPS_PUBLICATION_MODE', 'ASYNCHRONOUS')
    return env  # type: ignore[return-value]


def _domain_ports_free(domain_id: int) -> bool:
    """True when the Fast DDS discovery ports of ``domain_id`` are unused on loopback."""
    base = 7400 + 250 * domain_id
    for port in (base, base + 10):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(('127.0.0.1', port))
            except OSError:
                return False
    return True


def free_domain_id(rng: random.Random | None = None) -> int:
    """Pick a domain id no other process on this machine is using (for tests)."""
    rng = rng or random.Random()
    candidates = list(range(1, MAX_DOMAIN_ID + 1))
    rng.shuffle(candidates)
    for domain_id in candidates:
        if _domain_ports_free(domain_id):
            return domain_id
    raise RuntimeError('no free ROS_DOMAIN_ID in 1..101')
