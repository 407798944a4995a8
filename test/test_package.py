"""Packaging and launch files: what colcon and ros2 launch would see on a real install.

launch_ros and colcon are not installable here, so these check the files themselves:
package.xml is format 3 ament_python with an exec_depend per runtime import, every
node has a console script, and launch files start executables that exist with
parameters taken from config/.
"""

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ir_guidance import config
from ir_guidance.nodes import NODES

ROOT = Path(__file__).resolve().parent.parent
# Top-level modules imported by ir_guidance/ -> the rosdep key that provides them.
ROSDEP_KEY = {
    'rclpy': 'rclpy', 'std_msgs': 'std_msgs', 'sensor_msgs': 'sensor_msgs',
    'geometry_msgs': 'geometry_msgs', 'trajectory_msgs': 'trajectory_msgs',
    'std_srvs': 'std_srvs', 'visualization_msgs': 'visualization_msgs',
    'nav_msgs': 'nav_msgs', 'diagnostic_msgs': 'diagnostic_msgs',
    'rosgraph_msgs': 'rosgraph_msgs', 'tf2_ros': 'tf2_ros',
    'numpy': 'python3-numpy', 'scipy': 'python3-scipy', 'cv2': 'python3-opencv',
    'yaml': 'python3-yaml', 'transforms3d': 'python3-transforms3d',
    'pinocchio': 'pinocchio', 'ruckig': 'ruckig', 'torch': 'python3-torch',
    'mujoco': 'python3-mujoco', 'pyrealsense2': 'python3-pyrealsense2', 'xacro': 'xacro',
    'pyigtl': 'python3-pyigtl', 'matplotlib': 'python3-matplotlib',
    'mcap': 'python3-mcap', 'mcap_ros2': 'python3-mcap-ros2-support',
    'rosbags': 'python3-rosbags', 'foxglove': 'python3-foxglove-sdk',
    'ament_index_python': 'ament_index_python',
}
# Imported only by benchmarks (pip-only, in requirements.lock), not at run time.
BENCH_ONLY = {'pink'}


def _package_xml() -> ET.Element:
    return ET.parse(ROOT / 'package.xml').getroot()


def _imports(paths) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split('.')[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split('.')[0])
    return names


def test_package_xml_is_format_3_ament_python():
    root = _package_xml()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'ir_guidance'
    assert root.find('export/build_type').text == 'ament_python'


def test_every_runtime_import_has_an_exec_depend():
    declared = {e.text for e in _package_xml().iter('exec_depend')}
    stdlib = set(sys.stdlib_module_names)
    used = _imports((ROOT / 'ir_guidance').rglob('*.py')) - stdlib - {'ir_guidance'}
    missing = {m for m in used - BENCH_ONLY if ROSDEP_KEY.get(m, m) not in declared}
    assert not missing, f'imports without exec_depend: {sorted(missing)}'


def test_every_node_has_a_console_script_and_a_module():
    setup_py = (ROOT / 'setup.py').read_text(encoding='utf-8')
    for name, target in NODES.items():
        assert f"'{name} = {target}'" in setup_py, name
        module = target.split(':')[0].replace('.', '/') + '.py'
        assert (ROOT / module).is_file(), module
    assert "'ir-guidance = ir_guidance.cli:main'" in setup_py


def test_setup_installs_share_directories():
    setup_py = (ROOT / 'setup.py').read_text(encoding='utf-8')
    for top in ('launch', 'config', 'urdf', 'sim'):
        assert f"'{top}'" in setup_py
    assert (ROOT / 'resource' / 'ir_guidance').is_file()
    cfg = (ROOT / 'setup.cfg').read_text(encoding='utf-8')
    assert 'script_dir=$base/lib/ir_guidance' in cfg  # where `ros2 run` looks


@pytest.mark.parametrize('launch_file', sorted((ROOT / 'launch').glob('*.launch.py')),
                         ids=lambda p: p.name)
def test_launch_file_starts_known_executables_with_config(launch_file):
    source = launch_file.read_text(encoding='utf-8')
    tree = ast.parse(source)
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in functions
    executables = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'Node':
            kwargs = {k.arg: k.value for k in node.keywords}
            package = ast.literal_eval(kwargs['package'])
            if isinstance(kwargs['executable'], ast.Name):
                # the stack's nodes, one Node each from config.stack_parameters
                assert package == 'ir_guidance' and 'stack_parameters(' in source
                names = set(config.STACK_SECTIONS)
            else:
                names = {ast.literal_eval(kwargs['executable'])}
            if package == 'ir_guidance':
                assert names <= set(NODES), names
                assert 'parameters' in kwargs, f'{names} get no parameters'
            executables |= names
    assert executables, 'launch file starts no node'
    assert "'config', 'ir_guidance.yaml'" in source  # parameters come from config/


def test_config_topics_are_well_formed():
    for key, spec in config.load()['topics'].items():
        assert spec['name'].startswith('/'), key
        assert re.fullmatch(r'[a-z_]+/msg/[A-Za-z0-9]+', spec['type']), key
        assert spec['qos'] in ('sensor', 'reliable'), key
