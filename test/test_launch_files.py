"""Launch files: which nodes each one starts, with which parameters, for which arguments.

launch and launch_ros are not installable here, so the files are run against small
stand-ins for the launch API (recording classes in ``sys.modules``) and the recorded
actions are evaluated the way ``ros2 launch`` would: launch arguments from their
defaults or the test's overrides (``choices`` enforced), ``IfCondition`` /
``UnlessCondition``, ``LaunchConfiguration``, ``EqualsSubstitution``,
``NotSubstitution``, ``PythonExpression``, and parameter values typed like launch_ros
(``ParameterValue(value_type=...)``; bare substitutions YAML-parsed). Only the names the
stand-ins define can be imported: a launch file using anything else fails here first.
test_package.py checks the files' shape generically; this file checks what they start.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from ir_guidance import config
from ir_guidance.nodes import NODES

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / 'launch'
# Launch files of the stack (arm_interface.launch.py predates them and reads YAML itself).
STACK_FILES = ('rig.launch.py', 'sim.launch.py', 'gazebo.launch.py', 'bench.launch.py')
# Node executable -> its section of config/ir_guidance.yaml.
SECTIONS = {'sim': 'sim', 'arm_interface': 'arm_interface', 'ultrasound': 'ultrasound',
            'nir': 'nir', 'vessel_mapper': 'vessel_mapper', 'trajectory_planner': 'planner',
            'force_monitor': 'force_monitor', 'controller': 'controller'}
# Executables of other packages a launch file may start.
EXTERNAL = {('robot_state_publisher', 'robot_state_publisher'), ('ros_gz_sim', 'create'),
            ('ros_gz_bridge', 'parameter_bridge'), ('controller_manager', 'spawner')}
# Packages whose share directory a launch file may look up eagerly (at generate time).
EAGER_SHARES = {'ros_gz_sim'}
# The guidance stack; recorder and live_view are tools a user adds (ir-guidance sim
# --record/--live, ros2 bag record, Foxglove), not part of what the launch files start.
TOOLS = {'recorder', 'live_view'}
STACK = set(NODES) - {'sim'} - TOOLS
# Parameters a launch file sets itself (launch arguments or per-launch choices).
OVERRIDES = {'source', 'mode', 'phantom', 'seed', 'command_interface', 'publish_tf'}

STUBS = {
    'launch': ['LaunchDescription'],
    'launch.actions': ['DeclareLaunchArgument', 'IncludeLaunchDescription',
                       'RegisterEventHandler', 'GroupAction', 'LogInfo'],
    'launch.conditions': ['IfCondition', 'UnlessCondition'],
    'launch.event_handlers': ['OnProcessExit', 'OnProcessStart'],
    'launch.launch_description_sources': ['PythonLaunchDescriptionSource',
                                          'AnyLaunchDescriptionSource'],
    'launch.substitutions': ['Command', 'EqualsSubstitution', 'LaunchConfiguration',
                             'NotSubstitution', 'PathJoinSubstitution', 'PythonExpression',
                             'TextSubstitution', 'FindExecutable'],
    'launch_ros.actions': ['Node'],
    'launch_ros.parameter_descriptions': ['ParameterValue'],
    'launch_ros.substitutions': ['FindPackageShare'],
}


class Recorded:
    """Stand-in for a launch class: keeps its arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs


def _stub_modules() -> dict[str, types.ModuleType]:
    modules = {}
    for name in ('launch', 'launch_ros'):
        modules[name] = types.ModuleType(name)
        modules[name].__path__ = []
    for name, classes in STUBS.items():
        module = modules.setdefault(name, types.ModuleType(name))
        for cls in classes:
            setattr(module, cls, type(cls, (Recorded,), {}))
    return modules


def _share(tmp_share: Path | None):
    def get_package_share_directory(package: str) -> str:
        if package == 'ir_guidance':
            return str(tmp_share or ROOT)
        if package in EAGER_SHARES:
            return f'/opt/ros/jazzy/share/{package}'
        raise LookupError(f'package {package!r} looked up at generate time')
    return get_package_share_directory


