"""The embedded simulator: one deterministic tick at a time (ROS-free).

Each tick (1 ms by default) the needle-tissue model turns the needle's pose into a
force, MuJoCo advances the arm under its position servos, that force and the probe's
contact, and the F/T sensor is read. Images are captured on their own schedules (30 Hz
by default): at the capture tick the scene (poses, deformation, needle) is rendered and
the frame is delivered ``image_latency_s`` later, stamped with its capture time, as a
real frame grabber or camera delivers it late. (Rendering on worker threads was
measured slower: the GIL hand-offs cost the 1 kHz physics loop more than the renders
saved.) The scene is snapped to sensor precision before rendering
(:func:`snap_pose`, :func:`snap_state`: 10 µm, ~2e-5 rad, 5 mN, 1 µm of roll, each far
below a pixel), so micro-motions of a holding arm reuse the renderers' cached scene.
Nothing here reads a wall clock or an unseeded random generator: the same phantom, seed
and commands give the same outputs, bit for bit (``stream_hash`` checks it).

A command is validated before it reaches the servos: wrong length, NaN/inf or a
position outside the joint limits raises :class:`SimCommandError` and the last valid
command stays in force, so a bad message can never move the simulated arm.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transforms3d.quaternions import mat2quat, quat2mat

from ir_guidance import config, rig_description
from ir_guidance.lockstep import capture_tick
from ir_guidance.sim.needle_tissue import NeedleForce, NeedleTissueModel
from ir_guidance.sim.nir import CameraConfig, NirSimulator
from ir_guidance.sim.phantom import Phantom, PhantomState
from ir_guidance.sim.physics import RigPhysics
from ir_guidance.sim.ultrasound import UltrasoundConfig, UltrasoundSimulator


class SimCommandError(ValueError):
    """A joint command the simulated hardware refuses; the previous one stays active."""


# Rendering precision: well below the US pixel (~0.15 mm) and the NIR pixel at 10 cm
# (~0.16 mm), and below any deformation the images can show.
POSE_QUANTUM_M = 1e-5
QUATERNION_QUANTUM = 1e-5
FORCE_QUANTUM_N = 5e-3
ROLL_QUANTUM_M = 1e-6


def _snap(value: float | np.ndarray, quantum: float) -> float | np.ndarray:
    return np.round(np.asarray(value, dtype=float) / quantum) * quantum


def snap_pose(pose: np.ndarray) -> np.ndarray:
    """``pose`` with its position on a 10 µm grid and its rotation on a quaternion grid.

    The rotation stays exactly orthonormal (it is rebuilt from a normalised quaternion).
    """
    q = mat2quat(pose[:3, :3])
    q = _snap(q if q[0] >= 0 else -q, QUATERNION_QUANTUM)
    snapped = np.eye(4)
    snapped[:3, :3] = quat2mat(q / np.linalg.norm(q))
    snapped[:3, 3] = _snap(pose[:3, 3], POSE_QUANTUM_M)
    return snapped


def snap_state(state: PhantomState) -> PhantomState:
    """A copy of ``state`` with force, probe position and roll at rendering precision."""
    return PhantomState(time_s=state.time_s,
                        probe_force_n=float(_snap(state.probe_force_n, FORCE_QUANTUM_N)),
                        probe_xy=tuple(float(v) for v in _snap(state.probe_xy, POSE_QUANTUM_M)),
                        roll=[float(_snap(r, ROLL_QUANTUM_M)) for r in state.roll],
                        shift=tuple(float(v) for v in state.shift))


@dataclass(frozen=True)
class SimSettings:
    """Rates and switches of one simulation (defaults from ``config/``'s ``sim`` section)."""

    seed: int = 0
    physics_hz: float = 1000.0
    us_hz: float = 30.0
    nir_hz: float = 30.0
    sensors: bool = True  # render images (off: physics and F/T only)
    image_latency_s: float = 0.02  # capture to delivery (render time on a real rig)

    @classmethod
    def from_config(cls, seed: int = 0, **overrides: float | bool) -> SimSettings:
        """Settings from ``config/ir_guidance.yaml`` (``sim`` section), then overrides."""
        section = dict(config.load().get('sim', {}))
        keys = {'physics_hz', 'us_hz', 'nir_hz', 'sensors', 'image_latency_s'}
        values = {k: v for k, v in section.items() if k in keys}
        values.update(overrides)
        return cls(seed=seed, **values)


@dataclass
class GroundTruth:
    """What really happened this tick, for scoring only (never for control)."""

    needle_tip: np.ndarray          # 4x4 world pose the needle model judged
    needle: NeedleForce             # the needle-tissue model's full answer for that pose
    probe_force_n: float

    @property
    def tip_in_lumen(self) -> bool:
        """The needle tip is inside a vein's lumen."""
        return bool(self.needle.in_lumen)

    @property
    def events(self) -> tuple[str, ...]:
        """Punctures and exits that happened this tick."""
        return tuple(self.needle.events)

    @property
    def needle_force(self) -> np.ndarray:
        """World force of the tissue on the needle."""
        return np.asarray(self.needle.force_world, dtype=float)


@dataclass
class TickOutput:
    """Everything the sensors produced on one tick; images are None when not due."""

    tick: int
    time_s: float
    joint_positions: np.ndarray
    joint_velocities: np.ndarray
    wrench: np.ndarray                       # F/T sensor: force (3), torque (3)
    truth: GroundTruth
    us_image: np.ndarray | None = None
    us_pose: np.ndarray | None = None        # world pose of the image frame at capture
    us_time_s: float | None = None           # capture time (the image's stamp)
    nir_image: np.ndarray | None = None
    depth_image: np.ndarray | None = None
    camera_pose: np.ndarray | None = None
    nir_time_s: float | None = None
    frames: dict[str, int] = field(default_factory=dict)  # frame index per stream


class Simulator:
    """The rig, the phantom and the sensors, advanced one tick per :meth:`step`."""

    def __init__(self, phantom: Phantom, settings: SimSettings | None = None,
                 initial: np.ndarray | None = None) -> None:
        self.phantom = phantom
        self.settings = settings or SimSettings()
        cfg = config.load()
        self.joint_names = config.joint_names()
        self.frames = cfg['frames']
        self.dt = 1.0 / self.settings.physics_hz
        chain = rig_description.rig_chain()
        self._lower, self._upper = chain.lower, chain.upper
        seed = self.settings.seed
        self.physics = RigPhysics(phantom, timestep=self.dt, seed=seed)
        self.tissue = NeedleTissueModel(phantom)
        self.us = UltrasoundSimulator(phantom, UltrasoundConfig(), seed=seed)
        self.nir = NirSimulator(phantom, CameraConfig(), seed=seed)
        self.state = phantom.new_state()
        start = np.array(cfg['robot']['home'] if initial is None else initial, dtype=float)
        self._check(start)
        self.physics.reset(start)
        self._command = start.copy()
        self.tick = 0
        self._next = {'us': 0, 'nir': 0}  # index of the next frame of each stream
        # Tick at which each stream's next frame is due (frame k at t = k / rate).
        self._due_tick = {'us': 0, 'nir': 0}
        self._latency_ticks = max(
            0, round(self.settings.image_latency_s * self.settings.physics_hz))
        # Frames in flight: (delivery tick, frame index, capture time, pose, image).
        self._pending: dict[str, list[tuple[int, int, float, np.ndarray, Any]]] = {
            name: [] for name in self._next}

    # -- commands -------------------------------------------------------------------------
    def _check(self, positions: np.ndarray) -> np.ndarray:
        x = np.asarray(positions, dtype=float)
        if x.shape != (len(self.joint_names),):
            raise SimCommandError(f'expected {len(self.joint_names)} joint positions '
                                  f'{self.joint_names}, got shape {x.shape}')
        inside = (x >= self._lower - 1e-9) & (x <= self._upper + 1e-9)  # False for NaN
        if not inside.all():
            if not np.all(np.isfinite(x)):
                raise SimCommandError(f'joint command not finite: {x.tolist()}')
            names = [n for n, ok in zip(self.joint_names, inside, strict=True) if not ok]
            raise SimCommandError(f'joint command outside limits for {names}')
        return x

    def command(self, positions: np.ndarray) -> None:
        """Set the servo targets (command order = config joint order)."""
        self._command = self._check(positions).copy()
        self.physics.set_command(self._command, checked=True)

    @property
    def last_command(self) -> np.ndarray:
        """The command in force (the last valid one)."""
        return self._command.copy()

    @property
    def time_s(self) -> float:
        """Simulated time of the last completed tick."""
        return self.tick * self.dt

    # -- stepping -------------------------------------------------------------------------
    def step(self) -> TickOutput:
        """Advance one physics tick and return what every sensor saw at its end."""
        self.tick += 1
        t = self.tick * self.dt
        self.state.time_s = t
        if self.phantom.motion_amplitude or any(self.state.shift):
            self.physics.move_forearm(self.phantom.offset(self.state))
        tip = self.physics.frame_pose(self.frames['needle_tip'])
        needle = self.tissue.step(tip[:3, 3], tip[:3, 2], self.state, dt_s=self.dt)
        self.physics.apply_needle_force(needle.force_world)
        probe = self.physics.frame_pose(self.frames['us_image'])
        contact = self.physics.probe_contact_force()
        self.state.probe_force_n = float(max(0.0, contact[2]))
        self.state.probe_xy = (float(probe[0, 3]), float(probe[1, 3]))
        self.physics.step()
        out = TickOutput(
            tick=self.tick, time_s=t,
            joint_positions=self.physics.joint_positions(),
            joint_velocities=self.physics.joint_velocities(),
            wrench=self.physics.ft_wrench(),
            # The pose the needle model judged: in-lumen and labels refer to exactly it.
            truth=GroundTruth(needle_tip=tip, needle=needle,
                              probe_force_n=self.state.probe_force_n))
        if self.settings.sensors:
            self._render_due(out)
        return out

    def _due(self, stream: str, rate_hz: float) -> int | None:
        """The frame index due at this tick, if any (the schedule of :mod:`lockstep`)."""
        if self.tick < self._due_tick[stream]:
            return None
        k = self._next[stream]
        self._next[stream] = k + 1
        self._due_tick[stream] = capture_tick(k + 1, rate_hz, self.settings.physics_hz)
        return k

    def _render_due(self, out: TickOutput) -> None:
        """Capture the frames due this tick and attach the frames due for delivery."""
        needle_tip = out.truth.needle_tip
        for name, rate, frame in (('us', self.settings.us_hz, self.frames['us_image']),
                                  ('nir', self.settings.nir_hz,
                                   self.frames['camera_optical'])):
            k = self._due(name, rate)
            if k is not None:
                pose = snap_pose(self.physics.frame_pose(frame))
                scene = snap_state(self.state)
                if name == 'us':
                    needle = (needle_tip[:3, 3], needle_tip[:3, 2])
                    image = self.us.render(pose, scene, needle, k)
                else:
                    image = self.nir.render(pose, scene, k)
                self._pending[name].append(
                    (self.tick + self._latency_ticks, k, self.time_s, pose, image))
            pending = self._pending[name]
            while pending and pending[0][0] <= self.tick:
                _, k, captured, pose, image = pending.pop(0)
                out.frames[name] = k
                if name == 'us':
                    out.us_image, out.us_pose, out.us_time_s = image, pose, captured
                else:
                    (out.nir_image, out.depth_image), out.camera_pose = image, pose
                    out.nir_time_s = captured

    def run(self, seconds: float) -> list[TickOutput]:
        """Step for ``seconds`` of simulated time with the current command."""
        return [self.step() for _ in range(round(seconds * self.settings.physics_hz))]


def stream_hash(outputs: list[TickOutput]) -> str:
    """SHA-256 over every sensor sample of a run: equal hashes mean identical streams."""
    digest = hashlib.sha256()
    for out in outputs:
        for array in (out.joint_positions, out.joint_velocities, out.wrench):
            digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
        for image in (out.us_image, out.nir_image, out.depth_image):
            if image is not None:
                digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()
