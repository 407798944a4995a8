"""ROS-free vessel mapping: joint-state history, the 3D vessel map and insertion-site choice.

Algorithms layer (``docs/architecture.md``): numpy and scipy only, no rclpy; the
``vessel_mapper`` node wires these to topics.
"""

from ir_guidance.mapping.joint_history import JointHistory, StampError
from ir_guidance.mapping.target import Target, select_target
from ir_guidance.mapping.vessel_map import VesselEstimate, VesselMap

__all__ = ['JointHistory', 'StampError', 'Target', 'VesselEstimate', 'VesselMap',
           'select_target']
