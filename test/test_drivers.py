"""Device drivers without devices: what can honestly be exercised here.

- RealSense: config validation, intrinsics -> camera info, the co-registration check,
  the emitter metadata rule and the interleave pairing (pure functions), frame copying
  and pairing on real framesets from librealsense's software device, and the errors for
  a missing bag and for no connected camera. Live streaming and bag playback are not
  run (no camera here; recording a bag needs one).
- Video capture: real MJPG .avi files written by cv2.VideoWriter (crop, grey, pixel
  size, stamps, end of stream, open errors).
- OpenIGTLink: a real pyigtl server on a free loopback port (pixels, spacing, matrix,
  device-name filtering, timeouts, refused connection).
"""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pyigtl
import pyrealsense2 as rs
import pytest
import yaml

from ir_guidance import config
from ir_guidance.drivers import DeviceError, DriverError, EndOfStream, FrameTimeout
from ir_guidance.drivers.igtl import IgtlImageSource, image_to_uint8
from ir_guidance.drivers.realsense import (
    InterleavePairer,
    RealSenseConfig,
    RealSenseSource,
    camera_info_from_intrinsics,
    check_co_registered,
    frame_from_frameset,
    laser_on,
)
from ir_guidance.drivers.us_capture import (
    CaptureConfig,
    VideoCaptureSource,
    crop_rect,
    to_mono8,
)
from ir_guidance.sim.nir import NirSimulator
from ir_guidance.sim.phantom import Phantom


# -- RealSense ---------------------------------------------------------------------------
def _intrinsics(model: rs.distortion = rs.distortion.brown_conrady,
                coeffs: tuple[float, ...] = (0.0,) * 5) -> rs.intrinsics:
    intr = rs.intrinsics()
    intr.width, intr.height = 640, 480
    intr.fx, intr.fy, intr.ppx, intr.ppy = 383.2, 384.1, 320.4, 238.9
    intr.model = model
    intr.coeffs = list(coeffs)
    return intr


