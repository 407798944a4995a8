"""Ultrasound frames from the scanner's video output through OpenCV, ROS-free.

Most scanners show their B-mode image on a video output (HDMI, DVI, S-Video); a frame
grabber turns it into a camera that ``cv2.VideoCapture`` opens by index or by its
``/dev/video*`` path. A recorded video file or a stream URL (RTSP, HTTP) opens the
same way. :class:`VideoCaptureSource` grabs a frame, crops the image area out of the
scanner's screen, converts it to mono8, optionally resizes it, and returns a
:class:`UsFrame` with its stamp and pixel size.

Configuration: the ``ultrasound.device`` section (``index``: an int, a device path, a
file or a URL; ``crop``: ``[x, y, width, height]`` of the image area in the grabbed
frame, 0 = whole frame, a 0 width or height = to the frame's edge; ``size``, optional:
``[width, height]`` to resize to) and the probe geometry ``ultrasound.width_m`` /
``depth_m``: the crop must show exactly that field of view (set the scanner's depth to
``depth_m``), so that a pixel is ``width_m / width`` by ``depth_m / height``.

Stamps: ``time.monotonic()`` right after the grab for a live source (the grabber's own
clock is not exposed by OpenCV; the node maps it to ROS time), the position in the file
(``CAP_PROP_POS_MSEC``) for a file, so a file's frames keep their recorded spacing.

Errors: a missing file is FileNotFoundError; a source OpenCV cannot open is
:class:`DeviceError`; a failed grab is :class:`FrameTimeout` from a live source and
:class:`EndOfStream` from a file. A grab blocks as long as the backend lets it (V4L2
gives up after about 10 s). Tested here with MJPG ``.avi`` files written by
``cv2.VideoWriter``; no frame grabber was attached.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np

from ir_guidance.drivers import DeviceError, EndOfStream, FrameTimeout


@dataclass(frozen=True)
class CaptureConfig:
    """The ``ultrasound.device`` section, validated."""

    index: int | str = 0                        # VideoCapture index, device path, file or URL
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    size: tuple[int, int] | None = None         # (width, height) of the output; None: crop's

    def __post_init__(self) -> None:
        index = self.index
        if isinstance(index, str) and index.strip().isdigit():
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int | str) or index == '':
            raise ValueError('ultrasound.device.index must be a device index, a device path, '
                             f'a file or a URL, got {self.index!r}')
        if isinstance(index, int) and index < 0:
            raise ValueError(f'ultrasound.device.index must be >= 0, got {index}')
        object.__setattr__(self, 'index', index)
        object.__setattr__(self, 'crop', _ints(self.crop, 4, 'crop', minimum=0))
        size = self.size
        if size is not None:
            size = _ints(size, 2, 'size', minimum=0)
            if size == (0, 0):
                size = None
            elif min(size) < 1:
                raise ValueError(f'ultrasound.device.size must be two ints >= 1 (or 0, 0 for '
                                 f'the crop size), got {self.size!r}')
        object.__setattr__(self, 'size', size)

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> CaptureConfig:
        """Build from the YAML mapping; unknown keys are errors (a typo is not ignored)."""
        if not isinstance(section, Mapping):
            raise TypeError('ultrasound.device must be a mapping, got '
                            f'{type(section).__name__}')
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f'unknown ultrasound.device keys {unknown}; known: {sorted(known)}')
        return cls(**section)


def _ints(values: Sequence[Any], n: int, name: str, minimum: int) -> tuple[int, ...]:
    """``n`` ints >= ``minimum`` as a tuple, or ValueError naming the key."""
    items = tuple(values) if isinstance(values, Sequence) and not isinstance(values, str) else ()
    if (len(items) != n
            or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in items)):
        raise ValueError(f'ultrasound.device.{name} must be {n} ints >= {minimum}, '
                         f'got {values!r}')
    return items


@dataclass(frozen=True, eq=False)
class UsFrame:
    """One B-mode image: uint8 (H, W), its stamp and its pixel size.

    ``mm_per_pixel`` is ``(lateral, axial)``: millimetres per column (along the probe's
    array, image x) and per row (depth, image y). ``frame_number`` counts the frames this
    source returned, from 0.
    """

    image: np.ndarray
    stamp_s: float
    mm_per_pixel: tuple[float, float]
    frame_number: int


def crop_rect(crop: Sequence[int], frame_width: int, frame_height: int
              ) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of ``crop`` in a frame: 0 width/height reach the frame's edge.

    ``(0, 0, 0, 0)`` is the whole frame. Raises ValueError when the rectangle does not
    fit in the frame.
    """
    x, y, w, h = (int(v) for v in crop)
    w = frame_width - x if w == 0 else w
    h = frame_height - y if h == 0 else h
    if x < 0 or y < 0 or w < 1 or h < 1 or x + w > frame_width or y + h > frame_height:
        raise ValueError(f'crop {list(crop)} does not fit in a {frame_width}x{frame_height} '
                         'frame (x, y, width, height; 0 = to the edge)')
    return x, y, w, h


