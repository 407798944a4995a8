"""A synthetic plant for the guidance state machine: the rig reduced to what it must feel.

Benchmark layer, ROS-free. ``control.guidance.Guidance`` reads only its ``Inputs``; to
run it closed-loop without the simulator (``test/test_guidance.py``,
``ir_guidance.bench.control``) this module supplies those inputs from a deliberately
small model:

- **joints** follow the command exactly (no servo lag): the next tick's joint state is
  this tick's command;
- **F/T**: a flat skin at ``SKIN_Z`` = 0.27 m (the phantom forearm's top) with a
  stiffness of 1 N/mm pushes back on the probe face when it is below the skin, along
  world +z, expressed in ``ft_sensor_frame``. No gravity, no noise, no needle-tissue
  force: the needle feels no membrane, so INSERT ends on its planned travel with "no
  wall puncture felt";
- optionally a **vein** (:class:`Vein`): a straight horizontal cylinder under the skin,
  seen by an ideal **US segmenter**: each frame (``sim.us_hz``, 30 Hz) is the cylinder's
  intersection with the image plane at the probe pose of its capture tick, delivered
  ``lockstep.us_latency_s`` (60 ms) later with its capture stamp, as the controller
  node hands US results to the guidance;
- the **map/plan answer** (:func:`plan_answer`): the real planner
  (``planning.insertion.plan_insertion``, config ``planner`` section) for the vein's
  point under the probe at the request, converted to a ``PlanAnswer`` the way the
  controller node does (``skin_travel = stage_travel - |target - entry|``).

Why this vein (:func:`default_vein`): it lies under the probe's home position (the MAP
sweep is centred there), runs along world +y (the sweep direction, the forearm's axis),
with its centre ``VEIN_DEPTH_M`` = 4 mm below the skin and a radius of 1.5 mm. That is
a typical forearm vein of the phantom (centres 3-12 mm deep): 3 mm across, above the
planner's 1.5 mm minimum, deep enough that the target lies below the pressed skin, and
shallow enough for 17.5 mm of stage travel, well inside the stage's usable 38 mm. The
planner plans it ``ok`` from the probe's pose at the end of the sweep (in ~0.1 s).
(Measured from the home pose: centres 2-8 mm deep plan ``ok``; 12 mm is refused as too
deep, 40.9 mm of travel.)

With the US frames the guidance runs the whole cycle on this plant: IDLE -> SCAN -> MAP
-> PLAN -> ALIGN -> INSERT -> VERIFY (tip in the lumen on US) -> RETRACT -> DONE, in
about 17 s of simulated time at 1 kHz. Without them (``vein=None``, as in
``test/test_guidance.py``) it can not get past INSERT: the servo never matches a
section, so ``servo.lost_s`` (0.3 s) after INSERT begins the guidance aborts ('lost the
vessel on US for 0.30 s', the stage 1.9 mm out: it accelerates at 0.05 m/s^2), retracts
the stage and ends SAFE.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ir_guidance import config, rig_description
from ir_guidance.control.guidance import Guidance, Inputs, Output, PlanAnswer, Section, UsFrame
from ir_guidance.planning.insertion import InsertionPlan, plan_insertion

SKIN_Z = 0.27          # m: the flat skin (the phantom forearm's top)
STIFFNESS = 1000.0     # N/m: 1 N per mm of probe below the skin
VEIN_DEPTH_M = 0.004   # vein centre below the skin
VEIN_RADIUS_M = 0.0015


@functools.cache
def _chain() -> Any:
    """The rig chain of this process (the plant's own; a worker builds its own)."""
    return rig_description.rig_chain()


@dataclass(frozen=True)
class Vein:
    """A straight cylindrical vein (base frame, m): axis ``point + s * direction``."""

    point: np.ndarray
    direction: np.ndarray   # unit
    radius: float

    def __post_init__(self) -> None:
        point = np.asarray(self.point, dtype=float)
        direction = np.asarray(self.direction, dtype=float)
        if point.shape != (3,) or direction.shape != (3,):
            raise ValueError(f'vein point and direction must be 3-vectors, got shapes '
                             f'{point.shape} and {direction.shape}')
        norm = float(np.linalg.norm(direction))
        if not (np.all(np.isfinite(point)) and np.isfinite(norm) and norm > 0):
            raise ValueError(f'vein point {point.tolist()} / direction {direction.tolist()} '
                             'must be finite, the direction non-zero')
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f'vein radius must be finite and > 0, got {self.radius!r}')
        object.__setattr__(self, 'point', point)
        object.__setattr__(self, 'direction', direction / norm)

    def site(self, position: np.ndarray) -> np.ndarray:
        """The point of the vein's axis closest to ``position`` (under the probe)."""
        offset = np.asarray(position, dtype=float) - self.point
        return self.point + (offset @ self.direction) * self.direction

    def section(self, image_pose: np.ndarray, width_m: float, depth_m: float
                ) -> Section | None:
        """What an ideal segmenter reports of this vein in a US image, or None.

        ``image_pose``: 4x4 pose of ``us_image_frame`` (x lateral, y depth, z out of the
        image plane). The lumen is the set of image-plane points within ``radius`` of the
        axis: an ellipse (semi-minor ``radius``, semi-major ``radius / |cos|`` along the
        axis' in-plane direction) when the axis crosses the plane, a band of half-height
        ``sqrt(radius^2 - offset^2)`` when it runs parallel to the plane ``offset`` from
        it. Its extent along the axis is clipped to the image (``width_m`` x
        ``depth_m``, face at y = 0). The section reports the clipped lumen's centre,
        half its length (``radius_major``) and its half-height (``radius_minor``),
        confidence 1.
        """
        rotation, origin = image_pose[:3, :3], image_pose[:3, 3]
        p = rotation.T @ (self.point - origin)
        d = rotation.T @ self.direction
        in_plane = float(math.hypot(d[0], d[1]))
        u = d[:2] / in_plane if in_plane > 1e-12 else np.array([1.0, 0.0])
        if abs(d[2]) > 1e-9:
            centre = (p - p[2] / d[2] * d)[:2]
            half, minor = self.radius / abs(d[2]), self.radius
        else:
            if abs(p[2]) >= self.radius:
                return None
            centre, half = p[:2], math.inf
            minor = math.sqrt(self.radius ** 2 - p[2] ** 2)
        lo, hi = -half, half
        for axis, (low, high) in enumerate(((-width_m / 2, width_m / 2), (0.0, depth_m))):
            if abs(u[axis]) < 1e-12:
                if not low <= centre[axis] <= high:
                    return None
                continue
            a, b = sorted(((low - centre[axis]) / u[axis], (high - centre[axis]) / u[axis]))
            lo, hi = max(lo, a), min(hi, b)
        if lo >= hi:
            return None
        middle = centre + 0.5 * (lo + hi) * u
        return Section(float(middle[0]), float(middle[1]), float(0.5 * (hi - lo)),
                       float(minor), 1.0)


