"""Thin rclpy nodes, and the one registry of them that the CLI and launch files use.

``NODES`` maps a node executable's name to ``'module:function'``; the function is the
node's ``main(args)``. Modules are imported only when run, so listing the nodes (or
importing this package) does not import rclpy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

NODES: dict[str, str] = {
    'arm_interface': 'ir_guidance.nodes.arm_interface:main',
    'sim': 'ir_guidance.nodes.sim:main',
    'nir': 'ir_guidance.nodes.nir:main',
    'ultrasound': 'ir_guidance.nodes.ultrasound:main',
    'vessel_mapper': 'ir_guidance.nodes.vessel_mapper:main',
    'trajectory_planner': 'ir_guidance.nodes.trajectory_planner:main',
    'force_monitor': 'ir_guidance.nodes.force_monitor:main',
    'controller': 'ir_guidance.nodes.controller:main',
    'recorder': 'ir_guidance.nodes.recorder:main',
    'live_view': 'ir_guidance.nodes.live_view:main',
}


def resolve(name: str) -> Callable[[list[str] | None], int | None]:
    """Import and return the ``main`` of node ``name``; unknown names raise ValueError."""
    if name not in NODES:
        raise ValueError(f'unknown node {name!r}; known nodes: {sorted(NODES)}')
    module_name, _, function_name = NODES[name].partition(':')
    return getattr(importlib.import_module(module_name), function_name)


def run(name: str, args: list[str]) -> int:
    """Run node ``name`` with command-line ``args`` (e.g. ``--ros-args -p x:=1``).

    Returns the node's exit status (0 when its ``main`` returns None).
    """
    status = resolve(name)(list(args))
    return 0 if status is None else int(status)
