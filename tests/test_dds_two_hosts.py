"""The world model served to another host: the imagine node (tiny saved model, CPU) on one host, an Imagine client
on another, over real DDS across a real IP link. The two hosts are network namespaces of this machine joined by a
veth pair shaped to 1 Gbit/s (``k4d_bringup.testing.TwoHosts``), with the settings the README gives for a GPU
workstation beside the robot: UDPv4 only, subnet discovery, the other host as static peer.

The served rollout must be the one the same engine computes in this process (same inputs and seed), and the
link's counters must show that the result crossed it. Needs root and iproute2 (as CI and the dev machines have).
"""
import json
import os
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from k4d_bringup.testing import TwoHosts, start_process, stop_process  # noqa: E402

pytestmark = pytest.mark.ros

NODE = "k4d_imagine_far"
SEED = 11

K = [[40, 0, 23.5], [0, 40, 15.5], [0, 0, 1]]
# Runs on the robot's host: the shadow session's own action client (ActionImaginer, as `k4d shadow replay` and
# `k4d shadow bench --served` use it) sends one chunk of the tiny model's synthetic inputs; the rollout to an npz.
CLIENT = textwrap.dedent(
    f"""
    import json, sys
    import numpy as np
    from k4d_bringup.shadow.config import ShadowConfig
    from k4d_bringup.shadow.imaginers import ActionImaginer
    from k4d_worldmodel.engine import sequence_from_arrays
    from k4d_worldmodel.tiny import build_tiny_pipeline, tiny_inputs

    out_path, seed = sys.argv[1], int(sys.argv[2])
    inp = tiny_inputs(build_tiny_pipeline("pmcond", seed=0))
    seq = sequence_from_arrays(inp["robot_xyz"], inp["robot_link"], K=np.array({K}))
    cfg = ShadowConfig(num_frames=len(inp["robot_xyz"]), num_inference_steps=3, guidance_scale=1.0, seed=seed)
    imaginer = ActionImaginer(cfg, wait_server_s=90.0)
    ro = imaginer(inp["image"], seq)
    imaginer.close()
    np.savez(out_path, rgb=ro.rgb, xyz=ro.xyz)
    print(json.dumps({{"frames": int(ro.rgb.shape[0]), "model_id": ro.model_id}}), flush=True)
    """
)


@pytest.fixture(scope="module")
def hosts():
    h = TwoHosts("1gbit", subnet=f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}")
    try:
        h.__enter__()
    except RuntimeError as exc:  # not root, or no iproute2: this machine cannot stand in for two
        pytest.skip(str(exc))
    try:
        yield h
    finally:
        h.__exit__(None, None, None)


def test_the_world_model_serves_a_rollout_to_another_host(hosts, tmp_path, monkeypatch):
    from k4d_bringup.shadow.imaginers import EngineImaginer
    from k4d_worldmodel.engine import sequence_from_arrays
    from k4d_worldmodel.tiny import build_tiny_pipeline, tiny_inputs

    model_dir = tmp_path / "tiny_model"
    build_tiny_pipeline("pmcond", seed=0).save_pretrained(model_dir)
    # a Fast DDS profile with shared memory (k4d's own adds it) would let the two hosts bypass the link
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE", raising=False)
    base = {"PYTHONUNBUFFERED": "1"}
    node_args = hosts.wrap(hosts.server, [
        sys.executable, "-m", "k4d_worldmodel.ros.imagine_node", "--ros-args", "-r", f"__node:={NODE}",
        "-p", f"checkpoint_dir:={model_dir}", "-p", "device:=cpu", "-p", "autostart:=true", "-p", "preview:=false",
        "-p", "num_inference_steps:=3", "-p", "guidance_scale:=1.0"])
    out = tmp_path / "served.npz"
    client_args = hosts.wrap(hosts.client, [sys.executable, "-c", CLIENT, str(out), str(SEED)])
    before = hosts.bytes_moved()
    node = start_process(node_args, env=hosts.env(hosts.server, base), cwd=str(tmp_path))
    client = None
    try:
        client = start_process(client_args, env=hosts.env(hosts.client, base), cwd=str(tmp_path))
        deadline = time.monotonic() + 180
        while client.poll() is None and node.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        client_out = stop_process(client, timeout=2)
        assert client.returncode == 0, f"client on {hosts.client[2]} failed:\n{client_out}\n---- node ----\n" \
                                       f"{stop_process(node)[-3000:]}"
    finally:
        if client is not None and client.poll() is None:
            stop_process(client)
        node_out = stop_process(node)
    summary = json.loads(client_out.strip().splitlines()[-1])
    moved = {k: hosts.bytes_moved()[k] - before[k] for k in before}

    # the same chunk in this process, outside both namespaces: the shadow bench's in-process path
    inp = tiny_inputs(build_tiny_pipeline("pmcond", seed=0))
    local = EngineImaginer(str(model_dir), "cpu", 3, 1.0, SEED)(
        inp["image"], sequence_from_arrays(inp["robot_xyz"], inp["robot_link"], K=np.array(K)))
    served = np.load(out)
    assert summary["frames"] == local.rgb.shape[0], node_out[-2000:]
    np.testing.assert_array_equal(served["rgb"], local.rgb)
    np.testing.assert_allclose(served["xyz"], local.xyz, rtol=0, atol=1e-6, equal_nan=True)

    # the result (RGB + float32 pointmaps) went from the server's host to the client's over the link, and the
    # goal (first frame + pointmap condition) the other way
    result_bytes = served["rgb"].nbytes + served["xyz"].nbytes
    goal_bytes = inp["image"].nbytes + inp["robot_xyz"].nbytes
    assert moved["server_to_client"] > result_bytes, (moved, result_bytes)
    assert moved["client_to_server"] > goal_bytes, (moved, goal_bytes)


def test_two_hosts_without_iproute2_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no ip, no tc
    with pytest.raises(RuntimeError, match="needs root, iproute2 and tc"):
        with TwoHosts("1gbit", subnet="10.254.1"):
            pass
