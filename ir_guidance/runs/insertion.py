"""``ir-guidance sim``: one complete simulated insertion, from scan to venous access.

Starts the simulator in lockstep and every node of the stack from ``config/`` (one
process each, like ``sim.launch.py`` on a full install, or all in this process with
``single_process``), waits until the controller reaches DONE or SAFE and the simulator
has run ``sim.settle_after_s`` past it (the arm has stopped), stops them cleanly (the
simulator writes its ground truth, the controller its trace), and scores the run
(:mod:`ir_guidance.runs.score`). DDS stays on loopback on a domain id no other
process here is using. Faults for safety tests: the simulator injects sensor faults
(``nodes/sim.py`` FAULTS); ``kill:<node>`` is done here, to the node's process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ir_guidance import config, ros_env
from ir_guidance.runs import score

# Every node of the stack, in start order (the simulator last, so that everyone is
# listening when the first tick is published; it waits for the controller anyway).
STACK = ('ultrasound', 'nir', 'vessel_mapper', 'trajectory_planner', 'force_monitor',
         'arm_interface', 'controller', 'sim')
TERMINAL = ('DONE', 'SAFE')
# Nodes no lockstep tick waits for (they watch and report): on two cores they run at a
# lower priority so that the simulator, the controller and the perception it waits on
# get the CPU first. A niceness: they still get whatever the others leave.
OBSERVERS = {'force_monitor': 10, 'arm_interface': 10, 'recorder': 5, 'live_view': 10}
KILL_DELAY_S = 0.3
SETTLE_TIMEOUT_S = 30.0
STARTUP_TIMEOUT_S = 120.0


@dataclass
class RunOptions:
    seed: int = 1
    phantom: str | None = None
    fault: str = ''
    single_process: bool = False
    timeout_s: float = 300.0
    workdir: Path | None = None
    quiet: bool = False
    record: Path | None = None   # an MCAP file: every topic, rosbag2 layout (recorder node)
    live: bool = False           # Foxglove WebSocket server on loopback (live_view node)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)


def node_parameters(name: str, options: RunOptions, workdir: Path) -> dict[str, Any]:
    """The ROS parameters ``name`` gets in a simulated run (on top of config/)."""
    # No node follows /clock: in lockstep every node works on the (sim time) stamps it
    # receives, and a 1 kHz /clock subscription would cost each of them a callback a tick.
    params: dict[str, Any] = {'lockstep': True}
    if name == 'sim':
        params.update(mode='lockstep', seed=options.seed,
                      phantom=options.phantom or f'random:{options.seed}',
                      truth_log=str(workdir / 'truth.npz'))
        if options.fault and not options.fault.startswith('kill:'):
            params['fault'] = options.fault
    elif name == 'controller':
        params.update(autostart=True, log=str(workdir / 'controller.json'))
    elif name == 'arm_interface':
        params.update(publish_tf=False)
    elif name == 'ultrasound':
        params.update(threads=1)
    elif name == 'recorder':
        params.update(path=str(options.record), use_sim_time=True)
    params.update(options.extra.get(name, {}))
    return params


def stack(options: RunOptions) -> tuple[str, ...]:
    """The nodes of this run in start order: the recorder first, the simulator last."""
    extra = (('recorder',) if options.record else ()) + (('live_view',) if options.live else ())
    return extra + STACK


def _ros_args(params: dict[str, Any]) -> list[str]:
    args = ['--ros-args']
    for key, value in params.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ['-p', f'{key}:={text}']
    return args


def _log(options: RunOptions, text: str) -> None:
    if not options.quiet:
        print(text, file=sys.stderr, flush=True)


class _Watcher:
    """A small rclpy node in this process that follows /guidance/state."""

    def __init__(self, domain_id: int, want_clock: bool, executor: Any = None) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import qos_profile_sensor_data

        from ir_guidance.nodes.conversions import contract_subscription, message_class

        self.own = executor is None
        if self.own:
            self.context = rclpy.Context()
            rclpy.init(args=[], context=self.context, domain_id=domain_id)
            executor = SingleThreadedExecutor(context=self.context)
        else:
            self.context = executor.context
        self.node = Node('sim_run_watcher', context=self.context)
        self.executor = executor
        self.executor.add_node(self.node)
        self.states: list[str] = []
        self.sim_statuses: list[str] = []
        self.sim_time = 0.0
        self.centerlines: Any = None
        self.maps: dict[tuple[int, int], Any] = {}
        contract_subscription(self.node, 'guidance_state', self._on_state, lockstep=True)
        contract_subscription(self.node, 'sim_status',
                              lambda msg: self.sim_statuses.append(msg.data))
        contract_subscription(self.node, 'vessel_map_centerlines', self._on_map, lockstep=True)
        if want_clock:
            spec = config.topic('clock')
            self.node.create_subscription(message_class(spec['type']), spec['name'],
                                          self._on_clock, qos_profile_sensor_data)

    def _on_state(self, msg: Any) -> None:
        self.states.append(msg.data)

    def _on_map(self, msg: Any) -> None:
        self.centerlines = msg
        self.maps[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg

    def save_map(self, path: Path, stamp_s: float | None = None) -> None:
        """The map the plan was made from (stamped ``stamp_s``; else the last one)."""
        msg = self.centerlines
        if stamp_s is not None:
            key = divmod(round(stamp_s * 1e9), 1_000_000_000)
            msg = self.maps.get(key, msg)
        if msg is None:
            return
        from ir_guidance.nodes.conversions import cloud_array

        points = cloud_array(msg)
        np.savez_compressed(path, **{name: np.asarray(points[name]) for name in
                                     points.dtype.names})

    def _on_clock(self, msg: Any) -> None:
        self.sim_time = msg.clock.sec + msg.clock.nanosec * 1e-9

    def phase(self) -> str:
        return self.states[-1].split(' ')[0] if self.states else ''

    def settled(self) -> bool:
        """The simulator ran ``sim.settle_after_s`` past DONE/SAFE (the arm has stopped)."""
        return any(text.startswith('SETTLED') for text in self.sim_statuses)

    def wait_settled(self, spin: Any, options: RunOptions) -> None:
        """Spin (``spin(seconds)``) until the sim says SETTLED, for at most SETTLE_TIMEOUT_S."""
        until = time.monotonic() + SETTLE_TIMEOUT_S
        while not self.settled():
            if time.monotonic() > until:
                _log(options, f'  the simulator did not report SETTLED within '
                              f'{SETTLE_TIMEOUT_S:.0f} s: the truth log ends earlier')
                return
            spin(0.05)

    def spin(self, seconds: float) -> None:
        self.executor.spin_once(timeout_sec=seconds)

    def close(self) -> None:
        self.node.destroy_node()
        if self.own:
            self.executor.shutdown()
            self.context.try_shutdown()


def run(options: RunOptions) -> dict[str, Any]:
    """Run one insertion; returns the scored result (``score.score`` keys)."""
    workdir = Path(options.workdir or tempfile.mkdtemp(prefix='ir_guidance_sim_'))
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ('truth.npz', 'controller.json', 'map.npz'):
        (workdir / stale).unlink(missing_ok=True)
    domain_id = ros_env.free_domain_id()
    ros_env.configure(domain_id=domain_id)
    if options.fault and options.fault.startswith('kill:'):
        victim = options.fault.split(':', 1)[1]
        if victim not in STACK or victim == 'sim':
            raise ValueError(f'kill:<node> takes one of {[n for n in STACK if n != "sim"]}')
    start = time.monotonic()
    if options.single_process:
        kill_at = _run_single(options, workdir, domain_id)
    else:
        kill_at = _run_processes(options, workdir, domain_id)
    wall = time.monotonic() - start
    log_file, truth_file = workdir / 'controller.json', workdir / 'truth.npz'
    if not log_file.is_file() or not truth_file.is_file():
        raise RuntimeError(f'the run left no logs in {workdir} (see the *.log files there)')
    log, truth = score.load_log(log_file), score.load_truth(truth_file)
    result = score.score(log, truth, wall, options.fault, kill_at)
    result.update(seed=options.seed, phantom=options.phantom or f'random:{options.seed}',
                  workdir=str(workdir))
    return result


def _run_processes(options: RunOptions, workdir: Path, domain_id: int) -> float | None:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id),
               **{ros_env.DISCOVERY_VAR: 'LOCALHOST'})
    procs: dict[str, subprocess.Popen] = {}
    victim = options.fault.split(':', 1)[1] if options.fault.startswith('kill:') else None
    watcher = _Watcher(domain_id, want_clock=victim is not None)
    kill_at = None
    insert_wall = None
    try:
        def start(name: str) -> None:
            cmd = [sys.executable, '-m', 'ir_guidance.cli', 'node', name,
                   *_ros_args(node_parameters(name, options, workdir))]
            out = open(workdir / f'{name}.log', 'w', encoding='utf-8')
            procs[name] = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
            if name in OBSERVERS:
                os.setpriority(os.PRIO_PROCESS, procs[name].pid, OBSERVERS[name])

        nodes = stack(options)
        # The stack's consumers are named to the simulator (config sim.consumers): its
        # first tick waits for them, so it starts with them. A recorder or live view is
        # not named: then the simulator starts once every node is in the graph.
        early = nodes if nodes == STACK else nodes[:-1]
        for name in early:
            start(name)
        up_by = time.monotonic() + STARTUP_TIMEOUT_S
        while not set(nodes[:-1]) <= set(watcher.node.get_node_names()):
            watcher.spin(0.1)
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f'{dead} exited at start-up (see {workdir}/{dead[0]}.log)')
            if time.monotonic() > up_by:
                missing = set(nodes[:-1]) - set(watcher.node.get_node_names())
                raise TimeoutError(f'nodes {sorted(missing)} not up within '
                                   f'{STARTUP_TIMEOUT_S:.0f} s (see their logs in {workdir})')
        if nodes[-1] not in procs:
            start(nodes[-1])
        _log(options, f'started {len(procs)} processes (ROS_DOMAIN_ID={domain_id}); '
                      f'logs in {workdir}')
        deadline = time.monotonic() + options.timeout_s
        seen = 0
        while watcher.phase() not in TERMINAL:
            watcher.spin(0.05)
            for text in watcher.states[seen:]:
                _log(options, f'  {text}')
            seen = len(watcher.states)
            if victim and kill_at is None:
                if insert_wall is None and watcher.phase() == 'INSERT':
                    insert_wall = time.monotonic()
                if insert_wall is not None and time.monotonic() - insert_wall > KILL_DELAY_S:
                    procs[victim].kill()
                    kill_at = watcher.sim_time
                    _log(options, f'  fault: killed {victim} at sim t={kill_at:.3f} s')
            dead = [n for n, p in procs.items() if p.poll() is not None and n != victim]
            if dead:
                raise RuntimeError(f'{dead} exited during the run (see {workdir}/'
                                   f'{dead[0]}.log)')
            if time.monotonic() > deadline:
                raise TimeoutError(f'no DONE/SAFE within {options.timeout_s:.0f} s; last '
                                   f'state: {watcher.states[-1:] or "none"}')
        watcher.wait_settled(watcher.spin, options)
        watcher.save_map(workdir / 'map.npz', _plan_stamp(workdir))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for name, proc in procs.items():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                _log(options, f'{name} did not stop on SIGINT: killed')
        watcher.close()
    return kill_at


def _run_single(options: RunOptions, workdir: Path, domain_id: int) -> float | None:
    """Every node in this process on one executor (same nodes, same parameters)."""
    import importlib

    import rclpy
    from rclpy.parameter import Parameter

    from ir_guidance.nodes import NODES
    from ir_guidance.nodes.runner import make_executor

    if options.fault.startswith('kill:'):
        raise ValueError('kill:<node> needs separate processes (drop --single-process)')
    context = rclpy.Context()
    rclpy.init(args=[], context=context, domain_id=domain_id)
    executor = make_executor(context)
    nodes = []
    watcher = _Watcher(domain_id, want_clock=False, executor=executor)
    try:
        for name in stack(options):
            module = importlib.import_module(NODES[name].partition(':')[0])
            cls = module.NODE_CLASS
            params = node_parameters(name, options, workdir)
            nodes.append(cls(context=context, parameter_overrides=[
                Parameter(k, value=v) for k, v in params.items()]))
            executor.add_node(nodes[-1])
        deadline = time.monotonic() + options.timeout_s
        seen = 0
        while watcher.phase() not in TERMINAL:
            executor.spin_once(timeout_sec=0.05)
            for text in watcher.states[seen:]:
                _log(options, f'  {text}')
            seen = len(watcher.states)
            if time.monotonic() > deadline:
                raise TimeoutError(f'no DONE/SAFE within {options.timeout_s:.0f} s')
        watcher.wait_settled(lambda seconds: executor.spin_once(timeout_sec=seconds), options)
        watcher.save_map(workdir / 'map.npz', _plan_stamp(workdir))
    finally:
        watcher.close()
        for node in nodes:
            node.destroy_node()
        executor.shutdown()
        context.try_shutdown()
    return None


def _plan_stamp(workdir: Path) -> float | None:
    """The stamp of the map the controller planned from (its log), if it got that far."""
    log = workdir / 'controller.json'
    if not log.is_file():
        return None
    return score.load_log(log).get('plan', {}).get('stamp_s')


def main_result_line(result: dict[str, Any]) -> str:
    """One-line summary for the terminal."""
    verdict = 'VENOUS ACCESS' if result['success'] else 'NO ACCESS'
    parts = [verdict, f"tip error {result['tip_err_mm']} mm",
             f"max force {result['max_force_n']} N",
             f"access at {result['time_to_access_s']} s sim",
             f"wall {result['wall_time_s']} s", f"final {result['final_phase']}: "
             f"{result['reason']}", f"commands {result['command_hash'][:16]}"]
    if 'safe_stop' in result:
        parts.append(f"fault {result['fault']}: safe_stop {result['safe_stop']}, "
                     f"time_to_safe {result['time_to_safe_ms']} ms, stage stopped after "
                     f"{result['time_to_stop_ms']} ms, depth after "
                     f"{result['depth_after_fault_mm']} mm")
    return ' | '.join(parts)

