"""``k4d shadow bench``: simulated episodes through the shadow session (per-episode goal regions, labels)."""
import dataclasses
import json
import os
import time

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "osmesa")

from k4d_bringup.sim.render import gl_available  # noqa: E402

_ok, _why = gl_available()


def test_episode_event_success_region_is_parsed_and_checked():
    from k4d_bringup.shadow.session import parse_episode_event

    d = parse_episode_event(json.dumps({"event": "start", "success_region": {"min": [0, 0, 0], "max": [1, 1, 1]}}))
    lo, hi = d["success_region"]
    assert lo.tolist() == [0, 0, 0] and hi.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="success_region min must be below max"):
        parse_episode_event(json.dumps({"event": "start", "success_region": {"min": [0, 0, 1], "max": [1, 1, 1]}}))
    with pytest.raises(ValueError, match="success_region must be"):
        parse_episode_event(json.dumps({"event": "start", "success_region": [0, 1]}))


@pytest.mark.skipif(not _ok, reason=_why)
def test_bench_with_an_oracle_world_model_agrees_with_the_simulator(tmp_path):
    from k4d_bringup.dataset.generate import generate, load_episode
    from k4d_bringup.shadow.aggregate import table3
    from k4d_bringup.shadow.log import read_log
    from k4d_bringup.shadow.metrics import backproject_depth
    from k4d_bringup.shadow.session import RolloutData
    from k4d_bringup.shadow.simbench import bench, episode_files

    metas = generate(2, 11, tmp_path / "data" / "easy", workers=1, sigmas=(0.0, 1.2), tasks=("pick_place",),
                     num_frames=9, width=96, height=64, fy=80.0, progress=False)
    files = episode_files(tmp_path / "data")
    assert [f.parent.name for f in files] == ["easy", "easy"]
    episodes = [load_episode(f) for f in files]
    calls = []

    def oracle(rgb0, seq, rec):
        """Imagines exactly what the camera recorded (the frames at the conditioning's times), depth as XYZ."""
        ep = episodes[len(calls)]
        calls.append(rec.episode_id)
        assert np.array_equal(rgb0, ep["rgb"][0]) and seq.xyz.shape == ep["robot_xyz"].shape
        from k4d_kinematics.camera import PinholeCamera

        cam = ep["meta"]["camera"]
        camera = PinholeCamera(cam["width"], cam["height"], cam["fx"], cam["fy"], cam["cx"], cam["cy"])
        xyz = np.stack([backproject_depth(d, camera) for d in ep["depth"]])
        return RolloutData(ep["rgb"], xyz.astype(np.float32), True, "oracle")

    from k4d_bringup.shadow.config import ShadowConfig
    from k4d_bringup.shadow.simbench import NOMINAL_REGION

    cfg = ShadowConfig(num_frames=9, success_predicate="region", success_min_points=3, success_window_frames=1,
                       save_frames=False, **NOMINAL_REGION)
    out = bench(tmp_path / "data", oracle, tmp_path / "bench.jsonl", cfg)
    assert out["episodes_in"] == 2 and out["chunks"] == 2 and out["ok"] == 2 and len(calls) == 2
    recs = read_log(tmp_path / "bench.jsonl")
    chunks = [r for r in recs if r["kind"] == "chunk"]
    eps = [r for r in recs if r["kind"] == "episode"]
    assert len(chunks) == 2 and len(eps) == 2
    for c, ep, m in zip(chunks, eps, metas):
        assert c["frames_compared"] >= 6 and c["psnr_db"] > 30  # the recorded frames, paired at their stamps
        assert c["predicate"]["imagined"]["valid"]
        assert c["imagined_success"] == c["actual_success"]  # same pointmaps -> same predicate result
        assert ep["actual_source"] == "label" and ep["actual_success"] == m["success"]
        assert ep["policy"] == f"sigma={m['sigma']:g}" and ep["scenario"] == "easy"
    rows = table3(recs)
    assert {r["policy"] for r in rows} == {"sigma=0", "sigma=1.2"} and all(r["paired"] == 1 for r in rows)
    assert all(r["imagined_undeterminable"] == 0 and r["actual_known"] == 1 for r in rows)

    # A world model whose XYZ cannot be lifted to metres, and no anchored refit: success is undeterminable,
    # never guessed.
    calls.clear()

    def not_metric(rgb0, seq, rec):
        ro = oracle(rgb0, seq, rec)
        return RolloutData(ro.rgb, ro.xyz, False, "not-metric")

    import dataclasses

    bench(tmp_path / "data", not_metric, tmp_path / "bench2.jsonl", dataclasses.replace(cfg, anchor_lift=False))
    recs2 = read_log(tmp_path / "bench2.jsonl")
    eps2 = [r for r in recs2 if r["kind"] == "episode"]
    assert all(not r["imagined_valid"] and not r["imagined_success"] for r in eps2)
    rows2 = {r["policy"]: r for r in table3(recs2)}
    for m in metas:
        row = rows2[f"sigma={m['sigma']:g}"]
        assert row["paired"] == 0 and row["imagined_undeterminable"] == 1 and np.isnan(row["imagined_rate"])
        assert row["actual_rate_all"] == float(m["success"])


