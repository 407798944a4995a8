"""Probe poses for a transverse ultrasound sweep along the forearm (planning layer).

A transverse view (the image plane across the vessels) sees every vein near the probe as
a small ellipse, which is what the vessel mapper needs to build centrelines; sweeping
the probe along the forearm (world y) stacks those cross-sections. The home pose holds
the probe in a longitudinal view (image x along world -y), so the sweep pose turns the
probe a quarter turn about the vertical: image x along world +x or -x. Both are a
quarter turn of the wrist; the one closer to the given home orientation is taken (ties,
as for an exactly level home pose, go to +x, a fixed rule so the sweep is reproducible).
The face is level (image y = world -z).
"""

from __future__ import annotations

import numpy as np


def transverse_rotation(probe_rotation_home: np.ndarray) -> np.ndarray:
    """The level transverse probe rotation (x = world +-x, y = world -z) nearest home."""
    r_home = np.asarray(probe_rotation_home, dtype=float)
    candidates = []
    for sign in (1.0, -1.0):
        x = np.array([sign, 0.0, 0.0])
        y = np.array([0.0, 0.0, -1.0])
        candidates.append(np.column_stack((x, y, np.cross(x, y))))
    angles = [_angle(r_home.T @ r) for r in candidates]
    return candidates[1] if angles[1] < angles[0] - 1e-3 else candidates[0]


def sweep_poses(probe_pose_home: np.ndarray, length_m: float, height_m: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Start and end 4x4 poses of ``us_image_frame`` for a transverse sweep.

    Centred under the home probe position (its x, y), the face at ``z = height_m``, the
    sweep runs along world +y from ``y - length_m / 2`` to ``y + length_m / 2``.
    """
    home = np.asarray(probe_pose_home, dtype=float)
    if home.shape != (4, 4) or not np.all(np.isfinite(home)):
        raise ValueError(f'probe_pose_home must be a finite 4x4 pose, got shape {home.shape}')
    if not (np.isfinite(length_m) and length_m >= 0.0):
        raise ValueError(f'sweep length must be finite and >= 0, got {length_m}')
    if not np.isfinite(height_m):
        raise ValueError(f'sweep height must be finite, got {height_m}')
    rotation = transverse_rotation(home[:3, :3])
    start, end = np.eye(4), np.eye(4)
    start[:3, :3] = end[:3, :3] = rotation
    centre = np.array([home[0, 3], home[1, 3], height_m])
    half = np.array([0.0, 0.5 * length_m, 0.0])
    start[:3, 3] = centre - half
    end[:3, 3] = centre + half
    return start, end


def _angle(rotation: np.ndarray) -> float:
    return float(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)))
