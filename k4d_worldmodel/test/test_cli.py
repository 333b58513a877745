"""``k4d imagine`` end to end on a tiny saved pipeline."""
import argparse
import json

import imageio.v2 as imageio
import numpy as np
import pytest

from k4d_kinematics.overlay import depth_colormap
from k4d_worldmodel.cli import add_commands
from k4d_worldmodel.tiny import tiny_inputs


def test_imagine_writes_outputs(tmp_path, pmcond_pipe):
    pmcond_pipe.save_pretrained(tmp_path / "model")
    inp = tiny_inputs(pmcond_pipe)
    imageio.imwrite(tmp_path / "first.png", inp["image"])
    np.savez(tmp_path / "seq.npz", xyz=inp["robot_xyz"], link=inp["robot_link"], K=np.eye(3))
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["imagine", "--checkpoint", str(tmp_path / "model"), "--image", str(tmp_path / "first.png"),
                              "--pointmaps", str(tmp_path / "seq.npz"), "--out", str(tmp_path / "out"),
                              "--steps", "2", "--seed", "1", "--device", "cpu"])
    assert args.func(args) == 0
    out = tmp_path / "out"
    t = pmcond_pipe.num_frames
    assert len(list((out / "rgb").glob("*.png"))) == t and len(list((out / "ply").glob("*.ply"))) == t
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == t and summary["metric_lift"]["quality"] in ("good", "poor", "failed")
    video = imageio.mimread(out / "rollout.mp4")
    assert len(video) == t and video[0].shape == (pmcond_pipe.height, 3 * pmcond_pipe.width, 3)
    head = (out / "ply" / "000.ply").read_bytes()[:200]
    assert head.startswith(b"ply\nformat binary_little_endian 1.0\nelement vertex ")


def test_imagine_with_a_depth_frame_conditions_a_metric_model(tmp_path):
    from k4d_worldmodel.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=2, pointmap_encoding="ray_depth", first_xyz_condition=True)
    pipe.save_pretrained(tmp_path / "model")
    inp = tiny_inputs(pipe)
    imageio.imwrite(tmp_path / "first.png", inp["image"])
    np.savez(tmp_path / "seq.npz", xyz=inp["robot_xyz"], link=inp["robot_link"])
    depth_mm = np.full((pipe.height, pipe.width), 1200, np.uint16)
    depth_mm[:4] = 0  # unknown
    imageio.imwrite(tmp_path / "depth.png", depth_mm)
    np.save(tmp_path / "bad.npy", np.zeros((3, 4, 5)))
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))

    def run(out, *extra):
        args = parser.parse_args(["imagine", "--checkpoint", str(tmp_path / "model"), "--image",
                                  str(tmp_path / "first.png"), "--pointmaps", str(tmp_path / "seq.npz"), "--out",
                                  str(tmp_path / out), "--steps", "2", "--seed", "1", "--device", "cpu", *extra])
        assert args.func(args) == 0
        return np.stack([imageio.imread(p) for p in sorted((tmp_path / out / "xyz").glob("*.png"))])

    with_depth = run("a", "--depth", str(tmp_path / "depth.png"))
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["depth"].endswith("depth.png")
    assert not np.array_equal(with_depth, run("b"))  # the depth reached the model
    with pytest.raises(ValueError, match="2-D float array of metres"):
        run("c", "--depth", str(tmp_path / "bad.npy"))
    with pytest.raises(FileNotFoundError, match="--depth"):
        run("d", "--depth", str(tmp_path / "missing.png"))


def test_depth_colormap():
    d = np.array([[0.0, 1.0], [np.nan, 0.5]])
    c = depth_colormap(d, 0.0, 1.0)
    assert c.dtype == np.uint8 and c.shape == (2, 2, 3)
    assert tuple(c[1, 0]) == (0, 0, 0) and tuple(c[0, 1]) == (253, 231, 37)
