"""Message conversions shared by the nodes: image validation, point clouds."""

import numpy as np
import pytest

from ir_guidance.nodes.conversions import (
    cloud_array,
    cloud_msg,
    image_array,
    image_msg,
    stamp_seconds,
)
from ir_guidance.nodes.sim import stamp_msg


def test_image_round_trip_mono8_and_16uc1():
    stamp = stamp_msg(1.25)
    mono = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(image_array(image_msg(mono, 'mono8', 'f', stamp), ('mono8',)),
                                  mono)
    depth = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    msg = image_msg(depth, '16UC1', 'f', stamp)
    np.testing.assert_array_equal(image_array(msg, ('16UC1',)), depth)
    assert stamp_seconds(msg.header.stamp) == pytest.approx(1.25)


def test_image_with_padded_rows():
    msg = image_msg(np.zeros((2, 3), np.uint8), 'mono8', 'f', stamp_msg(0.0))
    msg.step = 4
    msg.data = bytes([1, 2, 3, 99, 4, 5, 6, 99])
    np.testing.assert_array_equal(image_array(msg, ('mono8',)), [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(('change', 'match'), [
    (lambda m: setattr(m, 'encoding', 'rgb8'), 'not accepted'),
    (lambda m: (setattr(m, 'height', 0), setattr(m, 'data', b'')), 'empty'),
    (lambda m: setattr(m, 'data', bytes(5)), 'does not match'),
    (lambda m: setattr(m, 'step', 2), 'does not match'),
])
def test_bad_images_are_rejected(change, match):
    msg = image_msg(np.zeros((2, 3), np.uint8), 'mono8', 'f', stamp_msg(0.0))
    change(msg)
    with pytest.raises(ValueError, match=match):
        image_array(msg, ('mono8',))


def test_float_image_with_nan_is_rejected():
    depth = np.ones((2, 2), np.float32)
    depth[0, 1] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        image_array(image_msg(depth, '32FC1', 'f', stamp_msg(0.0)), ('32FC1',))


def test_cloud_round_trip():
    points = np.zeros(3, dtype=[('x', np.float32), ('y', np.float32), ('radius', np.float32)])
    points['x'] = [1, 2, 3]
    points['radius'] = [0.5, 0.25, 0.125]
    msg = cloud_msg(points, 'us_image_frame', stamp_msg(2.0))
    assert [f.name for f in msg.fields] == ['x', 'y', 'radius']
    assert msg.width == 3 and msg.point_step == 12 and len(msg.data) == 36
    back = cloud_array(msg)
    np.testing.assert_array_equal(back['x'], points['x'])
    np.testing.assert_array_equal(back['radius'], points['radius'])
