"""MuJoCo physics of the rig and the forearm (ROS-free).

:class:`RigPhysics` loads the rig's URDF (the same one pinocchio and the ROS nodes read)
into MuJoCo and adds what a URDF cannot say:

- **Frames.** MuJoCo's URDF importer fuses links hanging off fixed joints into their
  parent by default, which would erase ``tool0``, the F/T sensor's measuring frame, the
  probe's image frame, the needle tip and the camera frame, and would weld the end
  effector onto the flange so that no sensor could measure between them. The URDF is
  compiled with ``<mujoco><compiler fusestatic="false" discardvisual="true"
  balanceinertia="true"/></mujoco>`` injected, so every link stays a body whose pose is
  that of the URDF link (and of pinocchio's frame of the same name). Visual-only
  geometry is dropped.
- **Servos.** One position actuator per commanded joint (``config.joint_names()``
  order), tuned as a critically damped loop on the joint's own inertia at the home
  configuration: ``kp = I w^2``, ``kv = 2 I w``, with the natural frequency ``w`` chosen
  for a -3 dB closed-loop bandwidth of ``arm_bandwidth_hz`` (arm, default 12 Hz, a UR
  joint position loop) and ``stage_bandwidth_hz`` (needle stage, default 20 Hz). Torques
  saturate at the URDF efforts, and like a real drive the servo's setpoint moves towards
  a new command no faster than the URDF joint velocity limit (180 deg/s on the arm,
  20 mm/s on the stage): a saturated PD loop fed raw steps would overshoot. Rotor
  inertias reflected through the gearboxes are joint armature (0.1 kg m^2 per arm joint;
  10 kg for the stage's lead screw, which is what keeps a real stage stiff against needle
  forces). Gravity is compensated on every moving body (MuJoCo ``gravcomp``, a
  joint-space force like a controller's feed-forward), so holding a pose does not sag.
- **Forearm and table.** The forearm of :class:`~ir_guidance.sim.phantom.Phantom` is a
  cylinder along world y with a compliant, skin-like contact (``skin_stiffness``,
  default 1 N/mm of indentation under the probe face, linear), lying on a rigid table
  box. Only the probe body collides, through two explicit contact pairs (probe-forearm,
  probe-table); every other geom has collisions off, which keeps collision nearly free.
  The forearm is a mocap body: forces cannot move it, :meth:`RigPhysics.move_forearm`
  does (the simulator follows the phantom's slow drift with it).
- **F/T sensor.** MuJoCo ``force`` and ``torque`` sensors at a site on the
  ``ft_sensor_frame`` body measure the wrench between that body (with everything it
  carries: tool plate, probe, needle stage, camera) and its parent, the sensor body on
  the flange. :meth:`RigPhysics.ft_wrench` turns them into what a tared sensor reports.

Determinism: the constructor arguments and the sequence of calls fix everything. Two
instances fed the same calls give bitwise-equal trajectories and readings; the sensor
noise at a tick is a function of the seed and the tick only, and reading a sensor or a
pose never changes the motion.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import mujoco
import numpy as np

from ir_guidance import config
from ir_guidance.sim.phantom import Phantom

# The frames :meth:`RigPhysics.frame_pose` is meant for (any URDF link name is accepted).
FRAMES = ('tool0', 'ft_sensor_frame', 'us_image_frame', 'needle_tip', 'nir_camera_optical_frame')

PROBE_BODY = 'us_probe_link'
FT_BODY = 'ft_sensor_frame'
NEEDLE_TIP_BODY = 'needle_tip'

ARM_ARMATURE = 0.1        # kg m^2, reflected rotor inertia per arm joint
STAGE_ARMATURE = 10.0     # kg, reflected rotor inertia of the needle stage's lead screw
# -3 dB bandwidth of a critically damped second-order loop as a fraction of its natural
# frequency w: |w^2 / (j x + w)^2| = 1/sqrt(2) at x = w sqrt(sqrt(2) - 1).
BANDWIDTH_PER_NATURAL = math.sqrt(math.sqrt(2.0) - 1.0)

# Skin contact: constant (and low) impedance makes the soft contact a linear
# spring-damper whose force does not depend on the inertia behind the probe.
SKIN_IMPEDANCE = 0.002
SKIN_FRICTION = 0.2       # ultrasound gel on skin
SKIN_CONTACT_POINTS = 2   # a flat probe face on the arm touches it at its two ends
TABLE_THICKNESS = 0.05
NOISE_BLOCK = 1024        # ticks of F/T noise drawn at a time


@dataclass(frozen=True)
class ProbeContact:
    """The forearm's push on the probe, summed over contact points (world frame)."""

    force: np.ndarray          # (3,) N, acting on the probe
    point: np.ndarray | None   # (3,) normal-force-weighted contact point; None: no contact
    depth: float               # m, deepest penetration (0 without contact)
    count: int                 # number of contact points