def default_vein(home: np.ndarray | None = None, skin_z: float = SKIN_Z) -> Vein:
    """The benchmark's vein: under the home probe centre, 4 mm deep, along world +y."""
    q = np.asarray(config.load()['robot']['home'] if home is None else home, dtype=float)
    probe = _chain().fk(q, config.load()['frames']['us_image'])[:3, 3]
    return Vein(np.array([probe[0], probe[1], skin_z - VEIN_DEPTH_M]),
                np.array([0.0, 1.0, 0.0]), VEIN_RADIUS_M)


def to_plan_answer(plan: InsertionPlan, stamp_s: float) -> PlanAnswer:
    """A planner result as the controller's ``PlanAnswer`` (as the controller node does)."""
    if not plan.ok:
        return PlanAnswer(stamp_s, False, f'planner: {plan.reason}')
    skin = plan.stage_travel - float(np.linalg.norm(plan.target - plan.entry))
    return PlanAnswer(stamp_s, True, 'planned', approach=plan.approach,
                      retraction=plan.retraction, stage_travel=plan.stage_travel,
                      target=plan.target.copy(), skin_travel=skin)


def plan_answer(vein: Vein, q: np.ndarray, stamp_s: float, skin_z: float = SKIN_Z,
                params: dict | None = None) -> PlanAnswer:
    """The answer to a map request at ``stamp_s``: the real plan for ``vein`` from ``q``.

    The target is the vein's point under the probe face at ``q`` (what target selection
    would pick from a sweep right over it); ``params``: the planner section (default:
    config). A plain function of picklable arguments: a worker process runs it (~0.1 s).
    """
    chain = _chain()
    probe = chain.fk(q, config.load()['frames']['us_image'])[:3, 3]
    plan = plan_insertion(chain, q, vein.site(probe), vein.direction, skin_z,
                          config.load()['planner'] if params is None else params,
                          vein.radius)
    return to_plan_answer(plan, stamp_s)


