"""The nodes' configs and message -> core logic, without DDS (duck-typed messages stand in for moveit_msgs)."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy")
from sensor_msgs.msg import JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from k4d_kinematics.config import PlanNodeConfig, PointmapNodeConfig, config_fields  # noqa: E402
from k4d_kinematics.robot import RobotModel, yam_urdf_path  # noqa: E402
from k4d_kinematics.ros import node_logic as nl  # noqa: E402
from k4d_kinematics.ros.conversions import duration_from_seconds  # noqa: E402
from k4d_kinematics.ros.description_source import load_model  # noqa: E402
from k4d_kinematics.ros.extrinsics_source import check_extrinsics_frames, extrinsics_from_transform  # noqa: E402
from k4d_kinematics.sequence import JointTrajectoryData  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture(scope="module")
def yam():
    return RobotModel.yam()


# ---------------------------------------------------------------------------------------------
# Configs and parameter files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, kwargs, match", [
    (PointmapNodeConfig, dict(description_source="urdf"), "description_source.*'urdf'"),
    (PointmapNodeConfig, dict(description_source="file"), "urdf_path"),
    (PointmapNodeConfig, dict(rate_hz=0.0), "rate_hz.*0.0"),
    (PointmapNodeConfig, dict(joint_limits="wrap"), "joint_limits.*'wrap'"),
    (PointmapNodeConfig, dict(extrinsics_quat_xyzw=[0.0, 0.0, 0.0, 2.0]), "extrinsics_quat_xyzw.*unit"),
    (PointmapNodeConfig, dict(extrinsics_xyz=[0.0, 1.0]), "extrinsics_xyz"),
    (PointmapNodeConfig, dict(extrinsics_source="file"), "extrinsics_file"),
    (PlanNodeConfig, dict(num_frames=0), "num_frames.*0"),
    (PlanNodeConfig, dict(ghost_alpha=1.5), "ghost_alpha.*1.5"),
    (PlanNodeConfig, dict(fps=-1.0), "fps"),
])
def test_configs_reject_bad_values_naming_the_field(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("cls, name", [(PointmapNodeConfig, "pointmap_node"), (PlanNodeConfig, "plan_node")])
def test_param_files_list_every_field_and_are_valid(cls, name):
    data = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    assert sorted(params) == sorted(config_fields(cls))
    assert cls(**params) == cls()  # the shipped files hold the defaults


def test_default_extrinsics_parameters_are_the_example_extrinsics_file():
    from k4d_kinematics.camera import Extrinsics

    cfg = PointmapNodeConfig()
    from_params = Extrinsics.from_xyz_quat(cfg.extrinsics_xyz, cfg.extrinsics_quat_xyzw)
    np.testing.assert_allclose(from_params.T_base_cam, Extrinsics.from_yaml(CONFIG_DIR / "extrinsics.yaml").T_base_cam,
                               atol=1e-12)


def test_declare_config_on_a_node_reads_the_param_file():
    import rclpy

    from k4d_kinematics.ros.params import declare_config

    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(CONFIG_DIR / "plan_node.yaml"),
                                  "-p", "num_frames:=9", "-p", "joint_limits:=clamp"])
    try:
        node = rclpy.create_node("plan_node", context=ctx)
        cfg = declare_config(node, PlanNodeConfig)
        assert cfg.num_frames == 9 and cfg.joint_limits == "clamp" and cfg.extrinsics_xyz == [0.95, 0.3, 0.9]
        desc = node.describe_parameter("num_frames")
        assert "49" in desc.description
        from rclpy.parameter import Parameter

        bad = node.set_parameters([Parameter("num_frames", value=0)])[0]
        assert not bad.successful and "num_frames" in bad.reason
        node.destroy_node()
        # a field without metadata is described by its docstring entry (WorldModelConfig's fields)
        from k4d_worldmodel.config import WorldModelConfig

        wm = rclpy.create_node("wm_params", context=ctx)
        declare_config(wm, WorldModelConfig)
        assert "depth ramp" in wm.describe_parameter("compose_flying_rel").description
        assert "flow UniPC" in wm.describe_parameter("flow_shift").description
        wm.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_attribute_docs_describe_fields_without_metadata():
    """A config documented the Google way (``Attributes:``) gets its parameter descriptions from the docstring:
    single and grouped entries, continuation lines, globs below a field's own entry, bases through the MRO."""
    import dataclasses

    from k4d_kinematics.ros.params import attribute_docs

    @dataclasses.dataclass
    class Base:
        """Base.

        Attributes:
            speed: how fast,
                in m/s.
            lo_a, lo_b: the two ends.
        """

        speed: float = 1.0
        lo_a: int = 0
        lo_b: int = 1

    @dataclasses.dataclass
    class Child(Base):
        """Child.

        Attributes:
            metric_*: any metric field.
            metric_gain: its own entry.

        Returns nothing, and this line is not an attribute.
        """

        metric_gain: float = 2.0
        metric_bias: float = 0.0
        note: str = ""

    docs = attribute_docs(Child)
    assert docs["speed"] == "how fast, in m/s." and docs["lo_a"] == docs["lo_b"] == "the two ends."
    assert docs["metric_gain"] == "its own entry." and docs["metric_bias"] == "any metric field."
    assert "note" not in docs and "Returns nothing" not in " ".join(docs.values())


