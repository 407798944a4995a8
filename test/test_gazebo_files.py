"""The Gazebo backend's files, checked without Gazebo (which cannot run here).

Gazebo, ros_gz and gz_ros2_control are not installable in this environment, so these tests
check what can be checked from the files: the world parses and has the 1 kHz physics, the
systems and the phantom geometry it promises; the bridge maps Gazebo topics onto exactly the
contract topics and types of config/ir_guidance.yaml, and the Gazebo side of each entry is a
topic the world or a sensor publishes; the controllers command config's joints in config's
order on config's topics; the Gazebo xacro expands, carries the ros2_control block and the
sensors, and leaves the rig's kinematics untouched; the launch file wires these files.
"""

from __future__ import annotations

import ast
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pinocchio as pin
import pytest
import xacro
import yaml

from ir_guidance import config
from ir_guidance.rig_description import rig_urdf

ROOT = Path(__file__).resolve().parent.parent
GAZEBO = ROOT / 'sim' / 'gazebo'
WORLD = GAZEBO / 'forearm_world.sdf'
BRIDGE = GAZEBO / 'bridge.yaml'
RIG_GAZEBO = GAZEBO / 'rig_gazebo.urdf.xacro'
CONTROLLERS = ROOT / 'config' / 'ros2_controllers.yaml'
LAUNCH = ROOT / 'launch' / 'gazebo.launch.py'

# ros_gz_bridge's mapping table (ros_gz_bridge/README.md, Jazzy), for the types used here.
GZ_TYPE = {
    'rosgraph_msgs/msg/Clock': 'gz.msgs.Clock',
    'geometry_msgs/msg/Wrench': 'gz.msgs.Wrench',
    'geometry_msgs/msg/WrenchStamped': 'gz.msgs.Wrench',
    'sensor_msgs/msg/Image': 'gz.msgs.Image',
    'sensor_msgs/msg/CameraInfo': 'gz.msgs.CameraInfo',
    'sensor_msgs/msg/JointState': 'gz.msgs.Model',
    'sensor_msgs/msg/PointCloud2': 'gz.msgs.PointCloudPacked',
}
DIRECTIONS = {'GZ_TO_ROS', 'ROS_TO_GZ', 'BIDIRECTIONAL'}
# Contract topics the simulator must provide that Gazebo's own sensors can provide.
GAZEBO_PROVIDES = ('clock', 'ft_wrench', 'nir_image', 'nir_depth', 'nir_camera_info')
REQUIRED_SYSTEMS = {
    'gz::sim::systems::Physics': 'gz-sim-physics-system',
    'gz::sim::systems::UserCommands': 'gz-sim-user-commands-system',
    'gz::sim::systems::SceneBroadcaster': 'gz-sim-scene-broadcaster-system',
    'gz::sim::systems::Sensors': 'gz-sim-sensors-system',
    'gz::sim::systems::ForceTorque': 'gz-sim-forcetorque-system',
}

# The phantom as docs/gazebo.md and the brief state it.
SKIN_RADIUS = 0.04
SKIN_LENGTH = 0.30
SKIN_TOP_Z = 0.27
SKIN_CENTRE_XY = (0.43, 0.13)

# The F/T sensor's joint: the last arm joint (rig_gazebo.urdf.xacro says why not the fixed
# tool0-ft_sensor_link joint).
FT_JOINT = config.load()['robot']['arm_joints'][-1]


# -- helpers -------------------------------------------------------------------------------

def _pose(elem: ET.Element | None) -> np.ndarray:
    """4x4 transform of an SDF element's <pose> child (x y z roll pitch yaw; identity if none)."""
    text = elem.findtext('pose') if elem is not None else None
    values = [float(v) for v in text.split()] if text else [0.0] * 6
    x, y, z, roll, pitch, yaw = values
    transform = np.eye(4)
    transform[:3, :3] = pin.rpy.rpyToMatrix(roll, pitch, yaw)
    transform[:3, 3] = (x, y, z)
    return transform


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split()]


