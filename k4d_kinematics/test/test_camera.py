"""PinholeCamera and Extrinsics: YAML formats and validation."""
import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation

from k4d_kinematics.camera import Extrinsics, PinholeCamera

K = [600.0, 0, 359.5, 0, 610.0, 239.5, 0, 0, 1]


def test_camera_yaml_round_trip(tmp_path):
    cam = PinholeCamera(720, 480, 600.0, 610.0, 359.5, 239.5)
    cam.to_yaml(tmp_path / "c.yaml")
    data = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert data["image_width"] == 720 and data["camera_matrix"]["data"] == K
    assert PinholeCamera.from_yaml(tmp_path / "c.yaml") == cam
    np.testing.assert_array_equal(cam.K, np.reshape(K, (3, 3)))
    np.testing.assert_allclose(cam.project([[0.0, 0.0, 2.0]]), [[359.5, 239.5]])


def test_camera_info_fields_validation():
    cam = PinholeCamera.from_camera_info_fields(720, 480, K, [0.0] * 5, "plumb_bob")
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == (600.0, 610.0, 359.5, 239.5)
    with pytest.raises(ValueError, match="distortion"):
        PinholeCamera.from_camera_info_fields(720, 480, K, [0.1, 0, 0, 0, 0], "plumb_bob")
    with pytest.raises(ValueError, match="fx"):
        PinholeCamera.from_camera_info_fields(720, 480, [0.0] * 9, [], "plumb_bob")
    with pytest.raises(ValueError, match="fy"):
        PinholeCamera(720, 480, 600, 0, 1, 1)
    with pytest.raises(ValueError, match="width"):
        PinholeCamera(0, 480, 600, 600, 1, 1)
    with pytest.raises(ValueError, match="cx"):
        PinholeCamera(720, 480, 600, 600, np.nan, 1)


def test_extrinsics_yaml(tmp_path):
    q = Rotation.from_euler("xyz", [0.3, -0.2, 1.0]).as_quat()
    text = {"parent_frame": "base", "child_frame": "camera_color_optical_frame",
            "translation": {"x": 0.9, "y": 0.1, "z": 0.7}, "rotation": dict(zip("xyzw", map(float, q)))}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(text))
    ext = Extrinsics.from_yaml(tmp_path / "e.yaml")
    np.testing.assert_allclose(ext.T_base_cam[:3, 3], [0.9, 0.1, 0.7])
    np.testing.assert_allclose(ext.T_base_cam @ ext.T_cam_base, np.eye(4), atol=1e-12)
    ext.to_yaml(tmp_path / "f.yaml")
    np.testing.assert_allclose(Extrinsics.from_yaml(tmp_path / "f.yaml").T_base_cam, ext.T_base_cam, atol=1e-12)
    bad = dict(text, rotation={"x": 0, "y": 0, "z": 0, "w": 2.0})
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="unit quaternion"):
        Extrinsics.from_yaml(tmp_path / "b.yaml")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({k: v for k, v in text.items() if k != "translation"}))
    with pytest.raises(ValueError, match="translation"):
        Extrinsics.from_yaml(tmp_path / "m.yaml")
    with pytest.raises(ValueError, match="finite"):
        Extrinsics.from_xyz_quat([np.inf, 0, 0], [0, 0, 0, 1])
    for xyz, quat in (([0, 0, 0, 5], [0, 0, 0, 1]), ([0, 0, 0], [0, 0, 0, 1, 0]), ([0, 0], [0, 0, 0, 1])):
        with pytest.raises(ValueError, match="translation needs x, y, z"):  # extra values are not dropped
            Extrinsics.from_xyz_quat(xyz, quat)


def test_look_at_is_optical_frame():
    ext = Extrinsics.look_at([1.0, 0.0, 1.0], [0.0, 0.0, 0.0])
    R = ext.T_base_cam[:3, :3]
    np.testing.assert_allclose(R[:, 2], np.array([-1, 0, -1]) / np.sqrt(2), atol=1e-12)  # z forward
    assert R[2, 1] < 0  # image y (down) points to -z of the world
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_shipped_configs():
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[1] / "config"
    cam = PinholeCamera.from_yaml(cfg / "camera_info.yaml")
    assert (cam.width, cam.height) == (720, 480)
    ext = Extrinsics.from_yaml(cfg / "extrinsics.yaml")
    assert ext.parent_frame == "base" and ext.child_frame == cam.frame_id


def test_backproject_inverts_project_and_checks_size():
    import numpy as np
    from k4d_kinematics.camera import PinholeCamera

    cam = PinholeCamera(8, 6, 5.0, 4.0, 3.5, 2.5)
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 2.0, (2, 6, 8)).astype(np.float32)
    depth[0, 1, 2] = np.nan
    xyz = cam.backproject(depth)
    assert xyz.shape == (2, 6, 8, 3) and xyz.dtype == np.float32
    uv = cam.project(xyz[1].reshape(-1, 3)).reshape(6, 8, 2)
    v, u = np.mgrid[0:6, 0:8]
    np.testing.assert_allclose(uv[..., 0], u, atol=1e-4)
    np.testing.assert_allclose(uv[..., 1], v, atol=1e-4)
    assert np.isnan(xyz[0, 1, 2]).all()
    with pytest.raises(ValueError, match="camera is 8x6"):
        cam.backproject(np.ones((5, 8)))


def test_scaled_camera_images_the_same_rays():
    from k4d_kinematics.camera import PinholeCamera

    cam = PinholeCamera(720, 480, 600.0, 610.0, 359.5, 239.5)
    small = cam.scaled(96, 64)
    assert (small.width, small.height) == (96, 64)
    np.testing.assert_allclose([small.fx, small.fy, small.cx, small.cy], [80.0, 610.0 * 64 / 480, 47.5, 31.5])
    # a point projects to the same place in the image, as a fraction of its size (pixel edges at -0.5)
    p = np.array([0.1, -0.05, 1.3])
    uv, uv_small = cam.project(p), small.project(p)
    np.testing.assert_allclose((uv_small + 0.5) / [96, 64], (uv + 0.5) / [720, 480], atol=1e-12)
    assert cam.scaled(720, 480) == cam