@pytest.mark.parametrize("module, name", [
    ("k4d_worldmodel.ros.imagine_node", "ImagineNodeConfig"), ("k4d_bringup.shadow.config", "ShadowConfig"),
    ("k4d_bringup.ros.sim_node", "SimNodeConfig"), ("k4d_bringup.ros.demo_node", "DemoNodeConfig"),
    ("k4d_bringup.ros.overlay_node", "OverlayConfig"), ("k4d_bringup.ros.planner_node", "PlannerNodeConfig"),
    ("k4d_kinematics.config", "PointmapNodeConfig"), ("k4d_kinematics.config", "PlanNodeConfig")])
def test_every_node_parameter_has_a_description(module, name):
    """Every parameter a node declares carries a description (field metadata, or its class docstring's
    ``Attributes:`` entry): ``ros2 param describe`` never answers with an empty text."""
    import dataclasses
    import importlib

    from k4d_kinematics.ros.params import attribute_docs

    cls = getattr(importlib.import_module(module), name)
    docs = attribute_docs(cls)
    bare = [f.name for f in dataclasses.fields(cls)
            if f.init and not (f.metadata.get("description") or docs.get(f.name))]
    assert not bare, f"{name}: parameters without a description: {bare}"


# ---------------------------------------------------------------------------------------------
# Joint states
# ---------------------------------------------------------------------------------------------


def test_joint_state_merger_merges_partial_updates(yam):
    m = nl.JointStateMerger()
    m.update(["joint1", "joint2"], [0.1, 0.2], 10, yam)
    with pytest.raises(ValueError, match=r"no value for joint\(s\) \['joint3'"):
        m.q(yam)
    m.update(["joint3", "joint4", "joint5", "joint6", "joint7", "joint8"], [0.3, 0.0, 0.0, 0.0, -0.01, -0.01], 20, yam)
    m.update(["joint1"], [0.5], 30, yam)
    np.testing.assert_allclose(m.q(yam), [0.5, 0.2, 0.3, 0, 0, 0, -0.01, -0.01])
    assert m.stamp_ns == 30
    np.testing.assert_allclose(m.q(yam, missing_joints="zero")[:3], [0.5, 0.2, 0.3])


@pytest.mark.parametrize("names, pos, match", [
    (["joint1", "elbow_x"], [0.0, 0.0], r"unknown joint name\(s\) \['elbow_x'\]"),
    (["joint1", "joint2"], [0.0, float("nan")], "joint 'joint2' position is nan"),
    (["joint1"], [0.0, 1.0], "1 names but 2 positions"),
    (["joint1", "joint1"], [0.0, 1.0], "more than once"),
    ([], [], "name is empty"),
    (["joint4"], [3.0], r"joint 'joint4' = 3 is outside its limits \[-1.69297, 1.5708\]"),
])
def test_bad_joint_states_are_rejected_whole(yam, names, pos, match):
    m = nl.JointStateMerger()
    m.update(["joint1"], [0.25], 1, yam)
    with pytest.raises(ValueError, match=match):
        m.update(names, pos, 2, yam)
    assert m.values == {"joint1": 0.25} and m.stamp_ns == 1  # nothing merged


