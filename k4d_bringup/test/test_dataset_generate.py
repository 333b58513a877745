"""Dataset generation (content, determinism across worker counts) and the Kinema4D export layout."""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "osmesa")

from k4d_bringup.sim.render import gl_available  # noqa: E402

_ok, _why = gl_available()
pytestmark = pytest.mark.skipif(not _ok, reason=_why)

SMALL = dict(num_frames=6, width=128, height=96, fy=110.0, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from k4d_bringup.dataset.generate import generate

    out = tmp_path_factory.mktemp("ds1")
    metas = generate(2, 7, out, workers=1, sigmas=(0.0, 1.2), **SMALL)
    return out, metas


def test_episode_content(dataset):
    from k4d_bringup.dataset.generate import load_episode

    out, metas = dataset
    assert [m["name"] for m in metas] == ["000000", "000001"]
    assert [m["sigma"] for m in metas] == [0.0, 1.2]
    ep = load_episode(out / "000000.npz")
    T, H, W = 6, 96, 128
    assert ep["rgb"].shape == (T, H, W, 3) and ep["rgb"].dtype == np.uint8
    assert ep["depth"].shape == (T, H, W) and ep["depth"].dtype == np.float32
    assert ep["world_xyz"].shape == (T, H, W, 3) and ep["robot_xyz"].shape == (T, H, W, 3)
    assert ep["robot_link"].dtype == np.int16 and ep["robot_mask"].any()
    assert ep["q"].shape == (T, 8) and ep["times"][0] == 0 and np.all(np.diff(ep["times"]) > 0)
    assert ep["traj_positions"].shape[1] == 8 and len(ep["traj_times"]) > T
    assert ep["meta"]["label"] in ("success", "near_miss", "failure")
    from k4d_bringup.sim.policies import LABEL_RULE

    assert ep["meta"]["label_rule"] == LABEL_RULE and "relabelled" not in ep["meta"]  # written by the current rule
    assert 0.0 <= ep["meta"]["metrics"]["final_tilt_deg"] <= 90.0  # rule 3 records the target's final tilt
    assert ep["meta"]["camera"]["cx"] == pytest.approx((W - 1) / 2)
    # world pointmap is depth back-projected with K
    K = ep["K"]
    v, u = 40, 70
    z = ep["depth"][0, v, u]
    np.testing.assert_allclose(ep["world_xyz"][0, v, u], [(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z],
                               rtol=1e-6)
    # the kinematic robot pointmap agrees with the rendered scene depth where the robot is visible
    m = ep["robot_mask"]
    err = np.abs(ep["robot_xyz"][..., 2][m] - ep["depth"][m])
    assert np.median(err) < 1e-3
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats["per_sigma"]) == {"0", "1.2"}


def test_deterministic_independent_of_workers(dataset, tmp_path):
    from k4d_bringup.dataset.generate import generate, load_episode

    out1, _ = dataset
    generate(2, 7, tmp_path, workers=2, sigmas=(0.0, 1.2), **SMALL)
    for n in ("000000", "000001"):
        a, b = load_episode(out1 / f"{n}.npz"), load_episode(tmp_path / f"{n}.npz")
        for k in ("rgb", "depth", "robot_xyz", "robot_link", "q", "traj_positions", "object_pos"):
            assert np.array_equal(a[k], b[k], equal_nan=True), (n, k)
        assert a["meta"]["label"] == b["meta"]["label"]


def test_export_kinema4d_layout(dataset, tmp_path):
    import imageio.v2 as imageio

    from k4d_bringup.dataset.export import export_kinema4d
    from k4d_bringup.dataset.generate import load_episode

    src, _ = dataset
    names = export_kinema4d(src, tmp_path)
    assert names == ["000000", "000001"]
    for sub, ext in (("first_frames", "png"), ("videos", "mp4"), ("pointmap", "mp4"), ("mask_videos", "mp4"),
                     ("mask_pointmap", "mp4")):
        for n in names:
            assert (tmp_path / sub / f"{n}.{ext}").is_file(), (sub, n)
    assert (tmp_path / "train.txt").read_text().splitlines() == ["videos/000000.mp4", "videos/000001.mp4"]
    assert sorted((tmp_path / "train_img_shuffled.txt").read_text().splitlines()) == [
        "first_frames/000000.png", "first_frames/000001.png"]
    mm = json.loads((tmp_path / "pointmap_minmax.json").read_text())
    assert set(mm) == set(names) and len(mm["000000"]["lo"]) == 3
    reader = imageio.get_reader(str(tmp_path / "mask_videos" / "000000.mp4"))
    fps = reader.get_meta_data()["fps"]
    frames = np.stack([f for f in reader])
    reader.close()
    assert frames.shape == (6, 96, 128, 3)
    assert fps == pytest.approx(24)
    # the released loader's robot mask: any channel != 0 (after lossy coding compare on the interior)
    mask_rec = frames.max(-1) > 24
    mask = load_episode(src / "000000.npz")["robot_mask"]
    iou = (mask_rec & mask).sum() / (mask_rec | mask).sum()
    assert iou > 0.8
    assert np.array_equal(imageio.imread(tmp_path / "first_frames" / "000000.png"),
                          load_episode(src / "000000.npz")["rgb"][0])


def test_time_budget_stops_starting_episodes(tmp_path):
    from k4d_bringup.dataset.generate import generate

    metas = generate(3, 7, tmp_path, workers=1, time_budget_s=0.0, **SMALL)
    info = json.loads((tmp_path / "dataset.json").read_text())
    assert metas == [] and info["episodes"] == 0 and info["requested"] == 3 and info["stopped"] == "time_budget"


def test_egl_devices_round_robin():
    from k4d_bringup.dataset.generate import egl_device_for_worker

    assert [egl_device_for_worker("0,1,2,3", n) for n in range(1, 10)] == list("012301230")
    assert egl_device_for_worker(" 2 , 5 ", 2) == "5"
    assert egl_device_for_worker("", 3) is None
    with pytest.raises(ValueError, match="K4D_EGL_DEVICES"):
        egl_device_for_worker("cuda:0", 1)


def test_a_folder_holding_a_dataset_is_refused_unless_overwritten(tmp_path):
    """Episode files are named by index and every *.npz of a folder is read as one dataset, so generating into a
    used folder would mix the two runs (another seed's episodes under a held-out name): refused by name, or, with
    overwrite, the old dataset is removed first."""
    import json

    from k4d_bringup.dataset.generate import episode_paths, generate

    generate(2, 7, tmp_path, workers=1, sigmas=(0.0,), tasks=("pick_place",), **SMALL)
    with pytest.raises(ValueError, match="already holds a dataset"):
        generate(1, 8, tmp_path, workers=1, sigmas=(0.0,), tasks=("pick_place",), **SMALL)
    generate(1, 8, tmp_path, workers=1, sigmas=(0.0,), tasks=("pick_place",), overwrite=True, **SMALL)
    assert [p.name for p in episode_paths(tmp_path)] == ["000000.npz"]
    assert json.loads((tmp_path / "dataset.json").read_text())["seed"] == 8
