"""trajectory_planner: plans an insertion for each vessel-map target (thin adapter).

Inputs: the vessel mapper's answer, ``/vessel_map/target`` (PoseStamped: position = the
vessel centre, orientation's x axis = the vessel direction) and ``/vessel_map/status``
(DiagnosticArray with the same stamp; its first status carries ``skin_height_m`` and
``vessel_radius_m``), and ``/joint_states``. The planner waits until it has a target and
a status with the same stamp, then plans from the joint state at that stamp: the one
within ``STAMP_MATCH_S`` of it, else the latest older one at most ``max_stamp_gap_s``
older, else it refuses ('no joint state at the target time'). The algorithm is
``ir_guidance.planning.insertion.plan_insertion``.

Outputs, all stamped with the target's stamp: ``/planner/insertion_path`` (nav_msgs/Path:
needle-tip poses every ``PATH_STEP_M`` from the skin entry to the target),
``/planner/joint_trajectory`` (approach), ``/planner/insertion_trajectory``,
``/planner/retraction_trajectory`` (trajectory_msgs/JointTrajectory: positions,
velocities, time_from_start; joints in command order), and ``/planner/status``
(DiagnosticArray, one status: OK with message 'ok', or ERROR with the reason; values
``stage_travel``, ``plan_ms``, ``tip_error_mm``, durations, ``target_shift_mm`` from the
previous successful plan and ``replan_needed`` by the ``replan_tolerance_m``). A refusal
publishes only the status, never a trajectory. Every target is planned (a plan costs a
fraction of a second); ``replan_needed`` tells the supervisor whether the new plan
differs enough from the one it may be executing.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from rclpy.node import Node
from transforms3d.quaternions import quat2mat

from ir_guidance import config
from ir_guidance.nodes import runner
from ir_guidance.nodes.conversions import (
    contract_publisher,
    contract_subscription,
    duration_msg,
    fill_pose,
    message_class,
    stamp_seconds,
)
from ir_guidance.planning.insertion import InsertionPlan, needs_replan, plan_insertion
from ir_guidance.planning.motion import JointTrajectory
from ir_guidance.rig_description import rig_chain

NODE_NAME = 'trajectory_planner'
STAMP_MATCH_S = 0.005      # a joint state this close to the target stamp is "at" it
JOINT_BUFFER_S = 2.0       # joint states kept (by stamp) behind the newest one
PENDING_MAX = 20           # unmatched targets / statuses kept
PATH_STEP_M = 0.001
TRAJECTORY_KEYS = ('planner_approach', 'planner_insertion', 'planner_retraction')


class PlanningError(ValueError):
    """An input the planner cannot plan from (the reason goes to the status)."""


class TrajectoryPlanner(Node):
    """Pairs targets with map statuses and joint states, plans, publishes; see module."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        cfg = config.load()
        section = cfg['planner']
        for name, default in section.items():
            self.declare_parameter(name, default)
        self.params = {name: self.get_parameter(name).value for name in section}
        angle = float(self.params['insertion_angle_deg'])
        if not 15.0 <= angle <= 25.0:
            raise ValueError(f'insertion_angle_deg must be within 15-25 deg, got {angle}')
        self.declare_parameter('lockstep', bool(cfg['lockstep']['enabled']))
        lockstep = bool(self.get_parameter('lockstep').value)
        self.chain = rig_chain()
        self.names = config.joint_names()
        missing = [n for n in self.names if n not in self.chain.joint_names]
        if missing:
            raise ValueError(f'joints {missing} are not in the rig chain')
        # Planner (chain) order -> command order.
        self._order = [self.chain.joint_names.index(n) for n in self.names]
        self.base_frame = cfg['frames']['base']
        self.tip_frame = cfg['frames']['needle_tip']
        self._joints: deque[tuple[float, np.ndarray]] = deque()
        self._targets: dict[int, Any] = {}
        self._statuses: dict[int, Any] = {}
        self._last_plan: InsertionPlan | None = None
        self._pub = {key: contract_publisher(self, key) for key in (
            'planner_path', 'planner_status', *TRAJECTORY_KEYS)}
        contract_subscription(self, 'joint_states', self._on_joints, lockstep)
        contract_subscription(self, 'vessel_map_target', self._on_target, lockstep)
        contract_subscription(self, 'vessel_map_status', self._on_status, lockstep)

    # -- inputs -------------------------------------------------------------------------
    def _on_joints(self, msg: Any) -> None:
        by_name = dict(zip(msg.name, msg.position, strict=False))
        if any(n not in by_name for n in self.names):
            return
        q = np.array([by_name[n] for n in self.chain.joint_names], dtype=float)
        if not np.all(np.isfinite(q)):
            self.get_logger().error('joint state with NaN/inf ignored',
                                    throttle_duration_sec=1.0)
            return
        stamp = stamp_seconds(msg.header.stamp)
        if self._joints and stamp < self._joints[-1][0]:
            self._joints.clear()  # time went backwards (a sim reset, a bag loop)
        self._joints.append((stamp, q))
        while self._joints[0][0] < stamp - JOINT_BUFFER_S:
            self._joints.popleft()

    def _on_target(self, msg: Any) -> None:
        self._store(self._targets, msg)

    def _on_status(self, msg: Any) -> None:
        self._store(self._statuses, msg)

    def _store(self, pending: dict[int, Any], msg: Any) -> None:
        key = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        pending[key] = msg
        while len(pending) > PENDING_MAX:
            del pending[min(pending)]
        if key in self._targets and key in self._statuses:
            self._plan(self._targets.pop(key), self._statuses.pop(key))

    # -- planning ------------------------------------------------------------------------
    def joint_state_at(self, stamp: float) -> np.ndarray:
        """The joint state at ``stamp`` (rule in the module docstring) or PlanningError."""
        if self._joints:
            stamps = np.array([s for s, _ in self._joints])
            nearest = int(np.argmin(np.abs(stamps - stamp)))
            if abs(stamps[nearest] - stamp) <= STAMP_MATCH_S:
                return self._joints[nearest][1]
            older = np.nonzero(stamps <= stamp)[0]
            if len(older) and stamp - stamps[older[-1]] <= self.params['max_stamp_gap_s']:
                return self._joints[older[-1]][1]
        newest = f'newest {self._joints[-1][0]:.3f} s' if self._joints else 'none received'
        raise PlanningError(f'no joint state at the target time {stamp:.3f} s ({newest}, '
                            f"max gap {self.params['max_stamp_gap_s']:g} s)")

    def _inputs(self, target: Any, status: Any) -> tuple[np.ndarray, np.ndarray, float,
                                                          float | None, np.ndarray]:
        if target.header.frame_id not in ('', self.base_frame):
            raise PlanningError(f'target in frame {target.header.frame_id!r}, expected '
                                f'{self.base_frame!r}')
        p, o = target.pose.position, target.pose.orientation
        position = np.array([p.x, p.y, p.z], dtype=float)
        quat = np.array([o.w, o.x, o.y, o.z], dtype=float)
        if not np.all(np.isfinite(quat)) or np.linalg.norm(quat) < 1e-6:
            raise PlanningError(f'invalid target: orientation {quat.tolist()} is not a '
                                'rotation')
        direction = quat2mat(quat / np.linalg.norm(quat))[:, 0]
        if not status.status:
            raise PlanningError('map status has no entry')
        values = {kv.key: kv.value for kv in status.status[0].values}
        if 'skin_height_m' not in values:
            raise PlanningError('map status lacks skin_height_m')
        try:
            skin = float(values['skin_height_m'])
            radius = float(values['vessel_radius_m']) if 'vessel_radius_m' in values else None
        except ValueError as error:
            raise PlanningError(f'map status value not a number: {error}') from error
        q = self.joint_state_at(stamp_seconds(target.header.stamp))
        return position, direction, skin, radius, q

    def _plan(self, target: Any, status: Any) -> None:
        stamp = target.header.stamp
        try:
            position, direction, skin, radius, q = self._inputs(target, status)
        except PlanningError as error:
            self._publish_status(stamp, False, str(error), {})
            return
        plan = plan_insertion(self.chain, q, position, direction, skin, self.params, radius)
        values: dict[str, float | str] = {'plan_ms': plan.plan_ms}
        if not plan.ok:
            self._publish_status(stamp, False, plan.reason, values)
            return
        previous = self._last_plan
        values.update({
            'stage_travel': plan.stage_travel,
            'tip_error_mm': plan.details.get('tip_error_m', math.nan) * 1e3,
            'approach_s': plan.approach.duration,
            'insertion_s': plan.insertion.duration,
            'retraction_s': plan.retraction.duration,
            'entry': ' '.join(f'{v:.6f}' for v in plan.entry),
            'axis': ' '.join(f'{v:.6f}' for v in plan.axis),
        })
        if previous is not None:
            values['target_shift_mm'] = float(np.linalg.norm(plan.target - previous.target)) * 1e3
            values['replan_needed'] = str(needs_replan(
                previous, plan.target, float(self.params['replan_tolerance_m']))).lower()
        else:
            values['replan_needed'] = 'true'
        self._last_plan = plan
        self._publish_path(stamp, plan)
        for key, traj in zip(TRAJECTORY_KEYS, (plan.approach, plan.insertion,
                                               plan.retraction), strict=True):
            self._pub[key].publish(self._trajectory_msg(stamp, traj))
        self._publish_status(stamp, True, 'ok', values)

    # -- outputs ------------------------------------------------------------------------
    def _trajectory_msg(self, stamp: Any, traj: JointTrajectory) -> Any:
        msg = message_class('trajectory_msgs/msg/JointTrajectory')()
        msg.header.stamp = stamp
        msg.header.frame_id = self.base_frame
        msg.joint_names = list(self.names)
        point_class = message_class('trajectory_msgs/msg/JointTrajectoryPoint')
        positions = traj.positions[:, self._order]
        velocities = traj.velocities[:, self._order]
        msg.points = [point_class(positions=positions[k].tolist(),
                                  velocities=velocities[k].tolist(),
                                  time_from_start=duration_msg(float(t)))
                      for k, t in enumerate(traj.times)]
        return msg

    def _publish_path(self, stamp: Any, plan: InsertionPlan) -> None:
        msg = message_class('nav_msgs/msg/Path')()
        msg.header.stamp = stamp
        msg.header.frame_id = self.base_frame
        pose = self.chain.fk(plan.q_contact, self.tip_frame)
        length = float(np.linalg.norm(plan.target - plan.entry))
        steps = max(1, math.ceil(length / PATH_STEP_M))
        pose_class = message_class('geometry_msgs/msg/PoseStamped')
        for f in np.linspace(0.0, 1.0, steps + 1):
            pose[:3, 3] = plan.entry + f * (plan.target - plan.entry)
            item = pose_class()
            item.header = msg.header
            fill_pose(item.pose, pose)
            msg.poses.append(item)
        self._pub['planner_path'].publish(msg)

    def _publish_status(self, stamp: Any, ok: bool, message: str,
                        values: dict[str, float | str]) -> None:
        status_class = message_class('diagnostic_msgs/msg/DiagnosticStatus')
        key_value = message_class('diagnostic_msgs/msg/KeyValue')
        status = status_class()
        status.level = status_class.OK if ok else status_class.ERROR
        status.name = NODE_NAME
        status.message = message
        status.values = [key_value(key=k, value=v if isinstance(v, str) else f'{v:.9g}')
                         for k, v in values.items()]
        msg = message_class('diagnostic_msgs/msg/DiagnosticArray')()
        msg.header.stamp = stamp
        msg.header.frame_id = self.base_frame
        msg.status = [status]
        self._pub['planner_status'].publish(msg)
        if not ok:
            self.get_logger().error(f'plan refused: {message}', throttle_duration_sec=1.0)


NODE_CLASS = TrajectoryPlanner  # for in-process runs (ir-guidance sim --single-process)


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C or an external shutdown; returns the exit status."""
    return runner.spin(TrajectoryPlanner, NODE_NAME, args)