class Plant:
    """Runs a :class:`Guidance` against the plant (see the module docstring).

    ``tick()`` = :meth:`inputs` (advance the clock one control period, read joints, F/T
    and due US frames), ``guidance.update``, :meth:`apply` (joints take the command).
    Tick ``k`` (from 1) is at ``k / rate_hz`` seconds. ``plan`` is passed to every tick
    while set (the node passes its latest answer the same way). ``record``: keep every
    output in ``outputs``.
    """

    def __init__(self, guidance: Guidance | None = None, vein: Vein | None = None, *,
                 home: np.ndarray | None = None, skin_z: float = SKIN_Z,
                 stiffness: float = STIFFNESS, record: bool = True) -> None:
        cfg = config.load()
        self.g = Guidance() if guidance is None else guidance
        self.chain = _chain()
        self.frames = cfg['frames']
        self.q = np.array(cfg['robot']['home'] if home is None else home, dtype=float)
        self.skin_z, self.stiffness = float(skin_z), float(stiffness)
        self.vein = vein
        self.us_hz = float(cfg['sim']['us_hz'])
        self.us_latency_s = float(cfg['lockstep']['us_latency_s'])
        self.width_m = float(cfg['ultrasound']['width_m'])
        self.depth_m = float(cfg['ultrasound']['depth_m'])
        self.k = 0
        self.t = 0.0
        self.plan: PlanAnswer | None = None
        self.record = record
        self.outputs: list[Output] = []
        self._frames: deque[tuple[float, UsFrame]] = deque()

    def wrench(self, q: np.ndarray | None = None) -> np.ndarray:
        """F/T reading (sensor frame) of the probe pressed into the flat skin."""
        q = self.q if q is None else q
        poses = self.chain.fk_all(q, (self.frames['us_image'], self.frames['ft_sensor']))
        push = max(0.0, self.skin_z - poses[self.frames['us_image']][2, 3]) * self.stiffness
        rotation = poses[self.frames['ft_sensor']][:3, :3]
        return np.concatenate((rotation[2] * push, np.zeros(3)))  # R^T @ (0, 0, push)

    def inputs(self, **overrides: Any) -> Inputs:
        """The next tick's inputs (clock advanced); ``overrides`` replace any field."""
        self.k += 1
        self.t = round(self.k * self.g.dt, 9)
        values = dict(time_s=self.t, joints=self.q.copy(), joints_stamp_s=self.t,
                      wrench=self.wrench(), wrench_stamp_s=self.t, us_frames=self._us(),
                      plan=self.plan, start=True)
        values.update(overrides)
        return Inputs(**values)

    def apply(self, out: Output) -> None:
        """The joints follow the command exactly."""
        self.q = out.command.copy()
        if self.record:
            self.outputs.append(out)

    def tick(self, **overrides: Any) -> Output:
        out = self.g.update(self.inputs(**overrides))
        self.apply(out)
        return out

    def run_until(self, predicate: Callable[[Output], bool], max_ticks: int = 20000
                  ) -> Output:
        """Tick until ``predicate(output)``; AssertionError after ``max_ticks``."""
        for _ in range(max_ticks):
            out = self.tick()
            if predicate(out):
                return out
        raise AssertionError(f'not reached in {max_ticks} ticks: {self.g.phase} '
                             f'{self.g.reason}')

    def _us(self) -> tuple[UsFrame, ...]:
        """Frames due at this tick: captured on the US schedule, delivered after latency."""
        if self.vein is None:
            return ()
        if math.floor(self.t * self.us_hz + 1e-9) > math.floor(
                (self.t - self.g.dt) * self.us_hz + 1e-9):
            pose = self.chain.fk(self.q, self.frames['us_image'])
            section = self.vein.section(pose, self.width_m, self.depth_m)
            frame = UsFrame(self.t, () if section is None else (section,))
            self._frames.append((self.t + self.us_latency_s, frame))
        due = []
        while self._frames and self._frames[0][0] <= self.t + 1e-9:
            due.append(self._frames.popleft()[1])
        return tuple(due)