def test_joint_policies_clamp_and_ignore(yam):
    m = nl.JointStateMerger()
    vals = m.update(["joint4", "conveyor"], [3.0, 1.0], 1, yam, unknown_joints="ignore", joint_limits="clamp")
    assert vals == {"joint4": pytest.approx(1.5708)}


# ---------------------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------------------


def _traj(names, times, positions):
    return JointTrajectoryData(names, np.asarray(times, float), np.asarray(positions, float))


def test_complete_trajectory_fills_absent_joints(yam):
    traj = _traj(["joint2", "joint1"], [0.0, 1.0], [[0.1, 0.2], [0.3, 0.4]])
    fill = {n: 0.05 for n in ["joint3", "joint4", "joint5", "joint6"]} | {"joint7": -0.02, "joint8": -0.02,
                                                                         "joint1": 9.0}
    full = nl.complete_trajectory(traj, yam, fill)
    assert full.joint_names == yam.joint_names
    np.testing.assert_allclose(full.positions[:, :2], [[0.2, 0.1], [0.4, 0.3]])  # the plan wins over the fill
    np.testing.assert_allclose(full.positions[:, 2:], [[0.05] * 4 + [-0.02] * 2] * 2)
    with pytest.raises(ValueError, match=r"no value for joint\(s\) \['joint3'"):
        nl.complete_trajectory(traj, yam, {})
    assert nl.complete_trajectory(traj, yam, {}, missing_joints="zero").positions[0, 2] == 0.0


def test_complete_trajectory_bad_input(yam):
    fill = dict.fromkeys(yam.joint_names, 0.0)
    with pytest.raises(ValueError, match=r"unknown joint name\(s\) \['wrist'\]"):
        nl.complete_trajectory(_traj(["wrist"], [0.0], [[0.0]]), yam, fill)
    with pytest.raises(ValueError, match="point 1 joint 'joint4' = 2.5 is outside"):
        nl.complete_trajectory(_traj(["joint4"], [0.0, 1.0], [[0.0], [2.5]]), yam, fill)
    clamped = nl.complete_trajectory(_traj(["joint4"], [0.0, 1.0], [[0.0], [2.5]]), yam, fill, joint_limits="clamp")
    assert clamped.positions[1, yam.joint_index["joint4"]] == pytest.approx(yam.upper[3])
    # clamp is RobotModel.check_q's rule: an overshoot inside the tolerance is clipped too, in every path
    over = yam.upper[4] + 5e-7
    for q in (nl.complete_trajectory(_traj(["joint5"], [0.0], [[over]]), yam, fill, joint_limits="clamp").positions[0],
              yam.q_from_dict(nl.check_joint_values(yam, {"joint5": over}, joint_limits="clamp"), limits="ignore")):
        assert q[4] == yam.upper[4] == yam.check_q(np.full(yam.num_joints, over), limits="clamp")[4]


def _jt(names, points, stamp_sec=0, velocities=None):
    msg = JointTrajectory(joint_names=names)
    msg.header.stamp.sec = stamp_sec
    msg.points = [JointTrajectoryPoint(positions=p, velocities=[] if velocities is None else velocities[i],
                                       time_from_start=duration_from_seconds(t)) for i, (t, p) in enumerate(points)]
    return msg


def _display(segments, start=None):
    """A duck-typed moveit_msgs/DisplayTrajectory."""
    js = JointState(name=list(start or {}), position=list((start or {}).values()))
    return SimpleNamespace(trajectory=[SimpleNamespace(joint_trajectory=s) for s in segments],
                           trajectory_start=SimpleNamespace(joint_state=js), model_id="yam")