def _extrinsics(translation: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> rs.extrinsics:
    ext = rs.extrinsics()
    ext.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    ext.translation = list(translation)
    return ext


def test_realsense_config_from_packaged_yaml() -> None:
    cfg = RealSenseConfig.from_section(config.load()['nir']['realsense'])
    assert (cfg.width, cfg.height, cfg.fps) == (640, 480, 30)
    assert cfg.emitter == 'off' and cfg.serial == '' and cfg.bag == ''


@pytest.mark.parametrize(('section', 'message'), [
    ({'emitter': 'on'}, 'emitter must be one of'),
    (yaml.safe_load('emitter: off'), "write 'off'"),     # YAML 1.1: unquoted off is False
    ({'width': 0}, 'width must be an int'),
    ({'height': True}, 'height must be an int'),
    ({'fps': 30.0}, 'fps must be an int'),
    ({'serial': 123456789012}, 'quote it'),
    ({'bag': 3}, 'bag must be a path'),
    ({'exposure': 100}, "unknown nir.realsense keys ['exposure']"),
])
def test_realsense_config_rejects(section: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RealSenseConfig.from_section(section)


def test_camera_info_matches_the_simulator_layout() -> None:
    info = camera_info_from_intrinsics(_intrinsics(), 30.0, 0.001)
    sim = NirSimulator(Phantom.random(0)).camera_info()
    assert set(info) == set(sim)
    for key in ('D', 'K', 'R', 'P'):
        assert info[key].shape == sim[key].shape, key
    assert info['distortion_model'] == 'plumb_bob'
    np.testing.assert_array_equal(info['D'], np.zeros(5))
    np.testing.assert_allclose(info['K'], [[383.2, 0, 320.4], [0, 384.1, 238.9], [0, 0, 1]],
                               rtol=1e-6)
    np.testing.assert_allclose(info['P'][:, :3], info['K'])
    np.testing.assert_array_equal(info['P'][:, 3], np.zeros(3))
    np.testing.assert_array_equal(info['R'], np.eye(3))
    assert (info['width'], info['height'], info['rate_hz'], info['depth_scale']) == (
        640, 480, 30.0, 0.001)
    # The dict is the caller's: no array is shared with the next call.
    again = camera_info_from_intrinsics(_intrinsics(), 30.0, 0.001)
    assert not np.shares_memory(again['K'], info['K'])


def test_camera_info_distortion_models() -> None:
    coeffs = (0.11, -0.05, 0.001, -0.002, 0.01)
    bc = camera_info_from_intrinsics(_intrinsics(rs.distortion.brown_conrady, coeffs), 30, 1e-3)
    assert bc['distortion_model'] == 'plumb_bob'
    np.testing.assert_allclose(bc['D'], coeffs, rtol=1e-6)        # same (k1, k2, p1, p2, k3)
    kb = camera_info_from_intrinsics(
        _intrinsics(rs.distortion.kannala_brandt4, (0.1, 0.02, -0.003, 0.0004, 0.0)), 30, 1e-3)
    assert kb['distortion_model'] == 'equidistant'
    np.testing.assert_allclose(kb['D'], (0.1, 0.02, -0.003, 0.0004), rtol=1e-6)
    for model in (rs.distortion.none, rs.distortion.inverse_brown_conrady,
                  rs.distortion.modified_brown_conrady):
        info = camera_info_from_intrinsics(_intrinsics(model), 15, 1e-3)
        assert info['distortion_model'] == 'plumb_bob' and not info['D'].any()
    with pytest.raises(ValueError, match='inverse_brown_conrady distortion'):
        camera_info_from_intrinsics(_intrinsics(rs.distortion.inverse_brown_conrady, coeffs),
                                    30, 1e-3)
    bad = _intrinsics()
    bad.fx = 0.0
    with pytest.raises(ValueError, match='fx, fy > 0'):
        camera_info_from_intrinsics(bad, 30, 1e-3)
    with pytest.raises(ValueError, match='depth_scale'):
        camera_info_from_intrinsics(_intrinsics(), 30, 0.0)


def test_co_registration_check() -> None:
    check_co_registered(_intrinsics(), _intrinsics(), _extrinsics())
    with pytest.raises(DeviceError, match='not co-registered'):
        check_co_registered(_intrinsics(), _intrinsics(), _extrinsics((0.05, 0.0, 0.0)))
    other = _intrinsics()
    other.fx += 1.0
    with pytest.raises(DeviceError, match='not co-registered'):
        check_co_registered(other, _intrinsics(), _extrinsics())


def test_laser_on_from_metadata() -> None:
    assert laser_on(1, None) and not laser_on(0, None)
    assert not laser_on(3, None)                 # LED flood illuminator: no dot pattern
    assert laser_on(None, 1) and not laser_on(None, 0)
    assert laser_on(1, 0)                        # the newer field wins
    with pytest.raises(ValueError, match='does not say'):
        laser_on(2, None)
    with pytest.raises(ValueError, match='kernel patch'):
        laser_on(None, None)
    with pytest.raises(ValueError, match='0 or 1'):
        laser_on(None, 5)
    # The metadata keys the driver reads exist in this pyrealsense2.
    assert rs.frame_metadata_value.frame_emitter_mode
    assert rs.frame_metadata_value.frame_laser_power_mode


def test_interleave_pairs_off_ir_with_previous_on_depth() -> None:
    pairer = InterleavePairer()

    def push(n: int, laser: bool):
        ir = np.full((2, 3), n, np.uint8)
        depth = np.full((2, 3), 1000 + n, np.uint16)
        return pairer.push(ir, depth, stamp_s=n / 30.0, frame_number=n, laser=laser,
                           timestamp_domain='global_time')

    assert push(9, False) is None                # no projector-on frame seen yet
    assert push(10, True) is None
    frame = push(11, False)
    assert frame is not None
    assert frame.frame_number == 11 and frame.depth_frame_number == 10
    assert frame.ir[0, 0] == 11 and frame.depth[0, 0] == 1010
    assert frame.stamp_s == pytest.approx(11 / 30) and frame.depth_stamp_s == pytest.approx(1 / 3)
    assert frame.timestamp_domain == 'global_time'
    assert push(12, False) is None               # depth 2 frames old: not paired
    assert push(13, True) is None
    assert push(15, False) is None               # frame 14 dropped: the pair is broken
    assert push(16, True) is None
    assert push(17, True) is None                # projector stuck on: no clean IR
    assert push(18, False).depth_frame_number == 17
    pairer.reset()
    assert push(19, False) is None
    with pytest.raises(ValueError):
        InterleavePairer(max_gap=0)


class SoftwareStereo:
    """librealsense's own software device: real frames, framesets and metadata, no camera.

    One sensor with the left infrared (Y8) and depth (Z16) streams feeds an ``rs.syncer``
    (pipelines do not find software devices, so RealSenseSource itself is not run).
    """

    W, H, FPS = 64, 48, 30

    def __init__(self, metadata: bool = True) -> None:
        self.metadata = metadata
        self.device = rs.software_device()
        self.sensor = self.device.add_sensor('Stereo Module')
        intr = _intrinsics()
        intr.width, intr.height = self.W, self.H
        self.ir = self._stream(rs.stream.infrared, 1, 0, 1, rs.format.y8, intr)
        self.depth = self._stream(rs.stream.depth, 0, 1, 2, rs.format.z16, intr)
        self.device.create_matcher(rs.matchers.dlr)
        self.syncer = rs.syncer()
        self.sensor.open([self.ir, self.depth])
        self.sensor.start(self.syncer)
        self._buffers: list[np.ndarray] = []          # the SDK reads them until delivered

    def _stream(self, kind: rs.stream, index: int, uid: int, bpp: int, fmt: rs.format,
                intr: rs.intrinsics) -> rs.video_stream_profile:
        stream = rs.video_stream()
        stream.type, stream.index, stream.uid = kind, index, uid
        stream.width, stream.height, stream.fps = self.W, self.H, self.FPS
        stream.bpp, stream.fmt, stream.intrinsics = bpp, fmt, intr
        return self.sensor.add_video_stream(stream).as_video_stream_profile()

    def framesets(self, n: int, laser: bool) -> list[rs.composite_frame]:
        """Push frame ``n`` (infrared value n, depth 1000 + n); the framesets that result."""
        if self.metadata:
            self.sensor.set_metadata(rs.frame_metadata_value.frame_emitter_mode, int(laser))
        for profile, bpp, pixels in ((self.ir, 1, np.full((self.H, self.W), n, np.uint8)),
                                     (self.depth, 2,
                                      np.full((self.H, self.W), 1000 + n, np.uint16))):
            frame = rs.software_video_frame()
            frame.pixels, frame.bpp, frame.stride = pixels, bpp, self.W * bpp
            frame.timestamp = n * 1000.0 / self.FPS         # ms
            frame.domain = rs.timestamp_domain.hardware_clock
            frame.frame_number, frame.profile = n, profile
            self._buffers.append(pixels)
            self.sensor.on_video_frame(frame)
        # Wait (generously, for a loaded machine) for a frameset holding frame n, then
        # take whatever else is ready.
        out: list[rs.composite_frame] = []
        while not any(f.get_frame_number() == n for fs in out for f in fs):
            ok, frames = self.syncer.try_wait_for_frames(2000)
            assert ok, f'the syncer delivered nothing for frame {n}'
            out.append(frames)
        while True:
            ok, frames = self.syncer.try_wait_for_frames(10)
            if not ok:
                return out
            out.append(frames)

    def close(self) -> None:
        self.sensor.stop()
        self.sensor.close()


@pytest.fixture
def stereo() -> Iterator[SoftwareStereo]:
    device = SoftwareStereo()
    try:
        yield device
    finally:
        device.close()


def test_frames_from_real_framesets(stereo: SoftwareStereo) -> None:
    frames = [frame_from_frameset(fs) for n in range(1, 5) for fs in stereo.framesets(n, False)]
    frames = [f for f in frames if f is not None]      # the syncer's lone first frame: None
    assert [f.frame_number for f in frames][-3:] == [2, 3, 4]
    last = frames[-1]
    assert last.ir.shape == (48, 64) and last.ir.dtype == np.uint8 and (last.ir == 4).all()
    assert last.depth.dtype == np.uint16 and (last.depth == 1004).all()
    assert last.stamp_s == pytest.approx(4 / 30) and last.depth_stamp_s == pytest.approx(4 / 30)
    assert last.depth_frame_number == 4 and last.timestamp_domain == 'hardware_clock'
    # The arrays are copies: the SDK's buffers can be reused.
    assert last.ir.flags.owndata and last.depth.flags.owndata


def test_interleaved_frames_from_real_framesets(stereo: SoftwareStereo) -> None:
    pairer = InterleavePairer()
    out = [frame_from_frameset(fs, pairer) for n in range(1, 9)
           for fs in stereo.framesets(n, laser=n % 2 == 0)]
    pairs = [f for f in out if f is not None]
    assert [(f.frame_number, f.depth_frame_number) for f in pairs] == [(3, 2), (5, 4), (7, 6)]
    for f in pairs:
        assert (f.ir == f.frame_number).all() and (f.depth == 1000 + f.depth_frame_number).all()
        assert f.stamp_s - f.depth_stamp_s == pytest.approx(1 / 30)


def test_interleaved_without_metadata_refuses_to_guess() -> None:
    device = SoftwareStereo(metadata=False)
    try:
        with pytest.raises(ValueError, match='no emitter metadata'):
            for n in range(1, 4):
                for fs in device.framesets(n, laser=False):
                    frame_from_frameset(fs, InterleavePairer())
    finally:
        device.close()


def test_realsense_without_a_device_says_so() -> None:
    if len(rs.context().query_devices()):
        pytest.skip('a RealSense device is connected: the no-device error cannot be shown')
    with pytest.raises(DeviceError, match='no RealSense device connected') as info:
        RealSenseSource(config.load()['nir']['realsense'])
    assert 'udev' in str(info.value) and 'USB 3' in str(info.value)
    with pytest.raises(DeviceError, match="serial '012345678901'"):
        RealSenseSource({'serial': '012345678901'})


def test_realsense_missing_bag(tmp_path: Path) -> None:
    missing = tmp_path / 'none.bag'
    with pytest.raises(FileNotFoundError, match=r'none\.bag'):
        RealSenseSource({'bag': str(missing)})


# -- video capture -----------------------------------------------------------------------
BACKGROUND = (30, 60, 90)       # BGR outside the image area: luma 0.114 B + 0.587 G + 0.299 R
AREA = (16, 8, 40, 40)          # x, y, w, h of the grey image area in the 80 x 60 frames
N_FRAMES, FPS = 5, 10.0


def _level(i: int) -> int:
    return 20 + 50 * i


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / 'scanner.avi'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), FPS, (80, 60))
    assert writer.isOpened()
    x, y, w, h = AREA
    for i in range(N_FRAMES):
        frame = np.empty((60, 80, 3), np.uint8)
        frame[:] = BACKGROUND
        frame[y:y + h, x:x + w] = _level(i)
        writer.write(frame)
    writer.release()
    return path


