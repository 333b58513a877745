"""Oracle: the k4d robot pointmap (kinematics + rasteriser) against MuJoCo's render of the same state.

For random joint configurations, MuJoCo's robot segmentation and depth (robot geoms only, so nothing
occludes the arm) must match ``k4d_kinematics.pointmap.PointmapRenderer`` for the same URDF, camera
intrinsics (CameraInfo) and extrinsics: mask IoU >= 0.98 and median |depth error| <= 1 mm.
Skips cleanly when no offscreen OpenGL (OSMesa) is available.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "osmesa")

from k4d_bringup.sim.render import gl_available  # noqa: E402

_ok, _why = gl_available()
pytestmark = pytest.mark.skipif(not _ok, reason=_why)


@pytest.fixture(scope="module")
def setup():
    import mujoco
    from k4d_kinematics.pointmap import PointmapRenderer

    from k4d_bringup.sim.config import SimConfig
    from k4d_bringup.sim.render import CameraRenderer
    from k4d_bringup.sim.scene import build_scene, sample_layout

    cfg = SimConfig(scenario="medium")  # full 720x480 camera
    scene = build_scene(cfg, sample_layout(cfg, 11))
    data = mujoco.MjData(scene.model)
    return scene, data, CameraRenderer(scene), PointmapRenderer(scene.robot, scene.camera, scene.extrinsics)


def test_mujoco_body_poses_equal_robot_fk(setup):
    import mujoco

    scene, data, _, _ = setup
    rng = np.random.default_rng(0)
    for _ in range(10):
        q = rng.uniform(scene.robot.lower, scene.robot.upper)
        data.qpos[scene.qpos_adr] = q
        mujoco.mj_kinematics(scene.model, data)
        T = scene.robot.fk(q)
        np.testing.assert_allclose(data.xpos[scene.link_body], T[:, :3, 3], atol=1e-9)
        np.testing.assert_allclose(data.xmat[scene.link_body].reshape(-1, 3, 3), T[:, :3, :3], atol=1e-9)


def test_robot_pointmap_matches_mujoco_render(setup):
    import mujoco

    scene, data, renderer, pm_renderer = setup
    assert renderer.camera == scene.camera  # the CameraInfo to publish is the one rendered
    rng = np.random.default_rng(1)
    ious, med = [], []
    for i in range(12):
        q = rng.uniform(scene.robot.lower, scene.robot.upper)
        data.qpos[scene.qpos_adr] = q
        mujoco.mj_forward(scene.model, data)
        frame = renderer.render(data, rgb=False, depth=True, segmentation=True, robot_only=True)
        pm = pm_renderer.render(q)
        a, b = frame.robot_link >= 0, pm.link >= 0
        iou = (a & b).sum() / max((a | b).sum(), 1)
        both = a & b
        err = np.abs(frame.depth[both] - pm.depth[both])
        ious.append(iou)
        med.append(float(np.median(err)))
        assert iou >= 0.98, f"config {i}: mask IoU {iou:.4f}"
        assert med[-1] <= 1e-3, f"config {i}: median depth error {med[-1] * 1e3:.3f} mm"
        # link ids agree on the shared pixels
        assert (frame.robot_link[both] == pm.link[both]).mean() > 0.995
    print(f"oracle over {len(ious)} configs: IoU min {min(ious):.4f} mean {np.mean(ious):.4f}; "
          f"median depth error max {max(med) * 1e3:.5f} mm")


def test_projection_convention_pixel_centres(setup):
    """A point's projection with the PinholeCamera (u = fx x/z + cx) lands on the pixel MuJoCo draws it at."""
    import mujoco

    from k4d_bringup.sim.config import SimConfig
    from k4d_bringup.sim.render import CameraRenderer
    from k4d_bringup.sim.scene import build_spec, sample_layout
    from k4d_bringup.sim.scene import SimScene

    cfg = SimConfig()
    cfg.camera.width, cfg.camera.height, cfg.camera.fy = 128, 96, 100.0
    layout = sample_layout(cfg, 0)
    spec, robot, cam, ext = build_spec(cfg, layout)
    p_base = ext.T_base_cam @ np.array([0.031, -0.017, 0.6, 1.0])  # a point in front of the camera
    spec.worldbody.add_geom(name="probe", type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[0.004, 0, 0], pos=list(p_base[:3]),
                            rgba=[1, 0, 0, 1], group=1, contype=0, conaffinity=0)
    model = spec.compile()
    scene = SimScene(model=model, robot=robot, layout=layout, camera=cam, extrinsics=ext, joint_names=[],
                     qpos_adr=np.zeros(0, int), dof_adr=np.zeros(0, int), actuator_ids=np.zeros(0, int),
                     geom_link=np.full(model.ngeom, -1, np.int16), geom_object=np.full(model.ngeom, -1, np.int16),
                     link_body=np.zeros(0, int), object_body=np.zeros(0, int), object_qpos_adr=np.zeros(0, int))
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    r = CameraRenderer(scene)
    frame = r.render(data)
    gid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "probe")
    r.close()
    near = frame.depth < 0.61  # only the probe is this close to the camera
    assert near.sum() > 0 and gid >= 0
    v, u = np.nonzero(near)
    uv = cam.project(np.array([0.031, -0.017, 0.6]))
    assert abs(u.mean() - uv[0]) < 0.35 and abs(v.mean() - uv[1]) < 0.35, (u.mean(), v.mean(), uv)
    # depth at the sphere centre pixel: 0.6 m minus the radius (MuJoCo tessellates spheres: facets ~1 mm inside)
    d = frame.depth[int(round(uv[1])), int(round(uv[0]))]
    assert abs(d - (0.6 - 0.004)) < 2e-3
