"""Force feedback of the needle rig (algorithm layer, ROS-free).

F/T compensation, filtering, axial needle force, puncture detection and force limits
(docs/force.md).
"""

from ir_guidance.force.filters import ButterworthLowpass
from ir_guidance.force.monitor import (
    MEMBRANES,
    ForceEvent,
    ForceInputError,
    ForceMonitor,
    ForceSample,
    MonitorParams,
    needle_axis_in_sensor,
    tool_mass_properties,
)
from ir_guidance.force.puncture import Puncture, PunctureDetector, PunctureParams

__all__ = [
    'MEMBRANES', 'ButterworthLowpass', 'ForceEvent', 'ForceInputError', 'ForceMonitor',
    'ForceSample', 'MonitorParams', 'Puncture', 'PunctureDetector', 'PunctureParams',
    'needle_axis_in_sensor', 'tool_mass_properties']
