"""Checks against the official I2RT YAM description (skipped when /work/shared is absent)."""
from pathlib import Path

import numpy as np
import pytest

from k4d_kinematics.camera import Extrinsics, PinholeCamera
from k4d_kinematics.pointmap import PointmapRenderer
from k4d_kinematics.robot import RobotModel

OFFICIAL = Path("/work/shared/robots/i2rt_yam/yam.urdf")
pytestmark = pytest.mark.skipif(not OFFICIAL.exists(), reason="official YAM description not available")
CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture(scope="module")
def official():
    return RobotModel.from_urdf_file(OFFICIAL)


def test_official_loads(official):
    assert official.link_names == RobotModel.yam().link_names and official.ee_link == "gripper"
    assert sum(len(m.faces) for m in official.meshes) > 100_000 and all(m.closed for m in official.meshes)


def test_builtin_fk_equals_official(official):
    ours = RobotModel.yam()
    assert ours.joint_names == official.joint_names
    np.testing.assert_array_equal(ours.lower, official.lower)
    np.testing.assert_array_equal(ours.upper, official.upper)
    Q = np.random.default_rng(0).uniform(ours.lower, ours.upper, (50, 8))
    np.testing.assert_allclose(ours.fk(Q), official.fk(Q), atol=1e-12)


def _ray_hits(model, T_cam_link, cam, r, c):
    d = np.array([(c - cam.cx) / cam.fx, (r - cam.cy) / cam.fy, 1.0])
    for mm in model.meshes:
        T = T_cam_link[mm.link_index]
        tri = (mm.vertices @ T[:3, :3].T + T[:3, 3])[mm.faces]
        e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        p = np.cross(d, e2)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / np.einsum("ij,ij->i", e1, p)
            a = np.einsum("ij,ij->i", -tri[:, 0], p) * inv
            qv = np.cross(-tri[:, 0], e1)
            b = (qv @ d) * inv
            t = np.einsum("ij,ij->i", e2, qv) * inv
        if np.any((a >= 0) & (b >= 0) & (a + b <= 1) & (t > 0)):
            return True
    return False


def test_official_meshes_hole_free(official):
    """Every background pixel enclosed by one link's pixels must be a real gap (its ray misses the meshes)."""
    cam = PinholeCamera.from_yaml(CONFIG / "camera_info.yaml")
    ext = Extrinsics.from_yaml(CONFIG / "extrinsics.yaml")
    r = PointmapRenderer(official, cam, ext)
    rng = np.random.default_rng(1)
    for _ in range(3):
        q = rng.uniform(official.lower, official.upper)
        L = r.render(q).link
        n = [L[:-2, 1:-1], L[2:, 1:-1], L[1:-1, :-2], L[1:-1, 2:]]
        enclosed = (L[1:-1, 1:-1] < 0) & (n[0] >= 0) & (n[0] == n[1]) & (n[0] == n[2]) & (n[0] == n[3])
        T_cam_link = ext.T_cam_base @ official.fk(q)
        for rr, cc in np.argwhere(enclosed)[:20] + 1:
            assert not _ray_hits(official, T_cam_link, cam, rr, cc), f"hole at pixel ({rr}, {cc})"