def test_display_trajectory_chains_segments_and_reads_start_state():
    seg1 = _jt(["joint1", "joint2"], [(0.0, [0.0, 0.0]), (1.0, [0.5, 0.1])], stamp_sec=7)
    seg2 = _jt(["joint1", "joint2"], [(0.0, [0.5, 0.1]), (0.5, [0.6, 0.2]), (1.5, [0.7, 0.3])])
    traj, start, stamp_ns = nl.extract_display_trajectory(_display([seg1, seg2], {"joint7": -0.01, "joint1": 0.0}))
    np.testing.assert_allclose(traj.times, [0.0, 1.0, 1.5, 2.5])  # repeated junction point dropped
    np.testing.assert_allclose(traj.positions[:, 0], [0.0, 0.5, 0.6, 0.7])
    assert start == {"joint7": -0.01, "joint1": 0.0} and stamp_ns == 7_000_000_000
    assert traj.velocities is None
    # time-parameterised segments keep their velocities through the chaining and the completion to the robot
    v1, v2 = [[0.0, 0.0], [0.4, 0.1]], [[0.4, 0.1], [0.3, 0.1], [0.0, 0.0]]
    seg1 = _jt(["joint1", "joint2"], [(0.0, [0.0, 0.0]), (1.0, [0.5, 0.1])], velocities=v1)
    seg2 = _jt(["joint1", "joint2"], [(0.0, [0.5, 0.1]), (0.5, [0.6, 0.2]), (1.5, [0.7, 0.3])], velocities=v2)
    traj, _, _ = nl.extract_display_trajectory(_display([seg1, seg2]))
    np.testing.assert_allclose(traj.velocities, [[0.0, 0.0], [0.4, 0.1], [0.3, 0.1], [0.0, 0.0]])
    yam = RobotModel.yam()
    full = nl.complete_trajectory(traj, yam, dict.fromkeys(yam.joint_names, 0.0))
    np.testing.assert_allclose(full.velocities[:, :2], traj.velocities)
    assert not full.velocities[:, 2:].any()  # the held joints stand still


@pytest.mark.parametrize("msg, match", [
    (_display([]), "trajectory is empty"),
    (_display([_jt(["joint1"], [(0.0, [0.0]), (1.0, [0.1])]), _jt(["joint2"], [(0.0, [0.0])])]),
     r"trajectory\[1\].*joint_names"),
    (_display([_jt(["joint1"], [(0.0, [0.0]), (1.0, [0.1]), (0.5, [0.2])])]), r"trajectory\[0\].*strictly increasing"),
    (_display([_jt(["joint1"], [])]), "no points"),
    (_display([_jt(["joint1"], [(0.0, [0.0])])], {"joint2": float("inf")}), "trajectory_start.*joint2"),
])
def test_bad_display_trajectories_raise_naming_the_field(msg, match):
    with pytest.raises(ValueError, match=match):
        nl.extract_display_trajectory(msg)


# ---------------------------------------------------------------------------------------------
# Frames, extrinsics, descriptions
# ---------------------------------------------------------------------------------------------


def test_resolve_camera_frame():
    assert nl.resolve_camera_frame("", "", "") == nl.DEFAULT_CAMERA_FRAME
    assert nl.resolve_camera_frame("", "cam_optical", "") == "cam_optical"
    assert nl.resolve_camera_frame("cam_optical", "cam_optical", "cam_optical") == "cam_optical"
    with pytest.raises(ValueError, match="CameraInfo.header.frame_id 'camera_link' differs from camera_frame"):
        nl.resolve_camera_frame("cam_optical", "camera_link")