def load_description(name: str, monkeypatch: pytest.MonkeyPatch,
                     share: Path | None = None) -> list[Recorded]:
    """Run ``generate_launch_description()`` of ``launch/<name>``; its entities."""
    for module_name, module in _stub_modules().items():
        monkeypatch.setitem(sys.modules, module_name, module)
    import ament_index_python.packages as packages

    monkeypatch.setattr(packages, 'get_package_share_directory', _share(share))
    spec = importlib.util.spec_from_file_location(f'launch_file_{name.split(".")[0]}',
                                                  LAUNCH / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert type(description).__name__ == 'LaunchDescription'
    return list(description.args[0])


# -- evaluating what ros2 launch would do ---------------------------------------------------

class Launch:
    """The nodes and includes that a description starts for given launch arguments."""

    def __init__(self, entities: list[Recorded], arguments: dict[str, str] | None = None,
                 share: Path | None = None) -> None:
        self.share = share
        self.context: dict[str, str] = {}
        self.nodes: list[dict[str, Any]] = []
        self.includes: list[dict[str, Any]] = []
        given = dict(arguments or {})
        for entity in entities:
            if type(entity).__name__ == 'DeclareLaunchArgument':
                name = entity.args[0]
                if name in given:
                    value = given.pop(name)
                elif 'default_value' in entity.kwargs:
                    value = self.text(entity.kwargs['default_value'])
                else:
                    raise KeyError(f'launch argument {name!r} is required')
                choices = entity.kwargs.get('choices')
                if choices is not None and value not in choices:
                    raise ValueError(f'{name}:={value} not in {choices}')
                self.context[name] = value
        assert not given, f'arguments the file does not declare: {sorted(given)}'
        self._visit(entities)

    def _visit(self, entities: list[Recorded]) -> None:
        for entity in entities:
            kind = type(entity).__name__
            condition = entity.kwargs.get('condition')
            if condition is not None and not self.condition(condition):
                continue
            if kind == 'Node':
                self.nodes.append(self._node(entity))
            elif kind == 'IncludeLaunchDescription':
                source = entity.args[0]
                self.includes.append({
                    'path': self.text(source.args[0]),
                    'arguments': {k: self.text(v)
                                  for k, v in entity.kwargs.get('launch_arguments', ())}})
            elif kind == 'RegisterEventHandler':
                handler = entity.args[0]
                on_exit = handler.kwargs.get('on_exit', [])
                self._visit(on_exit if isinstance(on_exit, list) else [on_exit])
            elif kind == 'GroupAction':
                self._visit(list(entity.args[0]))

    def _node(self, entity: Recorded) -> dict[str, Any]:
        kwargs = entity.kwargs
        params: dict[str, Any] = {}
        for item in kwargs.get('parameters', []):
            assert isinstance(item, dict), f'parameter files are not evaluated: {item!r}'
            for key, value in item.items():
                params[key] = self.parameter(value)
        return {'package': kwargs['package'], 'executable': kwargs['executable'],
                'params': params,
                'arguments': [self.text(a) for a in kwargs.get('arguments', [])]}

    def text(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)):
            return ''.join(self.text(v) for v in value)
        kind = type(value).__name__
        args = value.args
        if kind == 'LaunchConfiguration':
            return self.context[args[0]]
        if kind == 'TextSubstitution':
            return value.kwargs['text']
        if kind == 'EqualsSubstitution':
            return str(self.text(args[0]) == self.text(args[1])).lower()
        if kind == 'NotSubstitution':
            return str(not self.truth(self.text(args[0]))).lower()
        if kind == 'PythonExpression':
            return str(eval(self.text(args[0]), {}))  # as launch's PythonExpression does
        if kind == 'PathJoinSubstitution':
            return os.path.join(*(self.text(p) for p in args[0]))
        if kind == 'FindPackageShare':
            return f'/opt/ros/jazzy/share/{self.text(args[0])}'
        if kind in ('Command', 'FindExecutable'):
            return '<command output>'
        raise TypeError(f'cannot evaluate {kind}')

    @staticmethod
    def truth(text: str) -> bool:
        if text.lower() in ('true', '1'):
            return True
        if text.lower() in ('false', '0'):
            return False
        raise ValueError(f'{text!r} is not a boolean condition')

    def condition(self, condition: Recorded) -> bool:
        value = self.truth(self.text(condition.args[0]))
        return value if type(condition).__name__ == 'IfCondition' else not value

    def parameter(self, value: Any) -> Any:
        if type(value).__name__ == 'ParameterValue':
            text = self.text(value.args[0])
            value_type = value.kwargs.get('value_type')
            if value_type is str:
                return text
            result = yaml.safe_load(text)
            assert isinstance(result, value_type), f'{text!r} is not a {value_type}'
            return result
        if isinstance(value, Recorded) or (isinstance(value, list) and value and
                                           isinstance(value[0], Recorded)):
            return yaml.safe_load(self.text(value))
        return value

    def started(self, package: str = 'ir_guidance') -> dict[str, dict[str, Any]]:
        """Executable -> parameters of the nodes of ``package`` (each started once)."""
        nodes = [n for n in self.nodes if n['package'] == package]
        names = [n['executable'] for n in nodes]
        assert len(names) == len(set(names)), f'a node started twice: {names}'
        return {n['executable']: n['params'] for n in nodes}