@pytest.fixture(scope='module')
def world() -> ET.Element:
    root = ET.parse(WORLD).getroot()
    assert root.tag == 'sdf'
    worlds = root.findall('world')
    assert len(worlds) == 1
    return worlds[0]


@pytest.fixture(scope='module')
def bridge() -> list[dict]:
    entries = yaml.safe_load(BRIDGE.read_text(encoding='utf-8'))
    assert isinstance(entries, list) and entries
    return entries


@pytest.fixture(scope='module')
def controllers() -> dict:
    return yaml.safe_load(CONTROLLERS.read_text(encoding='utf-8'))


@pytest.fixture(scope='module')
def gazebo_urdf() -> str:
    """rig_gazebo.urdf.xacro expanded with the source tree's files in place of $(find ...)."""
    mappings = {
        'rig_xacro': str(ROOT / config.load()['robot']['urdf_xacro']),
        'config_yaml': str(ROOT / 'config' / 'ir_guidance.yaml'),
        'controllers_yaml': str(CONTROLLERS),
    }
    return xacro.process_file(str(RIG_GAZEBO), mappings=mappings).toprettyxml(indent='  ')


@pytest.fixture(scope='module')
def gazebo_robot(gazebo_urdf) -> ET.Element:
    return ET.fromstring(gazebo_urdf)


def _gazebo_sensor(robot: ET.Element, reference: str, sensor_type: str) -> ET.Element:
    sensors = [s for g in robot.findall('gazebo') if g.get('reference') == reference
               for s in g.findall('sensor') if s.get('type') == sensor_type]
    assert len(sensors) == 1, f'one {sensor_type} sensor on {reference}'
    return sensors[0]


def _urdf_joint(robot: ET.Element, name: str) -> ET.Element:
    joints = [j for j in robot.findall('joint') if j.get('name') == name]
    assert len(joints) == 1, name
    return joints[0]


# -- world ---------------------------------------------------------------------------------

def test_world_is_sdf_1_9_or_later():
    version = ET.parse(WORLD).getroot().get('version')
    assert tuple(int(p) for p in version.split('.')) >= (1, 9)


def test_world_steps_physics_at_1_khz(world, controllers):
    physics = world.findall('physics')
    assert len(physics) == 1
    step = float(physics[0].findtext('max_step_size'))
    assert step == pytest.approx(0.001)
    # One controller_manager update per physics step.
    rate = controllers['controller_manager']['ros__parameters']['update_rate']
    assert rate == pytest.approx(1.0 / step)


def test_world_loads_the_required_systems(world):
    plugins = {p.get('name'): p for p in world.findall('plugin')}
    for name, filename in REQUIRED_SYSTEMS.items():
        assert name in plugins, f'missing system {name}'
        assert plugins[name].get('filename') == filename
    assert plugins['gz::sim::systems::Sensors'].findtext('render_engine') == 'ogre2'
    assert 'gz::sim::systems::Imu' not in plugins


def test_world_has_light_table_and_no_robot(world):
    assert world.findall('light'), 'no light'
    models = {m.get('name') for m in world.findall('model')}
    assert {'table', 'forearm_phantom'} <= models
    # The robot is spawned from robot_description by the launch file, not part of the world.
    assert not any('rig' in name or 'ur5e' in name for name in models)


def _phantom_links(world: ET.Element) -> tuple[np.ndarray, dict[str, ET.Element]]:
    model = next(m for m in world.findall('model') if m.get('name') == 'forearm_phantom')
    assert model.findtext('static') == 'true'
    return _pose(model), {link.get('name'): link for link in model.findall('link')}


def _cylinder_in_world(model_pose: np.ndarray, link: ET.Element, element: ET.Element):
    """World transform, radius and length of a cylinder geometry element."""
    cylinder = element.find('geometry/cylinder')
    assert cylinder is not None, f'{link.get("name")}: not a cylinder'
    transform = model_pose @ _pose(link) @ _pose(element)
    return transform, float(cylinder.findtext('radius')), float(cylinder.findtext('length'))


