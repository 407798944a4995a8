"""The 3D vessel map: US cross-sections and NIR vein points fused into centrelines.

Algorithms layer (numpy/scipy, no ROS). Everything is in the robot's base frame.

Model. A vessel is a curve with a fixed reference axis ``a`` (set when the vessel is
created: the normal of the transverse US image that first saw it, or the principal
direction of the NIR polyline). Its centreline is described by the offset ``q(s) = (u, v)``
in the plane across ``a`` as a function of the arc coordinate ``s`` along ``a``; ``v`` is
"up" (world +z made orthogonal to ``a``), ``u = v × a`` lateral. ``s`` is cut into bins
(``bin_m``); each bin keeps weighted sums (information form) of what was seen there:

- a US cross-section fixes both ``u`` and ``v`` (its centre, placed in 3D by the image
  pose) and the radius (equivalent radius ``sqrt(a * b)`` of the section's ellipse);
- a NIR point lies on the *skin* above the vein, where the camera ray through the vein
  meets the skin: it fixes the vein only across that ray, not along it (the depth is
  unknown). It enters as a rank-1 constraint ``n · (q - q_skin) = 0`` with ``n`` normal
  to the ray in the cross-section plane, and a lower weight: all NIR views of a bin
  together weigh at most ``nir_weight`` (one US section weighs its confidence), since
  repeated views of the same skin share their bias. A vessel
  seen only by NIR has no depth and is not reported (it still helps associate US).

Association (gating in 3D): each section is compared with every vessel's predicted
centre at its ``s`` (a weighted line fit of the bins within ``smooth_m``); pairs further
than ``gate_m`` are not matched, and the same US tracker id as the vessel's last match
allows ``hint_gate_m``; one section per vessel per frame (Hungarian assignment). An
unmatched section starts a tentative vessel, reported after ``min_observations`` frames
and dropped when it gets no second frame within ``tentative_s``. A vessel is reported only
while it was seen in at least ``min_hit_ratio`` of the frames whose image cut its mapped
stretch (false detections that happen to line up are seen in few of them).
Outliers: sections below ``min_confidence``, with an aspect ratio above ``max_aspect``
(a longitudinal cut, not a cross-section) or outside the gate are not used; NIR points
further than ``nir_gate_m`` across the ray from the vessel are dropped.

Recency: before a bin takes a new observation its sums are multiplied by
``exp(-dt / forget_s)`` (``dt`` since the bin's last update), so a vessel that rolls or
moves under a held probe is followed within ~``forget_s``; a bin not seen again keeps its
estimate while its uncertainty grows by ``drift_m_s`` per second of age.

Read-out: per bin a weighted local quadratic fit of the bin estimates within ±``smooth_m``
gives the centreline point (robust to one bad bin by a second pass with Huber weights),
a local linear fit the radius; ``sigma`` combines the fit residuals, the scatter inside
the bins and the number of observations, plus the age term.

Determinism: observations are kept sorted by (stamp, kind, arrival) and processed in that
order; after each one a snapshot of the state is kept (``replay_window`` of them), so an
observation arriving late (NIR results come later than US ones) rolls the map back to the
snapshot before its stamp and replays the rest. The map therefore depends only on the set
of observations and their stamps, never on the order they were added in.
:meth:`vessels` and :meth:`skin_points` also answer for ``until_s``: the map of every
observation stamped up to then.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

DEFAULTS: dict[str, float] = {
    'bin_m': 0.0005,            # length of a centreline bin along the vessel
    'gate_m': 0.002,            # section to predicted centre, to join a vessel
    'hint_gate_m': 0.004,       # the same, for the vessel the tracker id matched last
    'extend_m': 0.004,          # a vessel is predicted this far past its ends
    'smooth_m': 0.003,          # half window of the local centreline fit
    'min_confidence': 0.3,      # sections below are not used
    'max_aspect': 4.0,          # radius_major / radius_minor above: not a cross-section
    'min_observations': 5,      # US frames before a vessel is reported
    'tentative_s': 1.0,         # a vessel with one frame is dropped after this
    'forget_s': 1.0,            # time constant of the per-bin forgetting
    'drift_m_s': 0.00005,       # sigma growth per second since a bin was seen
    'us_sigma_m': 0.0002,       # prior noise of one US section centre
    'nir_weight': 0.2,          # weight of a NIR point relative to a US section
    'nir_gate_m': 0.003,        # NIR point across its ray to the vessel
    'nir_min_length_m': 0.005,  # shorter NIR polylines do not start a vessel
    'replay_window': 512,       # snapshots kept for late observations
    'min_hit_ratio': 0.5,       # frames that saw a vessel / frames whose image crossed it
}


def _image_size() -> tuple[float, float]:
    """Width and depth of the US image (config ``ultrasound`` section)."""
    from ir_guidance import config

    section = config.load()['ultrasound']
    return float(section['width_m']), float(section['depth_m'])

# Columns of a vessel's bin table.
T_LAST, W_US, SU, SV, SQQ, SR, SRR, N_US, A_UU, A_UV, A_VV, B_U, B_V, W_NIR, S_CONF = range(15)
COLUMNS = 15
DECAYED = [W_US, SU, SV, SQQ, SR, SRR, N_US, A_UU, A_UV, A_VV, B_U, B_V, W_NIR, S_CONF]
US, NIR = 0, 1


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical (a, u, v): a's largest component positive, v up, u = v x a."""
    a = _unit(np.asarray(axis, dtype=float))
    if a[np.argmax(np.abs(a))] < 0:
        a = -a
    up = np.array([0.0, 0.0, 1.0])
    if abs(a @ up) > 0.95:  # a vertical vessel: any horizontal "up" will do
        up = np.array([1.0, 0.0, 0.0])
    v = _unit(up - (up @ a) * a)
    return a, np.cross(v, a), v


