"""Launch the rig description and the arm interface on a full ROS 2 Jazzy install.

robot_state_publisher gets the xacro-expanded rig URDF; arm_interface gets its
parameters from config/ir_guidance.yaml (the same file the CLI and the tests read).
Usage: ros2 launch ir_guidance arm_interface.launch.py [command_interface:=trajectory]
"""

import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import Command, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory('ir_guidance')
    with open(os.path.join(share, 'config', 'ir_guidance.yaml'), encoding='utf-8') as f:
        config = yaml.safe_load(f)
    xacro_file = os.path.join(share, config['robot']['urdf_xacro'])
    params = dict(config['arm_interface'])
    params['command_interface'] = LaunchConfiguration('command_interface')
    # robot_state_publisher below publishes every frame: a second broadcaster would clash.
    params['publish_tf'] = False
    return LaunchDescription([
        DeclareLaunchArgument('command_interface',
                              default_value=config['arm_interface']['command_interface'],
                              description='position (Float64MultiArray) or trajectory'),
        Node(package='robot_state_publisher', executable='robot_state_publisher',
             parameters=[{'robot_description': ParameterValue(
                 Command(['xacro ', xacro_file]), value_type=str)}]),
        Node(package='ir_guidance', executable='arm_interface', name='arm_interface',
             parameters=[params], output='screen'),
    ])
