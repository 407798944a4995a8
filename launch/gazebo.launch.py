"""Run the rig in Gazebo (Harmonic) with ros2_control, on a full ROS 2 Jazzy install.

Starts gz sim with sim/gazebo/forearm_world.sdf, robot_state_publisher with the
xacro-expanded sim/gazebo/rig_gazebo.urdf.xacro, spawns that description into the world
(ros_gz_sim create), bridges /clock, the F/T wrench and the NIR/depth camera with
sim/gazebo/bridge.yaml, spawns the controllers of config/ros2_controllers.yaml and runs
the stack (arm_interface, ultrasound, nir, vessel_mapper, trajectory_planner,
force_monitor, controller), each with its section of config/ir_guidance.yaml as
parameters, all on simulation time. Gazebo has no lockstep protocol: every node gets
``lockstep: false`` (the controller runs its fixed-rate loop on the sim clock).
The ultrasound image is not produced here: no Gazebo sensor can (docs/gazebo.md); the
ultrasound node waits on the image topic (e.g. frames played from a recording).
Usage: ros2 launch ir_guidance gazebo.launch.py [command_interface:=trajectory]
       [gz_args:='-r -s -v 3']   (-s: server only, no GUI)
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, RegisterEventHandler
from launch.conditions import IfCondition, UnlessCondition
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import Command, EqualsSubstitution, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from ir_guidance import config as ir_config
from ir_guidance.config import stack_parameters

# arm_interface's command_interface -> the controller that takes its commands.
CONTROLLERS = {
    'position': 'forward_position_controller',
    'trajectory': 'joint_trajectory_controller',
}


def _spawner(controller, controllers_yaml, *extra, condition=None):
    return Node(package='controller_manager', executable='spawner',
                arguments=[controller, '--controller-manager', '/controller_manager',
                           '--param-file', controllers_yaml, *extra],
                condition=condition, output='screen')


def generate_launch_description():
    share = get_package_share_directory('ir_guidance')
    config_yaml = os.path.join(share, 'config', 'ir_guidance.yaml')
    config = ir_config.load(config_yaml)
    rig_xacro = os.path.join(share, config['robot']['urdf_xacro'])
    gazebo_xacro = os.path.join(share, 'sim', 'gazebo', 'rig_gazebo.urdf.xacro')
    world = os.path.join(share, 'sim', 'gazebo', 'forearm_world.sdf')
    bridge_yaml = os.path.join(share, 'sim', 'gazebo', 'bridge.yaml')
    controllers_yaml = os.path.join(share, 'config', 'ros2_controllers.yaml')
    gz_sim_launch = os.path.join(get_package_share_directory('ros_gz_sim'), 'launch',
                                 'gz_sim.launch.py')

    robot_description = ParameterValue(
        Command(['xacro ', gazebo_xacro, ' rig_xacro:=', rig_xacro,
                 ' config_yaml:=', config_yaml, ' controllers_yaml:=', controllers_yaml]),
        value_type=str)
    command_interface = LaunchConfiguration('command_interface')

    stack = {'use_sim_time': True, 'lockstep': False}
    spawn_robot = Node(package='ros_gz_sim', executable='create', output='screen',
                       arguments=['-topic', 'robot_description', '-name', 'ir_guidance_rig'])
    joint_state_broadcaster = _spawner('joint_state_broadcaster', controllers_yaml)
    # Both controllers claim the same position interfaces: the one that arm_interface's
    # command_interface selects is activated, the other is loaded inactive (switchable with
    # `ros2 control switch_controllers`).
    controllers = []
    for interface, controller in CONTROLLERS.items():
        selected = EqualsSubstitution(command_interface, interface)
        controllers.append(_spawner(controller, controllers_yaml,
                                    condition=IfCondition(selected)))
        controllers.append(_spawner(controller, controllers_yaml, '--inactive',
                                    condition=UnlessCondition(selected)))

    return LaunchDescription([
        DeclareLaunchArgument('command_interface',
                              default_value=config['arm_interface']['command_interface'],
                              description='position (Float64MultiArray) or trajectory'),
        DeclareLaunchArgument('gz_args', default_value='-r -v 3',
                              description='gz sim options before the world file '
                                          '(-r: run at start, -s: server only)'),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(gz_sim_launch),
            launch_arguments={'gz_args': [LaunchConfiguration('gz_args'), ' ', world],
                              'on_exit_shutdown': 'true'}.items()),
        Node(package='robot_state_publisher', executable='robot_state_publisher',
             output='screen',
             parameters=[{'robot_description': robot_description, 'use_sim_time': True}]),
        spawn_robot,
        Node(package='ros_gz_bridge', executable='parameter_bridge', output='screen',
             parameters=[{'config_file': bridge_yaml, 'use_sim_time': True}]),
        # The controller manager lives in Gazebo (gz_ros2_control) and exists once the robot
        # is spawned; the controllers start after the joint state broadcaster.
        RegisterEventHandler(OnProcessExit(target_action=spawn_robot,
                                           on_exit=[joint_state_broadcaster])),
        RegisterEventHandler(OnProcessExit(target_action=joint_state_broadcaster,
                                           on_exit=controllers)),
        *(Node(package='ir_guidance', executable=name, name=name, parameters=[params],
               output='screen')
          for name, params in stack_parameters(config, stack, {
              # robot_state_publisher publishes every frame: a second broadcaster would clash
              'arm_interface': {'command_interface': command_interface, 'publish_tf': False},
              'ultrasound': {'source': 'topic'}, 'nir': {'source': 'topic'}})),
    ])