def test_capture_crop_grey_pixel_size_stamps_and_end(video: Path) -> None:
    section = {'index': str(video), 'crop': list(AREA)}
    with VideoCaptureSource(section, width_m=0.038, depth_m=0.040) as source:
        assert source.is_file
        for i in range(N_FRAMES):
            frame = source.read()
            assert frame.image.dtype == np.uint8 and frame.image.shape == (40, 40)
            inner = frame.image[4:-4, 4:-4].astype(float)     # away from JPEG block edges
            assert abs(inner.mean() - _level(i)) < 2.0
            assert np.abs(inner - _level(i)).max() <= 6
            assert frame.mm_per_pixel == pytest.approx((0.95, 1.0))
            assert frame.stamp_s == pytest.approx(i / FPS)
            assert frame.frame_number == i
        with pytest.raises(EndOfStream):
            source.read()
        with pytest.raises(EndOfStream):
            source.read()
    with pytest.raises(DeviceError, match='closed'):
        source.read()


def test_capture_whole_frame_is_grey_luma_and_resizes(video: Path) -> None:
    luma = 0.114 * BACKGROUND[0] + 0.587 * BACKGROUND[1] + 0.299 * BACKGROUND[2]
    with VideoCaptureSource({'index': str(video)}, 0.038, 0.040) as source:
        frame = source.read()
    assert frame.image.shape == (60, 80)
    assert abs(frame.image[2:6, 2:12].mean() - luma) < 2.0
    assert frame.mm_per_pixel == pytest.approx((38 / 80, 40 / 60))
    section = {'index': str(video), 'crop': [16, 8, 0, 0], 'size': [32, 26]}
    with VideoCaptureSource(section, 0.038, 0.040) as source:
        frame = source.read()
    assert frame.image.shape == (26, 32)               # crop 64 x 52, halved
    assert frame.mm_per_pixel == pytest.approx((38 / 32, 40 / 26))
    assert abs(float(frame.image[5:15, 5:15].mean()) - _level(0)) < 3.0


