"""Load ``config/ir_guidance.yaml``, the one source of topics, frames and parameters.

Nodes, the CLI, launch files and tests all read this file, so a topic or frame is
renamed in one place. Works from the source tree and from an installed ament share dir.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

PACKAGE = 'ir_guidance'


def share_dir() -> Path:
    """Return the directory holding ``config/``, ``urdf/``, ``launch/`` and ``sim/``."""
    source_root = Path(__file__).resolve().parent.parent
    if (source_root / 'config' / 'ir_guidance.yaml').is_file():
        return source_root
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError as exc:  # pragma: no cover - only on a broken install
        raise FileNotFoundError('config/ir_guidance.yaml not found next to the package '
                                'and ament_index_python is not importable') from exc
    return Path(get_package_share_directory(PACKAGE))


@functools.cache
def load(path: str | None = None) -> dict[str, Any]:
    """Parse the configuration; ``path`` overrides the packaged file."""
    file = Path(path) if path else share_dir() / 'config' / 'ir_guidance.yaml'
    with open(file, encoding='utf-8') as stream:
        data = yaml.safe_load(stream)
    if not isinstance(data, dict) or 'topics' not in data or 'frames' not in data:
        raise ValueError(f'{file}: not an ir_guidance configuration (needs topics, frames)')
    return data


def topic(key: str) -> dict[str, str]:
    """Return ``{name, type, qos}`` of the contract topic ``key``."""
    topics = load()['topics']
    if key not in topics:
        raise KeyError(f'unknown topic key {key!r}; known: {sorted(topics)}')
    return topics[key]


def joint_names() -> list[str]:
    """Commanded joints in command order: the arm joints, then the needle stage."""
    robot = load()['robot']
    return [*robot['arm_joints'], robot['stage_joint']]


# The stack's nodes (but the simulator) in start order, with the config section each takes.
STACK_SECTIONS = {'arm_interface': 'arm_interface', 'ultrasound': 'ultrasound', 'nir': 'nir',
                  'vessel_mapper': 'vessel_mapper', 'trajectory_planner': 'planner',
                  'force_monitor': 'force_monitor', 'controller': 'controller'}


def stack_parameters(cfg: dict[str, Any], common: dict[str, Any],
                     per_node: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(node name, ROS parameters) of every stack node, for the launch files.

    Each node gets its config section (``flat_parameters``), then ``common``, then its own
    overrides from ``per_node``: the rig, sim and Gazebo launches differ only there.
    """
    return [(name, flat_parameters(cfg[section], **{**common, **per_node.get(name, {})}))
            for name, section in STACK_SECTIONS.items()]


def flat_parameters(section: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A config section as ROS parameters: nested mappings become ``key.subkey`` names.

    The names the nodes declare (``nodes.conversions.declare_section``); launch files pass
    config sections through this so that they and the CLI start nodes the same way.
    """
    params: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            params.update({f'{key}.{k}': v for k, v in flat_parameters(value).items()})
        else:
            params[key] = value
    params.update(overrides)
    return params
