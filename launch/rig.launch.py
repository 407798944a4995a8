"""Run the guidance stack on the real rig (ROS 2 Jazzy): sensors, mapping, planning, control.

Starts robot_state_publisher with the rig xacro, and the stack nodes ultrasound (frames
from the `us_source` argument, default the frame grabber), nir (RealSense), arm_interface,
vessel_mapper, trajectory_planner, force_monitor and controller (``lockstep: false``: its
loop runs on its own fixed-rate schedule, docs/control_timing.md). Every node gets its
section of config/ir_guidance.yaml as parameters (nested keys as ``section.key``), the
same values the nodes, the CLI and the tests read.

The UR arm itself is driven by ur_robot_driver (ros2_control), which this file does NOT
start by default: start it first, e.g.
    ros2 launch ur_robot_driver ur_control.launch.py ur_type:=ur5e robot_ip:=<ip>
        initial_joint_controller:=forward_position_controller launch_rviz:=false
or pass ``ur_driver:=true robot_ip:=<ip>`` to include that launch file from here (the
joint controller then follows ``command_interface``). The driver brings its own
robot_state_publisher (the UR's calibrated description with its ros2_control hardware).
With it running, pass ``rig_description:=false`` so that one publisher owns the arm's
frames: arm_interface then broadcasts the tool frames (needle tip, probe, camera) itself.
Usage: ros2 launch ir_guidance rig.launch.py [us_source:=device|igtl|topic]
       [nir_source:=realsense|topic] [command_interface:=position|trajectory]
       [ur_driver:=true robot_ip:=192.168.1.10] [rig_description:=false]
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import (
    Command,
    LaunchConfiguration,
    NotSubstitution,
    PathJoinSubstitution,
    PythonExpression,
)
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from ir_guidance import config as ir_config
from ir_guidance.config import stack_parameters

# arm_interface's command_interface -> the ur_robot_driver controller that takes its commands.
UR_CONTROLLERS = {
    'position': 'forward_position_controller',
    'trajectory': 'joint_trajectory_controller',
}


def generate_launch_description():
    share = get_package_share_directory('ir_guidance')
    config = ir_config.load(os.path.join(share, 'config', 'ir_guidance.yaml'))
    xacro_file = os.path.join(share, config['robot']['urdf_xacro'])
    command_interface = LaunchConfiguration('command_interface')
    rig_description = LaunchConfiguration('rig_description')
    ur_driver = LaunchConfiguration('ur_driver')

    arguments = [
        DeclareLaunchArgument('us_source', default_value='device',
                              choices=['device', 'igtl', 'topic'],
                              description='ultrasound frames: frame grabber (device), '
                                          'OpenIGTLink (igtl) or an image topic'),
        DeclareLaunchArgument('nir_source', default_value='realsense',
                              choices=['realsense', 'topic'],
                              description='NIR + depth: RealSense camera or image topics'),
        DeclareLaunchArgument('command_interface',
                              default_value=config['arm_interface']['command_interface'],
                              choices=sorted(UR_CONTROLLERS),
                              description='position (Float64MultiArray) or trajectory'),
        DeclareLaunchArgument('rig_description', default_value='true',
                              description='start robot_state_publisher with the rig '
                                          'xacro; false when the UR driver publishes the '
                                          "arm's description"),
        DeclareLaunchArgument('ur_driver', default_value='false',
                              description='include ur_robot_driver ur_control.launch.py'),
        DeclareLaunchArgument('robot_ip', default_value='192.168.1.10',
                              description="the UR controller's address (with ur_driver)"),
    ]
    # Found only when included: ur_robot_driver need not be installed otherwise.
    ur_control = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution(
            [FindPackageShare('ur_robot_driver'), 'launch', 'ur_control.launch.py'])),
        condition=IfCondition(ur_driver),
        launch_arguments={
            'ur_type': 'ur5e',
            'robot_ip': LaunchConfiguration('robot_ip'),
            'launch_rviz': 'false',
            'initial_joint_controller': PythonExpression(
                [repr(UR_CONTROLLERS), "['", command_interface, "']"]),
        }.items())

    stack = stack_parameters(config, {'lockstep': False}, {
        'arm_interface': {
            'command_interface': command_interface,
            # one broadcaster per frame: ours only when robot_state_publisher is off
            'publish_tf': ParameterValue(NotSubstitution(rig_description), value_type=bool)},
        'ultrasound': {'source': LaunchConfiguration('us_source')},
        'nir': {'source': LaunchConfiguration('nir_source')}})
    nodes = [
        Node(package='robot_state_publisher', executable='robot_state_publisher',
             condition=IfCondition(rig_description),
             parameters=[{'robot_description': ParameterValue(
                 Command(['xacro ', xacro_file]), value_type=str)}]),
        *(Node(package='ir_guidance', executable=name, name=name, parameters=[params],
               output='screen') for name, params in stack),
    ]
    return LaunchDescription([*arguments, ur_control, *nodes])
