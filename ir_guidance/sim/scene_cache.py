"""What the sensor simulators share: scene cache, its keys, pose check, noise banks.

A B-mode or NIR frame is expensive only in its scene-dependent part (geometry, tissue
maps); a probe or camera that holds still sees the same scene frame after frame, with
only noise (and the needle) redrawn. Both renderers keep their last few scenes here,
keyed exactly on what the scene depends on, so two different scenes never share one,
and draw their per-frame noise from seeded banks (:func:`noise_bank`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import numpy as np

from ir_guidance.sim.phantom import Phantom, PhantomState

Scene = TypeVar('Scene')


def rigid_pose(pose: np.ndarray, name: str) -> np.ndarray:
    """A validated 4x4 rigid transform as float64 (ValueError naming ``name`` otherwise)."""
    t = np.asarray(pose, dtype=float)
    if t.shape != (4, 4) or not np.all(np.isfinite(t)):
        raise ValueError(f'{name} must be a finite 4x4 matrix')
    r = t[:3, :3]
    if not np.allclose(r.T @ r, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
        raise ValueError(f'{name} rotation is not orthonormal and right-handed')
    return t


def state_key(phantom: Phantom, state: PhantomState | None) -> bytes | None:
    """The values of ``state`` that move the phantom's tissue, exactly (float64 bytes).

    What :meth:`Phantom.offset` and :meth:`Phantom.vein_geometry` read: the time only
    when the arm drifts (``motion_amplitude != 0``), the probe's force and position only
    when it presses (a force <= 0 squeezes nothing, wherever the probe is), every vein's
    roll and the arm's shift. Equal keys mean equal geometry; no rounding, so two
    different scenes never share one (-0.0 and 0.0 even count as different).
    """
    if state is None:
        return None
    force = float(state.probe_force_n)
    if force <= 0.0:
        values = [0.0, 0.0, 0.0]
    else:
        px, py = state.probe_xy
        values = [force, float(px), float(py)]
    values.append(float(state.time_s) if phantom.motion_amplitude != 0.0 else 0.0)
    values.extend(float(r) for r in state.roll)
    values.extend(float(v) for v in state.shift)
    return np.array(values, dtype=np.float64).tobytes()


@functools.lru_cache(maxsize=8)
def noise_bank(seed: int, stream: int, shape: tuple[int, ...], windows: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Standard normals (float32, read-only) and a permutation of ``range(windows)``.

    Drawn once per seed and shape and shared by every simulator that asks (read-only:
    safe across threads).
    """
    rng = np.random.default_rng((seed, stream))
    bank = rng.standard_normal(shape, dtype=np.float32)
    order = rng.permutation(windows)
    bank.flags.writeable = False
    order.flags.writeable = False
    return bank, order


class SceneCache(Generic[Scene]):
    """The last ``size`` scenes, most recently used first; their buffers are reused.

    Not thread-safe, like the renderers that own one. ``updates`` counts the scenes
    computed (misses).
    """

    def __init__(self, size: int, new_buffer: Callable[[], Scene]) -> None:
        self._size = size
        self._new_buffer = new_buffer
        self._entries: list[tuple[Hashable, Scene]] = []
        self.updates = 0

    def pose(self, pose: np.ndarray, name: str) -> tuple[np.ndarray, bytes]:
        """The validated pose and its exact bytes; a cached scene's pose is not rechecked."""
        t = np.asarray(pose, dtype=float)
        if t.shape == (4, 4):
            key = t.tobytes()
            if any(entry_key[0] == key for entry_key, _ in self._entries):
                return t, key
        t = rigid_pose(t, name)
        return t, t.tobytes()

    def get(self, key: tuple, compute: Callable[[Scene], None]) -> Scene:
        """The scene stored under ``key``, or a buffer filled by ``compute`` and stored.

        The key's first item must be the pose bytes (see :meth:`pose`).
        """
        for i, (entry_key, scene) in enumerate(self._entries):
            if entry_key == key:
                if i:
                    self._entries.insert(0, self._entries.pop(i))
                return scene
        if len(self._entries) < self._size:
            scene = self._new_buffer()
        else:
            scene = self._entries.pop()[1]
        compute(scene)  # before storing: a failed computation leaves no entry behind
        self._entries.insert(0, (key, scene))
        self.updates += 1
        return scene
