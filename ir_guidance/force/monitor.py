"""The force monitor: F/T wrench in, compensated force, axial needle force and events out.

Algorithm layer (ROS-free): the guidance controller calls :meth:`ForceMonitor.update`
in-process on every 1 kHz tick, and ``nodes/force_monitor.py`` wraps the same class for
ROS. Per sample, in order:

1. **Check** the input: a wrench that is not 6 finite numbers, a rotation that is not a
   finite 3x3 rotation, a stamp that is not finite or does not increase, or a bad needle
   depth raise :class:`ForceInputError` (a ``ValueError`` carrying an ``'invalid'``
   :class:`ForceEvent`) and leave the monitor unchanged: the caller must stop the needle.
   A gap of more than ``max_gap_s`` since the previous sample restarts the filter and
   the detector on this sample and reports an ``'invalid'`` event in the sample.
2. **Compensate**: subtract the tare offset and, with ``gravity_compensation``, the
   tool's weight at the sensor's current attitude (mass and centre of mass of the links
   below ``ft_sensor_frame`` from the URDF). The tare offset is what the sensor read at
   tare minus the weight at that attitude, so bias, the probe's contact force at tare and
   the weight at the tare attitude all go, and re-orienting the tool afterwards adds no
   weight error. The embedded simulator already takes the weight off at every attitude
   (``sim/physics.py``), so there ``gravity_compensation`` is off; a real sensor (and
   Gazebo's) measures the weight and needs it on.
3. **Filter** all six components with a Butterworth low-pass (:mod:`.filters`); the
   filter's group delay is :attr:`ForceMonitor.delay_s`.
4. **Axial force**: minus the filtered force along the needle axis (the axis is fixed in
   the sensor frame), so resistance to insertion is positive; its rate is the difference
   of consecutive filtered values over their stamps.
5. **Events**: ``'force_limit'`` when the axial force exceeds ``max_axial_force_n`` or
   the force magnitude ``max_force_n``; ``'rate_limit'`` when the axial force rises
   faster than ``max_axial_rate_n_s`` (loading; the fall at a puncture is not a limit).
   Each fires once when its value crosses the limit and re-arms when the value is back
   below ``limit_rearm_ratio`` times the limit. ``'puncture'`` from
   :class:`~ir_guidance.force.puncture.PunctureDetector`; the punctures after a tare are
   named in order ``skin``, ``front_wall``, ``back_wall`` (and ``back_wall`` again)
   unless the controller says otherwise with :meth:`ForceMonitor.expect`.

``docs/force.md`` documents the detector, its measured delay and false-positive rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ir_guidance.force.filters import ButterworthLowpass
from ir_guidance.force.puncture import PunctureDetector, PunctureParams

GRAVITY = 9.80665
# The membranes a straight venipuncture meets, in order.
MEMBRANES = ('skin', 'front_wall', 'back_wall')
_ROTATION_TOL = 1e-3


@dataclass(frozen=True, slots=True)
class ForceEvent:
    """Something the controller must know about, from one sample.

    ``kind``: ``'puncture'``, ``'force_limit'``, ``'rate_limit'`` or ``'invalid'``.
    ``peak_n``: the puncture's peak axial force, or the value that crossed a limit
    (N, or N/s for ``rate_limit``). ``drop_n``: the fall of the axial force after a
    puncture's peak when it was declared (0 for other kinds). ``membrane``: which one a
    puncture is taken to be (``''`` for other kinds). ``depth_m``: the needle depth the
    caller gave with the sample (None if none).
    """

    kind: str
    stamp_s: float
    peak_n: float
    drop_n: float
    detail: str
    membrane: str = ''
    depth_m: float | None = None


@dataclass(frozen=True, slots=True)
class ForceSample:
    """The monitor's answer to one F/T sample."""

    stamp_s: float
    wrench: np.ndarray        # (6,) filtered, bias- and gravity-compensated, sensor frame
    axial_n: float            # force along the needle axis (+ = tissue resisting insertion)
    axial_rate_n_s: float
    events: tuple[ForceEvent, ...]   # this sample's events


class ForceInputError(ValueError):
    """A sample the monitor refuses; ``event`` is the matching ``'invalid'`` event."""

    def __init__(self, message: str, stamp_s: float = math.nan) -> None:
        super().__init__(message)
        self.event = ForceEvent(kind='invalid', stamp_s=stamp_s, peak_n=0.0, drop_n=0.0,
                                detail=message)


