"""Simulated calibration data: the rig's FK, a perturbed "true" tool transform, noisy sensors.

Simulator layer (numpy, the rig's kinematics, the simulated sensors' geometry; no rclpy).

The URDF holds the *designed* transforms of the camera and the probe on the flange. A
real rig differs from them by its build tolerances, so the simulation draws the truth as
the URDF transform moved by a known offset (``offset_m`` in a random direction and
``offset_deg`` about a random axis, from the seed). Data are then made the way a lab
records them:

- **hand-eye**: a chessboard lies on the table (its pose in the base is unknown to the
  solver). Camera poses are drawn looking at the board from 0.25-0.40 m, tilted up to
  35 deg from the vertical in any direction and rolled up to +-90 deg about the optical
  axis; each is reached by PoseIk on ``tool0`` (flange = camera pose x truth^-1) from
  home, and kept only if every corner is inside the image. Corners are projected with
  the simulated NIR camera's intrinsics (``sim.nir.CameraConfig``) from the *true*
  camera pose (FK at the true joints x truth) and get Gaussian pixel noise.
- **probe**: a point phantom (a bead / wire crossing in a water tank) at a fixed base
  position. Probe poses are drawn with the point at a random place in the image (lateral
  +-40 % of the width, 15-90 % of the depth), the image plane tilted up to 30 deg about a
  random axis and turned up to +-90 deg about the vertical. The point is accepted in a
  band of ``elevation_m`` around the image plane (default 0.5 mm: the operator centres
  it in the 1 mm beam by maximising its echo; with the whole slice thickness it is still
  visible, a real error of the method that ``bench calibration`` also measures). The
  pixel is ``UltrasoundConfig.image_to_pixel`` of the point's true image coordinates
  plus Gaussian noise (default 1 px: 0.15 mm).

The joints "reported" by the robot may carry Gaussian encoder noise; the flange poses
given to the solver are FK of the reported joints. Everything is deterministic from the
seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from ir_guidance import config
from ir_guidance.calibration.hand_eye import chessboard_points, invert, make_pose
from ir_guidance.kinematics import PoseIk, SerialChain
from ir_guidance.sim.nir import CameraConfig
from ir_guidance.sim.ultrasound import UltrasoundConfig

STAGE_JOINT = 'needle_insertion_joint'
BOARD_CENTRE = (0.45, 0.15, 0.02)     # chessboard centre on the table, base frame (m)
POINT_BASE = (0.45, 0.15, 0.15)       # the probe phantom's point, base frame (m)
_MAX_TRIES = 60                       # pose draws per accepted sample before giving up


@dataclass
class HandEyeData:
    """One simulated eye-in-hand data set and its truth."""

    joints: np.ndarray            # (N, dof) as reported (with encoder noise)
    flange_poses: np.ndarray      # (N, 4, 4) FK of the reported joints
    image_points: np.ndarray      # (N, M, 2) noisy corner pixels (u, v)
    object_points: np.ndarray     # (M, 3) corners in the board frame
    camera_matrix: np.ndarray
    dist_coeffs: np.ndarray
    truth: np.ndarray             # true T_flange_camera
    nominal: np.ndarray           # the URDF's T_flange_camera
    target_in_base: np.ndarray    # true T_base_board
    settings: dict = field(default_factory=dict)


@dataclass
class ProbeData:
    """One simulated point-phantom probe calibration data set and its truth."""

    joints: np.ndarray            # (N, dof) as reported
    flange_poses: np.ndarray      # (N, 4, 4)
    pixels: np.ndarray            # (N, 2) noisy (row, col) of the point
    points_image: np.ndarray      # (N, 2) the pixels in image metres (x lateral, y depth)
    ultrasound: UltrasoundConfig
    truth: np.ndarray             # true T_flange_image
    nominal: np.ndarray           # the URDF's T_flange_image
    point_base: np.ndarray        # true point (3,)
    settings: dict = field(default_factory=dict)


def frames() -> dict[str, str]:
    """The frame names from ``config/``."""
    return config.load()['frames']


def nominal_transform(chain: SerialChain, parent: str, child: str) -> np.ndarray:
    """The URDF's fixed transform ``T_parent_child`` (both frames rigid on the flange)."""
    q = chain.clip(np.zeros(chain.dof))
    return invert(chain.fk(q, parent)) @ chain.fk(q, child)


