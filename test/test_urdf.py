"""The rig's robot description: it expands, three independent parsers load it and agree,
and the end effector has the geometry the header comment of urdf/rig.urdf.xacro promises.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import mujoco
import numpy as np
import pinocchio as pin
import pytest
import yourdfpy

from ir_guidance import config
from ir_guidance.rig_description import expand, rig_urdf, xacro_path

ARM_JOINTS = ['shoulder_pan_joint', 'shoulder_lift_joint', 'elbow_joint',
              'wrist_1_joint', 'wrist_2_joint', 'wrist_3_joint']
STAGE_JOINT = 'needle_insertion_joint'
ACTUATED = [*ARM_JOINTS, STAGE_JOINT]

# Published UR5e values, quoted in the xacro header (and ur_description's joint_limits.yaml).
UR5E_MASSES = {'shoulder_link': 3.761, 'upper_arm_link': 8.058, 'forearm_link': 2.846,
               'wrist_1_link': 1.37, 'wrist_2_link': 1.3, 'wrist_3_link': 0.365}
UR5E_EFFORT = {'shoulder_pan_joint': 150.0, 'shoulder_lift_joint': 150.0, 'elbow_joint': 150.0,
               'wrist_1_joint': 28.0, 'wrist_2_joint': 28.0, 'wrist_3_joint': 28.0}
NEEDLE_ANGLE = math.radians(20.0)


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def urdf_xml() -> str:
    return rig_urdf()


@pytest.fixture(scope='module')
def pin_model(urdf_xml):
    return pin.buildModelFromXML(urdf_xml)


@pytest.fixture(scope='module')
def mj_model(urdf_xml):
    return mujoco.MjModel.from_xml_string(urdf_xml)


@pytest.fixture(scope='module')
def ydf(urdf_xml, tmp_path_factory):
    path = tmp_path_factory.mktemp('urdf') / 'rig.urdf'
    path.write_text(urdf_xml, encoding='utf-8')
    return yourdfpy.URDF.load(str(path), load_meshes=False, build_scene_graph=True)


def _pin_frames(model: pin.Model, q: np.ndarray) -> tuple[pin.Data, dict[str, np.ndarray]]:
    data = model.createData()
    pin.framesForwardKinematics(model, data, q)
    return data, {f.name: data.oMf[i].homogeneous for i, f in enumerate(model.frames)}


def _pin_q(model: pin.Model, positions: dict[str, float]) -> np.ndarray:
    q = pin.neutral(model)
    for name, value in positions.items():
        q[model.joints[model.getJointId(name)].idx_q] = value
    return q


def _rel(frames: dict[str, np.ndarray], parent: str, child: str) -> np.ndarray:
    """Pose of ``child`` in ``parent``."""
    return np.linalg.inv(frames[parent]) @ frames[child]


def _random_positions(rng: np.random.Generator, lower, upper) -> dict[str, float]:
    return dict(zip(ACTUATED, rng.uniform(lower, upper), strict=True))


# -- expansion and loading -----------------------------------------------------------------

def test_xacro_expands_to_a_urdf(urdf_xml):
    assert xacro_path().is_file()
    root = ET.fromstring(urdf_xml)
    assert root.tag == 'robot'
    assert root.get('name') == 'ir_guidance_rig'
    assert 'xacro:' not in urdf_xml and '${' not in urdf_xml
    # Every property was evaluated to a number.
    for origin in root.iter('origin'):
        for attr in ('xyz', 'rpy'):
            values = [float(v) for v in origin.get(attr, '0 0 0').split()]
            assert len(values) == 3 and all(math.isfinite(v) for v in values)
    # The same expansion every time, and rig_urdf() is that expansion.
    assert expand(str(xacro_path())) == urdf_xml
    # Primitives only: no package:// resolution needed by any loader.
    assert root.find('.//mesh') is None


def test_pinocchio_loads(pin_model):
    names = list(pin_model.names)[1:]
    assert names == ACTUATED
    assert pin_model.nq == pin_model.nv == 7


def test_mujoco_loads(mj_model):
    names = [mujoco.mj_id2name(mj_model, mujoco.mjtObj.mjOBJ_JOINT, j)
             for j in range(mj_model.njnt)]
    assert names == ACTUATED
    assert mj_model.nq == 7
    data = mujoco.MjData(mj_model)
    mujoco.mj_forward(mj_model, data)
    assert np.all(np.isfinite(data.xpos))


def test_yourdfpy_loads(ydf):
    assert ydf.base_link == 'world'
    assert list(ydf.actuated_joint_names) == ACTUATED


def _pin_limits(model):
    out = {}
    for name in ACTUATED:
        j = model.joints[model.getJointId(name)]
        out[name] = (model.lowerPositionLimit[j.idx_q], model.upperPositionLimit[j.idx_q])
    return out


def _mj_limits(model):
    out = {}
    for name in ACTUATED:
        jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
        assert model.jnt_limited[jid], name
        out[name] = tuple(model.jnt_range[jid])
    return out


def _ydf_limits(urdf):
    return {n: (urdf.joint_map[n].limit.lower, urdf.joint_map[n].limit.upper) for n in ACTUATED}


def test_parsers_agree_on_joints_and_limits(pin_model, mj_model, ydf):
    pin_l, mj_l, ydf_l = _pin_limits(pin_model), _mj_limits(mj_model), _ydf_limits(ydf)
    for name in ACTUATED:
        np.testing.assert_allclose(pin_l[name], ydf_l[name], atol=1e-12, err_msg=name)
        np.testing.assert_allclose(mj_l[name], ydf_l[name], atol=1e-12, err_msg=name)
    # Joint types agree too: six hinges and one slide.
    for name in ACTUATED:
        jid = mujoco.mj_name2id(mj_model, mujoco.mjtObj.mjOBJ_JOINT, name)
        expected = 'prismatic' if name == STAGE_JOINT else 'revolute'
        assert ydf.joint_map[name].type == expected
        mj_expected = mujoco.mjtJoint.mjJNT_SLIDE if name == STAGE_JOINT else \
            mujoco.mjtJoint.mjJNT_HINGE
        assert mj_model.jnt_type[jid] == mj_expected


def test_limits_are_ur_descriptions(ydf, pin_model):
    for name in ARM_JOINTS:
        bound = math.pi if name == 'elbow_joint' else 2 * math.pi
        joint = ydf.joint_map[name]
        assert joint.limit.lower == pytest.approx(-bound, abs=1e-12)
        assert joint.limit.upper == pytest.approx(bound, abs=1e-12)
        assert joint.limit.velocity == pytest.approx(math.pi, abs=1e-12)  # 180 deg/s
        assert joint.limit.effort == pytest.approx(UR5E_EFFORT[name])
        idx = pin_model.joints[pin_model.getJointId(name)].idx_v
        assert pin_model.velocityLimit[idx] == pytest.approx(math.pi, abs=1e-12)
        assert pin_model.effortLimit[idx] == pytest.approx(UR5E_EFFORT[name])


def test_parsers_agree_on_forward_kinematics(pin_model, mj_model, ydf):
    """Same link poses from pinocchio, MuJoCo and yourdfpy at random configurations."""
    rng = np.random.default_rng(7)
    lower = np.array([_ydf_limits(ydf)[n][0] for n in ACTUATED])
    upper = np.array([_ydf_limits(ydf)[n][1] for n in ACTUATED])
    bodies = ['shoulder_link', 'upper_arm_link', 'forearm_link', 'wrist_1_link',
              'wrist_2_link', 'wrist_3_link', 'needle_carriage']
    mj_data = mujoco.MjData(mj_model)
    for _ in range(10):
        positions = _random_positions(rng, lower, upper)
        _, pin_frames = _pin_frames(pin_model, _pin_q(pin_model, positions))
        for name, value in positions.items():
            jid = mujoco.mj_name2id(mj_model, mujoco.mjtObj.mjOBJ_JOINT, name)
            mj_data.qpos[mj_model.jnt_qposadr[jid]] = value
        mujoco.mj_kinematics(mj_model, mj_data)
        ydf.update_cfg(positions)
        for body in bodies:
            bid = mujoco.mj_name2id(mj_model, mujoco.mjtObj.mjOBJ_BODY, body)
            mj_pose = np.eye(4)
            mj_pose[:3, :3] = mj_data.xmat[bid].reshape(3, 3)
            mj_pose[:3, 3] = mj_data.xpos[bid]
            ydf_pose = ydf.get_transform(body, 'world')
            np.testing.assert_allclose(pin_frames[body], ydf_pose, atol=1e-9, err_msg=body)
            np.testing.assert_allclose(mj_pose, ydf_pose, atol=1e-6, err_msg=body)
        for frame in ('tool0', 'needle_tip', 'us_image_frame', 'nir_camera_optical_frame'):
            np.testing.assert_allclose(pin_frames[frame], ydf.get_transform(frame, 'world'),
                                       atol=1e-9, err_msg=frame)


# -- frames named in the configuration ------------------------------------------------------

def test_every_config_frame_exists(pin_model, ydf):
    frames = config.load()['frames']
    assert frames, 'config has no frames'
    for key, name in frames.items():
        assert pin_model.existFrame(name), f'{key}: {name} not in pinocchio model'
        assert name in ydf.link_map, f'{key}: {name} not a URDF link'


def test_home_is_within_limits(ydf):
    home = config.load()['robot']['home']
    assert len(home) == len(ACTUATED)
    limits = _ydf_limits(ydf)
    for name, value in zip(ACTUATED, home, strict=True):
        lo, hi = limits[name]
        assert lo <= value <= hi, name


# -- masses ---------------------------------------------------------------------------------

def test_ur5e_link_masses(ydf, mj_model, pin_model):
    for link, mass in UR5E_MASSES.items():
        assert ydf.link_map[link].inertial.mass == pytest.approx(mass, abs=1e-12), link
    # Bodies with no fixed children carry exactly their own mass in MuJoCo too.
    for link in ('shoulder_link', 'upper_arm_link', 'forearm_link', 'wrist_1_link',
                 'wrist_2_link'):
        bid = mujoco.mj_name2id(mj_model, mujoco.mjtObj.mjOBJ_BODY, link)
        assert mj_model.body_mass[bid] == pytest.approx(UR5E_MASSES[link], abs=1e-9), link
    # Moving mass (everything but the base, which is fixed to the world) agrees everywhere.
    moving = sum(link.inertial.mass for name, link in ydf.link_map.items()
                 if link.inertial is not None and name != 'base_link_inertia')
    assert pin.computeTotalMass(pin_model) == pytest.approx(moving, abs=1e-9)
    assert float(mj_model.body_mass.sum()) == pytest.approx(moving, abs=1e-9)


def test_header_comment_masses_match_the_links(urdf_xml):
    header = xacro_path().read_text(encoding='utf-8').split('-->')[0]
    quoted = '(' + ', '.join(f'{m:g}' for m in UR5E_MASSES.values()) + ' kg)'
    assert quoted in ' '.join(header.split()), 'header comment masses changed'


# -- end-effector geometry contracts --------------------------------------------------------

@pytest.fixture(scope='module')
def ee_frames(pin_model):
    """All frame poses (world frame) at the zero configuration."""
    return _pin_frames(pin_model, pin.neutral(pin_model))[1]


def test_tool0_is_wrist_3_link(ee_frames):
    # ur_description's flange and tool0 compose to the identity on wrist_3_link.
    np.testing.assert_allclose(_rel(ee_frames, 'wrist_3_link', 'tool0'), np.eye(4), atol=1e-12)


def test_us_image_frame_axes(ee_frames):
    pose = _rel(ee_frames, 'tool0', 'us_image_frame')
    rot = pose[:3, :3]
    np.testing.assert_allclose(rot[:, 0], [1, 0, 0], atol=1e-12)   # x lateral = tool0 x
    np.testing.assert_allclose(rot[:, 1], [0, 0, 1], atol=1e-12)   # y depth = tool0 z
    np.testing.assert_allclose(rot[:, 2], np.cross(rot[:, 0], rot[:, 1]), atol=1e-12)
    np.testing.assert_allclose(rot[:, 2], [0, -1, 0], atol=1e-12)
    # Centre of the face, on the flange axis, past the F/T sensor.
    np.testing.assert_allclose(pose[:2, 3], [0, 0], atol=1e-12)
    ft = _rel(ee_frames, 'tool0', 'ft_sensor_frame')[2, 3]
    assert ft == pytest.approx(0.0157, abs=1e-12)
    assert pose[2, 3] > ft


def test_needle_axis_in_image_plane_20_deg_below_face(ee_frames):
    tip = _rel(ee_frames, 'tool0', 'needle_tip')
    axis = tip[:3, 2]
    assert np.linalg.norm(axis) == pytest.approx(1.0, abs=1e-12)
    # In the tool0 x-z plane (the image plane): no y component, tip on the plane.
    assert abs(axis[1]) < 1e-12
    assert abs(tip[1, 3]) < 1e-12
    # Angle to the probe face plane (normal tool0 z): 20 deg, heading into the tissue (+z)
    # from the -x side of the probe towards +x.
    assert math.asin(axis[2]) == pytest.approx(NEEDLE_ANGLE, abs=1e-12)
    assert axis[0] > 0
    np.testing.assert_allclose(axis, [math.cos(NEEDLE_ANGLE), 0, math.sin(NEEDLE_ANGLE)],
                               atol=1e-12)
    # Tip at zero travel: 30 mm to the -x side, 3 mm above the face plane, so skin contact
    # comes after 3 mm / sin(20 deg) ~ 8.8 mm of travel.
    face_z = _rel(ee_frames, 'tool0', 'us_image_frame')[2, 3]
    assert tip[0, 3] == pytest.approx(-0.030, abs=1e-12)
    assert face_z - tip[2, 3] == pytest.approx(0.003, abs=1e-12)
    assert 0.003 / axis[2] == pytest.approx(0.0088, abs=1e-4)
    # The needle reaches the image centre line (x = 0) below the skin, within the travel.
    s_center = -tip[0, 3] / axis[0]
    assert 0 < s_center < 0.04
    assert tip[2, 3] + s_center * axis[2] > face_z


def test_needle_stage_is_prismatic_along_needle_axis(pin_model, ydf):
    joint = ydf.joint_map[STAGE_JOINT]
    assert joint.type == 'prismatic'
    travel = joint.limit.upper - joint.limit.lower
    assert joint.limit.lower == pytest.approx(0.0)
    assert 0.01 <= travel <= 0.1, f'stage travel {travel} m is not tens of mm'
    rng = np.random.default_rng(3)
    lower = np.array([_ydf_limits(ydf)[n][0] for n in ACTUATED])
    upper = np.array([_ydf_limits(ydf)[n][1] for n in ACTUATED])
    for _ in range(5):
        positions = _random_positions(rng, lower, upper)
        positions[STAGE_JOINT] = joint.limit.lower
        _, f0 = _pin_frames(pin_model, _pin_q(pin_model, positions))
        for s in (0.25 * travel, travel):
            positions[STAGE_JOINT] = joint.limit.lower + s
            _, f1 = _pin_frames(pin_model, _pin_q(pin_model, positions))
            t0, t1 = f0['needle_tip'], f1['needle_tip']
            np.testing.assert_allclose(t1[:3, :3], t0[:3, :3], atol=1e-12)
            np.testing.assert_allclose(t1[:3, 3] - t0[:3, 3], s * t0[:3, 2], atol=1e-12)
            # The rest of the tool does not move with the stage.
            np.testing.assert_allclose(f1['us_image_frame'], f0['us_image_frame'], atol=1e-12)
            # yourdfpy agrees.
            ydf.update_cfg(positions)
            np.testing.assert_allclose(ydf.get_transform('needle_tip', 'world'), t1,
                                       atol=1e-9)


def test_camera_optical_frame_looks_along_tool0_z(ee_frames):
    optical = _rel(ee_frames, 'tool0', 'nir_camera_optical_frame')[:3, :3]
    np.testing.assert_allclose(optical[:, 2], [0, 0, 1], atol=1e-12)
    # REP 103: camera_link x forward; optical z forward, x right (-y_link), y down (-z_link).
    body = _rel(ee_frames, 'tool0', 'nir_camera_link')[:3, :3]
    link_in_optical = body.T @ optical
    np.testing.assert_allclose(link_in_optical, [[0, 0, 1], [-1, 0, 0], [0, -1, 0]],
                               atol=1e-12)
    np.testing.assert_allclose(body[:, 0], [0, 0, 1], atol=1e-12)
    assert np.linalg.det(optical) == pytest.approx(1.0, abs=1e-12)
