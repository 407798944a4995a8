"""Node tests of arm_interface over real rclpy pub/sub on loopback (in-process).

A probe node plays the robot (joint states at 100 Hz) and the controller (joint
commands), and records everything arm_interface publishes. Every "nothing came out"
assertion follows a positive control that shows the pipeline is alive.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from conftest import spin_for, spin_until
from rclpy.node import Node
from rclpy.parameter import Parameter
from transforms3d.quaternions import quat2mat

from ir_guidance import config, nodes
from ir_guidance.nodes.arm_interface import ArmInterface
from ir_guidance.nodes.conversions import message_class, qos_profile
from ir_guidance.rig_description import rig_chain

QUIET_S = 0.3
STATE_PERIOD_S = 0.01
ORDER = config.joint_names()
HOME = np.array(config.load()['robot']['home'], dtype=float)
FRAMES = config.load()['frames']
SECTION = config.load()['arm_interface']
POSE_KEYS = {'needle_tip_pose': 'needle_tip', 'probe_pose': 'us_image',
             'camera_pose': 'camera_optical'}
OUTPUT_KEYS = [*POSE_KEYS, 'arm_status', 'position_commands', 'trajectory_commands']


def stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class Probe:
    """The robot and the controller, as seen by arm_interface."""

    def __init__(self, context) -> None:
        self.node = Node('arm_interface_probe', context=context)
        self.received: dict[str, list] = defaultdict(list)
        self._pubs = {key: self._publisher(key) for key in ('joint_states', 'joint_command')}
        self._subs = {key: self._subscribe(key) for key in OUTPUT_KEYS}
        # What the 100 Hz "robot" publishes; None: silent.
        self.state_names: list[str] | None = None
        self.state_positions: list[float] = []
        self.stamp_offset_s = 0.0
        self.published_stamps: list[float] = []
        self.node.create_timer(STATE_PERIOD_S, self._publish_state)

    def _publisher(self, key: str):
        spec = config.topic(key)
        return self.node.create_publisher(message_class(spec['type']), spec['name'],
                                          qos_profile(spec['qos']))

    def _subscribe(self, key: str):
        spec = config.topic(key)
        return self.node.create_subscription(
            message_class(spec['type']), spec['name'],
            lambda msg: self.received[key].append(msg), qos_profile(spec['qos']))

    def stream(self, positions, names=None, stamp_offset_s: float = 0.0) -> None:
        """Publish these joint states from now on (stamped node-now + offset)."""
        self.state_names = list(ORDER if names is None else names)
        self.state_positions = [float(v) for v in positions]
        self.stamp_offset_s = stamp_offset_s
        self.published_stamps = []

    def _publish_state(self) -> None:
        if self.state_names is None:
            return
        msg = message_class('sensor_msgs/msg/JointState')()
        now = self.node.get_clock().now().nanoseconds
        stamp = now + round(self.stamp_offset_s * 1e9)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        msg.name = self.state_names
        msg.position = self.state_positions
        self._pubs['joint_states'].publish(msg)
        self.published_stamps.append(stamp_s(msg.header.stamp))

    def command(self, positions, names=None) -> None:
        msg = message_class('sensor_msgs/msg/JointState')()
        msg.name = list(ORDER if names is None else names)
        msg.position = [float(v) for v in positions]
        self._pubs['joint_command'].publish(msg)

    def connected(self, outputs: list[str]) -> bool:
        return all(p.get_subscription_count() > 0 for p in self._pubs.values()) and \
            all(self._subs[key].get_publisher_count() > 0 for key in outputs)

    def statuses(self) -> list[str]:
        return [m.data for m in self.received['arm_status']]

    def has_status(self, prefix: str, reason: str = '') -> bool:
        return any(s.startswith(prefix) and f'({reason})' in s if reason else s.startswith(prefix)
                   for s in self.statuses())


@pytest.fixture
def rig(ros_context, executor) -> Iterator[Callable[..., tuple[ArmInterface, Probe]]]:
    """Factory: an ArmInterface (kwargs to Node) and a connected probe, both spinning."""
    created: list[Node] = []

    def make(**kwargs) -> tuple[ArmInterface, Probe]:
        arm = ArmInterface(context=ros_context, **kwargs)
        probe = Probe(ros_context)
        created.extend((arm, probe.node))
        executor.add_node(arm)
        executor.add_node(probe.node)
        outputs = [*POSE_KEYS, 'arm_status', f'{arm.command_interface}_commands']
        assert spin_until(executor, lambda: probe.connected(outputs)), 'discovery failed'
        return arm, probe

    yield make
    for node in created:
        executor.remove_node(node)
        node.destroy_node()


def stream_home_until_ok(executor, probe: Probe) -> None:
    """Positive control: valid states give an OK status and poses."""
    probe.stream(HOME)
    assert spin_until(executor, lambda: probe.has_status('OK') and
                      len(probe.received['needle_tip_pose']) > 0), probe.statuses()


def poses_with_stamps(probe: Probe, stamps: list[float]) -> list:
    bad = set(stamps)
    return [m for key in POSE_KEYS for m in probe.received[key]
            if stamp_s(m.header.stamp) in bad]


# -- poses -------------------------------------------------------------------------------------

def test_poses_at_home_match_forward_kinematics(rig, executor):
    _, probe = rig()
    probe.stream(HOME)
    assert spin_until(executor, lambda: all(probe.received[k] for k in POSE_KEYS))
    chain = rig_chain()
    for key, frame_key in POSE_KEYS.items():
        msg = probe.received[key][-1]
        assert msg.header.frame_id == FRAMES['base']
        assert stamp_s(msg.header.stamp) in probe.published_stamps
        expected = chain.fk(HOME, FRAMES[frame_key])
        p, q = msg.pose.position, msg.pose.orientation
        np.testing.assert_allclose([p.x, p.y, p.z], expected[:3, 3], rtol=0, atol=1e-9)
        assert math.isclose(q.w**2 + q.x**2 + q.y**2 + q.z**2, 1.0, abs_tol=1e-12)
        np.testing.assert_allclose(quat2mat([q.w, q.x, q.y, q.z]), expected[:3, :3],
                                   rtol=0, atol=1e-9)
    tip = probe.received['needle_tip_pose'][-1].pose.position
    np.testing.assert_allclose([tip.x, tip.y, tip.z], chain.fk(HOME)[:3, 3], rtol=0, atol=1e-9)
    # The three poses of one state come from one joint state: same stamps.
    stamps = [{stamp_s(m.header.stamp) for m in probe.received[k]} for k in POSE_KEYS]
    assert stamps[0] & stamps[1] & stamps[2]


def test_poses_follow_the_joint_state(rig, executor):
    _, probe = rig()
    stream_home_until_ok(executor, probe)
    moved = HOME.copy()
    moved[0] += 0.3
    moved[-1] = 0.02
    probe.stream(moved)
    expected = rig_chain().fk(moved)[:3, 3]

    def tip_moved() -> bool:
        msgs = poses_with_stamps(probe, probe.published_stamps)
        return any(m.pose.position.x == pytest.approx(expected[0], abs=1e-9) for m in msgs)

    assert spin_until(executor, tip_moved)


# -- rejected joint states -----------------------------------------------------------------

def _bad_nan() -> tuple[list[float], list[str], float]:
    x = HOME.copy()
    x[1] = math.nan
    return list(x), ORDER, 0.0


def _bad_missing() -> tuple[list[float], list[str], float]:
    return list(HOME[:-1]), ORDER[:-1], 0.0


def _bad_stale() -> tuple[list[float], list[str], float]:
    return list(HOME), ORDER, -1.0


def _bad_limits() -> tuple[list[float], list[str], float]:
    x = HOME.copy()
    x[-1] = 0.5  # the stage travels 40 mm
    return list(x), ORDER, 0.0


@pytest.mark.parametrize(('make_bad', 'reason'), [
    (_bad_nan, 'nonfinite'), (_bad_missing, 'missing'), (_bad_stale, 'stale'),
    (_bad_limits, 'limits')])
def test_bad_joint_state_gives_error_and_no_pose(rig, executor, make_bad, reason):
    _, probe = rig()
    stream_home_until_ok(executor, probe)
    positions, names, offset = make_bad()
    probe.stream(positions, names, stamp_offset_s=offset)
    assert spin_until(executor, lambda: probe.has_status('ERROR', reason)), probe.statuses()
    # Sent while the last good state is still younger than the timeout: a rejected state
    # must withdraw the measured state commands are checked against, not wait for it to age.
    probe.command(HOME)
    assert spin_until(executor, lambda: probe.has_status('REFUSED', 'no_state'))
    spin_for(executor, QUIET_S)
    assert len(probe.published_stamps) >= 5
    assert poses_with_stamps(probe, probe.published_stamps) == []
    assert probe.received['position_commands'] == []


# -- commands ----------------------------------------------------------------------------------

def test_valid_command_forwarded_in_config_order(rig, executor):
    _, probe = rig()
    stream_home_until_ok(executor, probe)
    target = HOME.copy()
    target[0] += 0.04
    target[-1] += 0.001
    probe.command(target[::-1], names=ORDER[::-1])
    assert spin_until(executor, lambda: probe.received['position_commands'])
    spin_for(executor, QUIET_S)
    (msg,) = probe.received['position_commands']
    assert list(msg.data) == pytest.approx(list(target), abs=0)


def _cmd_limits() -> np.ndarray:
    x = HOME.copy()
    x[-1] = -0.001  # under the step limit, below the stage's lower limit
    return x


def _cmd_step() -> np.ndarray:
    x = HOME.copy()
    x[0] += 0.1  # max_step_rad is 0.05
    return x


def _cmd_nan() -> np.ndarray:
    x = HOME.copy()
    x[3] = math.nan
    return x


@pytest.mark.parametrize(('make_bad', 'reason'), [
    (_cmd_limits, 'limits'), (_cmd_step, 'step'), (_cmd_nan, 'nonfinite')])
def test_bad_command_refused_and_not_forwarded(rig, executor, make_bad, reason):
    _, probe = rig()
    stream_home_until_ok(executor, probe)
    probe.command(HOME)  # positive control
    assert spin_until(executor, lambda: probe.received['position_commands'])
    probe.command(make_bad())
    assert spin_until(executor, lambda: probe.has_status('REFUSED', reason)), probe.statuses()
    spin_for(executor, QUIET_S)
    assert [list(m.data) for m in probe.received['position_commands']] == [list(HOME)]


def test_command_without_state_refused_until_states_arrive(rig, executor):
    _, probe = rig()
    probe.command(HOME)
    assert spin_until(executor, lambda: probe.has_status('REFUSED', 'no_state'))
    spin_for(executor, QUIET_S)
    assert probe.received['position_commands'] == []
    assert probe.has_status('STALE')
    stream_home_until_ok(executor, probe)
    probe.command(HOME)
    assert spin_until(executor, lambda: probe.received['position_commands'])


def test_states_stopping_makes_status_stale_and_refuses_commands(rig, executor):
    _, probe = rig()
    stream_home_until_ok(executor, probe)
    probe.state_names = None
    probe.received['arm_status'].clear()
    assert spin_until(executor, lambda: probe.has_status('STALE')), probe.statuses()
    probe.command(HOME)
    assert spin_until(executor, lambda: probe.has_status('REFUSED', 'no_state'))
    spin_for(executor, QUIET_S)
    assert probe.received['position_commands'] == []


def test_trajectory_mode_publishes_a_joint_trajectory(rig, executor):
    arm, probe = rig(parameter_overrides=[Parameter('command_interface', value='trajectory')])
    assert arm.command_interface == 'trajectory'
    stream_home_until_ok(executor, probe)
    target = HOME.copy()
    target[2] -= 0.02
    probe.command(target)
    assert spin_until(executor, lambda: probe.received['trajectory_commands'])
    spin_for(executor, QUIET_S)
    (msg,) = probe.received['trajectory_commands']
    assert list(msg.joint_names) == ORDER
    (point,) = msg.points
    assert list(point.positions) == list(target)
    assert point.time_from_start.sec + point.time_from_start.nanosec * 1e-9 == \
        pytest.approx(SECTION['trajectory_point_time_s'], abs=1e-9)
    assert probe.received['position_commands'] == []


def test_ros_args_override_parameters(rig, executor):
    arm, probe = rig(cli_args=['--ros-args', '-p', 'max_step_rad:=0.2'])
    assert arm.get_parameter('max_step_rad').value == 0.2
    stream_home_until_ok(executor, probe)
    target = HOME.copy()
    target[0] += 0.1  # refused with the config's 0.05 (see _cmd_step)
    probe.command(target)
    assert spin_until(executor, lambda: probe.received['position_commands'])


def test_bad_command_interface_fails_at_start_up(ros_context):
    with pytest.raises(ValueError, match='command_interface'):
        ArmInterface(context=ros_context,
                     parameter_overrides=[Parameter('command_interface', value='velocity')])


# -- registry and main() ---------------------------------------------------------------------

def test_registry_resolves_and_rejects_unknown_names():
    from ir_guidance.nodes import arm_interface

    assert nodes.resolve('arm_interface') is arm_interface.main
    with pytest.raises(ValueError, match='arm_interface'):
        nodes.run('no_such_node', [])


def test_main_runs_from_the_registry_and_stops_on_sigint(ros_context, executor):
    probe = Probe(ros_context)
    executor.add_node(probe.node)
    code = ('import sys; from ir_guidance.nodes import run; '
            "sys.exit(run('arm_interface', sys.argv[1:]))")
    process = subprocess.Popen(
        [sys.executable, '-c', code, '--ros-args', '-p', 'joint_state_timeout_s:=0.5'],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert spin_until(executor, lambda: any('timeout 0.5 s' in s for s in probe.statuses()),
                          timeout_s=20.0), probe.statuses()
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=10.0)
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        executor.remove_node(probe.node)
        probe.node.destroy_node()