def test_phantom_skin_is_the_stated_cylinder(world):
    model_pose, links = _phantom_links(world)
    skin = links['skin']
    for element in (skin.find('collision'), skin.find('visual')):
        transform, radius, length = _cylinder_in_world(model_pose, skin, element)
        assert radius == pytest.approx(SKIN_RADIUS)
        assert length == pytest.approx(SKIN_LENGTH)
        axis = transform[:3, 2]  # a cylinder's axis is its local z
        assert abs(axis[1]) == pytest.approx(1.0, abs=1e-9), 'axis not along world y'
        centre = transform[:3, 3]
        assert centre[:2] == pytest.approx(SKIN_CENTRE_XY)
        assert centre[2] + radius == pytest.approx(SKIN_TOP_Z)


def test_phantom_veins_are_dark_visual_only_cylinders_under_the_skin(world):
    model_pose, links = _phantom_links(world)
    skin_tf, skin_r, skin_len = _cylinder_in_world(model_pose, links['skin'],
                                                   links['skin'].find('visual'))
    skin_colour = _floats(links['skin'].findtext('visual/material/diffuse'))
    veins = {name: link for name, link in links.items() if name.startswith('vein')}
    assert 1 <= len(veins) <= 2
    for name, link in veins.items():
        assert link.find('collision') is None, f'{name} must be visual only'
        visuals = link.findall('visual')
        assert len(visuals) == 1
        transform, radius, length = _cylinder_in_world(model_pose, link, visuals[0])
        assert abs(transform[:3, 2][1]) == pytest.approx(1.0, abs=1e-9), name
        assert length < skin_len
        assert abs(transform[1, 3] - skin_tf[1, 3]) + length / 2 <= skin_len / 2
        # Cross-section in the x-z plane: the vein lies inside the skin cylinder, its top
        # within a few millimetres of the skin surface directly above it.
        dx, dz = transform[0, 3] - skin_tf[0, 3], transform[2, 3] - skin_tf[2, 3]
        assert math.hypot(dx, dz) + radius < skin_r, f'{name} breaks the skin'
        surface_z = skin_tf[2, 3] + math.sqrt(skin_r ** 2 - dx ** 2)
        depth_of_top = surface_z - (transform[2, 3] + radius)
        assert 0.0005 < depth_of_top < 0.004, f'{name}: top {depth_of_top:.4f} m deep'
        assert 0.001 <= radius <= 0.003, f'{name}: radius {radius}'
        colour = _floats(visuals[0].findtext('material/diffuse'))
        assert sum(colour[:3]) < 0.5 * sum(skin_colour[:3]), f'{name} is not darker'


def test_arm_rest_supports_the_forearm(world):
    model = next(m for m in world.findall('model') if m.get('name') == 'arm_rest')
    link = model.find('link')
    size = _floats(link.findtext('collision/geometry/box/size'))
    top = (_pose(model) @ _pose(link))[2, 3] + size[2] / 2
    assert top == pytest.approx(SKIN_TOP_Z - 2 * SKIN_RADIUS)


# -- bridge --------------------------------------------------------------------------------

def _topics_by_name() -> dict[str, tuple[str, dict]]:
    return {spec['name']: (key, spec) for key, spec in config.load()['topics'].items()}


def test_bridge_entries_are_contract_topics_with_their_types(bridge):
    by_name = _topics_by_name()
    keys = {'ros_topic_name', 'gz_topic_name', 'ros_type_name', 'gz_type_name', 'direction'}
    for entry in bridge:
        assert set(entry) == keys, entry
        name = entry['ros_topic_name']
        assert name in by_name, f'{name} is not a topic of config/ir_guidance.yaml'
        assert entry['ros_type_name'] == by_name[name][1]['type'], name
        assert entry['gz_type_name'] == GZ_TYPE[entry['ros_type_name']], name
        assert entry['direction'] in DIRECTIONS, name
    ros_names = [entry['ros_topic_name'] for entry in bridge]
    assert len(ros_names) == len(set(ros_names)), 'a ROS topic is bridged twice'