def flat_section(section: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in section.items():
        if isinstance(value, dict):
            out.update({f'{key}.{k}': v for k, v in flat_section(value).items()})
        else:
            out[key] = value
    return out


def assert_params_from_config(executable: str, params: dict[str, Any],
                              cfg: dict[str, Any] | None = None) -> None:
    expected = flat_section((cfg or config.load())[SECTIONS[executable]])
    for key, value in expected.items():
        assert key in params, f'{executable}: parameter {key} not passed'
        if key not in OVERRIDES:
            assert params[key] == value, f'{executable}.{key}: {params[key]!r} != {value!r}'


def _launch(name: str, monkeypatch: pytest.MonkeyPatch, share: Path | None = None,
            **arguments: str) -> Launch:
    return Launch(load_description(name, monkeypatch, share), arguments, share)


# -- every launch file ----------------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(p.name for p in LAUNCH.glob('*.launch.py')))
def test_every_executable_started_is_a_known_node(name, monkeypatch):
    entities = load_description(name, monkeypatch)
    declared = []

    def walk(items):
        for entity in items:
            kind = type(entity).__name__
            if kind == 'Node':
                declared.append((entity.kwargs['package'], entity.kwargs['executable']))
            elif kind == 'RegisterEventHandler':
                on_exit = entity.args[0].kwargs.get('on_exit', [])
                walk(on_exit if isinstance(on_exit, list) else [on_exit])
    walk(entities)
    assert declared, f'{name} starts no node'
    for package, executable in declared:
        if package == 'ir_guidance':
            assert executable in NODES, executable
        else:
            assert (package, executable) in EXTERNAL, (package, executable)


def _topic_literals(tree: ast.AST) -> list[str]:
    names = [spec['name'] for spec in config.load()['topics'].values()]
    namespaces = {'/' + n.split('/')[1] + '/' for n in names if n.count('/') > 1}
    roots = {n for n in names if n.count('/') == 1}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            # A value naming a topic (prose in docstrings and descriptions may mention them).
            if text.strip() in roots or any(text.strip().startswith(ns) for ns in namespaces):
                found.append(text)
    return found


@pytest.mark.parametrize('name', sorted(p.name for p in LAUNCH.glob('*.launch.py')))
def test_no_topic_name_is_hard_coded(name):
    tree = ast.parse((LAUNCH / name).read_text(encoding='utf-8'))
    assert not _topic_literals(tree), f'topic names belong in config/: {_topic_literals(tree)}'


def test_topic_literal_check_can_fail():
    tree = ast.parse("remap = [('/us/vessels', 'x'), ('/joint_states', 'y'), "
                     "('/force_monitor/events', 'z')]\ndoc = 'follow /clock'")
    assert _topic_literals(tree) == ['/us/vessels', '/joint_states', '/force_monitor/events']


@pytest.mark.parametrize('name', STACK_FILES)
def test_stack_launch_files_read_the_config_through_ir_guidance_config(name):
    tree = ast.parse((LAUNCH / name).read_text(encoding='utf-8'))
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               for a in n.names}
    assert ('ir_guidance', 'config') in imports
    assert 'yaml' not in {a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                          for a in n.names}


