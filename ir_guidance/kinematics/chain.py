"""A serial kinematic chain cut out of any URDF, with FK and Jacobians from pinocchio.

The planner, the controller and the arm interface must not care which arm is bolted to
the rig, so the chain is defined by a base and a tip frame name only. Joints off the
base-to-tip path (gripper fingers, a second arm) are locked at their neutral position,
and mesh files are never loaded: kinematics needs none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pinocchio as pin

_LWA = pin.ReferenceFrame.LOCAL_WORLD_ALIGNED


class SerialChain:
    """Joint positions in, frame poses (4x4, base frame) and Jacobians out."""

    def __init__(self, model: pin.Model, base_link: str, tip_link: str) -> None:
        self.model = model
        self.data = model.createData()
        self.base_link = base_link
        self.tip_link = tip_link
        self.joint_names: list[str] = list(model.names)[1:]
        for name in (base_link, tip_link):
            if not model.existFrame(name):
                raise ValueError(f'frame {name!r} is not in the model')
        self._base_id = model.getFrameId(base_link)
        self.tip_id = model.getFrameId(tip_link)
        for joint in model.joints[1:]:
            if joint.nv != 1:
                raise ValueError(f'joint {joint.shortname()} has {joint.nv} DoF; '
                                 'a serial chain needs 1-DoF joints')
        # Continuous joints are stored by pinocchio as (cos, sin): nq=2, nv=1.
        self._continuous = np.array([j.nq == 2 for j in model.joints[1:]])
        self._any_continuous = bool(self._continuous.any())
        self._idx_q = np.array([j.idx_q for j in model.joints[1:]])
        lower = np.full(self.dof, -np.inf)
        upper = np.full(self.dof, np.inf)
        for i, joint in enumerate(model.joints[1:]):
            if not self._continuous[i]:
                lower[i] = model.lowerPositionLimit[joint.idx_q]
                upper[i] = model.upperPositionLimit[joint.idx_q]
        self.lower = lower
        self.upper = upper
        self.velocity_limit = np.array(model.velocityLimit, dtype=float)
        q0 = pin.neutral(model)
        pin.framesForwardKinematics(model, self.data, q0)
        # Joints between the root and the base are locked, so the base pose is constant.
        self._world_T_base = self.data.oMf[self._base_id].copy()
        self._base_R_world = self._world_T_base.rotation.T.copy()

    @classmethod
    def from_urdf(cls, urdf_xml: str, base_link: str, tip_link: str) -> SerialChain:
        """Build the chain from ``base_link`` to ``tip_link`` of a URDF document."""
        full = pin.buildModelFromXML(urdf_xml)
        for name in (base_link, tip_link):
            if not full.existFrame(name):
                frames = sorted({f.name for f in full.frames})
                raise ValueError(f'link {name!r} not in the URDF; frames: {frames}')
        tip_path = _joint_path(full, full.frames[full.getFrameId(tip_link)].parentJoint)
        base_path = _joint_path(full, full.frames[full.getFrameId(base_link)].parentJoint)
        if not set(base_path) <= set(tip_path):
            raise ValueError(f'{base_link!r} is not an ancestor of {tip_link!r}')
        chain = [j for j in tip_path if j not in base_path]
        if not chain:
            raise ValueError(f'no joint between {base_link!r} and {tip_link!r}')
        locked = [j for j in range(1, full.njoints) if j not in chain]
        model = pin.buildReducedModel(full, locked, pin.neutral(full)) if locked else full
        return cls(model, base_link, tip_link)

    @property
    def dof(self) -> int:
        return self.model.nv

    def frame_names(self) -> list[str]:
        return [f.name for f in self.model.frames]

    def frame_id(self, frame: str) -> int:
        if not self.model.existFrame(frame):
            raise ValueError(f'unknown frame {frame!r}')
        return self.model.getFrameId(frame)

    # -- configuration conversions -------------------------------------------------------
    def to_q(self, positions: Sequence[float] | np.ndarray, check: bool = True) -> np.ndarray:
        """Joint positions (one per joint, rad or m) to pinocchio's configuration vector.

        ``check=False`` skips validation, for inner loops whose input is already valid.
        """
        x = self.check_positions(positions) if check else positions
        if not self._any_continuous:
            return np.array(x, dtype=float)
        q = np.zeros(self.model.nq)
        for i, idx in enumerate(self._idx_q):
            if self._continuous[i]:
                q[idx], q[idx + 1] = np.cos(x[i]), np.sin(x[i])
            else:
                q[idx] = x[i]
        return q

    def from_q(self, q: np.ndarray) -> np.ndarray:
        """Pinocchio's configuration vector to one position per joint."""
        if not self._any_continuous:
            return np.array(q, dtype=float)
        x = np.empty(self.dof)
        for i, idx in enumerate(self._idx_q):
            x[i] = np.arctan2(q[idx + 1], q[idx]) if self._continuous[i] else q[idx]
        return x

    def check_positions(self, positions: Sequence[float] | np.ndarray) -> np.ndarray:
        """Validate a joint vector: right length, finite. Returns it as a float array."""
        x = np.asarray(positions, dtype=float)
        if x.shape != (self.dof,):
            raise ValueError(f'expected {self.dof} joint positions {self.joint_names}, '
                             f'got shape {x.shape}')
        if not np.all(np.isfinite(x)):
            raise ValueError(f'joint positions not finite: {x.tolist()}')
        return x

    def within_limits(self, positions: np.ndarray, tol: float = 1e-9) -> bool:
        x = np.asarray(positions, dtype=float)
        return bool(np.all(x >= self.lower - tol) and np.all(x <= self.upper + tol))

    def clip(self, positions: np.ndarray) -> np.ndarray:
        return np.clip(positions, self.lower, self.upper)

    # -- kinematics ---------------------------------------------------------------------
    def fk(self, positions: Sequence[float] | np.ndarray, frame: str | None = None) -> np.ndarray:
        """Pose of ``frame`` (default: the tip) in the base frame, as a 4x4 matrix."""
        return self.fk_q(self.to_q(positions), self.frame_id(frame or self.tip_link))

    def fk_q(self, q: np.ndarray, frame_id: int) -> np.ndarray:
        pin.forwardKinematics(self.model, self.data, q)
        placement = self._world_T_base.actInv(pin.updateFramePlacement(
            self.model, self.data, frame_id))
        return placement.homogeneous

    def fk_all(self, positions: Sequence[float] | np.ndarray,
               frames: Sequence[str]) -> dict[str, np.ndarray]:
        """Poses of several frames from one forward pass."""
        pin.framesForwardKinematics(self.model, self.data, self.to_q(positions))
        return {f: self._world_T_base.actInv(self.data.oMf[self.frame_id(f)]).homogeneous
                for f in frames}

    def jacobian(self, positions: Sequence[float] | np.ndarray,
                 frame: str | None = None) -> np.ndarray:
        """6 x dof Jacobian [linear; angular] at the frame origin, in base-frame axes."""
        return self.jacobian_q(self.to_q(positions), self.frame_id(frame or self.tip_link))

    def jacobian_q(self, q: np.ndarray, frame_id: int) -> np.ndarray:
        jac = pin.computeFrameJacobian(self.model, self.data, q, frame_id, _LWA)
        rot = self._base_R_world
        return np.vstack((rot @ jac[:3], rot @ jac[3:]))

    def world_to_base(self) -> pin.SE3:
        return self._world_T_base.inverse()


def _joint_path(model: pin.Model, joint_id: int) -> list[int]:
    """Joint ids from the root down to ``joint_id`` (the universe, 0, excluded)."""
    path = []
    while joint_id > 0:
        path.append(joint_id)
        joint_id = model.parents[joint_id]
    return path[::-1]
