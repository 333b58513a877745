"""PointmapRenderer: exact depth, re-projection, occlusion, watertightness, near-plane clipping."""
import numpy as np
import pytest

from k4d_kinematics.camera import Extrinsics, PinholeCamera
from k4d_kinematics.pointmap import PointmapRenderer
from k4d_kinematics.robot import RobotModel

BOXES = """<robot name="boxes">
  <link name="world"/>
  <link name="near"><visual><geometry><box size="{n}"/></geometry></visual></link>
  <link name="far"><visual><geometry><box size="{f}"/></geometry></visual></link>
  <joint name="jn" type="fixed"><parent link="world"/><child link="near"/><origin xyz="{pn}" rpy="{rn}"/></joint>
  <joint name="jf" type="prismatic"><parent link="world"/><child link="far"/><origin xyz="{pf}" rpy="0.2 -0.3 0.4"/>
    <axis xyz="1 0 0"/><limit lower="-1" upper="1" effort="1" velocity="1"/></joint>
</robot>"""


def make_boxes(n="0.1 0.2 0.15", f="0.3 0.3 0.3", pn="0 0 0.3", rn="0.3 0.5 -0.2", pf="0 0 0"):
    return RobotModel.from_urdf_string(BOXES.format(n=n, f=f, pn=pn, rn=rn, pf=pf))


def camera(w=160, h=120, f=150.0):
    return PinholeCamera(w, h, f, f * 1.01, (w - 1) / 2 + 0.3, (h - 1) / 2 - 0.2, frame_id="cam")


def rays(cam):
    """(H, W, 3) ray directions with z = 1 through pixel centres (camera frame): t along the ray = depth."""
    v, u = np.mgrid[0:cam.height, 0:cam.width].astype(np.float64)
    return np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], -1)


def ray_box_depth(d_cam, T_cam_box, half, pad=0.0):
    """Slab-method nearest hit depth of rays from the camera origin with a box (half extents), inf if missed."""
    R, t = T_cam_box[:3, :3], T_cam_box[:3, 3]
    o = -R.T @ t
    d = d_cam @ R  # = R^T d per ray
    h = np.asarray(half) + pad
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-h - o) / d, (h - o) / d
    tn = np.nanmax(np.minimum(t1, t2), -1)
    tf = np.nanmin(np.maximum(t1, t2), -1)
    return np.where((tn <= tf) & (tn > 0), tn, np.inf)


def raycast(model, T_cam_link, cam):
    """Reference renderer: Moller-Trumbore over every triangle. Returns depth (H, W) inf bg, link (H, W)."""
    d = rays(cam).reshape(-1, 3)
    depth = np.full(len(d), np.inf)
    link = np.full(len(d), -1)
    for mm in model.meshes:
        T = T_cam_link[mm.link_index]
        tri = (mm.vertices @ T[:3, :3].T + T[:3, 3])[mm.faces]
        e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        for k in range(len(tri)):
            p = np.cross(d, e2[k])
            det = p @ e1[k]
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = 1.0 / det
                s = -tri[k, 0]
                a = (p @ s) * inv
                qv = np.cross(s, e1[k])
                b = (d @ qv) * inv
                t = (qv @ e2[k]) * inv
            hit = (a >= 0) & (b >= 0) & (a + b <= 1) & (t > 0) & (t < depth)
            depth[hit], link[hit] = t[hit], mm.link_index
    return depth.reshape(cam.height, cam.width), link.reshape(cam.height, cam.width)


@pytest.fixture(scope="module")
def scene():
    model = make_boxes()
    cam = camera()
    ext = Extrinsics.look_at([0.9, 0.3, 0.8], [0, 0, 0.1], child_frame="cam", parent_frame="world")
    return model, cam, ext, PointmapRenderer(model, cam, ext)


def test_box_depth_is_analytic(scene):
    model, cam, ext, r = scene
    pm = r.render(np.zeros(1))
    assert pm.xyz.dtype == np.float32 and pm.link.dtype == np.int16 and pm.xyz.shape == (120, 160, 3)
    T_cam = ext.T_cam_base @ model.fk(np.zeros(1))
    d = rays(cam)
    near = ray_box_depth(d, T_cam[1], [0.05, 0.1, 0.075])
    far = ray_box_depth(d, T_cam[2], [0.15, 0.15, 0.15])
    expected = np.minimum(near, far)
    robot = pm.link >= 0
    assert robot.sum() > 2000
    inside = robot & np.isfinite(expected)  # excludes sub-pixel ties on the silhouette (checked below)
    assert inside.sum() > robot.sum() - 10
    np.testing.assert_allclose(pm.depth[inside], expected[inside], atol=1e-4)
    # coverage agrees with the analytic silhouette up to a sub-pixel band
    grown = np.minimum(ray_box_depth(d, T_cam[1], [0.05, 0.1, 0.075], 2e-5), ray_box_depth(d, T_cam[2], [0.15] * 3, 2e-5))
    shrunk = np.minimum(ray_box_depth(d, T_cam[1], [0.05, 0.1, 0.075], -2e-5), ray_box_depth(d, T_cam[2], [0.15] * 3, -2e-5))
    assert np.all(np.isfinite(grown[robot])) and np.all(robot[np.isfinite(shrunk)])
    assert np.all(np.isnan(pm.xyz[~robot])) and np.all(np.isnan(pm.depth[~robot]))