@dataclass(frozen=True)
class VesselEstimate:
    """One mapped vessel, as :meth:`VesselMap.vessels` reports it (base frame, metres)."""

    id: int
    points: np.ndarray        # (N, 3) centreline samples, ordered along the vessel
    radius: np.ndarray        # (N,) equivalent radius sqrt(a * b)
    sigma: np.ndarray         # (N,) 1-sigma position uncertainty
    confidence: float         # 0..1
    observations: int         # US frames that saw it


class _Vessel:
    """Bins of one vessel (mutable; copied for snapshots)."""

    __slots__ = ('a', 'bins', 'created', 'first_bin', 'frames', 'id', 'last_us', 'misses',
                 'origin', 'u', 'v')

    def __init__(self, vid: int, origin: np.ndarray, axis: np.ndarray, created: float) -> None:
        self.id = vid
        self.origin = np.asarray(origin, dtype=float)
        self.a, self.u, self.v = _frame(axis)
        self.first_bin = 0
        self.bins = np.zeros((0, COLUMNS))
        self.frames = 0             # US frames matched (undecayed)
        self.misses = 0             # US frames that crossed it without seeing it
        self.created = created
        self.last_us = -math.inf

    def copy(self) -> _Vessel:
        other = _Vessel.__new__(_Vessel)
        for name in self.__slots__:
            setattr(other, name, getattr(self, name))
        other.bins = self.bins.copy()
        return other

    # -- coordinates ----------------------------------------------------------------------
    def local(self, points: np.ndarray) -> np.ndarray:
        """(s, u, v) of base-frame points (N, 3)."""
        d = np.atleast_2d(points) - self.origin
        return np.column_stack((d @ self.a, d @ self.u, d @ self.v))

    def world(self, s: np.ndarray, q: np.ndarray) -> np.ndarray:
        return (self.origin + np.outer(s, self.a) + np.outer(q[:, 0], self.u)
                + np.outer(q[:, 1], self.v))

    def bin_of(self, s: float | np.ndarray, bin_m: float) -> np.ndarray:
        return np.floor(np.asarray(s) / bin_m).astype(int)

    def row(self, k: int) -> int:
        """Row of bin ``k`` in the table, growing it as needed."""
        if self.bins.shape[0] == 0:
            self.first_bin = k
            self.bins = np.zeros((1, COLUMNS))
            self.bins[0, T_LAST] = -math.inf
            return 0
        if k < self.first_bin:
            pad = np.zeros((self.first_bin - k, COLUMNS))
            pad[:, T_LAST] = -math.inf
            self.bins = np.vstack((pad, self.bins))
            self.first_bin = k
        last = self.first_bin + self.bins.shape[0] - 1
        if k > last:
            pad = np.zeros((k - last, COLUMNS))
            pad[:, T_LAST] = -math.inf
            self.bins = np.vstack((self.bins, pad))
        return k - self.first_bin

    def decay_to(self, r: int, stamp: float, forget_s: float) -> None:
        last = self.bins[r, T_LAST]
        if math.isfinite(last) and stamp > last:
            self.bins[r, DECAYED] *= math.exp(-(stamp - last) / forget_s)
        self.bins[r, T_LAST] = max(last, stamp)

    # -- per-bin estimates ----------------------------------------------------------------
    def centres(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Bin centres s, estimates q (N, 2), information weights (N, 2), depth known."""
        b = self.bins
        n = b.shape[0]
        s = (self.first_bin + np.arange(n) + 0.5)
        a_uu = b[:, W_US] + b[:, A_UU]
        a_uv = b[:, A_UV]
        a_vv = b[:, W_US] + b[:, A_VV]
        bu = b[:, SU] + b[:, B_U]
        bv = b[:, SV] + b[:, B_V]
        det = a_uu * a_vv - a_uv ** 2
        trace = a_uu + a_vv
        full = det > 1e-6 * np.maximum(trace, 1e-300) ** 2
        q = np.zeros((n, 2))
        with np.errstate(divide='ignore', invalid='ignore'):
            q[full, 0] = (a_vv[full] * bu[full] - a_uv[full] * bv[full]) / det[full]
            q[full, 1] = (a_uu[full] * bv[full] - a_uv[full] * bu[full]) / det[full]
            # Rank 1 (NIR only): the minimum-norm solution fixes the component across the ray.
            part = ~full & (trace > 0)
            q[part, 0] = bu[part] / trace[part]
            q[part, 1] = bv[part] / trace[part]
        weights = np.column_stack((a_uu, a_vv))
        return s, q, weights, full & (b[:, W_US] > 0)


class _State:
    """Everything the map is after a prefix of the observations (copied for snapshots)."""

    def __init__(self) -> None:
        self.vessels: dict[int, _Vessel] = {}
        self.next_id = 1
        self.hints: dict[int, int] = {}        # US tracker id -> vessel id
        self.skin: list[np.ndarray] = []       # probe-face centres of frames in contact
        self.stamp = -math.inf

    def copy(self) -> _State:
        other = _State()
        other.vessels = {k: v.copy() for k, v in self.vessels.items()}
        other.next_id = self.next_id
        other.hints = dict(self.hints)
        other.skin = list(self.skin)
        other.stamp = self.stamp
        return other


@dataclass(frozen=True)
class _Observation:
    key: tuple[int, int, int]    # (stamp in ns, kind, arrival): the processing order
    stamp: float
    kind: int
    data: Any


def _line_at(x: np.ndarray, y: np.ndarray, w: np.ndarray, at: float) -> float:
    """Weighted least-squares line through (x, y), evaluated at ``at`` (a mean if flat)."""
    total = float(w.sum())
    xm = float(w @ x) / total
    ym = float(w @ y) / total
    dx = x - xm
    sxx = float(w @ (dx * dx))
    if sxx <= 1e-12 * total:
        return ym
    return ym + float(w @ (dx * (y - ym))) / sxx * (at - xm)


def _local_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, half: int, degree: int
               ) -> np.ndarray:
    """Weighted local polynomial fit at every ``x[r]`` over the samples ``|k - r| <= half``.

    All windows at once (normal equations, batched); a small ridge on the slope and
    curvature keeps windows with too few samples solvable (they fall back to lower order).
    """
    n = len(x)
    idx = np.arange(n)
    inside = (np.abs(idx[:, None] - idx[None, :]) <= half) * w[None, :]
    dx = x[None, :] - x[:, None]
    powers = [np.ones_like(dx)]
    for _ in range(2 * degree):
        powers.append(powers[-1] * dx)
    moments = np.stack([np.sum(inside * pw, axis=1) for pw in powers], axis=1)
    a = np.empty((n, degree + 1, degree + 1))
    for i in range(degree + 1):
        for j in range(degree + 1):
            a[:, i, j] = moments[:, i + j]
    b = np.stack([np.sum(inside * powers[i] * y[None, :], axis=1) for i in range(degree + 1)],
                 axis=1)
    ridge = 1e-6 * np.maximum(moments[:, 0], 1e-300)
    for i in range(1, degree + 1):
        a[:, i, i] += ridge
    a[:, 0, 0] += 1e-300
    return np.linalg.solve(a, b[..., None])[:, 0, 0]


class VesselMap:
    """Vessel centrelines from stamped US cross-sections and NIR vein points.

    ``params``: the config ``vessel_mapper`` section (keys of :data:`DEFAULTS`; unknown
    keys are ignored so the node's own keys can share the section).
    """

    def __init__(self, params: dict | None = None) -> None:
        p = dict(DEFAULTS)
        for key, value in (params or {}).items():
            if key in DEFAULTS:
                p[key] = value
        for key, value in p.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f'vessel_mapper {key} must be a finite number > 0, '
                                 f'got {value!r}')
        self.p = p
        self._image = _image_size()
        self._observations: list[_Observation] = []
        self._arrivals = 0
        self._state = _State()
        # _snapshots[i] is the state after processing _observations[_snap_base + i].
        self._snapshots: list[_State] = []
        self._snap_base = 0

    # -- input ----------------------------------------------------------------------------
    def add_us(self, stamp_s: float, image_pose: np.ndarray, sections: Sequence,
               ids: Sequence[int] | None = None, contact: bool | None = None) -> None:
        """One US frame: its cross-sections and the image frame's pose at ``stamp_s``.

        ``sections``: objects with ``x, y, radius_major, radius_minor, confidence`` (image
        metres) and optionally ``id`` (the tracker's; or pass ``ids``). ``contact``: the
        probe touched the skin (default: the frame shows at least one section). NaN
        anywhere raises ValueError and nothing is added.
        """
        stamp = self._check_stamp(stamp_s)
        pose = np.asarray(image_pose, dtype=float)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError(f'US frame at {stamp:.6f} s: image_pose must be a finite 4x4 '
                             f'matrix, got shape {pose.shape}')
        rows = []
        for i, sec in enumerate(sections):
            try:
                values = [float(getattr(sec, name)) for name in
                          ('x', 'y', 'radius_major', 'radius_minor', 'confidence')]
            except AttributeError as error:
                raise ValueError(f'US frame at {stamp:.6f} s: section {i} lacks a field '
                                 f'({error})') from None
            tid = ids[i] if ids is not None else getattr(sec, 'id', -1)
            values.append(float(tid))
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f'US frame at {stamp:.6f} s: section {i} has NaN/inf '
                                 f'values {values}; frame not used')
            if values[2] <= 0 or values[3] < 0:
                raise ValueError(f'US frame at {stamp:.6f} s: section {i} has a radius <= 0 '
                                 f'({values[2]}, {values[3]}); frame not used')
            rows.append(values)
        if ids is not None and len(ids) != len(rows):
            raise ValueError(f'{len(ids)} ids for {len(rows)} sections')
        table = np.array(rows, dtype=float).reshape(-1, 6)
        touching = bool(len(table)) if contact is None else bool(contact)
        self._insert(stamp, US, (pose, table, touching))

    def add_nir(self, stamp_s: float, points_base: Sequence[np.ndarray],
                confidence: Sequence[float], view_origin: np.ndarray | None = None) -> None:
        """One NIR frame: a polyline of skin points (base frame) per detected vein.

        ``view_origin``: the camera's position in base (its rays give the direction along
        which the depth is unknown); None: rays straight down (world -z). NaN anywhere
        raises ValueError and nothing is added.
        """
        stamp = self._check_stamp(stamp_s)
        if len(points_base) != len(confidence):
            raise ValueError(f'NIR frame at {stamp:.6f} s: {len(points_base)} polylines but '
                             f'{len(confidence)} confidences')
        lines = []
        for i, line in enumerate(points_base):
            pts = np.asarray(line, dtype=float)
            if pts.size == 0:
                pts = np.zeros((0, 3))
            if pts.ndim != 2 or pts.shape[1] != 3:
                raise ValueError(f'NIR frame at {stamp:.6f} s: polyline {i} must be (N, 3)')
            if not np.all(np.isfinite(pts)):
                raise ValueError(f'NIR frame at {stamp:.6f} s: polyline {i} has NaN/inf '
                                 'points; frame not used')
            lines.append(pts)
        conf = np.asarray(confidence, dtype=float)
        if not np.all(np.isfinite(conf)):
            raise ValueError(f'NIR frame at {stamp:.6f} s: confidence has NaN/inf')
        origin = None
        if view_origin is not None:
            origin = np.asarray(view_origin, dtype=float)
            if origin.shape != (3,) or not np.all(np.isfinite(origin)):
                raise ValueError(f'NIR frame at {stamp:.6f} s: view_origin must be a finite '
                                 '3-vector')
        self._insert(stamp, NIR, (lines, np.clip(conf, 0.0, 1.0), origin))

    @staticmethod
    def _check_stamp(stamp_s: float) -> float:
        stamp = float(stamp_s)
        if not math.isfinite(stamp):
            raise ValueError(f'observation stamp is not finite: {stamp_s}')
        return stamp

    def _insert(self, stamp: float, kind: int, data: Any) -> None:
        obs = _Observation((round(stamp * 1e9), kind, self._arrivals), stamp, kind, data)
        self._arrivals += 1
        index = bisect.bisect(self._observations, obs.key, key=lambda o: o.key)
        self._observations.insert(index, obs)
        if index == len(self._observations) - 1:
            self._process(self._state, obs)
            self._push_snapshot()
            return
        # A late observation: back to the state before it, then replay.
        self._state = self._state_before(index)
        del self._snapshots[max(0, index - self._snap_base):]
        for obs_later in self._observations[index:]:
            self._process(self._state, obs_later)
            self._push_snapshot()

    def _push_snapshot(self) -> None:
        self._snapshots.append(self._state.copy())
        window = int(self.p['replay_window'])
        if len(self._snapshots) > window:
            drop = len(self._snapshots) - window
            del self._snapshots[:drop]
            self._snap_base += drop
        self._snap_base = len(self._observations) - len(self._snapshots)

    def _state_before(self, index: int) -> _State:
        """The state after observations ``[:index]`` (from a snapshot or rebuilt)."""
        if index == 0:
            return _State()
        i = index - 1 - self._snap_base
        if 0 <= i < len(self._snapshots):
            return self._snapshots[i].copy()
        state = _State()
        for obs in self._observations[:index]:
            self._process(state, obs)
        return state

    def _state_until(self, until_s: float | None) -> _State:
        if until_s is None:
            return self._state
        index = bisect.bisect(self._observations, (round(float(until_s) * 1e9), 2, 0),
                              key=lambda o: o.key)
        if index == len(self._observations):
            return self._state
        return self._state_before(index)

    # -- processing -----------------------------------------------------------------------
    def _process(self, state: _State, obs: _Observation) -> None:
        state.stamp = obs.stamp
        if obs.kind == US:
            self._process_us(state, obs.stamp, *obs.data)
        else:
            self._process_nir(state, obs.stamp, *obs.data)
        p = self.p
        stale = [vid for vid, v in state.vessels.items()
                 if v.frames < 2 and obs.stamp - v.created > p['tentative_s']]
        for vid in stale:
            del state.vessels[vid]

    def _predict(self, vessel: _Vessel, s: float) -> tuple[np.ndarray, bool] | None:
        """Predicted (u, v) at ``s`` and whether the depth is known there.

        A weighted line through the bins within the window; None beyond the vessel's ends
        (plus ``extend_m``).
        """
        p = self.p
        if vessel.bins.shape[0] == 0:
            return None
        bin_m = p['bin_m']
        lo = (vessel.first_bin) * bin_m - p['extend_m']
        hi = (vessel.first_bin + vessel.bins.shape[0]) * bin_m + p['extend_m']
        if not lo <= s <= hi:
            return None
        window = max(p['smooth_m'], p['extend_m'])
        k0 = math.floor((s - window) / bin_m) - vessel.first_bin
        k1 = math.floor((s + window) / bin_m) - vessel.first_bin + 1
        k0, k1 = max(0, k0), min(vessel.bins.shape[0], k1)
        if k1 <= k0:
            return None
        sub = _Vessel.__new__(_Vessel)
        sub.first_bin = vessel.first_bin + k0
        sub.bins = vessel.bins[k0:k1]
        sc, q, w, depth = sub.centres()
        wsum = w.sum(axis=1)
        use = wsum > 0
        if not use.any():
            return None
        at = s / bin_m
        qu = _line_at(sc[use], q[use, 0], w[use, 0], at)
        if depth[use].any():
            d = use & depth
            return np.array([qu, _line_at(sc[d], q[d, 1], w[d, 1], at)]), True
        return np.array([qu, 0.0]), False

    def _predict_many(self, vessel: _Vessel, s: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_predict` at many positions at once (same windows, same line fits).

        Returns predictions (K, 2), depth-known flags and valid flags (False where
        :meth:`_predict` returns None). Window sums come from prefix sums, so the cost is
        one pass over the bins however many positions are asked for: NIR frames ask for
        every bin a vein line crosses.
        """
        p = self.p
        s = np.asarray(s, dtype=float)
        out = np.zeros((len(s), 2))
        n = vessel.bins.shape[0]
        if n == 0 or len(s) == 0:
            return out, np.zeros(len(s), bool), np.zeros(len(s), bool)
        bin_m = p['bin_m']
        lo = vessel.first_bin * bin_m - p['extend_m']
        hi = (vessel.first_bin + n) * bin_m + p['extend_m']
        window = max(p['smooth_m'], p['extend_m'])
        k0 = np.clip(np.floor((s - window) / bin_m).astype(int) - vessel.first_bin, 0, n)
        k1 = np.clip(np.floor((s + window) / bin_m).astype(int) - vessel.first_bin + 1, 0, n)
        sc, q, w, depth = vessel.centres()

        def sums(weights: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
            terms = np.column_stack((weights, weights * sc, weights * sc * sc, weights * y,
                                     weights * sc * y))
            prefix = np.vstack((np.zeros(5), np.cumsum(terms, axis=0)))
            return tuple((prefix[k1] - prefix[k0]).T)

        def line(total, sx, sxx, sy, sxy, at) -> np.ndarray:
            with np.errstate(divide='ignore', invalid='ignore'):
                xm, ym = sx / total, sy / total
                var = sxx - sx * xm
                slope = np.where(var > 1e-12 * total, (sxy - sx * ym) / var, 0.0)
                return ym + slope * (at - xm)

        at = s / bin_m
        wu = sums(w[:, 0], q[:, 0])
        wv = sums(np.where(depth, w[:, 1], 0.0), q[:, 1])
        any_weight = sums(w.sum(axis=1), np.zeros(n))[0] > 0
        valid = (lo <= s) & (s <= hi) & (k1 > k0) & any_weight & (wu[0] > 0)
        known = valid & (wv[0] > 0)
        out[valid, 0] = line(*wu, at)[valid]
        out[known, 1] = line(*wv, at)[known]
        return out, known, valid

    def _process_us(self, state: _State, stamp: float, pose: np.ndarray, table: np.ndarray,
                    touching: bool) -> None:
        p = self.p
        if touching:
            state.skin.append(pose[:3, 3].copy())
        ok = (table[:, 4] >= p['min_confidence']) & (
            table[:, 2] <= p['max_aspect'] * np.maximum(table[:, 3], 1e-12))
        table = table[ok]
        centres = (pose[:3, :3] @ np.column_stack(
            (table[:, 0], table[:, 1], np.zeros(len(table)))).T).T + pose[:3, 3]
        radii = np.sqrt(table[:, 2] * table[:, 3])
        ids = table[:, 5].astype(int)
        vids = sorted(state.vessels)
        big = 1e6
        cost = np.full((len(table), len(vids)), big)
        for j, vid in enumerate(vids):
            vessel = state.vessels[vid]
            loc = vessel.local(centres)
            for i in range(len(table)):
                pred = self._predict(vessel, loc[i, 0])
                if pred is None:
                    continue
                q, has_depth = pred
                dist = float(np.hypot(*(loc[i, 1:] - q))) if has_depth else \
                    abs(loc[i, 1] - q[0])
                hinted = ids[i] >= 0 and state.hints.get(ids[i]) == vid
                if dist <= p['gate_m']:
                    cost[i, j] = dist * (0.5 if hinted else 1.0)
                elif hinted and dist <= p['hint_gate_m']:
                    cost[i, j] = dist * 0.5
        matched: dict[int, int] = {}
        if vids:
            for i, j in zip(*linear_sum_assignment(cost), strict=True):
                if cost[i, j] < big:
                    matched[int(i)] = vids[int(j)]
        for i in range(len(table)):
            vid = matched.get(i)
            if vid is None:
                vid = state.next_id
                state.next_id += 1
                state.vessels[vid] = _Vessel(vid, centres[i], pose[:3, 2], stamp)
            vessel = state.vessels[vid]
            s, u, v = vessel.local(centres[i])[0]
            r = vessel.row(int(vessel.bin_of(s, p['bin_m'])))
            vessel.decay_to(r, stamp, p['forget_s'])
            w = float(table[i, 4])
            row = vessel.bins[r]
            row[W_US] += w
            row[SU] += w * u
            row[SV] += w * v
            row[SQQ] += w * (u * u + v * v)
            row[SR] += w * radii[i]
            row[SRR] += w * radii[i] ** 2
            row[N_US] += 1.0
            row[S_CONF] += w * w  # weight x confidence (the weight is the confidence)
            if vessel.last_us != stamp:
                vessel.frames += 1
                vessel.last_us = stamp
            if ids[i] >= 0:
                state.hints[int(ids[i])] = vid
        if touching:
            for vid in vids:
                if vid not in matched.values() and self._crosses(state.vessels[vid], pose):
                    state.vessels[vid].misses += 1

    def _crosses(self, vessel: _Vessel, pose: np.ndarray) -> bool:
        """The image plane cuts the vessel's mapped stretch inside the image."""
        normal = pose[:3, 2]
        along = float(vessel.a @ normal)
        if abs(along) < 0.3 or vessel.bins.shape[0] == 0:
            return False
        s = float((pose[:3, 3] - vessel.origin) @ normal) / along
        bin_m = self.p['bin_m']
        lo = vessel.first_bin * bin_m - self.p['extend_m']
        if not lo <= s <= (vessel.first_bin + vessel.bins.shape[0]) * bin_m + self.p['extend_m']:
            return False
        pred = self._predict(vessel, s)
        if pred is None or not pred[1]:
            return False
        point = vessel.world(np.array([s]), pred[0][None])[0]
        x, y, _ = pose[:3, :3].T @ (point - pose[:3, 3])
        width, depth = self._image
        return abs(x) < 0.5 * width and 0.0 < y < depth

    def _process_nir(self, state: _State, stamp: float, lines: list[np.ndarray],
                     conf: np.ndarray, origin: np.ndarray | None) -> None:
        p = self.p
        bin_m = p['bin_m']
        for line, c in zip(lines, conf, strict=True):
            if len(line) < 2 or c <= 0:
                continue
            rays = (line - origin) if origin is not None else np.tile([0.0, 0.0, -1.0],
                                                                      (len(line), 1))
            rays /= np.linalg.norm(rays, axis=1, keepdims=True)
            best, best_in, best_mask = None, 0, None
            for vid in sorted(state.vessels):
                vessel = state.vessels[vid]
                loc = vessel.local(line)
                residual = np.full(len(line), np.inf)
                normals = self._ray_normals(vessel, rays)
                keys = vessel.bin_of(loc[:, 0], bin_m)
                unique, index = np.unique(keys, return_inverse=True)
                pred, _, valid = self._predict_many(vessel, (unique + 0.5) * bin_m)
                ok = valid[index]
                residual[ok] = np.abs(np.sum(normals[ok] * (pred[index[ok]] - loc[ok, 1:]),
                                             axis=1))
                inside = residual <= p['nir_gate_m']
                if inside.sum() > best_in and inside.sum() >= 0.5 * len(line):
                    best, best_in, best_mask = vid, int(inside.sum()), inside
            if best is None:
                length = float(np.linalg.norm(line[-1] - line[0]))
                if length < p['nir_min_length_m']:
                    continue
                centred = line - line.mean(axis=0)
                axis = np.linalg.svd(centred, full_matrices=False)[2][0]
                best = state.next_id
                state.next_id += 1
                state.vessels[best] = _Vessel(best, line.mean(axis=0), axis, stamp)
                best_mask = np.ones(len(line), dtype=bool)
            vessel = state.vessels[best]
            loc = vessel.local(line[best_mask])
            normals = self._ray_normals(vessel, rays[best_mask])
            w = p['nir_weight'] * float(c)
            keys = vessel.bin_of(loc[:, 0], bin_m)
            for k in np.unique(keys):
                sel = keys == k
                r = vessel.row(int(k))
                vessel.decay_to(r, stamp, p['forget_s'])
                # Points of one bin share a weight: a frame gives each bin one NIR vote.
                wk = w / sel.sum()
                n, q = normals[sel], loc[sel, 1:]
                row = vessel.bins[r]
                proj = np.sum(n * q, axis=1)
                row[A_UU] += wk * np.sum(n[:, 0] ** 2)
                row[A_UV] += wk * np.sum(n[:, 0] * n[:, 1])
                row[A_VV] += wk * np.sum(n[:, 1] ** 2)
                row[B_U] += wk * np.sum(n[:, 0] * proj)
                row[B_V] += wk * np.sum(n[:, 1] * proj)
                row[W_NIR] += wk * sel.sum()
                # Repeated NIR views of a bin share their bias (same skin, same camera):
                # their total weight is capped at nir_weight (a running mean beyond).
                if row[W_NIR] > p['nir_weight']:
                    row[[A_UU, A_UV, A_VV, B_U, B_V, W_NIR]] *= p['nir_weight'] / row[W_NIR]

    @staticmethod
    def _ray_normals(vessel: _Vessel, rays: np.ndarray) -> np.ndarray:
        """Unit normals (u, v) of the rays' projections in the cross-section plane."""
        du, dv = rays @ vessel.u, rays @ vessel.v
        norm = np.hypot(du, dv)
        norm[norm < 1e-9] = 1.0
        return np.column_stack((-dv / norm, du / norm))

    # -- output ---------------------------------------------------------------------------
    def vessels(self, until_s: float | None = None) -> list[VesselEstimate]:
        """The vessels seen in at least ``min_observations`` US frames, by id.

        ``until_s``: the map of the observations stamped up to then (default: all).
        """
        state = self._state_until(until_s)
        out = []
        for vid in sorted(state.vessels):
            vessel = state.vessels[vid]
            if vessel.frames < self.p['min_observations'] or \
                    vessel.frames < self.p['min_hit_ratio'] * (vessel.frames + vessel.misses):
                continue
            estimate = self._read_out(vessel, state.stamp)
            if estimate is not None:
                out.append(estimate)
        return out

    def skin_points(self, until_s: float | None = None) -> np.ndarray:
        """(M, 3) probe-face centres of the US frames in contact with the skin."""
        state = self._state_until(until_s)
        return np.array(state.skin, dtype=float).reshape(-1, 3)

    @property
    def latest_stamp(self) -> float:
        """Stamp of the newest observation (0.0 when empty)."""
        return self._observations[-1].stamp if self._observations else 0.0

    @property
    def observation_count(self) -> int:
        """Observations (US and NIR frames) added so far."""
        return len(self._observations)

    def _read_out(self, vessel: _Vessel, now: float) -> VesselEstimate | None:
        p = self.p
        bin_m = p['bin_m']
        s, q, w, depth = vessel.centres()
        b = vessel.bins
        if not depth.any():
            return None
        half = max(1, round(p['smooth_m'] / bin_m))
        wu = np.where(w[:, 0] > 0, w[:, 0], 0.0)
        wv = np.where(depth, w[:, 1], 0.0)
        qu = _local_fit(s, q[:, 0], wu, half, 2)
        qv = _local_fit(s, q[:, 1], wv, half, 2)
        # Second pass with Huber weights: one bad bin does not bend the centreline.
        scale = 1.5 * p['us_sigma_m']
        hu = wu * np.minimum(1.0, scale / np.maximum(np.abs(q[:, 0] - qu), 1e-12))
        hv = wv * np.minimum(1.0, scale / np.maximum(np.abs(q[:, 1] - qv), 1e-12))
        qu = _local_fit(s, q[:, 0], hu, half, 2)
        qv = _local_fit(s, q[:, 1], hv, half, 2)
        bw = b[:, W_US]
        with np.errstate(divide='ignore', invalid='ignore'):
            r_bin = np.where(bw > 0, b[:, SR] / bw, 0.0)
            mean_sq = np.where(bw > 0, (b[:, SU] ** 2 + b[:, SV] ** 2) / bw ** 2, 0.0)
            inner = np.where(bw > 0, np.maximum(0.0, b[:, SQQ] / bw - mean_sq), 0.0)
        radius = _local_fit(s, r_bin, bw, half, 1)
        # Uncertainty: scatter inside the bins plus residuals to the fit, over the window,
        # divided by the number of sections there; plus the age of the bin.
        res2 = np.where(depth, (q[:, 0] - qu) ** 2 + (q[:, 1] - qv) ** 2, 0.0)
        n = len(s)
        idx = np.arange(n)
        window = (np.abs(idx[:, None] - idx[None, :]) <= half).astype(float)
        prior = 1.0
        s2 = (window @ (bw * (inner + res2)) + prior * p['us_sigma_m'] ** 2) / \
            (window @ bw + prior)
        n_eff = np.maximum(window @ b[:, N_US], 1.0)
        age = np.maximum(0.0, now - b[:, T_LAST])
        sigma = np.sqrt(s2 / n_eff + (p['drift_m_s'] * age) ** 2)
        rows = np.nonzero(depth)[0]
        points = vessel.world(s[rows] * bin_m, np.column_stack((qu[rows], qv[rows])))
        total_w = float(bw.sum())
        mean_conf = float(b[:, S_CONF].sum() / total_w) if total_w > 0 else 0.0
        hits = vessel.frames / max(1, vessel.frames + vessel.misses)
        confidence = mean_conf * hits * (1.0 - math.exp(-vessel.frames / p['min_observations']))
        return VesselEstimate(id=vessel.id, points=points,
                              radius=np.maximum(radius[rows], 0.0), sigma=sigma[rows],
                              confidence=float(np.clip(confidence, 0.0, 1.0)),
                              observations=int(vessel.frames))