def test_bridge_provides_every_topic_gazebo_can(bridge):
    bridged = {entry['ros_topic_name']: entry for entry in bridge}
    for key in GAZEBO_PROVIDES:
        name = config.topic(key)['name']
        assert name in bridged, f'{key} ({name}) is not bridged'
        # Simulator outputs flow one way: nothing on ROS may feed Gazebo's sensor topics.
        assert bridged[name]['direction'] == 'GZ_TO_ROS', key


def test_bridge_leaves_joint_states_to_ros2_control_and_us_to_ir_guidance(bridge):
    bridged = {entry['ros_topic_name'] for entry in bridge}
    for key in ('joint_states', 'us_image', 'position_commands', 'trajectory_commands'):
        assert config.topic(key)['name'] not in bridged, key


def test_bridge_gazebo_topics_are_published_by_the_world_and_sensors(bridge, world,
                                                                     gazebo_robot):
    gz_topics = {entry['ros_topic_name']: entry['gz_topic_name'] for entry in bridge}
    assert gz_topics[config.topic('clock')['name']] == f'/world/{world.get("name")}/clock'
    ft = _gazebo_sensor(gazebo_robot, FT_JOINT, 'force_torque')
    assert gz_topics[config.topic('ft_wrench')['name']] == ft.findtext('topic')
    # gz-sensors' rgbd_camera publishes <topic>/image, /depth_image and /camera_info.
    camera = _gazebo_sensor(gazebo_robot, 'nir_camera_link', 'rgbd_camera').findtext('topic')
    assert gz_topics[config.topic('nir_image')['name']] == f'{camera}/image'
    assert gz_topics[config.topic('nir_depth')['name']] == f'{camera}/depth_image'
    assert gz_topics[config.topic('nir_camera_info')['name']] == f'{camera}/camera_info'


# -- controllers ---------------------------------------------------------------------------

def test_controllers_are_declared_with_their_types(controllers):
    manager = controllers['controller_manager']['ros__parameters']
    assert manager['update_rate'] == 1000
    assert manager['joint_state_broadcaster']['type'] == \
        'joint_state_broadcaster/JointStateBroadcaster'
    assert manager['forward_position_controller']['type'] == \
        'position_controllers/JointGroupPositionController'
    assert manager['joint_trajectory_controller']['type'] == \
        'joint_trajectory_controller/JointTrajectoryController'


def test_controllers_command_config_joints_in_config_order(controllers):
    joints = config.joint_names()
    assert controllers['forward_position_controller']['ros__parameters']['joints'] == joints
    trajectory = controllers['joint_trajectory_controller']['ros__parameters']
    assert trajectory['joints'] == joints
    assert trajectory['command_interfaces'] == ['position']
    assert {'position', 'velocity'} <= set(trajectory['state_interfaces'])


def test_controller_topics_are_the_config_command_topics(controllers):
    # JointGroupPositionController subscribes ~/commands, JointTrajectoryController
    # ~/joint_trajectory: the node (controller) name is the namespace.
    assert 'forward_position_controller' in controllers
    assert 'joint_trajectory_controller' in controllers
    assert config.topic('position_commands')['name'] == \
        '/forward_position_controller/commands'
    assert config.topic('position_commands')['type'] == 'std_msgs/msg/Float64MultiArray'
    assert config.topic('trajectory_commands')['name'] == \
        '/joint_trajectory_controller/joint_trajectory'
    assert config.topic('trajectory_commands')['type'] == \
        'trajectory_msgs/msg/JointTrajectory'


# -- Gazebo robot description --------------------------------------------------------------

def test_xacro_defaults_resolve_through_the_ament_index():
    root = ET.parse(RIG_GAZEBO).getroot()
    args = {a.get('name'): a.get('default') for a in root
            if a.tag == '{http://www.ros.org/wiki/xacro}arg'}
    assert args == {
        'rig_xacro': '$(find ir_guidance)/urdf/rig.urdf.xacro',
        'config_yaml': '$(find ir_guidance)/config/ir_guidance.yaml',
        'controllers_yaml': '$(find ir_guidance)/config/ros2_controllers.yaml',
    }


