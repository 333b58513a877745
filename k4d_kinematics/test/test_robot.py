"""RobotModel: parsing, tree checks, FK against an independent chain, limits, gripper, Jacobian."""
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from k4d_kinematics.robot import RobotModel, yam_urdf_path

TINY = """<robot name="tiny">
  <link name="a"><visual><geometry><box size="0.1 0.2 0.3"/></geometry></visual></link>
  <link name="b"><visual><origin xyz="0 0 0.1"/><geometry><cylinder radius="0.02" length="0.2"/></geometry></visual></link>
  <link name="c"><visual><geometry><sphere radius="0.03"/></geometry></visual></link>
  <link name="d"/>
  <joint name="j1" type="revolute"><parent link="a"/><child link="b"/><origin xyz="0 0 0.2" rpy="0.1 0.2 0.3"/>
    <axis xyz="0 1 1"/><limit lower="-1" upper="1" effort="1" velocity="1"/></joint>
  <joint name="j2" type="prismatic"><parent link="b"/><child link="c"/><origin xyz="0.1 0 0.2"/>
    <axis xyz="1 0 0"/><limit lower="0" upper="0.1" effort="1" velocity="1"/></joint>
  <joint name="j3" type="revolute"><parent link="b"/><child link="d"/><origin xyz="0 0.1 0"/><axis xyz="0 0 1"/>
    <mimic joint="j1" multiplier="2" offset="0.1"/><limit lower="-3" upper="3" effort="1" velocity="1"/></joint>
</robot>"""


def test_a_limit_without_lower_or_upper_is_zero_as_in_urdfdom_and_ik_holds_such_a_joint():
    """URDF: <limit> attributes lower / upper default to 0. A revolute joint with neither is held at 0 (not
    unlimited); IK solves for the other joints and leaves it there."""
    from k4d_kinematics.ik import solve_ik

    text = TINY.replace('<limit lower="-1" upper="1" effort="1" velocity="1"/>', '<limit effort="1" velocity="1"/>')
    text = text.replace('<limit lower="0" upper="0.1"', '<limit upper="0.1"')
    m = RobotModel.from_urdf_string(text)
    assert (m.lower.tolist(), m.upper.tolist()) == ([0.0, 0.0], [0.0, 0.1])
    with pytest.raises(ValueError, match="j1"):
        m.check_q([0.5, 0.05], limits="reject")
    target = m.fk([0.0, 0.07])[m.link_index["c"]]
    res = solve_ik(m, target, [0.0, 0.0], link="c")
    assert res.q[0] == 0.0 and res.q[1] == pytest.approx(0.07, abs=1e-6)


def chain_fk(urdf_text: str, q: dict) -> dict:
    """Independent FK: parse with ElementTree, compose 4x4s built with scipy Rotation (rpy, axis-angle)."""
    root = ET.fromstring(urdf_text)
    joints = {}
    for j in root.findall("joint"):
        o = j.find("origin")
        xyz = np.array([float(v) for v in (o.get("xyz", "0 0 0") if o is not None else "0 0 0").split()])
        rpy = [float(v) for v in (o.get("rpy", "0 0 0") if o is not None else "0 0 0").split()]
        ax = j.find("axis")
        axis = np.array([float(v) for v in (ax.get("xyz") if ax is not None else "1 0 0").split()])
        axis /= np.linalg.norm(axis)
        mim = j.find("mimic")
        val = q.get(j.get("name"), 0.0)
        if mim is not None:
            val = float(mim.get("multiplier", 1)) * q.get(mim.get("joint"), 0.0) + float(mim.get("offset", 0))
        T0 = np.eye(4)
        T0[:3, :3] = Rotation.from_euler("xyz", rpy).as_matrix()
        T0[:3, 3] = xyz
        M = np.eye(4)
        if j.get("type") in ("revolute", "continuous"):
            M[:3, :3] = Rotation.from_rotvec(axis * val).as_matrix()
        elif j.get("type") == "prismatic":
            M[:3, 3] = axis * val
        joints[j.find("child").get("link")] = (j.find("parent").get("link"), T0 @ M)
    out = {}

    def pose(link):
        if link not in out:
            out[link] = np.eye(4) if link not in joints else pose(joints[link][0]) @ joints[link][1]
        return out[link]

    for l in root.findall("link"):
        pose(l.get("name"))
    return out