def test_capture_open_errors(video: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r'missing\.avi'):
        VideoCaptureSource({'index': str(tmp_path / 'missing.avi')}, 0.038, 0.04)
    garbage = tmp_path / 'garbage.avi'
    garbage.write_bytes(b'not a video' * 100)
    with pytest.raises(DeviceError, match='cannot open video file'):
        VideoCaptureSource({'index': str(garbage)}, 0.038, 0.04)
    with pytest.raises(DeviceError, match='cannot open video device 63'):
        VideoCaptureSource({'index': 63}, 0.038, 0.04)
    with pytest.raises(ValueError, match='does not fit'):
        VideoCaptureSource({'index': str(video), 'crop': [60, 0, 40, 10]}, 0.038, 0.04)
    with pytest.raises(ValueError, match='depth_m'):
        VideoCaptureSource({'index': str(video)}, 0.038, 0.0)


def test_capture_config_and_conversions() -> None:
    assert CaptureConfig.from_section(config.load()['ultrasound']['device']).index == 0
    assert CaptureConfig(index='2').index == 2
    assert CaptureConfig(size=[0, 0]).size is None
    for bad in ({'crop': [0, 0, 10]}, {'crop': [0, -1, 0, 0]}, {'index': -1},
                {'size': [10, 0]}, {'rate': 30}):
        with pytest.raises(ValueError):
            CaptureConfig.from_section(bad)
    assert crop_rect((0, 0, 0, 0), 80, 60) == (0, 0, 80, 60)
    assert crop_rect((10, 5, 0, 20), 80, 60) == (10, 5, 70, 20)
    np.testing.assert_array_equal(to_mono8(np.array([[0, 257, 65535]], np.uint16)),
                                  [[0, 1, 255]])
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 2] = 200                                  # red
    assert to_mono8(bgra)[0, 0] == round(0.299 * 200)
    with pytest.raises(ValueError, match='mono8'):
        to_mono8(np.zeros((2, 2), np.float32))


