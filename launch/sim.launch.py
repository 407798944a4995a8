"""Launch the embedded simulator with the rig description and the arm interface.

The same node set the CLI starts (`ir-guidance node sim`, `ir-guidance node
arm_interface`), with parameters from config/ir_guidance.yaml and sim time.
Usage: ros2 launch ir_guidance sim.launch.py [mode:=lockstep] [phantom:=/path.yaml] [seed:=3]
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
    sim = config['sim']
    arm = dict(config['arm_interface'], use_sim_time=True, publish_tf=False)
    arguments = [
        DeclareLaunchArgument('mode', default_value=sim['mode'],
                              description='realtime or lockstep'),
        DeclareLaunchArgument('phantom', default_value=sim['phantom'],
                              description='phantom YAML (share-relative or absolute) '
                                          'or random:SEED'),
        DeclareLaunchArgument('seed', default_value=str(sim['seed'])),
    ]
    sim_params = {
        'mode': LaunchConfiguration('mode'),
        'phantom': LaunchConfiguration('phantom'),
        'seed': ParameterValue(LaunchConfiguration('seed'), value_type=int),
    }
    return LaunchDescription([
        *arguments,
        Node(package='ir_guidance', executable='sim', name='sim', parameters=[sim_params],
             output='screen'),
        Node(package='robot_state_publisher', executable='robot_state_publisher',
             parameters=[{'robot_description': ParameterValue(
                 Command(['xacro ', xacro_file]), value_type=str), 'use_sim_time': True}]),
        Node(package='ir_guidance', executable='arm_interface', name='arm_interface',
             parameters=[arm], output='screen'),
    ])