def test_zone_predicate_is_a_disc_inside_its_box():
    from k4d_bringup.shadow.predicate import RegionPredicate

    pred = RegionPredicate.zone(np.eye(4), (0.3, -0.1), 0.05, 0.0, 0.1, min_points=1, robot_margin_px=0)
    pts = np.array([[[0.3, -0.1, 0.02], [0.345, -0.055, 0.02], [0.3, -0.06, 0.02], [0.3, -0.1, 0.2]]])
    assert pred.count(pts) == 2  # the centre and a point 4 cm away; not the box corner, not above the zone
    with pytest.raises(ValueError, match="radius"):
        RegionPredicate(np.eye(4), [0, 0, 0], [1, 1, 1], radius=0.0)


def test_region_predicate_relative_to_the_first_frame():
    """``baseline``: only points added since the first frame make success; a wrong-shaped baseline is invalid."""
    from k4d_bringup.shadow.config import ShadowConfig
    from k4d_bringup.shadow.predicate import RegionPredicate

    pred = RegionPredicate(np.eye(4), [0, 0, 0], [1, 1, 1], min_points=2, window=1, robot_margin_px=0)
    first = np.full((4, 4, 3), 5.0)
    first[0, :3] = 0.5  # three points in the box from the start (a noise floor)
    last = first.copy()
    assert pred.evaluate(last[None]).success  # absolute: 3 >= 2
    res = pred.evaluate(last[None], baseline=(first, None))
    assert res.valid and not res.success and res.counts == [3] and "3 points in the first frame" in res.reason
    last[1, :2] = 0.5  # an object arrives: two more points
    assert pred.evaluate(last[None], baseline=(first, None)).success
    bad = pred.evaluate(last[None], baseline=(first[:2], None))
    assert not bad.valid and "baseline frame must have shape" in bad.reason
    with pytest.raises(ValueError, match="success_relative"):
        ShadowConfig(success_relative="yes")


