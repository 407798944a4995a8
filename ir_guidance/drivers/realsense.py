"""RealSense D4xx infrared + depth frames (pyrealsense2), ROS-free.

:class:`RealSenseSource` streams the **left infrared imager** (``infrared`` index 1, Y8)
and **depth** (Z16) of one camera, or plays a ``.bag`` recording back, and returns
:class:`Frame` objects: the near-infrared image the vein detector reads, the depth
beside it, the device timestamp in seconds and the frame number.

No alignment is done, on purpose: a D4xx computes depth in the left infrared imager's
own frame, so at equal resolutions the depth image is pixel for pixel co-registered with
the infrared image and shares its intrinsics (``rs.align`` would resample for nothing).
The source checks this when it starts (identical intrinsics, identity extrinsics,
:func:`check_co_registered`) and refuses a device where it does not hold rather than
silently publishing misregistered depth.

Projector (``emitter`` in ``nir.realsense``):

- ``'off'``: the depth sensor's ``emitter_enabled`` is set to 0; every frame is used.
  The infrared image is free of the dot pattern; the depth is passive stereo.
- ``'interleaved'``: ``emitter_on_off`` alternates the projector frame by frame
  (firmware 5.12+). Each frame's metadata says whether the laser was on
  (``frame_emitter_mode``, or the older ``frame_laser_power_mode``:
  :func:`laser_on`); :class:`InterleavePairer` keeps the infrared image of each
  projector-off frame and pairs it with the depth of the projector-on frame just before
  it (one frame period, 33 ms at 30 fps, older: ``Frame.depth_stamp_s``). The output rate
  is half the stream rate. Frame metadata needs the librealsense kernel patch or the
  RSUSB backend; without it the source raises :class:`DeviceError` instead of guessing.

Stamps: ``Frame.stamp_s`` is ``frame.get_timestamp()`` (ms) / 1000 in the frame's
timestamp domain, named in ``Frame.timestamp_domain``: ``global_time`` (the default on a
D4xx: the device's hardware clock mapped onto the host's system clock, so epoch
seconds), ``hardware_clock`` (device clock, arbitrary origin) or ``system_time`` (host
arrival time).

Playback: with ``bag`` set, ``rs.config.enable_device_from_file(bag,
repeat_playback=False)``, the streams as recorded (the configured size and rate are not
imposed), and ``set_real_time(False)`` on the playback device so that no frame is
dropped when the reader is slower than the recording; the end of the file raises
:class:`~ir_guidance.drivers.EndOfStream`. The projector options are the recording's.

What was run here, without a camera: the config validation, the intrinsics to
camera-info conversion (on ``rs.intrinsics`` objects filled in by the tests), the
co-registration check, the emitter metadata rule and the interleave pairing, the
missing-bag error and the no-device error (``rs.context().query_devices()`` is empty
here), and :func:`frame_from_frameset` on real framesets: librealsense's
``software_device`` feeding an ``rs.syncer`` with infrared and depth frames and their
emitter metadata. **Not run here**: :class:`RealSenseSource` streaming from a live
device (pipelines do not find software devices), setting the projector options on a
camera, and ``.bag`` playback (recording a bag needs a device); those paths follow the
pyrealsense2 2.59 API but have not seen a camera.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyrealsense2 as rs

from ir_guidance.drivers import DeviceError, EndOfStream, FrameTimeout

EMITTER_MODES = ('off', 'interleaved')
IR_INDEX = 1                    # the left imager: depth is computed in its frame
HINT = ('check that lsusb lists an Intel RealSense camera on a USB 3 port and cable (a '
        'USB 2 link limits the streams and rates), that librealsense\'s udev rules '
        '(99-realsense-libusb.rules) are installed in /etc/udev/rules.d (then replug), and '
        'that no other process (realsense-viewer, a ROS camera node) holds it')

# Per-frame emitter state from RS2_FRAME_METADATA_FRAME_EMITTER_MODE: 0 all emitters
# off, 1 laser (dot projector) on, 3 LED flood illuminator (no dot pattern). 2 is "laser
# auto", a configured mode that says nothing about the frame itself.
_EMITTER_MODE_LASER = {0: False, 1: True, 3: False}


@dataclass(frozen=True)
class RealSenseConfig:
    """The ``nir.realsense`` section of ``config/ir_guidance.yaml``, validated."""

    serial: str = ''            # empty: the first device found
    width: int = 640
    height: int = 480
    fps: int = 30
    emitter: str = 'off'        # 'off' | 'interleaved'
    bag: str = ''               # a .bag file to play back instead of a device

    def __post_init__(self) -> None:
        if not isinstance(self.serial, str):
            raise ValueError(f'nir.realsense.serial must be a string, got {self.serial!r} '
                             '(quote it in YAML so that leading zeros survive)')
        for name, high in (('width', 8192), ('height', 8192), ('fps', 1000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= high:
                raise ValueError(f'nir.realsense.{name} must be an int in [1, {high}], '
                                 f'got {value!r}')
        if self.emitter not in EMITTER_MODES:
            hint = (" (unquoted off reads as false in YAML: write 'off')"
                    if self.emitter is False else '')
            raise ValueError(f'nir.realsense.emitter must be one of {EMITTER_MODES}, '
                             f'got {self.emitter!r}{hint}')
        if not isinstance(self.bag, str):
            raise ValueError(f'nir.realsense.bag must be a path string, got {self.bag!r}')

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> RealSenseConfig:
        """Build from the YAML mapping; unknown keys are errors (a typo is not ignored)."""
        if not isinstance(section, Mapping):
            raise TypeError(f'nir.realsense must be a mapping, got {type(section).__name__}')
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f'unknown nir.realsense keys {unknown}; known: {sorted(known)}')
        values = dict(section)
        if values.get('bag') is None:
            values['bag'] = ''
        if values.get('serial') is None:
            values['serial'] = ''
        return cls(**values)


@dataclass(frozen=True, eq=False)
class Frame:
    """One infrared image with its depth, as the nodes publish them.

    ``ir`` is uint8 (H, W); ``depth`` uint16 (H, W) in ``depth_scale`` metres per unit,
    0 = no data, pixel-aligned with ``ir``. ``stamp_s`` and ``frame_number`` are the
    infrared frame's; ``depth_stamp_s`` and ``depth_frame_number`` the depth's (the same
    frame with the projector off, the previous one when interleaved).
    """

    ir: np.ndarray
    depth: np.ndarray
    stamp_s: float
    frame_number: int
    depth_stamp_s: float
    depth_frame_number: int
    timestamp_domain: str


def laser_on(emitter_mode: int | None, laser_power_mode: int | None) -> bool:
    """Whether the dot projector lit a frame, from the frame's metadata values.

    ``emitter_mode`` is ``frame_metadata_value.frame_emitter_mode`` (librealsense
    2.30.1+), ``laser_power_mode`` the older ``frame_laser_power_mode`` (1 when the
    emitter mode is 1, else 0); None where the frame does not carry the value. The
    newer value wins. Raises ValueError when neither is present or a value does not
    describe the frame (emitter mode 2, "laser auto").
    """
    if emitter_mode is not None:
        if emitter_mode not in _EMITTER_MODE_LASER:
            raise ValueError(f'frame emitter mode {emitter_mode} does not say whether the '
                             'laser was on (0 off, 1 laser, 3 LED are known)')
        return _EMITTER_MODE_LASER[emitter_mode]
    if laser_power_mode is not None:
        if laser_power_mode not in (0, 1):
            raise ValueError(f'frame laser power mode must be 0 or 1, got {laser_power_mode}')
        return laser_power_mode == 1
    raise ValueError('the frame carries no emitter metadata (frame_emitter_mode, '
                     'frame_laser_power_mode): per-frame metadata needs the librealsense '
                     'kernel patch or the RSUSB backend')


class InterleavePairer:
    """Pairs projector-off infrared frames with the depth of the projector-on frame before.

    With ``emitter_on_off`` the frames alternate on, off, on, ... Feed every frame to
    :meth:`push`: an on-frame is remembered (its depth is the good one) and returns None;
    an off-frame returns a :class:`Frame` with its infrared image and the remembered
    depth when that on-frame is at most ``max_gap`` frame numbers earlier, else None (a
    dropped frame broke the pair; nothing stale is passed on).
    """

    def __init__(self, max_gap: int = 1) -> None:
        if isinstance(max_gap, bool) or not isinstance(max_gap, int) or max_gap < 1:
            raise ValueError(f'max_gap must be an int >= 1, got {max_gap!r}')
        self.max_gap = max_gap
        self._on: tuple[np.ndarray, float, int] | None = None

    def reset(self) -> None:
        """Forget the remembered projector-on frame."""
        self._on = None

    def push(self, ir: np.ndarray, depth: np.ndarray, stamp_s: float, frame_number: int,
             laser: bool, timestamp_domain: str = '') -> Frame | None:
        """Take one frame (both images of one exposure); return a pair when one completes."""
        if laser:
            self._on = (depth, float(stamp_s), int(frame_number))
            return None
        if self._on is None:
            return None
        on_depth, on_stamp, on_number = self._on
        if not 0 < int(frame_number) - on_number <= self.max_gap:
            return None
        return Frame(ir=ir, depth=on_depth, stamp_s=float(stamp_s),
                     frame_number=int(frame_number), depth_stamp_s=on_stamp,
                     depth_frame_number=on_number, timestamp_domain=timestamp_domain)


def camera_info_from_intrinsics(intrinsics: rs.intrinsics, rate_hz: float,
                                depth_scale: float) -> dict[str, Any]:
    """``rs.intrinsics`` in the layout of :meth:`NirSimulator.camera_info`.

    K from fx, fy, ppx, ppy; R identity; P = [K | 0] (a monocular camera). Distortion:
    ``none`` and the Brown-Conrady family with all-zero coefficients (a D4xx's rectified
    infrared and depth streams) are ``plumb_bob`` with D = 0; ``brown_conrady`` is
    ``plumb_bob`` with D = (k1, k2, p1, p2, k3), the same order; ``kannala_brandt4`` is
    ``equidistant`` with its four coefficients. The modified and inverse Brown-Conrady
    and f-theta models with non-zero coefficients have no sensor_msgs/CameraInfo model
    and raise ValueError.
    """
    width, height = int(intrinsics.width), int(intrinsics.height)
    fx, fy = float(intrinsics.fx), float(intrinsics.fy)
    cx, cy = float(intrinsics.ppx), float(intrinsics.ppy)
    if width <= 0 or height <= 0:
        raise ValueError(f'intrinsics size must be positive, got {width} x {height}')
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
        raise ValueError(f'intrinsics must be finite with fx, fy > 0, got '
                         f'fx={fx}, fy={fy}, ppx={cx}, ppy={cy}')
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f'rate_hz must be finite and > 0, got {rate_hz}')
    if not (math.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f'depth_scale must be finite and > 0, got {depth_scale}')
    coeffs = np.array(intrinsics.coeffs, dtype=float)
    model = intrinsics.model
    brown = (rs.distortion.brown_conrady, rs.distortion.modified_brown_conrady,
             rs.distortion.inverse_brown_conrady)
    if model == rs.distortion.none or (model in brown and not coeffs.any()):
        name, d = 'plumb_bob', np.zeros(5)
    elif model == rs.distortion.brown_conrady:
        name, d = 'plumb_bob', coeffs[:5].copy()
    elif model == rs.distortion.kannala_brandt4:
        name, d = 'equidistant', coeffs[:4].copy()
    else:
        raise ValueError(f'{model.name} distortion with coefficients {coeffs.tolist()} has '
                         'no sensor_msgs/CameraInfo model')
    k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    p = np.zeros((3, 4))
    p[:, :3] = k
    return {'width': width, 'height': height, 'distortion_model': name, 'D': d, 'K': k,
            'R': np.eye(3), 'P': p, 'rate_hz': float(rate_hz),
            'depth_scale': float(depth_scale)}


def check_co_registered(depth: rs.intrinsics, infrared: rs.intrinsics,
                        depth_to_infrared: rs.extrinsics) -> None:
    """Raise DeviceError unless depth pixels are infrared pixels (same intrinsics, no offset).

    True of a D4xx's depth and left infrared streams at equal resolutions; the source
    relies on it instead of resampling the depth with ``rs.align``.
    """
    a = (depth.width, depth.height, depth.fx, depth.fy, depth.ppx, depth.ppy)
    b = (infrared.width, infrared.height, infrared.fx, infrared.fy, infrared.ppx,
         infrared.ppy)
    rotation = np.array(depth_to_infrared.rotation, dtype=float).reshape(3, 3)
    translation = np.array(depth_to_infrared.translation, dtype=float)
    if (not np.allclose(a, b, rtol=0.0, atol=1e-3)
            or not np.allclose(rotation, np.eye(3), rtol=0.0, atol=1e-6)
            or not np.all(np.abs(translation) < 1e-6)):
        raise DeviceError(
            'depth is not co-registered with the left infrared imager (depth '
            f'{depth.width}x{depth.height} f=({depth.fx:.2f}, {depth.fy:.2f}), infrared '
            f'{infrared.width}x{infrared.height} f=({infrared.fx:.2f}, {infrared.fy:.2f}), '
            f'depth->infrared translation {translation.tolist()} m): use a D4xx with both '
            'streams at the same resolution')


def find_device(serial: str = '', context: rs.context | None = None) -> rs.device:
    """The connected device with ``serial`` (empty: the first one), or DeviceError."""
    ctx = context if context is not None else rs.context()
    devices = list(ctx.query_devices())
    wanted = f'serial {serial!r}' if serial else 'any serial'
    if not devices:
        raise DeviceError(f'no RealSense device connected ({wanted}): {HINT}')
    serials = [_info(d, rs.camera_info.serial_number) for d in devices]
    if not serial:
        return devices[0]
    if serial not in serials:
        raise DeviceError(f'no RealSense device with serial {serial!r} (connected: '
                          f'{serials}): {HINT}')
    return devices[serials.index(serial)]


def _info(device: rs.device, key: rs.camera_info) -> str:
    """A device info string, '' where the device does not report it."""
    return device.get_info(key) if device.supports(key) else ''


def _metadata(frame: rs.frame, key: rs.frame_metadata_value) -> int | None:
    """A frame metadata value, None where the frame does not carry it."""
    return int(frame.get_frame_metadata(key)) if frame.supports_frame_metadata(key) else None


def frame_from_frameset(frames: rs.composite_frame, pairer: InterleavePairer | None = None
                        ) -> Frame | None:
    """Copy a frameset's left infrared and depth images out of the SDK's buffers.

    Returns None when the frameset lacks either image (a syncer can deliver a lone
    frame while it starts). With ``pairer`` (interleaved projector) the frame's laser
    state is read from the infrared frame's metadata (:func:`laser_on`, ValueError
    without it) and the pairer decides whether a pair is complete.
    """
    ir_frame = frames.get_infrared_frame(IR_INDEX)
    depth_frame = frames.get_depth_frame()
    if not ir_frame or not depth_frame:
        return None
    ir = np.array(ir_frame.get_data(), dtype=np.uint8, copy=True)
    depth = np.array(depth_frame.get_data(), dtype=np.uint16, copy=True)
    stamp = ir_frame.get_timestamp() / 1000.0
    number = int(ir_frame.get_frame_number())
    domain = ir_frame.get_frame_timestamp_domain().name
    if pairer is None:
        return Frame(ir=ir, depth=depth, stamp_s=stamp, frame_number=number,
                     depth_stamp_s=depth_frame.get_timestamp() / 1000.0,
                     depth_frame_number=int(depth_frame.get_frame_number()),
                     timestamp_domain=domain)
    laser = laser_on(_metadata(ir_frame, rs.frame_metadata_value.frame_emitter_mode),
                     _metadata(ir_frame, rs.frame_metadata_value.frame_laser_power_mode))
    return pairer.push(ir, depth, stamp, number, laser, domain)


class RealSenseSource:
    """Infrared + depth frames from a RealSense D4xx or a .bag; see the module docs.

    ``section`` is the ``nir.realsense`` mapping of the configuration (or a
    :class:`RealSenseConfig`). The constructor opens the device and starts streaming;
    :meth:`close` (or leaving a ``with`` block) stops it. Not thread-safe: read from one
    thread.
    """

    def __init__(self, section: Mapping[str, Any] | RealSenseConfig) -> None:
        cfg = (section if isinstance(section, RealSenseConfig)
               else RealSenseConfig.from_section(section))
        self.config = cfg
        self._pipeline: rs.pipeline | None = None
        self._playback: rs.playback | None = None
        self._pairer = InterleavePairer()
        rs_config = rs.config()
        if cfg.bag:
            if not os.path.isfile(cfg.bag):
                raise FileNotFoundError(f'nir.realsense.bag: no such file: {cfg.bag!r}')
            rs_config.enable_device_from_file(cfg.bag, repeat_playback=False)
            # The streams as recorded: their size and rate are the recording's.
            rs_config.enable_stream(rs.stream.infrared, IR_INDEX, rs.format.y8, 0)
            rs_config.enable_stream(rs.stream.depth, rs.format.z16, 0)
            what = f'bag {cfg.bag!r}'
            streams = 'the recorded infrared 1 Y8 + depth Z16 streams'
            usb = ''
        else:
            device = find_device(cfg.serial)
            serial = _info(device, rs.camera_info.serial_number)
            usb = _info(device, rs.camera_info.usb_type_descriptor)
            rs_config.enable_device(serial)
            rs_config.enable_stream(rs.stream.infrared, IR_INDEX, cfg.width, cfg.height,
                                    rs.format.y8, cfg.fps)
            rs_config.enable_stream(rs.stream.depth, cfg.width, cfg.height, rs.format.z16,
                                    cfg.fps)
            what = f'{_info(device, rs.camera_info.name)} serial {serial!r}'
            streams = f'infrared {cfg.width}x{cfg.height} Y8 + depth Z16 at {cfg.fps} fps'
        pipeline = rs.pipeline()
        try:
            profile = pipeline.start(rs_config)
        except RuntimeError as exc:
            link = (f' (connected over USB {usb}: use a USB 3 port and cable)'
                    if usb.startswith('2') else '')
            raise DeviceError(f'cannot start {streams} on {what}{link}: {exc}') from exc
        try:
            device = profile.get_device()
            depth_sensor = device.first_depth_sensor()
            if device.is_playback():
                self._playback = device.as_playback()
                self._playback.set_real_time(False)
            else:
                self._set_emitter(depth_sensor, what)
            ir_profile = profile.get_stream(rs.stream.infrared, IR_INDEX)
            ir_profile = ir_profile.as_video_stream_profile()
            depth_profile = profile.get_stream(rs.stream.depth).as_video_stream_profile()
            ir_intrinsics = ir_profile.get_intrinsics()
            check_co_registered(depth_profile.get_intrinsics(), ir_intrinsics,
                                depth_profile.get_extrinsics_to(ir_profile))
            self.depth_scale = float(depth_sensor.get_depth_scale())
            rate = ir_profile.fps() / (2.0 if cfg.emitter == 'interleaved' else 1.0)
            self._camera_info = camera_info_from_intrinsics(ir_intrinsics, rate,
                                                            self.depth_scale)
            self.device_info = {
                'name': _info(device, rs.camera_info.name),
                'serial': _info(device, rs.camera_info.serial_number),
                'firmware': _info(device, rs.camera_info.firmware_version),
                'usb': usb,
                'source': what,
            }
        except RuntimeError as exc:
            pipeline.stop()
            raise DeviceError(f'cannot configure {what}: {exc}') from exc
        except BaseException:
            pipeline.stop()
            raise
        self._pipeline = pipeline

    def _set_emitter(self, sensor: rs.sensor, what: str) -> None:
        """Apply the configured projector mode to the depth sensor."""
        if not sensor.supports(rs.option.emitter_enabled):
            raise DeviceError(f'{what} has no projector control (not an active D4xx)')
        if self.config.emitter == 'off':
            # Alternation must be off before the projector can be switched off.
            if sensor.supports(rs.option.emitter_on_off):
                sensor.set_option(rs.option.emitter_on_off, 0)
            sensor.set_option(rs.option.emitter_enabled, 0)
        else:
            if not sensor.supports(rs.option.emitter_on_off):
                raise DeviceError(f'{what} cannot alternate its projector (emitter_on_off '
                                  'needs a D43x/D45x with firmware 5.12 or newer)')
            sensor.set_option(rs.option.emitter_enabled, 1)
            sensor.set_option(rs.option.emitter_on_off, 1)

    def camera_info(self) -> dict[str, Any]:
        """Intrinsics of the infrared (and depth) image, laid out as the simulator's."""
        info = dict(self._camera_info)
        for key in ('D', 'K', 'R', 'P'):
            info[key] = info[key].copy()
        return info

    def read(self, timeout_ms: int = 1000) -> Frame:
        """The next frame; FrameTimeout after ``timeout_ms``, EndOfStream at a bag's end."""
        if self._pipeline is None:
            raise DeviceError('the RealSense source is closed')
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms <= 0:
            raise ValueError(f'timeout_ms must be a positive int, got {timeout_ms!r}')
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            remaining = max(1, round((deadline - time.monotonic()) * 1000.0))
            ok, frames = self._pipeline.try_wait_for_frames(remaining)
            if not ok:
                if (self._playback is not None
                        and self._playback.current_status() == rs.playback_status.stopped):
                    raise EndOfStream(f'{self.device_info["source"]}: end of recording')
                raise FrameTimeout(f'no frame from {self.device_info["source"]} within '
                                   f'{timeout_ms} ms')
            frame = self._convert(frames)
            if frame is not None:
                return frame
            if time.monotonic() >= deadline:
                raise FrameTimeout(f'no {"projector-off " if self._interleaved else ""}frame '
                                   f'pair from {self.device_info["source"]} within '
                                   f'{timeout_ms} ms')

    @property
    def _interleaved(self) -> bool:
        return self.config.emitter == 'interleaved'

    def _convert(self, frames: rs.composite_frame) -> Frame | None:
        """A Frame of a frameset (None while an interleaved pair is incomplete)."""
        try:
            return frame_from_frameset(frames, self._pairer if self._interleaved else None)
        except ValueError as exc:
            raise DeviceError(f'{self.device_info["source"]}: cannot interleave: {exc}') from exc

    def close(self) -> None:
        """Stop streaming and release the device (idempotent)."""
        pipeline, self._pipeline = self._pipeline, None
        self._playback = None
        if pipeline is not None:
            pipeline.stop()

    def __enter__(self) -> RealSenseSource:
        """Use as a context manager: the device is released on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Release the device."""
        self.close()
