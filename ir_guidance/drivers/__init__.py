"""Device drivers: frames from the real sensors, ROS-free (issue 4).

Each driver opens one device through its SDK and hands back plain frames (numpy
arrays, a stamp in seconds, the geometry needed to interpret them); it never decides
anything about what it sees. The nodes publish the frames exactly as they publish the
simulator's, so a driver's camera info has the layout of
:meth:`ir_guidance.sim.nir.NirSimulator.camera_info`.

- :mod:`ir_guidance.drivers.realsense`: RealSense D4xx infrared + depth, or a .bag
  recording (pyrealsense2);
- :mod:`ir_guidance.drivers.us_capture`: the ultrasound scanner's video from a frame
  grabber, a file or a URL (OpenCV);
- :mod:`ir_guidance.drivers.igtl`: ultrasound IMAGE messages from PLUS Server or
  3D Slicer over OpenIGTLink (pyigtl).

The modules are imported one by one (``from ir_guidance.drivers.igtl import ...``), so
using one driver never loads another's SDK. The errors below are shared by all of them;
``docs/drivers.md`` lists the configuration keys and what was tested without hardware.
"""

from __future__ import annotations

__all__ = ['DeviceError', 'DriverError', 'EndOfStream', 'FrameTimeout']


class DriverError(Exception):
    """Base class of the errors the drivers raise about their devices."""


class DeviceError(DriverError):
    """The device cannot be opened or used (absent, busy, refused, misconfigured)."""


# Named for the event (as StopIteration is), not "...Error": hence the N818 waivers.
class FrameTimeout(DriverError, TimeoutError):  # noqa: N818
    """No frame arrived within the time allowed (the device may still be open)."""


class EndOfStream(DriverError, EOFError):  # noqa: N818
    """A recording (video file, .bag) has no more frames."""