@pytest.mark.skipif(not _ok, reason=_why)
def test_bench_lifts_a_normalised_imagination_with_the_first_frames_depth(tmp_path):
    """A world model whose robot-pixel lift failed (normalised XYZ, metric False): the session refits the lift
    on the depth of the chunk's first frame (anchor_lift) and judges success in metres; scrambled geometry
    cannot be anchored and stays undeterminable."""
    from k4d_bringup.dataset.generate import generate, load_episode
    from k4d_bringup.shadow.config import ShadowConfig
    from k4d_bringup.shadow.log import read_log
    from k4d_bringup.shadow.metrics import backproject_depth
    from k4d_bringup.shadow.session import RolloutData
    from k4d_bringup.shadow.simbench import NOMINAL_REGION, bench, episode_files
    from k4d_kinematics.camera import PinholeCamera

    generate(2, 12, tmp_path / "data" / "easy", workers=1, sigmas=(0.0, 1.2), tasks=("pick_place",),
             num_frames=9, width=96, height=64, fy=80.0, progress=False)
    episodes = [load_episode(f) for f in episode_files(tmp_path / "data")]
    calls = []

    def normalised(rgb0, seq, rec, scramble=False):
        ep = episodes[len(calls)]
        calls.append(rec.episode_id)
        cam = ep["meta"]["camera"]
        camera = PinholeCamera(cam["width"], cam["height"], cam["fx"], cam["fy"], cam["cx"], cam["cy"])
        xyz = np.stack([backproject_depth(d, camera) for d in ep["depth"]]).astype(np.float64)
        lo, hi = np.nanmin(xyz, axis=(0, 1, 2)), np.nanmax(xyz, axis=(0, 1, 2))
        xyz01 = ((xyz - lo) / (hi - lo)).astype(np.float32)
        if scramble:  # geometry that matches neither the first frame's depth nor the robot
            xyz01 = np.random.default_rng(0).random(xyz01.shape, dtype=np.float32)
        return RolloutData(ep["rgb"], xyz01, False, "normalised", metric_quality="failed")

    cfg = ShadowConfig(num_frames=9, success_predicate="region", success_min_points=3, success_window_frames=1,
                       save_frames=False, **NOMINAL_REGION)
    bench(tmp_path / "data", normalised, tmp_path / "a.jsonl", cfg)
    chunks = [r for r in read_log(tmp_path / "a.jsonl") if r["kind"] == "chunk"]
    assert len(chunks) == 2
    for c in chunks:
        assert c["metric"] and c["metric_quality"].startswith("anchored_") and c["metric_residual_m"] < 0.01
        assert c["predicate"]["imagined"]["valid"] and c["imagined_success"] == c["actual_success"]
        assert c["depth_mae_m"] < 0.01  # the lifted imagination is the recorded depth again

    # the world model was already given that depth (send_initial_depth) and could not lift: no second fit here
    calls.clear()
    sent = lambda a, b, c: dataclasses.replace(normalised(a, b, c), anchor_sent=True)
    bench(tmp_path / "data", sent, tmp_path / "s.jsonl", cfg)
    chunks = [r for r in read_log(tmp_path / "s.jsonl") if r["kind"] == "chunk"]
    assert len(chunks) == 2 and all(not c["metric"] and c["metric_quality"] == "failed" for c in chunks)

    calls.clear()
    bench(tmp_path / "data", lambda a, b, c: normalised(a, b, c, scramble=True), tmp_path / "b.jsonl", cfg)
    chunks = [r for r in read_log(tmp_path / "b.jsonl") if r["kind"] == "chunk"]
    assert all(not c["metric"] and not c["predicate"]["imagined"]["valid"] for c in chunks)


