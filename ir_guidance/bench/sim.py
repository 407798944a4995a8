"""``ir-guidance bench sim``: simulator speed and determinism, no ROS.

- ``physics_step_us_p50``: one tick without images (needle-tissue model, MuJoCo step,
  F/T reading), measured per tick.
- ``us_frame_ms_p50`` / ``nir_frame_ms_p50``: one ultrasound / NIR+depth render of a
  new scene; ``*_cached_ms_p50``: the same scene again (only noise and needle redrawn).
- ``realtime_factor``: simulated seconds per wall second, free-running with every
  sensor at its configured rate (what the sim node runs, minus publishing), arm holding
  while the stage inserts the needle at 5 mm/s; ``realtime_factor_moving``: the same
  with the arm swinging, so every image is a new scene.
- ``stream_hash``: SHA-256 of one simulated second of every sensor output, fixed seed;
  two runs must print the same value.
"""

from __future__ import annotations

import time

import numpy as np

from ir_guidance import config
from ir_guidance.sim.phantom import Phantom
from ir_guidance.sim.simulator import SimSettings, Simulator, stream_hash


def _insertion_command(sim: Simulator, t: float) -> np.ndarray:
    """Home, with the stage advancing at 5 mm/s: keeps the needle model busy."""
    command = sim.last_command
    command[-1] = min(0.04, 0.005 * t)
    return command


def _sweep_command(sim: Simulator, t: float) -> np.ndarray:
    """The arm swinging its base joint (0.05 rad at 0.5 Hz): every frame a new scene."""
    command = sim.last_command
    command[0] = 0.05 * np.sin(np.pi * t)
    return command


def run(seed: int = 0, seconds: float = 2.0, phantom: Phantom | None = None
        ) -> dict[str, float | str | int]:
    """Measure the simulator; ``seconds`` of free-running simulation for the RTF."""
    phantom = phantom or Phantom.from_yaml(
        config.share_dir() / config.load()['sim']['phantom'])
    settings = SimSettings.from_config(seed=seed)

    quiet = Simulator(phantom, SimSettings.from_config(seed=seed, sensors=False))
    ticks = np.empty(1000)
    for i in range(len(ticks)):
        start = time.perf_counter()
        quiet.step()
        ticks[i] = time.perf_counter() - start

    sim = Simulator(phantom, settings)
    frames = {'us': [], 'nir': [], 'us_cached': [], 'nir_cached': []}
    pose_us = sim.physics.frame_pose(sim.frames['us_image'])
    pose_cam = sim.physics.frame_pose(sim.frames['camera_optical'])
    for k in range(30):
        # A new scene every frame (the probe 10 um further along): a full render...
        shift = np.eye(4)
        shift[0, 3] = 1e-5 * (k + 1)
        for suffix in ('', '_cached'):  # ...then the same scene again
            us_pose, cam_pose = shift @ pose_us, shift @ pose_cam
            start = time.perf_counter()
            sim.us.render(us_pose, sim.state, None, k)
            frames['us' + suffix].append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            sim.nir.render(cam_pose, sim.state, k)
            frames['nir' + suffix].append((time.perf_counter() - start) * 1e3)

    n = round(seconds * settings.physics_hz)
    rtf = {}
    for name, make_command in (('insertion', _insertion_command),
                               ('moving', _sweep_command)):
        free = Simulator(phantom, settings)
        start = time.perf_counter()
        for _ in range(n):
            free.command(make_command(free, free.time_s))
            free.step()
        rtf[name] = (n / settings.physics_hz) / (time.perf_counter() - start)

    hashes = []
    for _ in range(2):
        fixed = Simulator(phantom, settings)
        outputs = []
        for _ in range(round(settings.physics_hz)):
            fixed.command(_insertion_command(fixed, fixed.time_s))
            outputs.append(fixed.step())
        hashes.append(stream_hash(outputs))
    return {
        'seed': seed,
        'physics_hz': settings.physics_hz, 'us_hz': settings.us_hz, 'nir_hz': settings.nir_hz,
        'physics_step_us_p50': float(np.median(ticks) * 1e6),
        'physics_step_us_p90': float(np.percentile(ticks, 90) * 1e6),
        'us_frame_ms_p50': float(np.median(frames['us'])),
        'nir_frame_ms_p50': float(np.median(frames['nir'])),
        'us_frame_cached_ms_p50': float(np.median(frames['us_cached'])),
        'nir_frame_cached_ms_p50': float(np.median(frames['nir_cached'])),
        'realtime_factor': rtf['insertion'],
        'realtime_factor_moving': rtf['moving'],
        'realtime_seconds_simulated': n / settings.physics_hz,
        'stream_hash': hashes[0],
        'stream_hash_repeatable': hashes[0] == hashes[1],
    }