def test_ros2_control_block_drives_config_joints_with_position(gazebo_robot):
    blocks = gazebo_robot.findall('ros2_control')
    assert len(blocks) == 1
    block = blocks[0]
    assert block.get('type') == 'system'
    assert block.findtext('hardware/plugin') == 'gz_ros2_control/GazeboSimSystem'
    joints = block.findall('joint')
    assert [j.get('name') for j in joints] == config.joint_names()
    home = config.load()['robot']['home']
    for joint, start in zip(joints, home, strict=True):
        name = joint.get('name')
        assert [c.get('name') for c in joint.findall('command_interface')] == ['position']
        states = {s.get('name'): s for s in joint.findall('state_interface')}
        assert set(states) == {'position', 'velocity'}, name
        initial = states['position'].find("param[@name='initial_value']")
        assert float(initial.text) == pytest.approx(start), name
        _urdf_joint(gazebo_robot, name)  # the joint exists in the description


def test_gz_ros2_control_plugin_loads_the_controllers_yaml(gazebo_robot):
    plugins = [p for g in gazebo_robot.findall('gazebo') for p in g.findall('plugin')]
    assert len(plugins) == 1
    plugin = plugins[0]
    assert plugin.get('filename') == 'gz_ros2_control-system'
    assert plugin.get('name') == 'gz_ros2_control::GazeboSimROS2ControlPlugin'
    assert plugin.findtext('parameters') == str(CONTROLLERS)


def _lumped_fixed_joints(robot: ET.Element) -> set[str]:
    """Fixed joints that sdformat's URDF parser lumps (not preserved, not made revolute)."""
    kept = {g.get('reference') for g in robot.findall('gazebo')
            if g.findtext('preserveFixedJoint') == 'true'
            or g.findtext('disableFixedJointLumping') == 'true'}
    return {j.get('name') for j in robot.findall('joint')
            if j.get('type') == 'fixed' and j.get('name') not in kept}


def _links_sdformat_drops(robot: ET.Element) -> set[str]:
    """Links with mass that sdformat's URDF-to-SDF conversion leaves out of the model.

    sdformat lumps every link on a lumped fixed joint into its parent, adding its mass to
    the parent's; it then walks the tree from the root and stops at any link (but "world")
    that still has no mass, dropping it and every link below it (parser_urdf.cc, CreateSDF:
    "has no inertia, children links ignored"; seen with libsdformat 12, the same code in
    Harmonic's sdformat 14). A massless frame is harmless where lumping gives it the mass
    of what hangs below it, and fatal above a preserved fixed joint.
    """
    lumped = _lumped_fixed_joints(robot)
    mass = {link.get('name'): float(link.find('inertial/mass').get('value'))
            if link.find('inertial/mass') is not None else 0.0
            for link in robot.findall('link')}
    children: dict[str, list[tuple[str, str]]] = {name: [] for name in mass}
    has_parent = set()
    for joint in robot.findall('joint'):
        parent, child = joint.find('parent').get('link'), joint.find('child').get('link')
        children[parent].append((joint.get('name'), child))
        has_parent.add(child)

    def lumped_mass(link: str) -> float:
        return mass[link] + sum(lumped_mass(child) for joint, child in children[link]
                                if joint in lumped)

    dropped = set()

    def below(link: str) -> set[str]:
        return {link}.union(*(below(child) for _, child in children[link]))

    def walk(link: str) -> None:
        if link != 'world' and lumped_mass(link) == 0.0:
            dropped.update(below(link))
            return
        for _, child in children[link]:
            walk(child)

    for root in set(mass) - has_parent:
        walk(root)
    return {link for link in dropped if mass[link] > 0.0}


def test_sdformat_keeps_every_body_of_the_gazebo_description(gazebo_robot):
    assert not _links_sdformat_drops(gazebo_robot)
    # A sensor on a fixed joint is lost with the joint unless the joint is preserved.
    assert FT_JOINT not in _lumped_fixed_joints(gazebo_robot)


