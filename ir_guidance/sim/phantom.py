"""The forearm phantom: tissue layers, veins, and their deformation (ROS-free).

Everything the simulator shows a sensor, and every ground-truth number an insertion is
scored against, comes from this one geometric model, so it is plain numpy with no
rendering or physics in it.

Geometry (all in the world frame = the robot's ``base_link``, metres):
- The forearm is a horizontal cylinder of radius ``arm_radius`` whose axis runs along
  world +y through ``(axis_x, ·, axis_z)``; the skin is its surface, ``length`` long and
  centred at ``center_y``. Depths are measured vertically below the skin.
- Layers from the skin down: skin (``skin_thickness``, ~2 mm), subcutaneous fat
  (``fat_thickness``), then muscle.
- Each vein is a tube with an elliptical cross-section (``width`` horizontal >
  ``height`` vertical) and a wall; its centreline's lateral position and depth vary
  smoothly along the arm (slope + curvature).

Deformation lives in a separate :class:`PhantomState`: probe force compresses veins
(height shrinks by ``compliance`` per newton, width grows to keep the perimeter
roughly constant), a needle pushing sideways rolls a vein (lateral shift against
``roll_stiffness``), and the whole arm may drift slowly (``motion_amplitude`` and
``motion_period_s``).

Vein statistics for random phantoms: Park et al. 2023 (461 people, robotic US of the
antecubital fossa): depth (skin to the top of the lumen) 4.81 ± 2.17 mm, vertical
diameter 3.01 ± 1.10 mm, horizontal diameter 4.46 ± 1.60 mm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# Tissue labels returned by Phantom.labels().
AIR, SKIN, FAT, MUSCLE, WALL, LUMEN = range(6)
LABEL_NAMES = ('air', 'skin', 'fat', 'muscle', 'vein_wall', 'lumen')

# Park et al. 2023: mean, standard deviation (m).
VEIN_DEPTH = (4.81e-3, 2.17e-3)
VEIN_HEIGHT = (3.01e-3, 1.10e-3)
VEIN_WIDTH = (4.46e-3, 1.60e-3)


@dataclass(frozen=True)
class Vein:
    """One vein. Positions are at ``y = center_y`` of the phantom; ``dy = y - center_y``."""

    x: float                       # lateral (world x) position of the centre, m
    depth: float                   # centre depth below the skin, m
    width: float                   # horizontal (outer lumen) diameter, m
    height: float                  # vertical diameter, m
    slope: float = 0.0             # dx/dy: angle of the vein to the arm axis
    curvature: float = 0.0         # d2x/dy2, 1/m
    depth_slope: float = 0.0       # d(depth)/dy
    wall: float = 0.4e-3           # wall thickness, m
    compliance: float = 0.12       # fraction of height lost per newton of probe force
    roll_stiffness: float = 400.0  # N/m resisting sideways displacement
    max_roll: float = 2.5e-3       # m, the tissue tethers the vein beyond this

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not np.isfinite(value):
                raise ValueError(f'vein {f.name} is not finite: {value}')
        for name in ('depth', 'width', 'height', 'wall', 'roll_stiffness', 'max_roll'):
            if getattr(self, name) <= 0:
                raise ValueError(f'vein {name} must be > 0, got {getattr(self, name)}')
        if not 0 <= self.compliance:
            raise ValueError(f'vein compliance must be >= 0, got {self.compliance}')


@dataclass
class PhantomState:
    """Time-varying deformation: set by the simulator each tick, read by every query."""

    time_s: float = 0.0
    probe_force_n: float = 0.0           # normal force of the probe on the skin
    probe_xy: tuple[float, float] = (0.0, 0.0)  # where the probe presses (world x, y)
    roll: list[float] = field(default_factory=list)  # per-vein lateral shift, m
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the patient moved the arm, m


@dataclass(frozen=True)
class Phantom:
    """A forearm with tissue layers and veins; see the module docstring for the frame."""

    veins: tuple[Vein, ...]
    arm_radius: float = 0.04
    axis_x: float = 0.43
    axis_z: float = 0.23
    center_y: float = 0.13
    length: float = 0.30
    skin_thickness: float = 2.0e-3
    fat_thickness: float = 8.0e-3
    probe_footprint: float = 0.025       # m: veins farther than this from the probe
    motion_amplitude: float = 0.0        # m, slow sinusoidal drift of the whole arm
    motion_period_s: float = 8.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ('arm_radius', 'length', 'skin_thickness', 'fat_thickness',
                     'probe_footprint', 'motion_period_s'):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f'phantom {name} must be finite and > 0, got {value}')
        for name in ('axis_x', 'axis_z', 'center_y', 'motion_amplitude'):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f'phantom {name} is not finite')
        object.__setattr__(self, 'veins', tuple(self.veins))
        for i, vein in enumerate(self.veins):
            top = vein.depth - vein.height / 2 - vein.wall
            if top < self.skin_thickness:
                raise ValueError(f'vein {i}: its wall ({top * 1e3:.2f} mm deep) reaches into '
                                 f'the skin ({self.skin_thickness * 1e3:.1f} mm)')
            if vein.depth + vein.height / 2 > self.arm_radius / 2:
                raise ValueError(f'vein {i} is deeper than half the arm radius')

    # -- construction --------------------------------------------------------------------
    @classmethod
    def random(cls, seed: int, **overrides: Any) -> Phantom:
        """A phantom with 1-3 veins drawn from the published antecubital statistics."""
        rng = np.random.default_rng(seed)
        skin = overrides.pop('skin_thickness', rng.uniform(1.5e-3, 2.5e-3))
        veins: list[Vein] = []
        count = int(rng.integers(1, 4))
        while len(veins) < count:
            height = float(np.clip(rng.normal(*VEIN_HEIGHT), 1.2e-3, 6.0e-3))
            width = float(np.clip(rng.normal(*VEIN_WIDTH), height * 1.05, 9.0e-3))
            wall = 0.4e-3
            # Park et al. measure depth from the skin to the vein's upper lumen edge.
            top = float(np.clip(rng.normal(*VEIN_DEPTH), skin + wall + 0.3e-3, 12e-3))
            depth = top + height / 2
            x = float(rng.uniform(-0.015, 0.015))
            if any(abs(x - v.x) < (width + v.width) / 2 + 4e-3 for v in veins):
                continue
            veins.append(Vein(
                x=x, depth=depth, width=width, height=height, wall=wall,
                slope=float(rng.uniform(-0.15, 0.15)),
                curvature=float(rng.uniform(-0.6, 0.6)),
                depth_slope=float(rng.uniform(-0.03, 0.03)),
                compliance=float(rng.uniform(0.06, 0.2)),
                roll_stiffness=float(rng.uniform(250.0, 600.0))))
        veins.sort(key=lambda v: v.x)
        fat = max(float(rng.uniform(6e-3, 12e-3)),
                  max(v.depth + v.height / 2 + v.wall for v in veins) + 1e-3 - skin)
        params: dict[str, Any] = {'skin_thickness': skin, 'fat_thickness': fat, 'seed': seed}
        params.update(overrides)
        veins_abs = tuple(dataclasses.replace(v, x=v.x + params.get('axis_x', cls.axis_x))
                          for v in veins)
        return cls(veins=veins_abs, **params)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Phantom:
        """Build from the YAML schema (docs/phantom.md); unknown keys are errors."""
        if not isinstance(data, dict):
            raise ValueError('a phantom must be a mapping')
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f'unknown phantom keys {sorted(unknown)}; known: {sorted(known)}')
        if 'veins' not in data or not data['veins']:
            raise ValueError('a phantom needs at least one vein')
        vein_keys = {f.name for f in dataclasses.fields(Vein)}
        veins = []
        for i, item in enumerate(data['veins']):
            if not isinstance(item, dict):
                raise ValueError(f'vein {i} must be a mapping')
            bad = set(item) - vein_keys
            if bad:
                raise ValueError(f'unknown keys {sorted(bad)} in vein {i}; known: '
                                 f'{sorted(vein_keys)}')
            veins.append(Vein(**{k: float(v) for k, v in item.items()}))
        rest = {k: v for k, v in data.items() if k != 'veins'}
        return cls(veins=tuple(veins), **rest)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Phantom:
        """Load a phantom file; see docs/phantom.md for the schema."""
        with open(path, encoding='utf-8') as stream:
            return cls.from_dict(yaml.safe_load(stream))

    def to_dict(self) -> dict[str, Any]:
        """The YAML schema's mapping (round-trips through :meth:`from_dict`)."""
        data = dataclasses.asdict(self)
        data['veins'] = [dataclasses.asdict(v) for v in self.veins]
        return data

    def new_state(self) -> PhantomState:
        """An undeformed state at time zero."""
        return PhantomState(roll=[0.0] * len(self.veins))

    # -- geometry ------------------------------------------------------------------------
    def offset(self, state: PhantomState | None) -> np.ndarray:
        """Displacement of the whole arm: slow drift along x and z, plus ``state.shift``."""
        if state is None:
            return np.zeros(3)
        shift = np.asarray(state.shift, dtype=float)
        if self.motion_amplitude == 0.0:
            return shift
        phase = 2 * np.pi * state.time_s / self.motion_period_s
        return shift + self.motion_amplitude * np.array(
            [np.sin(phase), 0.0, 0.5 * np.sin(2 * phase)])

    def skin_z(self, x: np.ndarray, y: np.ndarray, state: PhantomState | None = None
               ) -> np.ndarray:
        """Height of the skin above (x, y); NaN where the arm is not (off its sides/ends)."""
        off = self.offset(state)
        dx = np.asarray(x, dtype=float) - self.axis_x - off[0]
        y = np.asarray(y, dtype=float) - off[1]
        inside = (np.abs(dx) < self.arm_radius) & (np.abs(y - self.center_y) <= self.length / 2)
        z = self.axis_z + off[2] + np.sqrt(np.clip(self.arm_radius ** 2 - dx ** 2, 0.0, None))
        return np.where(inside, z, np.nan)

    def vein_geometry(self, index: int, y: np.ndarray, state: PhantomState | None = None
                      ) -> dict[str, np.ndarray]:
        """Centre (x, z), semi-axes (a horizontal, b vertical) of vein ``index`` at ``y``.

        Includes the state's compression and roll: this is the ground truth.
        """
        vein = self.veins[index]
        off = self.offset(state)
        y = np.asarray(y, dtype=float)
        dy = y - off[1] - self.center_y
        x = vein.x + vein.slope * dy + 0.5 * vein.curvature * dy ** 2 + off[0]
        depth = vein.depth + vein.depth_slope * dy
        b = np.full_like(dy, vein.height / 2)
        a = np.full_like(dy, vein.width / 2)
        if state is not None:
            if state.roll:
                x = x + state.roll[index]
            squeeze = self._compression(vein, x, y, state)
            b = b * (1.0 - squeeze)
            # An ellipse squeezed at constant perimeter widens (Ramanujan, to first order).
            a = a + (vein.height / 2 - b) * 0.5
        z = self.skin_z(x, y, state) - depth
        # A compressed vein is pressed down against the tissue below: its floor stays put.
        z = z - (vein.height / 2 - b)
        return {'x': x, 'z': z, 'a': a, 'b': b, 'y': y}

    def _compression(self, vein: Vein, x: np.ndarray, y: np.ndarray, state: PhantomState
                     ) -> np.ndarray:
        """Fraction of the vein height lost under the probe (0 = round, 0.95 = flat)."""
        if state.probe_force_n <= 0.0:
            return np.zeros_like(x)
        px, py = state.probe_xy
        dist = np.hypot(x - px, y - py)
        near = np.exp(-0.5 * (dist / self.probe_footprint) ** 2)
        return np.clip(vein.compliance * state.probe_force_n * near, 0.0, 0.95)

    def centerline(self, index: int, ys: np.ndarray, state: PhantomState | None = None
                   ) -> np.ndarray:
        """Ground-truth centreline points ``(N, 3)`` of vein ``index`` at the given ``ys``."""
        g = self.vein_geometry(index, ys, state)
        return np.column_stack((g['x'], g['y'], g['z']))

    def vein_coordinates(self, points: np.ndarray, state: PhantomState | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Per point: the nearest vein's index and the elliptical radius ``rho``.

        ``rho < 1`` is inside the lumen; ``1 <= rho < 1 + wall/b`` (roughly) is the wall.
        The radius is measured in the vein's cross-section plane (vertical, across y).
        Points with no vein get index -1 and ``rho = inf``.
        """
        p = np.atleast_2d(np.asarray(points, dtype=float))
        best_rho = np.full(len(p), np.inf)
        best_idx = np.full(len(p), -1)
        for i in range(len(self.veins)):
            g = self.vein_geometry(i, p[:, 1], state)
            rho = np.hypot((p[:, 0] - g['x']) / g['a'], (p[:, 2] - g['z']) / g['b'])
            better = rho < best_rho
            best_rho[better] = rho[better]
            best_idx[better] = i
        return best_idx, best_rho

    def labels(self, points: np.ndarray, state: PhantomState | None = None) -> np.ndarray:
        """Tissue label (AIR, SKIN, FAT, MUSCLE, WALL, LUMEN) of each point ``(N, 3)``."""
        p = np.atleast_2d(np.asarray(points, dtype=float))
        skin = self.skin_z(p[:, 0], p[:, 1], state)
        depth = skin - p[:, 2]
        out = np.full(len(p), AIR, dtype=np.uint8)
        inside = np.isfinite(depth) & (depth >= 0)
        out[inside] = MUSCLE
        out[inside & (depth < self.skin_thickness + self.fat_thickness)] = FAT
        out[inside & (depth < self.skin_thickness)] = SKIN
        for i, vein in enumerate(self.veins):
            g = self.vein_geometry(i, p[:, 1], state)
            dx, dz = p[:, 0] - g['x'], p[:, 2] - g['z']
            outer = np.hypot(dx / (g['a'] + vein.wall), dz / (g['b'] + vein.wall)) < 1
            lumen = np.hypot(dx / g['a'], dz / g['b']) < 1
            out[inside & outer] = WALL
            out[inside & lumen] = LUMEN
        return out

    def roll_from_push(self, index: int, lateral_force_n: float) -> float:
        """Sideways displacement of vein ``index`` under a lateral needle force."""
        vein = self.veins[index]
        return float(np.clip(lateral_force_n / vein.roll_stiffness, -vein.max_roll,
                             vein.max_roll))