def test_tiny_model_structure():
    m = RobotModel.from_urdf_string(TINY)
    assert m.root_link == "a" and m.link_names == ["a", "b", "c", "d"]
    assert m.joint_names == ["j1", "j2"]  # j3 mimics j1
    np.testing.assert_array_equal(m.lower, [-1, 0])
    assert len(m.meshes) == 3 and all(mm.closed for mm in m.meshes)
    box = m.meshes[0]
    np.testing.assert_allclose(box.vertices.max(0), [0.05, 0.1, 0.15])


@pytest.mark.parametrize("urdf", ["tiny", "yam"])
def test_fk_matches_independent_chain(urdf):
    text = TINY if urdf == "tiny" else yam_urdf_path().read_text()
    m = RobotModel.from_urdf_string(TINY) if urdf == "tiny" else RobotModel.yam()
    rng = np.random.default_rng(0)
    for _ in range(10):
        q = rng.uniform(m.lower, m.upper)
        T = m.fk(q)
        ref = chain_fk(text, m.q_to_dict(q))
        for i, name in enumerate(m.link_names):
            np.testing.assert_allclose(T[i], ref[name], atol=1e-12, err_msg=name)


def test_fk_batched_equals_loop_and_dict():
    m = RobotModel.yam()
    rng = np.random.default_rng(1)
    Q = rng.uniform(m.lower, m.upper, size=(3, 4, m.num_joints))
    T = m.fk(Q)
    assert T.shape == (3, 4, len(m.link_names), 4, 4) and T.dtype == np.float64
    for idx in np.ndindex(3, 4):
        np.testing.assert_array_equal(T[idx], m.fk(Q[idx]))
    d = m.fk_dict(m.q_to_dict(Q[0, 0]))
    np.testing.assert_array_equal(d["gripper"], T[0, 0, m.link_names.index("gripper")])


def test_q_checks():
    m = RobotModel.yam()
    with pytest.raises(ValueError, match="jointX"):
        m.q_from_dict({"jointX": 1.0})
    assert m.q_from_dict({"jointX": 1.0, "joint1": 0.2}, strict=False)[0] == 0.2
    q = np.zeros(8)
    q[2] = np.nan
    with pytest.raises(ValueError, match="joint3"):
        m.fk(q)
    with pytest.raises(ValueError, match="joint2.*outside"):
        m.q_from_dict({"joint2": 5.0})
    assert m.q_from_dict({"joint2": 5.0}, limits="clamp")[1] == pytest.approx(m.upper[1])
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 8\)"):
        m.fk(np.zeros(7))
    clamped = RobotModel.yam(limits="clamp")
    np.testing.assert_array_equal(clamped.fk(np.full(8, 10.0)), clamped.fk(clamped.upper))


def test_gripper_mapping():
    m = RobotModel.yam()
    assert m.gripper_to_joints(normalized=0.0) == {"joint7": 0.0, "joint8": 0.0}
    full = m.gripper_to_joints(normalized=1.0)
    assert full["joint7"] == pytest.approx(-0.04695) and full["joint8"] == pytest.approx(-0.04695)
    half = m.gripper_to_joints(width_m=0.04)
    assert half["joint7"] == pytest.approx(-0.02)
    # the finger pads (lowest part of each tip mesh) separate along the gripper y axis by the commanded width
    meshes = {m.link_names[mm.link_index]: mm.vertices for mm in m.meshes}

    def pad_gap(joints):
        T = m.fk_dict(joints)
        T_g_inv = np.linalg.inv(T["gripper"])
        y = {}
        for tip in ("tip_left", "tip_right"):
            v = meshes[tip][meshes[tip][:, 2] < -0.07]
            y[tip] = (v @ (T_g_inv @ T[tip])[:3, :3].T + (T_g_inv @ T[tip])[:3, 3])[:, 1]
        return y["tip_right"].min() - y["tip_left"].max()

    assert pad_gap({}) == pytest.approx(0.0, abs=1e-3)
    assert pad_gap(half) == pytest.approx(0.04, abs=1e-3)
    assert pad_gap(full) == pytest.approx(0.0939, abs=1e-3)
    with pytest.raises(ValueError, match="width_m"):
        m.gripper_to_joints(width_m=0.2)
    with pytest.raises(ValueError, match="exactly one"):
        m.gripper_to_joints()