def test_occlusion_nearest_wins(scene):
    model, cam, ext, r = scene
    pm = r.render(np.zeros(1))
    T_cam = ext.T_cam_base @ model.fk(np.zeros(1))
    d = rays(cam)
    near = ray_box_depth(d, T_cam[1], [0.05, 0.1, 0.075], -2e-5)
    far = ray_box_depth(d, T_cam[2], [0.15, 0.15, 0.15], -2e-5)
    both = np.isfinite(near) & np.isfinite(far)
    assert both.sum() > 50
    expect = np.where(near < far, model.link_names.index("near"), model.link_names.index("far"))
    np.testing.assert_array_equal(pm.link[both], expect[both])
    assert np.any(both & (near < far))


def test_xyz_reprojects_to_pixel_centre(scene):
    model, cam, ext, r = scene
    pm = r.render(np.array([0.2]))
    v, u = np.nonzero(pm.link >= 0)
    uv = cam.project(pm.xyz[v, u].astype(np.float64))
    np.testing.assert_allclose(uv[:, 0], u, atol=1e-3)
    np.testing.assert_allclose(uv[:, 1], v, atol=1e-3)
    np.testing.assert_array_equal(pm.depth[v, u], pm.xyz[v, u, 2])


def test_matches_raycast_reference_on_yam():
    """Same labels and depth as brute-force ray casting (watertight: no cracks, nearest surface wins)."""
    model = RobotModel.yam()
    cam = PinholeCamera(180, 120, 150.0, 150.0, 89.5, 59.5)
    ext = Extrinsics.look_at([0.95, 0.3, 0.9], [0.22, 0, 0.15])
    r = PointmapRenderer(model, cam, ext)
    rng = np.random.default_rng(3)
    for _ in range(2):
        q = rng.uniform(model.lower, model.upper)
        pm = r.render(q)
        depth, link = raycast(model, ext.T_cam_base @ model.fk(q), cam)
        agree = pm.link == link
        assert agree.mean() > 0.995, agree.mean()  # disagreements only on exact edge/silhouette ties
        both = (pm.link >= 0) & agree
        np.testing.assert_allclose(pm.depth[both], depth[both], atol=1e-5)


def test_near_plane_clipping():
    """A floor slab extending behind the camera: clipped triangles still give the analytic floor depth."""
    model = RobotModel.from_urdf_string(
        "<robot name='f'><link name='w'/><link name='floor'><visual><geometry><box size='20 20 0.1'/></geometry>"
        "</visual></link><joint name='j' type='fixed'><parent link='w'/><child link='floor'/>"
        "<origin xyz='0 0 -0.05'/></joint></robot>")
    cam = camera()
    ext = Extrinsics.look_at([0, 0, 0.5], [1.0, 0.2, 0.0], child_frame="cam", parent_frame="w")
    pm = PointmapRenderer(model, cam, ext, near=0.05).render(np.zeros(0))
    d_base = rays(cam) @ ext.T_base_cam[:3, :3].T
    t = -0.5 / d_base[..., 2]  # depth where the ray meets z = 0
    expected = np.where(t > 0, t, np.inf)
    visible = np.isfinite(expected) & (expected < 8.0)
    assert visible.sum() > 1000
    np.testing.assert_array_equal(pm.link >= 0, np.isfinite(pm.depth))
    assert np.all(pm.link[visible] == 1)
    np.testing.assert_allclose(pm.depth[visible], expected[visible], rtol=1e-5)


def test_render_sequence_equals_single_renders(scene):
    model, cam, ext, r = scene
    Q = np.array([[0.0], [0.1], [-0.2]])
    xyz, link = r.render_sequence(Q)
    assert xyz.shape == (3, 120, 160, 3) and link.shape == (3, 120, 160)
    for t in range(3):
        pm = r.render(Q[t])
        np.testing.assert_array_equal(link[t], pm.link)
        np.testing.assert_array_equal(xyz[t], pm.xyz)


def test_renderer_checks_frames(scene):
    model, cam, _, _ = scene
    with pytest.raises(ValueError, match="parent_frame"):
        PointmapRenderer(model, cam, Extrinsics(np.eye(4), "base", "cam"))