def test_extrinsics_from_transform_duck_typed_and_message():
    from geometry_msgs.msg import TransformStamped

    tf = TransformStamped()
    tf.header.frame_id, tf.child_frame_id = "base", "cam_optical"
    tf.transform.translation.x, tf.transform.translation.z = 0.5, 0.3
    tf.transform.rotation.z, tf.transform.rotation.w = np.sin(np.pi / 4), np.cos(np.pi / 4)  # 90 deg about z
    ext = extrinsics_from_transform(tf)
    np.testing.assert_allclose(ext.T_base_cam[:3, 3], [0.5, 0, 0.3])
    np.testing.assert_allclose(ext.T_base_cam[:3, :3] @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    check_extrinsics_frames(ext, "base", "cam_optical", "TF")
    with pytest.raises(ValueError, match="TF: child_frame 'cam_optical' is not the camera optical frame 'other'"):
        check_extrinsics_frames(ext, "base", "other", "TF")
    tf.transform.rotation.w = 0.2
    with pytest.raises(ValueError, match="unit quaternion"):
        extrinsics_from_transform(tf)


YAM_XML = yam_urdf_path().read_text()
MESH_DIR = str(yam_urdf_path().parent)


@pytest.mark.parametrize("xml, match", [
    ("<robot name='r'><link name='a'>", "XML syntax"),
    ("", "empty"),
    (YAM_XML.replace('<parent link="link1"/>', '<parent link="nowhere"/>'), "'nowhere' is not defined"),
    (YAM_XML.replace("meshes/link2.stl", "meshes/link2_missing.stl"), "link2_missing.stl' not found"),
    ("<robot name='r'><link name='a'/></robot>", "no <visual> geometry"),
    ("<robot name='r'><link name='a'/><link name='b'/></robot>", "single root"),
])
def test_bad_robot_descriptions_raise(xml, match):
    with pytest.raises(ValueError, match=match):
        load_model("topic", xml=xml, mesh_dir=MESH_DIR)


def test_description_from_topic_text_equals_builtin(yam):
    model = load_model("topic", xml=YAM_XML, mesh_dir=MESH_DIR)
    q = np.array([0.3, 0.5, 0.7, 0.1, 0.2, 0.3, -0.01, -0.02])
    np.testing.assert_allclose(model.fk(q), yam.fk(q))


# ---------------------------------------------------------------------------------------------
# Ghost geometry and rate-limited logging
# ---------------------------------------------------------------------------------------------


def test_ghost_frame_indices():
    assert nl.ghost_frame_indices(49, 5).tolist() == [0, 12, 24, 36, 48]
    assert nl.ghost_frame_indices(3, 5).tolist() == [0, 1, 2]
    assert nl.ghost_frame_indices(10, 0).tolist() == []


def test_ghost_triangles_are_the_posed_link_meshes(yam):
    q = np.array([0.4, 0.6, 0.5, 0.0, 0.3, 0.0, -0.02, -0.02])
    T = yam.fk(q)
    soup = nl.ghost_triangles(yam, T)
    n_faces = sum(len(m.faces) for m in yam.meshes)
    assert soup.shape == (3 * n_faces, 3)
    m0 = yam.meshes[0]
    first = m0.vertices[m0.faces[0]] @ T[m0.link_index, :3, :3].T + T[m0.link_index, :3, 3]
    np.testing.assert_allclose(soup[:3], first)
    # the gripper's mesh moves with FK: its vertices in the base frame match fk_dict
    g = next(m for m in yam.meshes if yam.link_names[m.link_index] == "gripper")
    Tg = yam.fk_dict(yam.q_to_dict(q))["gripper"]
    off = 3 * sum(len(m.faces) for m in yam.meshes[: yam.meshes.index(g)])
    np.testing.assert_allclose(soup[off:off + 3], g.vertices[g.faces[0]] @ Tg[:3, :3].T + Tg[:3, 3])
    assert nl.ghost_triangles(yam, T, max_triangles=10).shape == (30, 3)
    assert nl.ghost_color(0, 3, 0.3)[3] == 0.3 and nl.ghost_color(0, 3, 0.3) != nl.ghost_color(2, 3, 0.3)


def test_throttled_log_limits_each_distinct_message():
    out = []
    log = nl.ThrottledLog(out.append, period_s=1.0)
    assert log("joint_states dropped: A", now=0.0)
    assert not log("joint_states dropped: A", now=0.5)
    assert log("camera_info dropped: B", now=0.6)
    assert log("joint_states dropped: A", now=1.2)
    assert out[0] == "joint_states dropped: A" and "1 similar" in out[2]
