"""`k4d fk` / `k4d pointmap` through the installed entry point."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from k4d_kinematics.robot import RobotModel

K4D = Path(sys.executable).parent / "k4d"
CONFIG = Path(__file__).resolve().parents[1] / "config"
pytestmark = pytest.mark.skipif(not K4D.exists(), reason="k4d entry point not installed in this environment")


def run(*args):
    return subprocess.run([str(K4D), *args], capture_output=True, text=True, timeout=120)


def test_fk_json():
    p = run("fk", "--joints", "joint1=0.1,joint2=0.4", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    m = RobotModel.yam()
    assert list(data) == m.link_names
    T = m.fk(m.q_from_dict({"joint1": 0.1, "joint2": 0.4}))
    for i, name in enumerate(m.link_names):
        np.testing.assert_allclose(np.array(data[name]), T[i], atol=1e-12)


def test_fk_unknown_joint_exits_2():
    p = run("fk", "--joints", "elbow=1", "--json")
    assert p.returncode == 2 and "elbow" in p.stderr


def test_pointmap_npz(tmp_path):
    out = tmp_path / "pm.npz"
    p = run("pointmap", "--camera-info", str(CONFIG / "camera_info.yaml"), "--extrinsics", str(CONFIG / "extrinsics.yaml"),
            "--joints", "joint2=0.8,joint3=0.6", "--out", str(out))
    assert p.returncode == 0, p.stderr
    d = np.load(out, allow_pickle=False)
    assert d["xyz"].shape == (480, 720, 3) and d["xyz"].dtype == np.float32
    assert d["link"].shape == (480, 720) and d["link"].dtype == np.int16
    assert d["link_names"].dtype.kind == "U" and list(d["link_names"]) == RobotModel.yam().link_names
    robot = d["link"] >= 0
    assert robot.sum() > 1000 and np.all(np.isnan(d["xyz"][~robot])) and np.all(np.isfinite(d["xyz"][robot]))