def test_lumping_model_flags_a_preserved_joint_below_massless_frames(gazebo_robot):
    # What preserveFixedJoint on tool0-ft_sensor_link would do: flange and tool0 keep no
    # mass, and the end effector (needle stage included) disappears from the SDF model.
    preserved = ET.fromstring(ET.tostring(gazebo_robot))
    extension = ET.SubElement(preserved, 'gazebo', reference='tool0-ft_sensor_link')
    ET.SubElement(extension, 'preserveFixedJoint').text = 'true'
    assert {'ft_sensor_link', 'tool_plate', 'needle_carriage'} <= \
        _links_sdformat_drops(preserved)


def test_ft_sensor_measures_at_ft_sensor_frame(gazebo_robot, gazebo_urdf):
    joint = _urdf_joint(gazebo_robot, FT_JOINT)
    assert joint.get('type') != 'fixed'
    host = joint.find('child').get('link')
    frames = config.load()['frames']
    # Everything from the joint's child link out to ft_sensor_frame lumps into one body,
    # so the joint carries the whole sensor load.
    lumped = _lumped_fixed_joints(gazebo_robot)
    link = frames['ft_sensor']
    while link != host:
        parent_joint = next(j for j in gazebo_robot.findall('joint')
                            if j.find('child').get('link') == link)
        assert parent_joint.get('name') in lumped, parent_joint.get('name')
        link = parent_joint.find('parent').get('link')
    sensor = _gazebo_sensor(gazebo_robot, FT_JOINT, 'force_torque')
    assert sensor.findtext('gz_frame_id') == frames['ft_sensor']
    assert sensor.findtext('force_torque/frame') == 'sensor'
    assert sensor.findtext('force_torque/measure_direction') == 'child_to_parent'
    assert float(sensor.findtext('update_rate')) >= 500.0  # force events are fast
    # The sensor pose is relative to the joint frame, which is the child link's frame:
    # it must be ft_sensor_frame's pose in that link.
    model = pin.buildModelFromXML(gazebo_urdf)
    data = model.createData()
    pin.framesForwardKinematics(model, data, np.array(config.load()['robot']['home']))
    expected = (data.oMf[model.getFrameId(host)].inverse()
                * data.oMf[model.getFrameId(frames['ft_sensor'])]).homogeneous
    assert _pose(sensor) == pytest.approx(expected, abs=1e-9)


def test_nir_camera_is_an_rgbd_camera_in_the_optical_frame(gazebo_robot):
    sensor = _gazebo_sensor(gazebo_robot, 'nir_camera_link', 'rgbd_camera')
    optical = config.load()['frames']['camera_optical']
    assert sensor.findtext('gz_frame_id') == optical
    # The optical frame shares nir_camera_link's origin and is the REP-103 optical rotation
    # of it, so gz's image axes (looking along the link's +x) are the optical frame's.
    joint = next(j for j in gazebo_robot.findall('joint')
                 if j.find('child').get('link') == optical)
    assert joint.find('parent').get('link') == 'nir_camera_link'
    assert _floats(joint.find('origin').get('xyz')) == pytest.approx([0, 0, 0])
    rotation = pin.rpy.rpyToMatrix(*_floats(joint.find('origin').get('rpy')))
    # optical z (forward) = link x, optical x (right) = link -y, optical y (down) = link -z
    assert rotation == pytest.approx(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]]),
                                     abs=1e-9)
    camera = sensor.find('camera')
    assert int(camera.findtext('image/width')) > 0
    assert int(camera.findtext('image/height')) > 0
    assert 0 < float(camera.findtext('horizontal_fov')) < math.pi
    assert float(camera.findtext('depth_camera/clip/near')) < 0.09  # probe-on-skin range


def test_no_ultrasound_sensor_in_gazebo(gazebo_robot):
    # Gazebo cannot make a B-mode image; no camera may pretend to on us_probe_link.
    for extension in gazebo_robot.findall('gazebo'):
        assert extension.get('reference') not in ('us_probe_link',
                                                  config.load()['frames']['us_image'])