@pytest.fixture
def edited_share(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A share directory whose config differs from the packaged one in every section."""
    cfg = yaml.safe_load((ROOT / 'config' / 'ir_guidance.yaml').read_text(encoding='utf-8'))
    cfg['controller']['rate_hz'] = 250.0
    cfg['force_monitor']['filter_cutoff_hz'] = 12.5
    cfg['planner']['insertion_speed_m_s'] = 0.001
    cfg['vessel_mapper']['max_stamp_gap_s'] = 0.07
    cfg['ultrasound']['device']['index'] = 3
    cfg['ultrasound']['mask_threshold'] = 0.6
    cfg['nir']['realsense']['fps'] = 15
    cfg['arm_interface']['max_step_rad'] = 0.01
    cfg['sim']['physics_hz'] = 500.0
    (tmp_path / 'config').mkdir()
    (tmp_path / 'config' / 'ir_guidance.yaml').write_text(yaml.safe_dump(cfg),
                                                          encoding='utf-8')
    return tmp_path, cfg


@pytest.mark.parametrize('name', STACK_FILES)
def test_parameters_follow_the_config_file(name, monkeypatch, edited_share):
    share, cfg = edited_share
    runs = ([{'node': n} for n in sorted(STACK | {'sim'})] if name == 'bench.launch.py'
            else [{}])
    seen = set()
    for arguments in runs:
        launched = _launch(name, monkeypatch, share, **arguments)
        for executable, params in launched.started().items():
            assert_params_from_config(executable, params, cfg)
            seen.add(executable)
    assert seen >= STACK


# -- what each file starts ------------------------------------------------------------------

def test_rig_starts_every_stack_node_but_the_sim(monkeypatch):
    launched = _launch('rig.launch.py', monkeypatch)
    started = launched.started()
    assert set(started) == STACK
    for executable in STACK - {'arm_interface'}:
        assert started[executable]['lockstep'] is False, executable
    assert started['ultrasound']['source'] == 'device'
    assert started['nir']['source'] == 'realsense'
    # robot_state_publisher owns the frames: arm_interface broadcasts none.
    assert 'robot_state_publisher' in launched.started('robot_state_publisher')
    assert started['arm_interface']['publish_tf'] is False
    assert started['arm_interface']['command_interface'] == \
        config.load()['arm_interface']['command_interface']
    assert launched.includes == []  # the UR driver is started separately by default


def test_rig_arguments_pick_sources_driver_and_description(monkeypatch):
    launched = _launch('rig.launch.py', monkeypatch, us_source='igtl', nir_source='topic',
                       ur_driver='true', robot_ip='10.0.0.2', rig_description='false',
                       command_interface='trajectory')
    started = launched.started()
    assert started['ultrasound']['source'] == 'igtl'
    assert started['nir']['source'] == 'topic'
    assert launched.started('robot_state_publisher') == {}
    assert started['arm_interface']['publish_tf'] is True
    assert started['arm_interface']['command_interface'] == 'trajectory'
    [include] = launched.includes
    assert include['path'].endswith(os.path.join('ur_robot_driver', 'launch',
                                                 'ur_control.launch.py'))
    assert include['arguments']['robot_ip'] == '10.0.0.2'
    assert include['arguments']['ur_type'] == 'ur5e'
    assert include['arguments']['initial_joint_controller'] == 'joint_trajectory_controller'
    position = _launch('rig.launch.py', monkeypatch, ur_driver='true').includes[0]
    assert position['arguments']['initial_joint_controller'] == 'forward_position_controller'
    with pytest.raises(ValueError, match='us_source'):
        _launch('rig.launch.py', monkeypatch, us_source='webcam')


def test_sim_starts_the_sim_and_every_stack_node_in_lockstep(monkeypatch):
    launched = _launch('sim.launch.py', monkeypatch)
    started = launched.started()
    assert set(started) == STACK | {'sim'}
    assert started['sim']['mode'] == 'lockstep'
    for executable in STACK:
        assert started[executable]['lockstep'] is True, executable
        assert started[executable]['use_sim_time'] is True, executable
    assert started['ultrasound']['source'] == 'topic' and started['nir']['source'] == 'topic'
    assert started['sim']['seed'] == config.load()['sim']['seed']
    assert 'robot_state_publisher' in launched.started('robot_state_publisher')


def test_sim_realtime_turns_lockstep_off_everywhere(monkeypatch):
    started = _launch('sim.launch.py', monkeypatch, mode='realtime', seed='7').started()
    assert started['sim']['mode'] == 'realtime' and started['sim']['seed'] == 7
    assert all(started[n]['lockstep'] is False for n in STACK)


def test_gazebo_adds_the_stack_on_sim_time(monkeypatch):
    launched = _launch('gazebo.launch.py', monkeypatch)
    started = launched.started()
    assert set(started) == STACK
    for executable, params in started.items():
        assert params['use_sim_time'] is True, executable
        assert params.get('lockstep', False) is False, executable
    assert started['arm_interface']['publish_tf'] is False
    others = {(n['package'], n['executable']) for n in launched.nodes} - \
        {('ir_guidance', n) for n in started}
    assert others == EXTERNAL
    assert any(i['path'].endswith('gz_sim.launch.py') for i in launched.includes)


@pytest.mark.parametrize('node', sorted(STACK | {'sim'}))
def test_bench_starts_exactly_the_chosen_node(node, monkeypatch):
    launched = _launch('bench.launch.py', monkeypatch, node=node)
    assert [(n['package'], n['executable']) for n in launched.nodes] == [('ir_guidance', node)]
    params = launched.started()[node]
    assert_params_from_config(node, params)
    assert params['use_sim_time'] is True
    if node != 'sim':
        assert params['lockstep'] is False
    if node in ('ultrasound', 'nir'):
        assert params['source'] == 'topic'


def test_bench_refuses_an_unknown_or_missing_node(monkeypatch):
    with pytest.raises(ValueError, match='node'):
        _launch('bench.launch.py', monkeypatch, node='planner')
    with pytest.raises(KeyError, match='node'):
        _launch('bench.launch.py', monkeypatch)
    off = _launch('bench.launch.py', monkeypatch, node='controller', use_sim_time='false')
    assert off.started()['controller']['use_sim_time'] is False