@dataclass(frozen=True)
class MonitorParams:
    """The ``force_monitor`` config section (the keys the algorithm uses)."""

    sample_rate_hz: float = 1000.0
    filter_cutoff_hz: float = 40.0
    filter_order: int = 2
    gravity_compensation: bool = False
    max_gap_s: float = 0.02
    max_force_n: float = 15.0
    max_axial_force_n: float = 3.0
    max_axial_rate_n_s: float = 60.0
    limit_rearm_ratio: float = 0.8
    puncture: PunctureParams = field(default_factory=PunctureParams)

    def __post_init__(self) -> None:
        if not isinstance(self.gravity_compensation, bool):
            raise ValueError('gravity_compensation must be true or false, got '
                             f'{self.gravity_compensation!r}')
        for name in ('sample_rate_hz', 'filter_cutoff_hz', 'max_gap_s', 'max_force_n',
                     'max_axial_force_n', 'max_axial_rate_n_s', 'limit_rearm_ratio'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not (math.isfinite(value) and value > 0):
                raise ValueError(f'force_monitor.{name} must be finite and > 0, got {value!r}')
        if self.limit_rearm_ratio >= 1:
            raise ValueError('force_monitor.limit_rearm_ratio must be < 1')

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> MonitorParams:
        """From the config section; keys the algorithm does not use (the node's) are skipped."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in section.items() if k in names}
        if 'puncture' in values:
            values['puncture'] = PunctureParams.from_dict(dict(values['puncture']))
        return cls(**values)


def tool_mass_properties(urdf_xml: str, sensor_frame: str) -> tuple[float, np.ndarray]:
    """Mass (kg) and centre of mass (sensor frame, m) of every link below ``sensor_frame``.

    Read with pinocchio, at the neutral configuration (the needle stage at 0: its 50 g
    carriage moving 40 mm shifts the centre of mass by under 3 mm, a torque error of
    about 0.02 N m and no force error). Pinocchio merges links on fixed joints into their
    joint's body and keeps each merged link's inertia on its fixed-joint frame, so the
    tool is the sum of those frames' inertias and, for a joint below the sensor (the
    stage), its body's inertia minus the merged links counted on their own frames.
    """
    import pinocchio as pin

    model = pin.buildModelFromXML(urdf_xml)
    if not model.existFrame(sensor_frame):
        raise ValueError(f'frame {sensor_frame!r} is not in the URDF')
    data = model.createData()
    pin.framesForwardKinematics(model, data, pin.neutral(model))
    root = model.getFrameId(sensor_frame)

    def below(frame_id: int) -> bool:
        while frame_id != 0:
            if frame_id == root:
                return True
            frame_id = model.frames[frame_id].parentFrame
        return False

    mass, moment = 0.0, np.zeros(3)     # moment: sum of m * c, world frame
    for fid, frame in enumerate(model.frames):
        if fid == root or not below(fid):
            continue
        if frame.type == pin.FrameType.FIXED_JOINT and frame.inertia.mass > 0:
            m = frame.inertia.mass
            mass += m
            moment += m * data.oMf[fid].act(frame.inertia.lever)
        elif frame.type == pin.FrameType.JOINT:
            joint = frame.parentJoint
            body = model.inertias[joint]
            m, first = body.mass, body.mass * body.lever
            for merged in model.frames:
                if merged.parentJoint == joint and merged.type == pin.FrameType.FIXED_JOINT:
                    m -= merged.inertia.mass
                    first = first - merged.inertia.mass * merged.placement.act(
                        merged.inertia.lever)
            if m > 1e-12:
                mass += m
                moment += data.oMi[joint].act(first / m) * m
    if mass <= 0:
        return 0.0, np.zeros(3)
    sensor = data.oMf[root]
    return float(mass), sensor.actInv(moment / mass)


def needle_axis_in_sensor(chain: Any, positions: np.ndarray, sensor_frame: str,
                          tip_frame: str) -> np.ndarray:
    """The needle tip's +z axis in ``sensor_frame`` axes (fixed: the stage is prismatic)."""
    sensor = chain.fk(positions, sensor_frame)
    tip = chain.fk(positions, tip_frame)
    axis = sensor[:3, :3].T @ tip[:3, 2]
    return axis / np.linalg.norm(axis)


