"""Ultrasound frames over OpenIGTLink (PLUS Server, 3D Slicer), ROS-free.

PLUS Server grabs the scanner (through its SDK or a frame grabber) and serves IMAGE
messages, typically under the device name ``Image_Reference``; 3D Slicer's
OpenIGTLinkIF module can serve the same. :class:`IgtlImageSource` connects to such a
server as a client with ``pyigtl.OpenIGTLinkClient``, waits for IMAGE messages from one
device name (messages from other devices and other message types are ignored) and
returns :class:`IgtlFrame` objects.

Conversion of a message (:func:`image_to_uint8`):

- pyigtl gives the voxels as a ``(k, j, i)`` array (``(k, j, i, components)`` for
  vector images); a B-mode frame is a single slice, ``k == 1``, and becomes the 2D image
  ``(j, i)``: rows along j, columns along i. A volume (``k > 1``) is refused.
- Grey only: a 3- or 4-component (RGB/RGBA) image is taken when its three colour
  channels are equal (a grey picture sent as colour, as frame grabbers often do) and
  refused otherwise; other component counts are refused.
- Pixel values to uint8 by one fixed rule, the same for every frame (no per-frame
  gain): with ``value_range = (lo, hi)``, ``round((v - lo) * 255 / (hi - lo))``
  clipped to [0, 255]; without it, uint8 is kept and other integer types map their
  full range (uint16: ``v / 257``; int16: ``(v + 32768) / 257``). Floating-point images
  need an explicit ``value_range``.

Geometry: ``mm_per_pixel = (|column i of ijk_to_world|, |column j|)``, the spacing of
columns and rows in the sender's world units (millimetres for PLUS and Slicer), and
``ijk_to_world`` is the full 4x4 matrix (origin = the first pixel's centre) in
``world_coordinate_system`` (``lps`` or ``ras``). Columns are lateral and rows axial
when the sender orients the image "MF" (PLUS's ``PortUsImageOrientation``, its usual
setting). An uncalibrated sender sends the identity: a spacing of (1, 1) then means
"unknown", which the driver reports as it is.

``stamp_s`` is the message header's timestamp (seconds since 1970 by the sender's
clock). pyigtl keeps only the newest message per device name: a reader slower than the
sender gets the newest frame and skips the others; it polls every 10 ms.

Limits of pyigtl 0.3.4 that show here: the client does not notice a server that closes
the connection (reads then time out with :class:`FrameTimeout`; close the source and
open a new one), and it connects with a 10 ms socket timeout, fine on loopback and a
LAN. Tested here against a ``pyigtl.OpenIGTLinkServer`` on loopback (no PLUS Server or
Slicer was run).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyigtl

from ir_guidance.drivers import DeviceError, FrameTimeout

DEVICE_NAME_MAX = 20        # bytes of the OpenIGTLink header's device name field


@dataclass(frozen=True, eq=False)
class IgtlFrame:
    """One ultrasound image received as an OpenIGTLink IMAGE message.

    ``image`` is uint8 (rows = j, columns = i); ``mm_per_pixel`` is ``(column spacing,
    row spacing)``; ``ijk_to_world`` the message's 4x4 matrix; ``source_dtype`` the
    pixel type that was sent.
    """

    image: np.ndarray
    stamp_s: float
    mm_per_pixel: tuple[float, float]
    ijk_to_world: np.ndarray
    world_coordinate_system: str
    device_name: str
    source_dtype: str


def image_to_uint8(voxels: np.ndarray, value_range: tuple[float, float] | None = None
                   ) -> np.ndarray:
    """The 2D uint8 image of a single-slice ``(k, j, i[, c])`` voxel array; see the module.

    Raises ValueError for a volume, a colour image, or a float image without
    ``value_range``.
    """
    arr = np.asarray(voxels)
    if arr.ndim not in (3, 4):
        raise ValueError(f'expected (k, j, i) or (k, j, i, components) voxels, got shape '
                         f'{arr.shape}')
    if arr.shape[0] != 1:
        raise ValueError(f'a volume of {arr.shape[0]} slices was sent; one slice (k = 1) '
                         'is expected')
    img = arr[0]
    if img.ndim == 3:
        components = img.shape[2]
        if components == 1:
            img = img[:, :, 0]
        elif components in (3, 4):
            if not (np.array_equal(img[:, :, 0], img[:, :, 1])
                    and np.array_equal(img[:, :, 0], img[:, :, 2])):
                raise ValueError(f'a colour image ({components} components with different '
                                 'channels) was sent; send grey (one component)')
            img = img[:, :, 0]
        else:
            raise ValueError(f'{components}-component images are not grey images')
    if value_range is None:
        if img.dtype == np.uint8:
            return np.ascontiguousarray(img)
        if not np.issubdtype(img.dtype, np.integer):
            raise ValueError(f'{img.dtype} pixels need a value_range to map onto uint8')
        info = np.iinfo(img.dtype)
        lo, hi = float(info.min), float(info.max)
    else:
        lo, hi = (float(v) for v in value_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f'value_range must be finite with hi > lo, got {value_range!r}')
    scaled = (img.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


class IgtlImageSource:
    """Ultrasound images from an OpenIGTLink server; see the module docs.

    The constructor connects (DeviceError if no connection within ``timeout_s``);
    :meth:`read` waits for the next IMAGE message from ``device_name``. ``value_range``
    is the pixel-value rule of :func:`image_to_uint8`. Close with :meth:`close` or a
    ``with`` block. Not thread-safe: read from one thread.
    """

    def __init__(self, host: str = '127.0.0.1', port: int = 18944,
                 device_name: str = 'Image_Reference', timeout_s: float = 5.0, *,
                 value_range: tuple[float, float] | None = None) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError(f'ultrasound.igtl.host must be a non-empty string, got {host!r}')
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f'ultrasound.igtl.port must be an int in [1, 65535], got {port!r}')
        if (not isinstance(device_name, str) or not device_name
                or len(device_name.encode()) > DEVICE_NAME_MAX):
            raise ValueError('ultrasound.igtl.device_name must be 1 to 20 bytes, got '
                             f'{device_name!r}')
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s)
                and timeout_s > 0):
            raise ValueError(f'timeout_s must be finite and > 0, got {timeout_s!r}')
        if value_range is not None:
            image_to_uint8(np.zeros((1, 1, 1), np.uint8), value_range)  # validates it
        self.host, self.port, self.device_name = host, port, device_name
        self.timeout_s = float(timeout_s)
        self.value_range = value_range
        self._client: pyigtl.OpenIGTLinkClient | None = None
        client = pyigtl.OpenIGTLinkClient(host=host, port=port, start_now=True)
        deadline = time.monotonic() + self.timeout_s
        while not client.is_connected():
            if time.monotonic() > deadline:
                client.stop()
                raise DeviceError(
                    f'cannot connect to an OpenIGTLink server at {host}:{port} within '
                    f'{self.timeout_s:g} s (connection refused or unreachable): is PLUS '
                    'Server or 3D Slicer\'s OpenIGTLinkIF running and listening there?')
            time.sleep(0.005)
        self._client = client

    @classmethod
    def from_section(cls, section: Mapping[str, Any], timeout_s: float = 5.0, *,
                     value_range: tuple[float, float] | None = None) -> IgtlImageSource:
        """Connect as the ``ultrasound.igtl`` section says (host, port, device_name)."""
        if not isinstance(section, Mapping):
            raise TypeError(f'ultrasound.igtl must be a mapping, got {type(section).__name__}')
        known = {'host', 'port', 'device_name'}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f'unknown ultrasound.igtl keys {unknown}; known: {sorted(known)}')
        return cls(timeout_s=timeout_s, value_range=value_range, **section)

    def read(self, timeout_s: float | None = None) -> IgtlFrame:
        """The next IMAGE from ``device_name``; FrameTimeout if none within the timeout.

        ``timeout_s`` defaults to the constructor's. An image that cannot be converted
        (a volume, colour, float without a value range) raises DeviceError.
        """
        client = self._client
        if client is None:
            raise DeviceError(f'the OpenIGTLink source {self.host}:{self.port} is closed')
        wait = self.timeout_s if timeout_s is None else float(timeout_s)
        if not (math.isfinite(wait) and wait > 0):
            raise ValueError(f'timeout_s must be finite and > 0, got {timeout_s!r}')
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            message = None
            if remaining > 0:
                message = client.wait_for_message(self.device_name, timeout=remaining)
            if message is None:
                raise FrameTimeout(f'no IMAGE from {self.device_name!r} at '
                                   f'{self.host}:{self.port} within {wait:g} s')
            if message.message_type == 'IMAGE':
                return self._convert(message)

    def _convert(self, message: pyigtl.ImageMessage) -> IgtlFrame:
        """An IgtlFrame of an IMAGE message."""
        try:
            image = image_to_uint8(message.image, self.value_range)
        except ValueError as exc:
            raise DeviceError(f'IMAGE from {self.device_name!r}: {exc}') from exc
        matrix = np.array(message.ijk_to_world_matrix, dtype=float)
        spacing = (float(np.linalg.norm(matrix[:3, 0])), float(np.linalg.norm(matrix[:3, 1])))
        return IgtlFrame(image=image, stamp_s=float(message.timestamp), mm_per_pixel=spacing,
                         ijk_to_world=matrix,
                         world_coordinate_system=str(message.world_coordinate_system),
                         device_name=message.device_name,
                         source_dtype=np.asarray(message.image).dtype.name)

    def close(self) -> None:
        """Disconnect and stop the client's thread (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            client.stop()

    def __enter__(self) -> IgtlImageSource:
        """Use as a context manager: the connection is closed on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the connection."""
        self.close()