class RigPhysics:
    """MuJoCo simulation of the rig pressing on a forearm phantom; see the module docs.

    Joint vectors (commands, positions, velocities) are in ``config.joint_names()``
    order: the six arm joints (rad), then the needle stage (m).
    """

    def __init__(self, phantom: Phantom, urdf_xml: str | None = None, timestep: float = 0.001,
                 seed: int = 0, ft_noise_n: float = 0.02, ft_bias_n: float = 0.05,
                 ft_noise_nm: float = 5.0e-4, ft_bias_nm: float = 2.0e-3,
                 arm_bandwidth_hz: float = 12.0, stage_bandwidth_hz: float = 20.0,
                 skin_stiffness: float = 1000.0, skin_damping: float = 30.0) -> None:
        for name, value in (('timestep', timestep), ('arm_bandwidth_hz', arm_bandwidth_hz),
                            ('stage_bandwidth_hz', stage_bandwidth_hz),
                            ('skin_stiffness', skin_stiffness)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f'{name} must be finite and > 0, got {value}')
        for name, value in (('skin_damping', skin_damping), ('ft_noise_n', ft_noise_n),
                            ('ft_bias_n', ft_bias_n), ('ft_noise_nm', ft_noise_nm),
                            ('ft_bias_nm', ft_bias_nm)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f'{name} must be finite and >= 0, got {value}')
        if urdf_xml is None:
            from ir_guidance.rig_description import rig_urdf

            urdf_xml = rig_urdf()
        robot = config.load()['robot']
        self.joint_names: list[str] = config.joint_names()
        self.stage_joint: str = robot['stage_joint']
        self.home = np.array(robot['home'], dtype=float)
        self.phantom = phantom
        self.seed = int(seed)
        self.skin_stiffness = float(skin_stiffness)
        self.skin_damping = float(skin_damping)

        mjcf_urdf, velocity_limits = _prepare_urdf(urdf_xml)
        spec = mujoco.MjSpec.from_string(mjcf_urdf)
        self._build(spec, phantom, timestep)
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        m = self.model

        def find(kind: mujoco.mjtObj, name: str) -> int:
            index = mujoco.mj_name2id(m, kind, name)
            if index < 0:
                raise ValueError(f'{name!r} is not in the rig model')
            return index

        joints = [find(mujoco.mjtObj.mjOBJ_JOINT, n) for n in self.joint_names]
        self._qadr = np.array([m.jnt_qposadr[j] for j in joints])
        self._dadr = np.array([m.jnt_dofadr[j] for j in joints])
        # Slices when the joints are stored in order (as here): a copy of a slice costs
        # a fifth of fancy indexing, and these are read every tick.
        self._qread = _as_slice(self._qadr)
        self._dread = _as_slice(self._dadr)
        self._actuators = np.array([find(mujoco.mjtObj.mjOBJ_ACTUATOR, n)
                                    for n in self.joint_names])
        self.lower = np.array([m.jnt_range[j, 0] if m.jnt_limited[j] else -np.inf
                               for j in joints])
        self.upper = np.array([m.jnt_range[j, 1] if m.jnt_limited[j] else np.inf
                               for j in joints])
        self.velocity_limit = np.array([velocity_limits.get(n, np.inf)
                                        for n in self.joint_names])
        self._max_delta = self.velocity_limit * timestep
        self._body = {m.body(i).name: i for i in range(m.nbody)}
        self._ft_body = find(mujoco.mjtObj.mjOBJ_BODY, FT_BODY)
        self._tip_body = find(mujoco.mjtObj.mjOBJ_BODY, NEEDLE_TIP_BODY)
        self._probe_geom = find(mujoco.mjtObj.mjOBJ_GEOM, 'probe')
        self._forearm_geom = find(mujoco.mjtObj.mjOBJ_GEOM, 'forearm')
        self._forearm_mocap = int(m.body_mocapid[find(mujoco.mjtObj.mjOBJ_BODY, 'forearm')])
        self._forearm_rest = np.array(m.body_pos[find(mujoco.mjtObj.mjOBJ_BODY, 'forearm')])
        self._ft_site = find(mujoco.mjtObj.mjOBJ_SITE, 'ft_sensor')
        self._force_adr = int(m.sensor_adr[find(mujoco.mjtObj.mjOBJ_SENSOR, 'ft_force')])
        self._torque_adr = int(m.sensor_adr[find(mujoco.mjtObj.mjOBJ_SENSOR, 'ft_torque')])
        self.ee_mass = float(m.body_subtreemass[self._ft_body])
        # Views into MuJoCo's arrays, made once: each attribute access costs a microsecond
        # or two, and the F/T reading runs every tick.
        d = self.data
        self._ft_rot = d.site_xmat[self._ft_site].reshape(3, 3)
        self._ft_pos = d.site_xpos[self._ft_site]
        self._ee_com = d.subtree_com[self._ft_body]
        self._ft_force = d.sensordata[self._force_adr:self._force_adr + 3]
        self._ft_torque = d.sensordata[self._torque_adr:self._torque_adr + 3]
        self._weight = self.ee_mass * np.array(m.opt.gravity)
        self._tare = np.empty((2, 3))
        self._tare[0] = self._weight
        self._xmat = d.xmat.reshape(-1, 3, 3)
        self._xpos = d.xpos

        self._tune_servos(arm_bandwidth_hz, stage_bandwidth_hz)
        self._tune_skin()

        # F/T errors: a constant bias (uniform within +-ft_bias_*) drawn once, and white
        # noise whose sample at tick k depends only on (seed, k): counter-based Philox
        # streams, one per block of NOISE_BLOCK ticks.
        seeds = np.random.SeedSequence(self.seed)
        bias_seed, noise_seed = seeds.spawn(2)
        scale_bias = np.array([ft_bias_n] * 3 + [ft_bias_nm] * 3)
        self.ft_bias = np.random.default_rng(bias_seed).uniform(-1.0, 1.0, 6) * scale_bias
        self.ft_noise_std = np.array([ft_noise_n] * 3 + [ft_noise_nm] * 3)
        self._noise_key = noise_seed.generate_state(2, dtype=np.uint64)
        self._noise_block: tuple[int, np.ndarray] | None = None

        self._command = np.zeros(len(self.joint_names))
        self._setpoint = np.zeros(len(self.joint_names))
        self._tick = 0
        self._fresh = self._sensors_fresh = False
        self.reset(self.home)

    # -- model construction --------------------------------------------------------------
    def _build(self, spec: mujoco.MjSpec, phantom: Phantom, timestep: float) -> None:
        spec.option.timestep = timestep
        spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
        for body in spec.bodies:
            if body.name != 'world':
                body.gravcomp = 1.0
        # xfrc_applied acts at a body's centre of mass. The massless needle_tip body, welded
        # to the carriage, gets its "centre of mass" at its origin, so a force applied to
        # it acts at the tip point on the carriage, with no moment to update as it turns.
        tip = spec.body(NEEDLE_TIP_BODY)
        if tip is None:
            raise ValueError(f'the URDF has no link {NEEDLE_TIP_BODY!r}')
        tip.explicitinertial = True
        tip.ipos = [0.0, 0.0, 0.0]
        for joint in spec.joints:
            joint.armature = STAGE_ARMATURE if joint.name == self.stage_joint else ARM_ARMATURE
        # Collisions only through the explicit pairs below.
        probe = None
        for geom in spec.geoms:
            geom.contype = 0
            geom.conaffinity = 0
            if geom.parent.name == PROBE_BODY:
                probe = geom
        if probe is None:
            raise ValueError(f'the URDF has no collision geometry on {PROBE_BODY!r}')
        probe.name = 'probe'

        world = spec.worldbody
        # A mocap body: immovable by forces, moved by :meth:`move_forearm` (arm drift).
        arm = world.add_body()
        arm.name = 'forearm'
        arm.mocap = True
        arm.pos = [phantom.axis_x, phantom.center_y, phantom.axis_z]
        forearm = arm.add_geom()
        forearm.name = 'forearm'
        forearm.type = mujoco.mjtGeom.mjGEOM_CYLINDER
        forearm.size = [phantom.arm_radius, phantom.length / 2, 0.0]
        forearm.quat = [math.sqrt(0.5), -math.sqrt(0.5), 0.0, 0.0]  # cylinder z -> world y
        forearm.contype = 0
        forearm.conaffinity = 0
        table = world.add_geom()
        table.name = 'table'
        table.type = mujoco.mjtGeom.mjGEOM_BOX
        top = phantom.axis_z - phantom.arm_radius
        table.size = [0.2, phantom.length / 2 + 0.1, TABLE_THICKNESS / 2]
        table.pos = [phantom.axis_x, phantom.center_y, top - TABLE_THICKNESS / 2]
        table.contype = 0
        table.conaffinity = 0

        skin = spec.add_pair()
        skin.name = 'probe_skin'
        skin.geomname1 = 'forearm'
        skin.geomname2 = 'probe'
        skin.condim = 3
        skin.friction = [SKIN_FRICTION, SKIN_FRICTION, 0.005, 1e-4, 1e-4]
        rigid = spec.add_pair()
        rigid.name = 'probe_table'
        rigid.geomname1 = 'table'
        rigid.geomname2 = 'probe'
        rigid.condim = 3

        ft_body = spec.body(FT_BODY)
        if ft_body is None:
            raise ValueError(f'the URDF has no link {FT_BODY!r}')
        site = ft_body.add_site()
        site.name = 'ft_sensor'
        for name, kind in (('ft_force', mujoco.mjtSensor.mjSENS_FORCE),
                           ('ft_torque', mujoco.mjtSensor.mjSENS_TORQUE)):
            sensor = spec.add_sensor()
            sensor.name = name
            sensor.type = kind
            sensor.objtype = mujoco.mjtObj.mjOBJ_SITE
            sensor.objname = 'ft_sensor'

        for name in self.joint_names:
            actuator = spec.add_actuator()
            actuator.name = name
            actuator.target = name
            actuator.trntype = mujoco.mjtTrn.mjTRN_JOINT
            # Placeholder gains: _tune_servos sets them from the compiled inertia.
            actuator.set_to_position(kp=1.0, kv=0.0)

    def _tune_servos(self, arm_hz: float, stage_hz: float) -> None:
        """Critically damped PD gains on each joint's inertia at home; URDF torque limits."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[self._qadr] = self.home
        mujoco.mj_forward(m, d)
        inertia = np.zeros((m.nv, m.nv))
        mujoco.mj_fullM(m, d, inertia)
        count = len(self.joint_names)
        self.kp = np.zeros(count)
        self.kv = np.zeros(count)
        self.natural_hz = np.zeros(count)
        self.bandwidth_hz = np.zeros(count)
        for i, name in enumerate(self.joint_names):
            aid = self._actuators[i]
            jid = m.actuator_trnid[aid, 0]
            self.bandwidth_hz[i] = stage_hz if name == self.stage_joint else arm_hz
            omega = 2 * math.pi * self.bandwidth_hz[i] / BANDWIDTH_PER_NATURAL
            mass = inertia[self._dadr[i], self._dadr[i]]
            self.kp[i] = mass * omega ** 2
            self.kv[i] = 2.0 * mass * omega
            self.natural_hz[i] = omega / (2 * math.pi)
            m.actuator_gainprm[aid, 0] = self.kp[i]
            m.actuator_biasprm[aid, :3] = (0.0, -self.kp[i], -self.kv[i])
            if m.jnt_actfrclimited[jid]:
                m.actuator_forcelimited[aid] = 1
                m.actuator_forcerange[aid] = m.jnt_actfrcrange[jid]
        self.effort_limit = np.array([m.actuator_forcerange[a, 1] if m.actuator_forcelimited[a]
                                      else np.inf for a in self._actuators])

    def _tune_skin(self) -> None:
        """Set the skin pair's solref so that the probe face feels ``skin_stiffness``.

        A soft MuJoCo constraint row pushes with ``(B v + K d r) / R`` at rest (``r``
        penetration, ``v`` its rate, ``d`` the impedance); with a direct solref ``(-k,
        -b)`` and constant ``d``, ``K = k / d^2`` and ``B = b / d``. A pyramidal friction
        cone has four rows per contact point, each with ``R = 2 mu^2 (1 + mu^2) w (1 - d)
        / (d impratio)``, where ``w`` is the probe body's translational inverse weight, a
        model constant (so the skin does not stiffen or soften with the arm's pose).
        Summed over the rows a contact point is a spring ``G k`` and a damper ``G b``
        with ``G = 2 impratio / (mu^2 (1 + mu^2) w (1 - d))``. A small ``d`` makes ``R``
        dwarf the probe's inverse inertia, so the contact acts as that spring-damper
        rather than as a constraint that drags the arm to a reference trajectory.
        """
        m = self.model
        pair = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_PAIR, 'probe_skin')
        mu = m.pair_friction[pair, 0]
        weight = (m.body_invweight0[m.geom_bodyid[self._probe_geom], 0]
                  + m.body_invweight0[m.geom_bodyid[self._forearm_geom], 0])
        gain = 2 * m.opt.impratio / (mu ** 2 * (1 + mu ** 2) * weight * (1 - SKIN_IMPEDANCE))
        per_point = 1.0 / (SKIN_CONTACT_POINTS * gain)
        m.pair_solref[pair] = (-self.skin_stiffness * per_point,
                               -self.skin_damping * per_point)
        m.pair_solimp[pair] = (SKIN_IMPEDANCE, SKIN_IMPEDANCE, 0.001, 0.5, 2.0)

    # -- simulation ----------------------------------------------------------------------
    def reset(self, positions: np.ndarray) -> None:
        """Start over at rest at ``positions``: time 0, command = positions, no needle force."""
        x = self._check(positions, len(self.joint_names), 'joint positions')
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[self._qadr] = x
        self._command = np.clip(x, self.lower, self.upper)
        self._setpoint = self._command.copy()
        d.ctrl[self._actuators] = self._setpoint
        self._tick = 0
        mujoco.mj_forward(m, d)
        self._fresh = self._sensors_fresh = True

    def set_command(self, positions: np.ndarray, checked: bool = False) -> None:
        """Position targets; a bad vector raises ValueError and leaves the last one in effect.

        Targets beyond the joint limits are clipped to them. The servo setpoint moves to
        the target at the joint velocity limit (:attr:`velocity_limit`). ``checked``: the
        caller has already validated the vector (finite, right length, within limits),
        as the simulator does for every command; validation is then skipped.
        """
        if checked:
            self._command = np.array(positions, dtype=float)
            return
        x = self._check(positions, len(self.joint_names), 'command')
        self._command = np.clip(x, self.lower, self.upper)

    @property
    def command(self) -> np.ndarray:
        """The position targets in effect."""
        return self._command.copy()

    @property
    def setpoint(self) -> np.ndarray:
        """The servo setpoints now, on their way to :attr:`command`."""
        return self._setpoint.copy()

    def step(self, n: int = 1) -> None:
        """Advance ``n`` physics ticks of :attr:`timestep` seconds."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f'step count must be a positive integer, got {n!r}')
        m, d = self.model, self.data
        ticks = int(n)
        while ticks > 0:
            if not self._advance_setpoint():
                # The setpoints are at the command: let MuJoCo run the remaining ticks.
                mujoco.mj_step(m, d, nstep=ticks)
                self._tick += ticks
                break
            mujoco.mj_step(m, d)
            self._tick += 1
            ticks -= 1
        self._fresh = self._sensors_fresh = False

    def _advance_setpoint(self) -> bool:
        """Move the setpoints one tick towards the command; False if already there."""
        delta = self._command - self._setpoint
        if not delta.any():
            return False
        limit = self._max_delta
        self._setpoint = self._setpoint + np.minimum(np.maximum(delta, -limit), limit)
        self.data.ctrl[self._actuators] = self._setpoint
        return True

    @property
    def time(self) -> float:
        """Simulated seconds since the last reset."""
        return float(self.data.time)

    @property
    def timestep(self) -> float:
        """Seconds per physics tick."""
        return float(self.model.opt.timestep)

    @property
    def tick(self) -> int:
        """Physics ticks since the last reset."""
        return self._tick

    def joint_positions(self) -> np.ndarray:
        """Joint positions (rad, m) in config order."""
        return self.data.qpos[self._qread].copy()

    def joint_velocities(self) -> np.ndarray:
        """Joint velocities (rad/s, m/s) in config order."""
        return self.data.qvel[self._dread].copy()

    def frame_pose(self, name: str) -> np.ndarray:
        """4x4 pose of a URDF link (e.g. one of :data:`FRAMES`) in the world frame."""
        body = self._body.get(name)
        if body is None:
            raise ValueError(f'unknown frame {name!r}; e.g. {list(FRAMES)}')
        self._sync()
        pose = _POSE_TEMPLATE.copy()
        pose[:3, :3] = self._xmat[body]
        pose[:3, 3] = self._xpos[body]
        return pose

    # -- interaction ---------------------------------------------------------------------
    def apply_needle_force(self, force_world: np.ndarray) -> None:
        """Push on the needle tip with ``force_world`` (N, world axes) until changed.

        This is how a needle-tissue model computed outside MuJoCo acts on the rig: the
        force goes through the stage into the arm and through the F/T sensor. It is an
        ``xfrc_applied`` on the massless ``needle_tip`` body, which is welded to the
        needle carriage and has its centre of mass at its origin: the force acts at the
        tip point of the carriage, with its moment about the carriage following the tip.
        A reset removes it.
        """
        force = self._check(force_world, 3, 'needle force')
        wrench = self.data.xfrc_applied[self._tip_body]
        wrench[:3] = force
        wrench[3:] = 0.0
        self._sensors_fresh = False  # poses and contacts are unaffected

    def move_forearm(self, offset: np.ndarray) -> None:
        """Displace the forearm by ``offset`` (m, world) from rest; the table stays."""
        offset = self._check(offset, 3, 'forearm offset')
        self.data.mocap_pos[self._forearm_mocap] = self._forearm_rest + offset
        self._fresh = self._sensors_fresh = False

    @property
    def needle_force(self) -> np.ndarray:
        """The needle-tip force in effect (world, N)."""
        return self.data.xfrc_applied[self._tip_body, :3].copy()

    def probe_contact(self) -> ProbeContact:
        """Total contact force of the forearm on the probe, its point and depth (world)."""
        self._sync()
        m, d = self.model, self.data
        pair = (self._forearm_geom, self._probe_geom)
        local = np.zeros(6)
        total = np.zeros(3)
        weighted = np.zeros(3)
        normal_sum = 0.0
        depth = 0.0
        count = 0
        for i in range(d.ncon):
            con = d.contact[i]
            geoms = (con.geom1, con.geom2)
            if geoms != pair and geoms[::-1] != pair:
                continue
            mujoco.mj_contactForce(m, d, i, local)
            # Contact frame rows: the normal (pointing from geom1 to geom2) and two
            # tangents; the force acts on geom2, its opposite on geom1.
            world = local[:3] @ con.frame.reshape(3, 3)
            if geoms[0] == self._probe_geom:
                world = -world
            total += world
            weighted += local[0] * con.pos
            normal_sum += local[0]
            depth = max(depth, -float(con.dist))
            count += 1
        point = weighted / normal_sum if normal_sum > 0 else None
        return ProbeContact(force=total, point=point, depth=depth, count=count)

    def probe_contact_force(self) -> np.ndarray:
        """World-frame total contact force of the forearm on the probe (N)."""
        return self.probe_contact().force

    # -- F/T sensor ----------------------------------------------------------------------
    def ft_wrench_true(self) -> np.ndarray:
        """Noise-free tared wrench ``(fx, fy, fz, tx, ty, tz)`` in ft_sensor_frame axes.

        The load that the world (skin contact, the needle) and the end effector's own
        inertia put on the tool side of the sensor, as a tared sensor reports it: the
        force the environment applies to the tool, and its moment about the frame origin.
        The skin pushing the probe face back towards the flange reads as negative ``fz``
        (the frame's z points out of the flange). MuJoCo's sensors measure everything the
        end effector hangs on the sensor with, its weight included, so the weight at the
        current orientation and stage position is taken off: a tool at rest reads zero.
        """
        self._sync(sensors=True)
        # Weight of the end effector and its moment about the sensor, as a 2x3 block
        # rotated into sensor axes in one product (this runs every tick).
        tare = self._tare
        tare[1] = _cross(self._ee_com - self._ft_pos, self._weight)
        wrench = (tare @ self._ft_rot).ravel()
        wrench[:3] += self._ft_force
        wrench[3:] += self._ft_torque
        return -wrench

    def ft_wrench(self) -> np.ndarray:
        """The F/T sensor's reading: :meth:`ft_wrench_true` plus bias and seeded noise."""
        block, row = divmod(self._tick, NOISE_BLOCK)
        if self._noise_block is None or self._noise_block[0] != block:
            generator = np.random.Generator(np.random.Philox(
                key=self._noise_key, counter=[0, block, 0, 0]))
            noise = generator.standard_normal((NOISE_BLOCK, 6))
            # Bias and scale folded in once per block: one addition per reading.
            self._noise_block = (block, noise * self.ft_noise_std + self.ft_bias)
        return self.ft_wrench_true() + self._noise_block[1][row]

    # -- helpers -------------------------------------------------------------------------
    def _sync(self, sensors: bool = False) -> None:
        """Bring derived quantities (poses, contacts; ``sensors`` too) up to date.

        One ``mj_forward`` per tick is the budget: a new needle force only changes the
        sensor readings, so it does not make the poses and contacts stale.
        """
        if self._fresh and (self._sensors_fresh or not sensors):
            return
        mujoco.mj_forward(self.model, self.data)
        self._fresh = self._sensors_fresh = True

    @staticmethod
    def _check(values: np.ndarray, size: int, what: str) -> np.ndarray:
        try:
            x = np.array(values, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'{what} must be {size} numbers: {exc}') from exc
        if x.shape != (size,):
            raise ValueError(f'{what} must have shape ({size},), got {x.shape}')
        if not np.isfinite(x).all():
            raise ValueError(f'{what} must be finite, got {x.tolist()}')
        return x


_POSE_TEMPLATE = np.eye(4)


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """``index`` as a slice when it is a contiguous ascending run, else unchanged."""
    if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3-vector cross product (np.cross costs ~10x more on tiny arrays)."""
    return np.array((a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
                     a[0] * b[1] - a[1] * b[0]))


def _prepare_urdf(urdf_xml: str) -> tuple[str, dict[str, float]]:
    """The URDF with MuJoCo compiler options that keep every link, and joint speed limits."""
    root = ET.fromstring(urdf_xml)
    if root.tag != 'robot':
        raise ValueError(f'not a URDF: root element is <{root.tag}>')
    extension = root.find('mujoco')
    if extension is None:
        extension = ET.Element('mujoco')
        root.insert(0, extension)
    compiler = extension.find('compiler')
    if compiler is None:
        compiler = ET.SubElement(extension, 'compiler')
    compiler.set('fusestatic', 'false')
    compiler.set('discardvisual', 'true')
    compiler.set('balanceinertia', 'true')
    velocity = {}
    for joint in root.iter('joint'):
        limit = joint.find('limit')
        if limit is not None and float(limit.get('velocity', 0.0)) > 0:
            velocity[joint.get('name')] = float(limit.get('velocity'))
    return ET.tostring(root, encoding='unicode'), velocity