def test_jacobian_matches_finite_differences():
    m = RobotModel.yam()
    q = np.array([0.3, 1.0, 0.8, -0.2, 0.4, 0.5, 0, 0])
    J = m.jacobian(q)
    T0 = m.link_pose(q)
    eps = 1e-7
    for j in range(6):
        dq = q.copy()
        dq[j] += eps
        T1 = m.link_pose(dq)
        np.testing.assert_allclose((T1[:3, 3] - T0[:3, 3]) / eps, J[:3, j], atol=1e-6)
        w = Rotation.from_matrix(T1[:3, :3] @ T0[:3, :3].T).as_rotvec() / eps
        np.testing.assert_allclose(w, J[3:, j], atol=1e-6)


@pytest.mark.parametrize("text, match", [
    ("<robot name='x'><link name='a'>", "syntax"),
    ("<robot name='x'><link name='a'/><link name='b'/></robot>", "single root"),
    ("<robot name='x'><link name='a'/><link name='b'/><link name='c'/><joint name='j' type='fixed'>"
     "<parent link='a'/><child link='b'/></joint><joint name='k' type='fixed'><parent link='c'/><child link='b'/>"
     "</joint></robot>", "child of two joints"),
    ("<robot name='x'><link name='a'/><joint name='j' type='fixed'><parent link='a'/><child link='zz'/></joint>"
     "</robot>", "'zz' is not defined"),
    ("<robot name='x'><link name='a'/><link name='b'/><link name='c'/><joint name='j' type='fixed'><parent link='b'/>"
     "<child link='c'/></joint><joint name='k' type='fixed'><parent link='c'/><child link='b'/></joint></robot>",
     "single root|disconnected"),
    ("<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='floating'><parent link='a'/>"
     "<child link='b'/></joint></robot>", "unsupported joint type"),
])
def test_bad_urdf(text, match):
    with pytest.raises(ValueError, match=match):
        RobotModel.from_urdf_string(text)


def test_missing_mesh_names_file_and_link(tmp_path):
    text = "<robot name='x'><link name='arm'><visual><geometry><mesh filename='meshes/nope.stl'/></geometry></visual></link></robot>"
    with pytest.raises(ValueError, match=r"link 'arm'.*nope\.stl"):
        RobotModel.from_urdf_string(text, base_dir=tmp_path)


def test_mesh_path_resolution(tmp_path):
    src = yam_urdf_path().parent / "meshes" / "link5.stl"
    pkg = tmp_path / "my_robot_description"
    (pkg / "meshes").mkdir(parents=True)
    (pkg / "urdf").mkdir()
    (pkg / "meshes" / "l.stl").write_bytes(src.read_bytes())
    vis = "<robot name='x'><link name='a'><visual><geometry><mesh filename='{}'/></geometry></visual></link></robot>"
    for fn, kw in [("package://my_robot_description/meshes/l.stl", {"base_dir": pkg / "urdf"}),
                   ("package://other_pkg/meshes/l.stl", {"mesh_dir": pkg}),
                   (f"file://{pkg / 'meshes' / 'l.stl'}", {}),
                   ("../meshes/l.stl", {"base_dir": pkg / "urdf"})]:
        m = RobotModel.from_urdf_string(vis.format(fn), **kw)
        assert len(m.meshes) == 1 and len(m.meshes[0].faces) == 12 and m.meshes[0].closed, fn
    (pkg / "urdf" / "r.urdf").write_text(vis.format("../meshes/l.stl"))
    assert len(RobotModel.from_urdf_file(pkg / "urdf" / "r.urdf").meshes) == 1
