"""Run the whole stack against the embedded simulator, in lockstep by default.

The sim node (`mode:=lockstep`: a tick advances only when the controller has answered
the last one, so a seed gives the same run, command for command) with
robot_state_publisher and every stack node: arm_interface, ultrasound and nir (fed by the
sim's image topics), vessel_mapper, trajectory_planner, force_monitor and controller.
Each gets its section of config/ir_guidance.yaml as parameters (nested keys as
``section.key``), ``use_sim_time: true`` and ``lockstep: true`` (consumers of
asynchronous results wait for them on the lockstep schedule, config ``lockstep``);
``mode:=realtime`` runs the sim on the wall clock and sets ``lockstep: false`` on every
node instead.
Usage: ros2 launch ir_guidance sim.launch.py [mode:=realtime] [phantom:=/path.yaml] [seed:=3]
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import Command, EqualsSubstitution, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from ir_guidance import config as ir_config
from ir_guidance.config import flat_parameters as flat
from ir_guidance.config import stack_parameters


def generate_launch_description():
    share = get_package_share_directory('ir_guidance')
    config = ir_config.load(os.path.join(share, 'config', 'ir_guidance.yaml'))
    xacro_file = os.path.join(share, config['robot']['urdf_xacro'])
    sim = config['sim']
    mode = LaunchConfiguration('mode')
    # Every stack node runs in lockstep exactly when the sim does.
    stack = {'use_sim_time': True,
             'lockstep': ParameterValue(EqualsSubstitution(mode, 'lockstep'), value_type=bool)}
    arguments = [
        DeclareLaunchArgument('mode', default_value='lockstep',
                              choices=['lockstep', 'realtime'],
                              description='lockstep (deterministic) or realtime'),
        DeclareLaunchArgument('phantom', default_value=sim['phantom'],
                              description='phantom YAML (share-relative or absolute) '
                                          'or random:SEED'),
        DeclareLaunchArgument('seed', default_value=str(sim['seed'])),
    ]
    sim_params = flat(sim, mode=mode, phantom=LaunchConfiguration('phantom'),
                      seed=ParameterValue(LaunchConfiguration('seed'), value_type=int))
    return LaunchDescription([
        *arguments,
        Node(package='ir_guidance', executable='sim', name='sim', parameters=[sim_params],
             output='screen'),
        Node(package='robot_state_publisher', executable='robot_state_publisher',
             parameters=[{'robot_description': ParameterValue(
                 Command(['xacro ', xacro_file]), value_type=str), 'use_sim_time': True}]),
        *(Node(package='ir_guidance', executable=name, name=name, parameters=[params],
               output='screen')
          for name, params in stack_parameters(config, stack, {
              'arm_interface': {'publish_tf': False},
              'ultrasound': {'source': 'topic'}, 'nir': {'source': 'topic'}})),
    ])
