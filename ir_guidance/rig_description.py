"""The rig's robot description: ``urdf/rig.urdf.xacro`` expanded by xacro.

Everything that needs the URDF (kinematics, the arm interface, the simulator, the tests)
gets it from here, so the xacro file is expanded the same way everywhere.
"""

from __future__ import annotations

import functools
from pathlib import Path

import xacro

from ir_guidance import config


def xacro_path() -> Path:
    """Path of the rig's xacro file named in ``config/``."""
    return config.share_dir() / config.load()['robot']['urdf_xacro']


@functools.cache
def rig_urdf() -> str:
    """The rig's URDF as an XML string."""
    return expand(str(xacro_path()))


def expand(path: str) -> str:
    """Expand a ``.xacro`` file (plain ``.urdf`` files pass through unchanged)."""
    if not path.endswith('.xacro'):
        return Path(path).read_text(encoding='utf-8')
    return xacro.process_file(path).toprettyxml(indent='  ')


def rig_chain():
    """The rig's kinematic chain from the base to the needle tip (includes the stage)."""
    from ir_guidance.kinematics import SerialChain

    frames = config.load()['frames']
    return SerialChain.from_urdf(rig_urdf(), frames['base'], frames['needle_tip'])