class ForceMonitor:
    """Stateful per-sample force processing for one needle insertion rig."""

    def __init__(self, params: dict | MonitorParams, needle_axis_sensor: np.ndarray,
                 tool_mass_kg: float, tool_com_sensor: np.ndarray) -> None:
        self.params = params if isinstance(params, MonitorParams) \
            else MonitorParams.from_dict(params)
        axis = np.asarray(needle_axis_sensor, dtype=float)
        if axis.shape != (3,) or not np.all(np.isfinite(axis)) \
                or abs(np.linalg.norm(axis) - 1.0) > 1e-6:
            raise ValueError(f'needle_axis_sensor must be a unit 3-vector, got {axis!r}')
        com = np.asarray(tool_com_sensor, dtype=float)
        if com.shape != (3,) or not np.all(np.isfinite(com)):
            raise ValueError(f'tool_com_sensor must be 3 finite numbers, got {com!r}')
        if not (math.isfinite(tool_mass_kg) and tool_mass_kg >= 0):
            raise ValueError(f'tool_mass_kg must be finite and >= 0, got {tool_mass_kg!r}')
        self.needle_axis = axis
        self.tool_mass_kg = float(tool_mass_kg)
        self.tool_com = com
        # Weight wrench at attitude R = M @ R[2, :]: the force m g_sensor with g_sensor =
        # R^T (0, 0, -g) = -g R[2, :], and its moment com x (m g_sensor).
        skew = np.array([[0.0, -com[2], com[1]], [com[2], 0.0, -com[0]],
                         [-com[1], com[0], 0.0]])
        self._weight_map = -self.tool_mass_kg * GRAVITY * np.vstack((np.eye(3), skew))
        self._weight_rows = [tuple(row) for row in self._weight_map.tolist()]
        self._axis_list = axis.tolist()
        p = self.params
        self._filter = ButterworthLowpass(p.filter_cutoff_hz, p.sample_rate_hz,
                                          p.filter_order, channels=6)
        self._detector = PunctureDetector(p.puncture)
        self._offset = np.zeros(6)
        self._offset_list = [0.0] * 6
        self._tared = False
        self._next_membrane: str | None = None
        self._sequence_start = 0
        self._punctures: list[ForceEvent] = []
        self.reset()

    @classmethod
    def from_config(cls) -> ForceMonitor:
        """Geometry and tool mass from the rig's URDF, parameters from config/."""
        from ir_guidance import config, rig_description

        cfg = config.load()
        frames = cfg['frames']
        chain = rig_description.rig_chain()
        home = np.array(cfg['robot']['home'], dtype=float)
        axis = needle_axis_in_sensor(chain, home, frames['ft_sensor'], frames['needle_tip'])
        mass, com = tool_mass_properties(rig_description.rig_urdf(), frames['ft_sensor'])
        return cls(cfg['force_monitor'], axis, mass, com)

    # -- state ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the stream (filter, detector, limits, last stamp); keep the tare."""
        self._filter.reset(0.0)
        self._detector.reset()
        self._last_stamp = -math.inf
        self._last_axial = 0.0
        self._depth: float | None = None
        self._depth_stamp = -math.inf
        self._speed: float | None = None
        self._armed = {'force': True, 'rate': True}
        self.last: ForceSample | None = None

    def tare(self, wrench: np.ndarray, sensor_rotation: np.ndarray) -> None:
        """Zero the monitor on the current load (bias, probe contact, weight at this attitude).

        ``wrench`` is one reading (6,) or several (N, 6), taken at ``sensor_rotation``
        (their mean is used; averaging 100 readings takes the noise of the offset down
        tenfold).

        Restarts the filter at rest on zero and the puncture count (the next puncture is
        the skin's). Raises :class:`ForceInputError` on bad input, leaving the tare as it was.
        """
        w = np.asarray(wrench, dtype=float)
        if w.ndim == 1:
            w = w[None, :]
        if w.ndim != 2 or w.shape[1] != 6 or len(w) == 0:
            raise ForceInputError(f'tare wrench must have shape (6,) or (N, 6), got {w.shape}')
        if not np.all(np.isfinite(w)):
            raise ForceInputError('tare wrench has NaN or infinite values')
        weight = self._weight(self._rotation(sensor_rotation, math.nan))
        self._offset = w.mean(axis=0) - weight
        self._offset_list = self._offset.tolist()
        self._tared = True
        self._punctures = []
        self._next_membrane = None
        self._sequence_start = 0
        self.reset()

    def expect(self, membrane: str) -> None:
        """Name the next puncture ``membrane``; later ones follow on in :data:`MEMBRANES`.

        For when the controller knows better, e.g. a retry through an existing skin hole.
        """
        if not isinstance(membrane, str) or not membrane:
            raise ValueError(f'membrane must be a non-empty string, got {membrane!r}')
        self._next_membrane = membrane

    @property
    def delay_s(self) -> float:
        """Group delay of the low-pass filter at low frequency (s)."""
        return self._filter.delay_s

    @property
    def bias(self) -> np.ndarray:
        """The tare offset (6,): sensor bias plus the load at tare, less the weight there."""
        return self._offset.copy()

    @property
    def tared(self) -> bool:
        return self._tared

    @property
    def punctures(self) -> tuple[ForceEvent, ...]:
        """Punctures declared since the last tare, in order."""
        return tuple(self._punctures)

    # -- per sample -------------------------------------------------------------------------
    @staticmethod
    def _rotation(rotation: np.ndarray, stamp_s: float) -> list[float]:
        """The third row of a checked rotation matrix (all the weight needs), as floats."""
        r = np.asarray(rotation, dtype=float)
        if r.shape != (3, 3):
            raise ForceInputError(f'sensor_rotation must be 3x3, got shape {r.shape}', stamp_s)
        (a, b, c), (d, e, f), (g, h, i) = rows = r.tolist()
        if not all(map(math.isfinite, (a, b, c, d, e, f, g, h, i))):
            raise ForceInputError('sensor_rotation has NaN or infinite values', stamp_s)
        # Orthonormal rows and a right-handed frame (det = +1), on plain floats.
        errors = (a * a + b * b + c * c - 1.0, d * d + e * e + f * f - 1.0,
                  g * g + h * h + i * i - 1.0, a * d + b * e + c * f, a * g + b * h + c * i,
                  d * g + e * h + f * i,
                  a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g) - 1.0)
        if max(map(abs, errors)) > _ROTATION_TOL:
            raise ForceInputError('sensor_rotation is not a rotation matrix', stamp_s)
        return rows[2]

    def _weight(self, third_row: list[float]) -> np.ndarray:
        if not self.params.gravity_compensation:
            return np.zeros(6)
        return self._weight_map @ np.asarray(third_row)

    def update(self, stamp_s: float, wrench: np.ndarray, sensor_rotation: np.ndarray,
               depth_m: float | None = None) -> ForceSample:
        """Process one F/T reading (sensor frame) taken at ``stamp_s``.

        ``sensor_rotation``: 3x3 attitude of ft_sensor_frame in the base (read only with
        gravity compensation on). ``depth_m``: optional needle insertion depth (stage
        travel), copied into puncture events and used to tell a stop from a puncture.
        Raises :class:`ForceInputError` (state unchanged) on a bad sample.
        """
        if not isinstance(stamp_s, (int, float)) or not math.isfinite(stamp_s):
            raise ForceInputError(f'stamp must be a finite number, got {stamp_s!r}')
        if stamp_s <= self._last_stamp:
            raise ForceInputError(f'stamp {stamp_s:.6f} s does not follow the previous '
                                  f'{self._last_stamp:.6f} s', stamp_s)
        w = np.asarray(wrench, dtype=float)
        if w.shape != (6,):
            raise ForceInputError(f'wrench must have shape (6,), got {w.shape}', stamp_s)
        values = w.tolist()
        if not all(map(math.isfinite, values)):
            raise ForceInputError(f'wrench has NaN or infinite values: {values}', stamp_s)
        if depth_m is not None and not math.isfinite(depth_m):
            raise ForceInputError(f'needle depth must be finite, got {depth_m!r}', stamp_s)
        # Plain floats from here on: on six values they are several times faster than numpy.
        if self.params.gravity_compensation:
            rx, ry, rz = self._rotation(sensor_rotation, stamp_s)
            compensated = [v - o - (mx * rx + my * ry + mz * rz) for v, o, (mx, my, mz)
                           in zip(values, self._offset_list, self._weight_rows, strict=True)]
        else:
            compensated = [v - o for v, o in zip(values, self._offset_list, strict=True)]

        events: list[ForceEvent] = []
        gap = stamp_s - self._last_stamp
        if gap > self.params.max_gap_s and self._last_stamp > -math.inf:
            events.append(ForceEvent(
                'invalid', stamp_s, 0.0, 0.0,
                f'{gap * 1e3:.1f} ms without F/T samples (max {self.params.max_gap_s * 1e3:g} '
                'ms): filter and puncture detector restarted, events in the gap missed'))
            self._filter.reset(np.array(compensated))
            self._detector.reset()
            self._last_stamp = -math.inf
            self._depth = None
        filtered = self._filter.step(compensated)
        fx, fy, fz = filtered[0], filtered[1], filtered[2]
        ax, ay, az = self._axis_list
        axial = -(fx * ax + fy * ay + fz * az)
        first = self._last_stamp == -math.inf
        rate = 0.0 if first else (axial - self._last_axial) / gap
        self._last_stamp = stamp_s
        self._last_axial = axial
        speed = self._needle_speed(stamp_s, depth_m)

        p = self.params
        force = math.sqrt(fx * fx + fy * fy + fz * fz)
        over = axial > p.max_axial_force_n or force > p.max_force_n
        if over and self._armed['force']:
            which = 'axial' if axial > p.max_axial_force_n else 'magnitude'
            events.append(ForceEvent(
                'force_limit', stamp_s, axial if which == 'axial' else force, 0.0,
                f'{which} force {axial if which == "axial" else force:.2f} N over the limit '
                f'{p.max_axial_force_n if which == "axial" else p.max_force_n:g} N',
                depth_m=depth_m))
            self._armed['force'] = False
        elif not self._armed['force'] and axial < p.limit_rearm_ratio * p.max_axial_force_n \
                and force < p.limit_rearm_ratio * p.max_force_n:
            self._armed['force'] = True
        if rate > p.max_axial_rate_n_s and self._armed['rate']:
            events.append(ForceEvent(
                'rate_limit', stamp_s, rate, 0.0,
                f'axial force rising at {rate:.1f} N/s, over the limit '
                f'{p.max_axial_rate_n_s:g} N/s', depth_m=depth_m))
            self._armed['rate'] = False
        elif not self._armed['rate'] and rate < p.limit_rearm_ratio * p.max_axial_rate_n_s:
            self._armed['rate'] = True

        puncture = self._detector.update(stamp_s, axial, speed)
        if puncture is not None:
            membrane = self._membrane()
            event = ForceEvent(
                'puncture', stamp_s, puncture.peak_n, puncture.drop_n,
                f'{membrane} puncture: peak {puncture.peak_n:.3f} N at '
                f'{puncture.peak_stamp_s:.3f} s after a {puncture.rise_n:.3f} N rise, '
                f'drop {puncture.drop_n:.3f} N so far'
                + ('' if depth_m is None else f', depth {depth_m * 1e3:.2f} mm'),
                membrane=membrane, depth_m=depth_m)
            self._punctures.append(event)
            events.append(event)
        sample = ForceSample(stamp_s, np.array(filtered), axial, rate, tuple(events))
        self.last = sample
        return sample

    def _needle_speed(self, stamp_s: float, depth_m: float | None) -> float | None:
        """Insertion speed from the depth samples (first-order low-pass, 10 ms)."""
        if depth_m is None:
            self._depth = None
            self._speed = None
            return None
        if self._depth is None:
            self._depth, self._depth_stamp, self._speed = depth_m, stamp_s, None
            return None
        raw = (depth_m - self._depth) / (stamp_s - self._depth_stamp)
        dt = stamp_s - self._depth_stamp
        alpha = dt / (0.01 + dt)
        self._speed = raw if self._speed is None else self._speed + alpha * (raw - self._speed)
        self._depth, self._depth_stamp = depth_m, stamp_s
        return self._speed

    def _membrane(self) -> str:
        if self._next_membrane is not None:
            name = self._next_membrane
            self._next_membrane = None
            if name in MEMBRANES:
                # Later punctures continue the sequence from the named membrane.
                self._sequence_start = MEMBRANES.index(name) - len(self._punctures)
            return name
        index = len(self._punctures) + self._sequence_start
        return MEMBRANES[min(max(index, 0), len(MEMBRANES) - 1)]