def test_gazebo_description_keeps_the_rig_kinematics(gazebo_urdf):
    gazebo_model = pin.buildModelFromXML(gazebo_urdf)
    rig_model = pin.buildModelFromXML(rig_urdf())
    names = [gazebo_model.names[i] for i in range(1, gazebo_model.njoints)]
    assert names == config.joint_names()
    assert gazebo_model.nq == rig_model.nq == len(config.joint_names())
    frames = config.load()['frames']
    q = np.array(config.load()['robot']['home'])
    poses = []
    for model in (gazebo_model, rig_model):
        data = model.createData()
        pin.framesForwardKinematics(model, data, q)
        poses.append({f: data.oMf[model.getFrameId(f)].homogeneous for f in frames.values()})
    for frame in frames.values():
        assert poses[0][frame] == pytest.approx(poses[1][frame], abs=1e-12), frame


# -- launch file ---------------------------------------------------------------------------

def _string_constants(tree: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _share_paths(tree: ast.AST) -> list[Path]:
    """Source-tree paths of every os.path.join(share, 'a', 'b', ...) in the launch file."""
    paths = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == 'join' and node.args
                and isinstance(node.args[0], ast.Name) and node.args[0].id == 'share'
                and len(node.args) > 1
                and all(isinstance(a, ast.Constant) for a in node.args[1:])):
            paths.append(ROOT.joinpath(*(a.value for a in node.args[1:])))
    return paths


def test_launch_file_wires_the_gazebo_files():
    tree = ast.parse(LAUNCH.read_text(encoding='utf-8'))
    strings = _string_constants(tree)
    for name in ('forearm_world.sdf', 'bridge.yaml', 'ros2_controllers.yaml',
                 'rig_gazebo.urdf.xacro', 'gz_sim.launch.py'):
        assert name in strings, name
    share_paths = _share_paths(tree)
    for path in (WORLD, BRIDGE, CONTROLLERS, RIG_GAZEBO, ROOT / 'config' / 'ir_guidance.yaml'):
        assert path in share_paths, f'{path.relative_to(ROOT)} not joined under share'
    for path in share_paths:
        assert path.is_file(), f'launch file refers to missing {path.relative_to(ROOT)}'
    # The xacro arguments the launch passes are the ones the xacro declares.
    for arg in ('rig_xacro:=', 'config_yaml:=', 'controllers_yaml:='):
        assert any(arg in s for s in strings), arg


def _names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def test_launch_file_starts_the_gazebo_stack():
    tree = ast.parse(LAUNCH.read_text(encoding='utf-8'))
    started = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'Node':
            kwargs = {k.arg: k.value for k in node.keywords}
            package = ast.literal_eval(kwargs['package'])
            if isinstance(kwargs['executable'], ast.Name):  # one Node per stack node
                assert package == 'ir_guidance' and 'stack_parameters' in _names(tree)
                started.update((package, name) for name in config.STACK_SECTIONS)
            else:
                started.add((package, ast.literal_eval(kwargs['executable'])))
    assert started == {
        ('robot_state_publisher', 'robot_state_publisher'),
        ('ros_gz_sim', 'create'),
        ('ros_gz_bridge', 'parameter_bridge'),
        ('controller_manager', 'spawner'),
        ('ir_guidance', 'arm_interface'), ('ir_guidance', 'ultrasound'),
        ('ir_guidance', 'nir'), ('ir_guidance', 'vessel_mapper'),
        ('ir_guidance', 'trajectory_planner'), ('ir_guidance', 'force_monitor'),
        ('ir_guidance', 'controller'),
    }
    strings = _string_constants(tree)
    for controller in ('joint_state_broadcaster', 'forward_position_controller',
                       'joint_trajectory_controller'):
        assert controller in strings, controller
    assert {'-topic', 'robot_description', 'config_file', 'use_sim_time',
            'publish_tf'} <= strings