@pytest.mark.ros
@pytest.mark.skipif(not _ok, reason=_why)
def test_bench_served_over_dds_scores_like_the_model_in_process(tmp_path, capsys):
    """``k4d shadow bench --served``: the chunks go to the real imagine_node (own process, tiny model, CPU) as
    Imagine goals over DDS; every chunk's scores equal those of the same model run in this process, so the
    message path loses nothing. Without --min-points, or without a server, it stops with a message."""
    import argparse
    import sys

    pytest.importorskip("rclpy")
    from k4d_bringup.dataset.generate import generate
    from k4d_bringup.shadow.log import read_log
    from k4d_bringup.shadow.simbench import add_arguments, run_bench
    from k4d_bringup.testing import start_process, stop_process
    from k4d_worldmodel.tiny import build_tiny_pipeline

    generate(2, 13, tmp_path / "data" / "easy", workers=1, sigmas=(0.0, 1.2), tasks=("pick_place",),
             num_frames=9, width=48, height=32, fy=40.0, progress=False)
    model = tmp_path / "tiny_model"
    build_tiny_pipeline("pmcond", seed=0).save_pretrained(model)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    common = [str(tmp_path / "data"), "--steps", "2", "--device", "cpu"]
    served = common + ["--served", "--frames", "9", "--min-points", "1", "--imagine-action", "/k4d_test/imagine"]

    with pytest.raises(SystemExit, match="give --min-points"):
        run_bench(parser.parse_args(common + ["--served", "--log", str(tmp_path / "x.jsonl")]))
    with pytest.raises(SystemExit, match="no Imagine action server on /k4d_test/imagine"):
        run_bench(parser.parse_args(served + ["--log", str(tmp_path / "x.jsonl"), "--wait-server-s", "0.5"]))

    node = start_process([sys.executable, "-m", "k4d_worldmodel.ros.imagine_node", "--ros-args",
                          "-r", "__node:=k4d_imagine_benchtest", "-p", f"checkpoint_dir:={model}",
                          "-p", "device:=cpu", "-p", "autostart:=true", "-p", "preview:=false",
                          "-p", "guidance_scale:=1.0", "-p", "action_name:=/k4d_test/imagine"],
                         env={"PYTHONUNBUFFERED": "1"}, cwd=str(tmp_path))
    try:
        assert run_bench(parser.parse_args(served + ["--log", str(tmp_path / "served.jsonl"),
                                                     "--wait-server-s", "120"])) == 0
    finally:
        node_out = stop_process(node)
    assert run_bench(parser.parse_args(common + ["--checkpoint", str(model), "--min-points", "1",
                                                 "--log", str(tmp_path / "local.jsonl")])) == 0
    chunks = {}
    for name in ("served", "local"):
        chunks[name] = [r for r in read_log(tmp_path / f"{name}.jsonl") if r["kind"] == "chunk"]
    assert len(chunks["served"]) == 2 and all(c["status"] == "ok" for c in chunks["served"]), node_out[-2000:]
    assert all(c["generation_time_s"] > 0 for c in chunks["served"])  # the server's own timing came back
    for a, b in zip(chunks["served"], chunks["local"]):
        assert a["episode_id"] == b["episode_id"]
        for key in ("psnr_db", "ssim", "depth_mae_m", "imagined_success", "metric", "metric_quality"):
            assert a[key] == b[key], (key, a[key], b[key])
    assert "served on /k4d_test/imagine" in capsys.readouterr().out

    # The imagine node stops while it imagines the first chunk: that chunk fails at once with the reason, the
    # next one fails because no server is there, and the bench finishes (no wait for the 30-minute goal timeout).
    marker = tmp_path / "imagining"
    slow = [sys.executable, "-c", SLOW_IMAGINE_CODE, str(marker), "--ros-args", "-r", "__node:=k4d_imagine_slow",
            "-p", f"checkpoint_dir:={model}", "-p", "device:=cpu", "-p", "autostart:=true", "-p", "preview:=false",
            "-p", "guidance_scale:=1.0", "-p", "action_name:=/k4d_test/imagine"]
    node = start_process(slow, env={"PYTHONUNBUFFERED": "1"}, cwd=str(tmp_path))
    outs = []

    def stop_when_imagining():
        deadline = time.monotonic() + 150
        while not marker.exists() and time.monotonic() < deadline and node.poll() is None:
            time.sleep(0.05)
        outs.append(stop_process(node))

    import threading

    stopper = threading.Thread(target=stop_when_imagining, daemon=True)
    stopper.start()
    t0 = time.monotonic()
    try:
        assert run_bench(parser.parse_args(served + ["--log", str(tmp_path / "crash.jsonl"),
                                                     "--wait-server-s", "120"])) == 0
    finally:
        stopper.join(timeout=30)
        if node.poll() is None:
            stop_process(node)
    assert time.monotonic() - t0 < 120
    crashed = [r for r in read_log(tmp_path / "crash.jsonl") if r["kind"] == "chunk"]
    assert [c["status"] for c in crashed] == ["failed_to_evaluate"] * 2, (crashed, outs)
    assert "left the graph while imagining" in crashed[0]["status_message"]
    assert "no Imagine action server on /k4d_test/imagine" in crashed[1]["status_message"]
    import rclpy

    assert not rclpy.ok()  # the client shut down the context it created: later tests can init their own


