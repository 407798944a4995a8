"""Run one node of the stack alone, to feed it from a recording (`ros2 bag play`).

`node:=<name>` picks the executable (any node of ``ir_guidance.nodes.NODES``); it gets
its section of config/ir_guidance.yaml as parameters (nested keys as ``section.key``),
like in rig.launch.py and sim.launch.py, with ``lockstep: false`` and sensors read from
topics (ultrasound and nir ``source: topic``), and ``use_sim_time`` (default true: play
the bag with ``--clock`` so that stamps and the node's clock agree).
One file for every node rather than one per node: the node list lives in one place, and
``choices`` refuses an unknown name before anything starts.
Usage: ros2 launch ir_guidance bench.launch.py node:=force_monitor [use_sim_time:=false]
       ros2 bag play <recording> --clock
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import EqualsSubstitution, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from ir_guidance import config as ir_config
from ir_guidance.config import flat_parameters as flat
from ir_guidance.nodes import NODES


def generate_launch_description():
    share = get_package_share_directory('ir_guidance')
    config = ir_config.load(os.path.join(share, 'config', 'ir_guidance.yaml'))
    node = LaunchConfiguration('node')
    common = {'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                             value_type=bool)}
    stack = dict(common, lockstep=False)

    def chosen(name):
        return IfCondition(EqualsSubstitution(node, name))

    return LaunchDescription([
        DeclareLaunchArgument('node', choices=sorted(NODES),
                              description='the node to run: ' + ', '.join(sorted(NODES))),
        DeclareLaunchArgument('use_sim_time', default_value='true',
                              description='follow /clock (ros2 bag play --clock)'),
        Node(package='ir_guidance', executable='sim', name='sim', condition=chosen('sim'),
             parameters=[flat(config['sim'], mode='realtime', **common)], output='screen'),
        Node(package='ir_guidance', executable='arm_interface', name='arm_interface',
             condition=chosen('arm_interface'),
             parameters=[flat(config['arm_interface'], **stack)], output='screen'),
        Node(package='ir_guidance', executable='ultrasound', name='ultrasound',
             condition=chosen('ultrasound'),
             parameters=[flat(config['ultrasound'], source='topic', **stack)], output='screen'),
        Node(package='ir_guidance', executable='nir', name='nir', condition=chosen('nir'),
             parameters=[flat(config['nir'], source='topic', **stack)], output='screen'),
        Node(package='ir_guidance', executable='vessel_mapper', name='vessel_mapper',
             condition=chosen('vessel_mapper'),
             parameters=[flat(config['vessel_mapper'], **stack)], output='screen'),
        Node(package='ir_guidance', executable='trajectory_planner', name='trajectory_planner',
             condition=chosen('trajectory_planner'),
             parameters=[flat(config['planner'], **stack)], output='screen'),
        Node(package='ir_guidance', executable='force_monitor', name='force_monitor',
             condition=chosen('force_monitor'),
             parameters=[flat(config['force_monitor'], **stack)], output='screen'),
        Node(package='ir_guidance', executable='controller', name='controller',
             condition=chosen('controller'),
             parameters=[flat(config['controller'], **stack)], output='screen'),
    ])