# -- OpenIGTLink -------------------------------------------------------------------------
@pytest.fixture
def igtl_server() -> Iterator[pyigtl.OpenIGTLinkServer]:
    # pyigtl's server installs SIGINT/SIGTERM handlers and never restores them.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    server = pyigtl.OpenIGTLinkServer(port=0, local_server=True)   # a free loopback port
    try:
        yield server
    finally:
        server.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _connect(server: pyigtl.OpenIGTLinkServer, **kw) -> IgtlImageSource:
    source = IgtlImageSource('127.0.0.1', server.server_address[1], timeout_s=2.0, **kw)
    deadline = time.monotonic() + 2.0
    while not server.is_connected():
        assert time.monotonic() < deadline, 'the server never saw the client'
        time.sleep(0.005)
    return source


def _image_message(voxels: np.ndarray, name: str = 'Image_Reference',
                   stamp: float = 1_700_000_000.25) -> pyigtl.ImageMessage:
    matrix = np.diag([0.2, 0.25, 1.0, 1.0])
    matrix[:3, 3] = (-4.0, 1.5, 0.0)
    return pyigtl.ImageMessage(voxels, ijk_to_world_matrix=matrix, device_name=name,
                               timestamp=stamp)


def test_igtl_receives_uint8_and_uint16_images(igtl_server: pyigtl.OpenIGTLinkServer) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (1, 30, 40), dtype=np.uint8)          # (k, j, i)
    with _connect(igtl_server) as source:
        igtl_server.send_message(_image_message(grey), wait=True)
        frame = source.read()
        np.testing.assert_array_equal(frame.image, grey[0])
        assert frame.image.dtype == np.uint8 and frame.source_dtype == 'uint8'
        assert frame.mm_per_pixel == pytest.approx((0.2, 0.25), rel=1e-6)
        np.testing.assert_allclose(frame.ijk_to_world[:3, 3], (-4.0, 1.5, 0.0), atol=1e-5)
        assert frame.stamp_s == pytest.approx(1_700_000_000.25, abs=1e-6)
        assert frame.world_coordinate_system == 'lps'
        assert frame.device_name == 'Image_Reference'

        deep = rng.integers(0, 65536, (1, 30, 40), dtype=np.uint16)
        igtl_server.send_message(_image_message(deep, stamp=1_700_000_000.5), wait=True)
        frame = source.read()
        assert frame.source_dtype == 'uint16'
        np.testing.assert_array_equal(frame.image, np.rint(deep[0] / 257.0).astype(np.uint8))
        assert frame.stamp_s == pytest.approx(1_700_000_000.5, abs=1e-6)


def test_igtl_value_range_for_12_bit_images(igtl_server: pyigtl.OpenIGTLinkServer) -> None:
    twelve_bit = np.array([[[0, 4095, 2048, 5000]]], np.uint16)
    with _connect(igtl_server, value_range=(0, 4095)) as source:
        igtl_server.send_message(_image_message(twelve_bit), wait=True)
        np.testing.assert_array_equal(source.read().image, [[0, 255, 128, 255]])


