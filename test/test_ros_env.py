"""ROS environment discipline: loopback discovery and a private domain id."""

import random
import socket

import pytest

from ir_guidance import ros_env


def test_defaults_keep_dds_on_loopback():
    env = ros_env.configure({})
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert env['ROS_DOMAIN_ID'] == str(ros_env.DEFAULT_DOMAIN_ID)
    assert env['RMW_IMPLEMENTATION'] == 'rmw_fastrtps_cpp'


def test_user_choices_are_kept():
    env = ros_env.configure({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET', 'ROS_DOMAIN_ID': '7'})
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'SUBNET'
    assert env['ROS_DOMAIN_ID'] == '7'


def test_explicit_domain_id_wins():
    assert ros_env.configure({'ROS_DOMAIN_ID': '7'}, domain_id=9)['ROS_DOMAIN_ID'] == '9'


@pytest.mark.parametrize('value', ['-1', '102', '250'])
def test_domain_id_out_of_range(value):
    with pytest.raises(ValueError, match='ROS_DOMAIN_ID'):
        ros_env.configure({'ROS_DOMAIN_ID': value})


def test_busy_domain_is_detected_and_skipped():
    rng = random.Random(5)
    first = ros_env.free_domain_id(random.Random(5))
    port = 7400 + 250 * first
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(('127.0.0.1', port))
        assert not ros_env._domain_ports_free(first)
        other = ros_env.free_domain_id(rng)
    assert other != first
    assert 1 <= other <= ros_env.MAX_DOMAIN_ID