# The imagine node with a transformer forward that marks the file named by argv[1] and then takes 3 s.
SLOW_IMAGINE_CODE = """
import pathlib, sys, time
marker = pathlib.Path(sys.argv.pop(1))
from k4d_worldmodel.models.transformer_k4d import K4DTransformer3DModel
_forward = K4DTransformer3DModel.forward
def _slow_forward(self, *args, **kwargs):
    marker.touch()
    time.sleep(3.0)
    return _forward(self, *args, **kwargs)
K4DTransformer3DModel.forward = _slow_forward
from k4d_worldmodel.ros import imagine_node
sys.exit(imagine_node.main(sys.argv))
"""


def _meta(task="pick_place", kind="cylinder", size=(0.014, 0.035, 0.0)):
    """The metadata ``k4d shadow bench`` reads of an episode: task, target, zone, scenario, noise level."""
    return {"name": "ep", "task": task, "scenario": "easy", "sigma": 0.6,
            "objects": [{"kind": kind, "size": list(size)}], "zone": {"center_base": [0.3, 0.05, 0.0], "radius": 0.05}}


def test_simbench_standing_check_per_episode_from_the_meta():
    """A pick-place cylinder's start event carries the slab above r + h (``upright_top_height``, k4d eval's rule);
    push, a cube and a squat cylinder carry none (null: a configured one does not apply either); the session
    takes it as the episode's check, its threshold from the config."""
    from k4d_bringup.shadow.config import ShadowConfig
    from k4d_bringup.shadow.session import ShadowSession
    from k4d_bringup.shadow.simbench import NOMINAL_REGION, start_event, zone_box, zone_top

    assert zone_top(_meta()) == {"min_z": pytest.approx(0.049)}
    assert zone_top(_meta(task="push")) is None
    assert zone_top(_meta(kind="cube", size=(0.02, 0.02, 0.02))) is None
    assert zone_top(_meta(size=(0.02, 0.022, 0.0))) is None  # h - r = 2 mm: no slab tells lying from standing
    with pytest.raises(ValueError, match="no target kind and size"):
        zone_top({"name": "ep", "task": "pick_place", "objects": []})
    ev = start_event(_meta(), "easy/ep")
    assert ev["success_top"] == {"min_z": pytest.approx(0.049)} and ev["policy"] == "sigma=0.6"
    assert ev["success_region"] == zone_box(_meta(), 0.07)
    assert start_event(_meta(task="push"), "easy/ep")["success_top"] is None
    assert "success_top" not in start_event(_meta(), "easy/ep", upright=False)
    s = ShadowSession(ShadowConfig(num_frames=9, success_predicate="region", success_top_min_points=4,
                                   **NOMINAL_REGION), None, lambda _r: None)
    for meta, upright, top in ((_meta(), True, (pytest.approx(0.049), 4)), (_meta(task="push"), True, None),
                               (_meta(kind="cube", size=(0.02, 0.02, 0.02)), True, None), (_meta(), False, None)):
        s.on_episode_event(json.dumps(start_event(meta, "easy/ep", upright)), 0)
        assert s.episode.top == top