def test_igtl_filters_device_names_and_types(igtl_server: pyigtl.OpenIGTLinkServer) -> None:
    with _connect(igtl_server) as source:
        igtl_server.send_message(_image_message(np.full((1, 4, 5), 7, np.uint8), 'Other'),
                                 wait=True)
        igtl_server.send_message(pyigtl.StringMessage('hello', device_name='Image_Reference'),
                                 wait=True)
        with pytest.raises(FrameTimeout, match="'Image_Reference'"):
            source.read(timeout_s=0.3)
        igtl_server.send_message(_image_message(np.full((1, 4, 5), 9, np.uint8), 'Other'),
                                 wait=True)
        igtl_server.send_message(_image_message(np.full((1, 4, 5), 3, np.uint8)), wait=True)
        frame = source.read()
        assert frame.device_name == 'Image_Reference' and (frame.image == 3).all()


def test_igtl_rejects_colour_and_volumes(igtl_server: pyigtl.OpenIGTLinkServer) -> None:
    grey_rgb = np.repeat(np.arange(20, dtype=np.uint8).reshape(1, 4, 5, 1), 3, axis=3)
    colour = grey_rgb.copy()
    colour[0, 0, 0] = (255, 0, 0)
    with _connect(igtl_server) as source:
        igtl_server.send_message(_image_message(grey_rgb), wait=True)
        np.testing.assert_array_equal(source.read().image, grey_rgb[0, :, :, 0])
        igtl_server.send_message(_image_message(colour), wait=True)
        with pytest.raises(DeviceError, match='colour image'):
            source.read()
        igtl_server.send_message(_image_message(np.zeros((2, 4, 5), np.uint8)), wait=True)
        with pytest.raises(DeviceError, match='volume of 2 slices'):
            source.read()


def test_igtl_timeout_and_refused_connection(igtl_server: pyigtl.OpenIGTLinkServer) -> None:
    with _connect(igtl_server) as source:
        start = time.monotonic()
        with pytest.raises(FrameTimeout):
            source.read(timeout_s=0.2)
        assert 0.2 <= time.monotonic() - start < 1.0
    with socket.socket() as probe:                     # a loopback port nobody listens on
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    with pytest.raises(DeviceError, match=f'127.0.0.1:{port}'):
        IgtlImageSource('127.0.0.1', port, timeout_s=0.3)
    with pytest.raises(ValueError, match='device_name'):
        IgtlImageSource(device_name='x' * 21)
    with pytest.raises(ValueError, match=r'unknown ultrasound\.igtl keys'):
        IgtlImageSource.from_section({'host': '127.0.0.1', 'prot': 1})


def test_igtl_from_config_section(igtl_server: pyigtl.OpenIGTLinkServer) -> None:
    section = {**config.load()['ultrasound']['igtl'], 'port': igtl_server.server_address[1]}
    with IgtlImageSource.from_section(section, timeout_s=2.0) as source:
        assert source.device_name == 'Image_Reference'
        deadline = time.monotonic() + 2.0
        while not igtl_server.is_connected():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        igtl_server.send_message(_image_message(np.ones((1, 2, 3), np.uint8)), wait=True)
        assert source.read().image.shape == (2, 3)


def test_image_to_uint8_rules() -> None:
    np.testing.assert_array_equal(
        image_to_uint8(np.array([[[-32768, 0, 32767]]], np.int16)), [[0, 128, 255]])
    np.testing.assert_array_equal(
        image_to_uint8(np.array([[[-128, 127]]], np.int8)), [[0, 255]])
    np.testing.assert_array_equal(
        image_to_uint8(np.array([[[-1.0, 0.5, 2.0]]], np.float32), (0.0, 1.0)), [[0, 128, 255]])
    with pytest.raises(ValueError, match='value_range'):
        image_to_uint8(np.zeros((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match='hi > lo'):
        image_to_uint8(np.zeros((1, 2, 2), np.uint8), (5, 5))
    with pytest.raises(ValueError, match='2-component'):
        image_to_uint8(np.zeros((1, 2, 2, 2), np.uint8))


def test_errors_share_a_base() -> None:
    assert issubclass(FrameTimeout, TimeoutError) and issubclass(EndOfStream, EOFError)
    for error in (DeviceError, FrameTimeout, EndOfStream):
        assert issubclass(error, DriverError)