def to_mono8(image: np.ndarray) -> np.ndarray:
    """A grabbed frame as a mono8 image.

    Grey uint8 is kept; BGR and BGRA frames (OpenCV's order) take the luma
    ``0.299 R + 0.587 G + 0.114 B``; 16-bit grey is scaled from its full range
    (``round(v / 257)``). Other layouts raise ValueError.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        if img.dtype == np.uint8:
            return np.ascontiguousarray(img)
        if img.dtype == np.uint16:
            return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.ndim == 3 and img.dtype == np.uint8 and img.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        return cv2.cvtColor(np.ascontiguousarray(img), code)
    raise ValueError(f'cannot make a mono8 image of a {img.dtype} frame of shape {img.shape}')


class VideoCaptureSource:
    """B-mode frames from ``cv2.VideoCapture``; see the module docs.

    ``section`` is the ``ultrasound.device`` mapping (or a :class:`CaptureConfig`);
    ``width_m`` and ``depth_m`` are the field of view the crop shows (``ultrasound.
    width_m``, ``depth_m``). The constructor opens the source; :meth:`close` (or leaving
    a ``with`` block) releases it. Not thread-safe: read from one thread.
    """

    def __init__(self, section: Mapping[str, Any] | CaptureConfig, width_m: float,
                 depth_m: float) -> None:
        cfg = section if isinstance(section, CaptureConfig) else CaptureConfig.from_section(
            section)
        for name, value in (('width_m', width_m), ('depth_m', depth_m)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f'ultrasound.{name} must be finite and > 0, got {value!r}')
        self.config = cfg
        self.width_m, self.depth_m = float(width_m), float(depth_m)
        source = cfg.index
        self.is_file = isinstance(source, str) and os.path.isfile(source)
        if (isinstance(source, str) and not self.is_file and '://' not in source
                and not source.startswith('/dev/')):
            raise FileNotFoundError(f'ultrasound.device.index: no such file: {source!r}')
        self.source = source
        self._cap: cv2.VideoCapture | None = None
        cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            cap.release()
            what = 'file' if self.is_file else 'device' if isinstance(source, int) else 'source'
            raise DeviceError(f'cannot open video {what} {source!r} (OpenCV backends: '
                              'V4L2 for devices, FFmpeg for files and URLs; is the frame '
                              'grabber plugged in, readable by this user, and not in use?)')
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width > 0 and height > 0:
            try:
                crop_rect(cfg.crop, width, height)
            except ValueError:
                cap.release()
                raise
        self._cap = cap
        self._count = 0

    def read(self) -> UsFrame:
        """The next frame; FrameTimeout (live) or EndOfStream (file) when none comes."""
        cap = self._cap
        if cap is None:
            raise DeviceError(f'the video source {self.source!r} is closed')
        grabbed = cap.grab()
        stamp = (cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if self.is_file
                 else time.monotonic())
        ok, raw = cap.retrieve() if grabbed else (False, None)
        if not ok or raw is None:
            if self.is_file:
                raise EndOfStream(f'{self.source!r}: end of file after {self._count} frames')
            raise FrameTimeout(f'no frame from video source {self.source!r} (stopped, '
                               'unplugged or no signal)')
        h_frame, w_frame = raw.shape[:2]
        x, y, w, h = crop_rect(self.config.crop, w_frame, h_frame)
        image = to_mono8(raw[y:y + h, x:x + w])
        if self.config.size is not None and self.config.size != (w, h):
            out_w, out_h = self.config.size
            shrink = out_w <= w and out_h <= h
            image = cv2.resize(image, (out_w, out_h),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out_h, out_w = image.shape
        frame = UsFrame(image=image, stamp_s=float(stamp),
                        mm_per_pixel=(self.width_m * 1000.0 / out_w,
                                      self.depth_m * 1000.0 / out_h),
                        frame_number=self._count)
        self._count += 1
        return frame

    def close(self) -> None:
        """Release the capture (idempotent)."""
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def __enter__(self) -> VideoCaptureSource:
        """Use as a context manager: the capture is released on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Release the capture."""
        self.close()