@pytest.mark.skipif(not _ok, reason=_why)
def test_simbench_region_fails_a_cylinder_toppled_in_the_zone_as_the_label_does():
    """A pick-place cylinder put in the zone standing and lying (MuJoCo, settled 1 s, rendered at 96 x 64): the
    label (rule 3) and the episode's predicate (``start_event``: the zone box and the standing check, thresholds
    ``min_points_for`` at 96 x 64) agree on both; without the check the lying one is a success."""
    from k4d_bringup.shadow.config import ShadowConfig
    from k4d_bringup.shadow.metrics import backproject_depth
    from k4d_bringup.shadow.predicate import make_predicate, min_points_for
    from k4d_bringup.shadow.session import ShadowSession
    from k4d_bringup.shadow.simbench import NOMINAL_REGION, start_event
    from k4d_bringup.sim.config import CameraConfig, SimConfig
    from k4d_bringup.sim.policies import TaskMonitor
    from k4d_bringup.sim.scene import sample_layout
    from k4d_bringup.sim.workcell import YamSim

    size, c45 = (0.016, 0.025, 0.0), float(np.sqrt(0.5))
    cfg = ShadowConfig(num_frames=9, success_predicate="region", success_window_frames=1, **NOMINAL_REGION,
                       success_min_points=min_points_for(64, 96), success_top_min_points=min_points_for(64, 96, 1))
    session = ShadowSession(cfg, None, lambda _r: None)
    sim_cfg = SimConfig(task="pick_place", shadows=False, camera=CameraConfig(width=96, height=64, fy=80.0))
    lay = sample_layout(sim_cfg, 3)
    lay = dataclasses.replace(lay, objects=(dataclasses.replace(lay.target, kind="cylinder", size=size),)
                              + lay.objects[1:])
    meta = _meta(size=size)
    meta["zone"] = {"center_base": list(lay.zone.center_base), "radius": lay.zone.radius}
    for quat, z, label in (((1.0, 0.0, 0.0, 0.0), size[1], "success"), ((c45, c45, 0.0, 0.0), size[0], "near_miss")):
        sim = YamSim(sim_cfg, layout=lay)
        monitor = TaskMonitor(sim)
        sim.set_object_pose(0, [*lay.zone.center_base[:2], z], quat)
        sim.step_for(1.0)
        assert monitor.outcome(sim).label == label
        frame = sim.render(rgb=False, depth=True, segmentation=True)
        xyz, robot = backproject_depth(frame.depth, sim.camera_info), frame.robot_link >= 0
        T = sim.extrinsics.T_base_cam
        sim.close()
        for upright in (True, False):
            session.on_episode_event(json.dumps(start_event(meta, "easy/ep", upright)), 0)
            ep = session.episode
            res = make_predicate(cfg, T, ep.region, top=ep.top).evaluate(xyz, robot)
            assert res.valid and res.counts[0] >= cfg.success_min_points, res  # the box sees it either way
            assert res.success == (label == "success" or not upright), (label, upright, res)


def test_bench_compose_option_reaches_the_engine_and_is_refused_when_served(tmp_path):
    """``k4d shadow bench --compose swept`` runs the in-process engine with compose_static and the swept region;
    a served model composites by its node's own parameters, so --served with --compose stops with a message."""
    import argparse

    from k4d_bringup.shadow.imaginers import EngineImaginer
    from k4d_bringup.shadow.simbench import add_arguments, run_bench
    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.tiny import build_tiny_pipeline

    model = tmp_path / "tiny_model"
    build_tiny_pipeline("pmcond", seed=0).save_pretrained(model)
    cfg = EngineImaginer(str(model), "cpu", 2, 1.0, compose="swept").engine.config
    assert cfg.compose_static and cfg.compose_region == "swept"
    assert not EngineImaginer(str(model), "cpu", 2, 1.0).engine.config.compose_static
    # the flying-point filter reaches the engine, and the records name the filtered composite apart
    filt = EngineImaginer(str(model), "cpu", 2, 1.0, compose="swept", flying_rel=0.05)
    # the engine's mode by default, named in the records
    assert filt.engine.config.compose_flying_rel == 0.05 and filt.compose == "swept/either:0.05"
    assert filt.engine.config.compose_flying_mode == WorldModelConfig().compose_flying_mode == "either"
    assert EngineImaginer(str(model), "cpu", 2, 1.0, compose="swept", flying_rel=0.0).compose == "swept"
    default = EngineImaginer(str(model), "cpu", 2, 1.0, compose="swept")  # the engine's filter, named as such
    assert default.compose == f"swept/either:{WorldModelConfig().compose_flying_rel:g}"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit, match="--flying-rel filters the composite"):
        run_bench(parser.parse_args([str(tmp_path), "--checkpoint", str(model), "--flying-rel", "0.05",
                                     "--log", str(tmp_path / "y.jsonl")]))
    with pytest.raises(SystemExit, match="--compose applies to a model run in this process"):
        run_bench(parser.parse_args([str(tmp_path), "--served", "--min-points", "1", "--compose", "swept",
                                     "--log", str(tmp_path / "x.jsonl")]))