def perturb(t: np.ndarray, offset_m: float, offset_deg: float,
            rng: np.random.Generator) -> np.ndarray:
    """``t`` moved ``offset_m`` along a random direction and turned ``offset_deg``.

    The rotation is about a random axis of ``t``'s own frame.
    """
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    out = t @ make_pose(Rotation.from_rotvec(axis * math.radians(offset_deg)).as_matrix(),
                        np.zeros(3))
    out[:3, 3] += direction * offset_m
    return out


def _home(chain: SerialChain) -> np.ndarray:
    return np.array(config.load()['robot']['home'], dtype=float)


def _report(chain: SerialChain, q_true: np.ndarray, joint_noise_rad: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Joints as the encoders report them and FK of those (the solver's flange poses)."""
    q = q_true + rng.normal(scale=joint_noise_rad, size=q_true.shape) * (joint_noise_rad > 0)
    q[chain.joint_names.index(STAGE_JOINT)] = q_true[chain.joint_names.index(STAGE_JOINT)]
    return q, chain.fk(q, frames()['flange'])


def simulate_hand_eye(views: int = 20, pixel_noise_px: float = 0.3,
                      joint_noise_rad: float = 0.0, offset_m: float = 0.003,
                      offset_deg: float = 2.0, seed: int = 0, board: tuple[int, int] = (9, 7),
                      square_m: float = 0.02, distance_m: tuple[float, float] = (0.25, 0.40),
                      tilt_deg: float = 35.0, roll_deg: float = 90.0,
                      chain: SerialChain | None = None,
                      camera: CameraConfig | None = None) -> HandEyeData:
    """Draw an eye-in-hand data set (see the module docstring)."""
    if views < 1:
        raise ValueError(f'views must be >= 1, got {views}')
    from ir_guidance.rig_description import rig_chain

    chain = chain or rig_chain()
    cam = camera or CameraConfig()
    names = frames()
    rng = np.random.default_rng(seed)
    nominal = nominal_transform(chain, names['flange'], names['camera_optical'])
    truth = perturb(nominal, offset_m, offset_deg, rng)
    obj = chessboard_points(board[0], board[1], square_m)
    centre_local = obj.mean(axis=0)
    board_rot = np.diag([1.0, -1.0, -1.0])          # board z into the table (away from camera)
    target = make_pose(board_rot, np.asarray(BOARD_CENTRE) - board_rot @ centre_local)
    corners_base = obj @ board_rot.T + target[:3, 3]
    home = _home(chain)
    home_cam = chain.fk(home, names['flange']) @ truth
    ik = PoseIk(chain, names['flange'], seed=seed)
    k = cam.k
    qs, reported, flange, pixels = [], [], [], []
    tries = 0
    while len(qs) < views:
        tries += 1
        if tries > _MAX_TRIES * views:
            raise RuntimeError(f'only {len(qs)} of {views} camera poses were reachable')
        tilt = math.radians(tilt_deg) * math.sqrt(rng.uniform())
        azimuth = rng.uniform(0, 2 * math.pi)
        up = np.array([math.sin(tilt) * math.cos(azimuth), math.sin(tilt) * math.sin(azimuth),
                       math.cos(tilt)])
        aim = np.asarray(BOARD_CENTRE) + np.r_[rng.uniform(-0.03, 0.03, 2), 0.0]
        position = aim + up * rng.uniform(*distance_m)
        z = (aim - position) / np.linalg.norm(aim - position)
        x = home_cam[:3, 0] - (home_cam[:3, 0] @ z) * z
        x /= np.linalg.norm(x)
        rot = np.column_stack([x, np.cross(z, x), z])
        rot = rot @ Rotation.from_rotvec([0, 0, math.radians(rng.uniform(-roll_deg, roll_deg))]
                                         ).as_matrix()
        goal = make_pose(rot, position) @ invert(truth)
        sol = ik.solve(goal, home, frozen=[STAGE_JOINT])
        if not sol.success:
            continue
        q_true = sol.positions
        cam_pose = chain.fk(q_true, names['flange']) @ truth
        pc = (corners_base - cam_pose[:3, 3]) @ cam_pose[:3, :3]
        if np.any(pc[:, 2] < cam.min_range_m):
            continue
        uv = (pc[:, :2] / pc[:, 2:]) * [cam.fx, cam.fy] + [cam.cx, cam.cy]
        margin = 10.0
        if (uv.min() < margin or uv[:, 0].max() > cam.width - 1 - margin
                or uv[:, 1].max() > cam.height - 1 - margin):
            continue
        q_rep, g = _report(chain, q_true, joint_noise_rad, rng)
        qs.append(q_true)
        reported.append(q_rep)
        flange.append(g)
        pixels.append(uv + rng.normal(scale=pixel_noise_px, size=uv.shape))
    return HandEyeData(
        joints=np.array(reported), flange_poses=np.array(flange), image_points=np.array(pixels),
        object_points=obj, camera_matrix=k, dist_coeffs=np.zeros(5), truth=truth,
        nominal=nominal, target_in_base=target,
        settings={'views': views, 'pixel_noise_px': pixel_noise_px,
                  'joint_noise_rad': joint_noise_rad, 'offset_m': offset_m,
                  'offset_deg': offset_deg, 'seed': seed, 'board': list(board),
                  'square_m': square_m, 'tries': tries})


def simulate_probe(frames_count: int = 50, pixel_noise_px: float = 1.0,
                   elevation_m: float = 0.5e-3, joint_noise_rad: float = 0.0,
                   offset_m: float = 0.003, offset_deg: float = 2.0, seed: int = 0,
                   tilt_deg: float = 30.0, yaw_deg: float = 90.0,
                   chain: SerialChain | None = None,
                   ultrasound: UltrasoundConfig | None = None) -> ProbeData:
    """Draw a point-phantom data set (see the module docstring).

    ``elevation_m``: full width of the band around the image plane in which the point
    is accepted as "in the image" (the beam's slice thickness is 1 mm).
    """
    if frames_count < 1:
        raise ValueError(f'frames_count must be >= 1, got {frames_count}')
    from ir_guidance.rig_description import rig_chain

    chain = chain or rig_chain()
    us = ultrasound or UltrasoundConfig(width_m=config.load()['ultrasound']['width_m'],
                                        depth_m=config.load()['ultrasound']['depth_m'])
    if not (math.isfinite(elevation_m) and elevation_m >= 0):
        raise ValueError(f'elevation_m must be finite and >= 0, got {elevation_m}')
    band = elevation_m
    names = frames()
    rng = np.random.default_rng(seed)
    nominal = nominal_transform(chain, names['flange'], names['us_image'])
    truth = perturb(nominal, offset_m, offset_deg, rng)
    point = np.asarray(POINT_BASE, dtype=float)
    home = _home(chain)
    home_rot = (chain.fk(home, names['flange']) @ truth)[:3, :3]
    ik = PoseIk(chain, names['flange'], seed=seed)
    reported, flange, pixels = [], [], []
    tries = 0
    while len(flange) < frames_count:
        tries += 1
        if tries > _MAX_TRIES * frames_count:
            raise RuntimeError(f'only {len(flange)} of {frames_count} probe poses reachable')
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        tilt = Rotation.from_rotvec(axis * math.radians(tilt_deg) * math.sqrt(rng.uniform()))
        yaw = Rotation.from_rotvec([0, 0, math.radians(rng.uniform(-yaw_deg, yaw_deg))])
        rot = (yaw * tilt).as_matrix() @ home_rot
        local = np.array([rng.uniform(-0.4, 0.4) * us.width_m,
                          rng.uniform(0.15, 0.9) * us.depth_m, rng.uniform(-0.5, 0.5) * band])
        goal = make_pose(rot, point - rot @ local) @ invert(truth)
        sol = ik.solve(goal, home, frozen=[STAGE_JOINT])
        if not sol.success:
            continue
        image_pose = chain.fk(sol.positions, names['flange']) @ truth
        p = (point - image_pose[:3, 3]) @ image_pose[:3, :3]
        row, col = us.image_to_pixel(p[0], p[1])
        q_rep, g = _report(chain, sol.positions, joint_noise_rad, rng)
        reported.append(q_rep)
        flange.append(g)
        pixels.append(np.array([row, col]) + rng.normal(scale=pixel_noise_px, size=2))
    pixels_arr = np.array(pixels)
    x, y = us.pixel_to_image(pixels_arr[:, 0], pixels_arr[:, 1])
    return ProbeData(
        joints=np.array(reported), flange_poses=np.array(flange), pixels=pixels_arr,
        points_image=np.column_stack([x, y]), ultrasound=us, truth=truth, nominal=nominal,
        point_base=point,
        settings={'frames': frames_count, 'pixel_noise_px': pixel_noise_px,
                  'elevation_m': band, 'joint_noise_rad': joint_noise_rad,
                  'offset_m': offset_m, 'offset_deg': offset_deg, 'seed': seed,
                  'tries': tries})
