"""Shadow-mode core without a ROS graph: durable log, queue/skip policy, scoring, aggregation, report, calib check,
and the offline replay of a recording through the real (tiny) world model.

Scenes are synthetic (``k4d_bringup.shadow.synthetic``: table, box and the YAM rendered through a known
calibration) and small (48 x 32 for the tiny world model, 96 x 64 for the calibration check).
"""
import json
import math
import os

import numpy as np
import pytest

from k4d_bringup.shadow.aggregate import calibration_of, ranking, table3
from k4d_bringup.shadow.calib import alignment_score
from k4d_bringup.shadow.chunks import ChunkQueue
from k4d_bringup.shadow.config import ShadowConfig
from k4d_bringup.shadow.guard import ActuatorGuard
from k4d_bringup.shadow.log import ShadowLog, read_log
from k4d_bringup.shadow.metrics import backproject_depth, mmrv, pearson_r
from k4d_bringup.shadow.session import Kinematics, RolloutData, ShadowSession
from k4d_bringup.shadow.synthetic import SyntheticScene
from k4d_kinematics.sequence import JointTrajectoryData

ARM = [f"joint{i}" for i in range(1, 7)]


@pytest.fixture(scope="module")
def scene():
    return SyntheticScene.default(48, 32)


# ---------------------------------------------------------------------------------------------
# Durable log
# ---------------------------------------------------------------------------------------------


def test_log_survives_a_crash_with_a_truncated_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    log = ShadowLog(path)
    for i in range(5):
        log.append({"kind": "episode", "episode_id": f"e{i}", "psnr_db": float("nan"), "x": np.float32(0.5)})
    log.close()
    good = path.read_bytes()
    # Simulated crash: the process died while writing record 6 (half a line, no newline).
    with open(path, "ab") as fh:
        fh.write(b'{"v":1,"kind":"chunk","episode_id":"e5","psn')
    stats = {}
    recs = read_log(path, stats)
    assert [r["episode_id"] for r in recs] == [f"e{i}" for i in range(5)]
    assert stats["skipped_torn"] == 1
    assert recs[0]["psnr_db"] is None and recs[0]["x"] == 0.5  # NaN -> null, numpy -> float
    # The node restarts and appends: the torn line stays isolated, the new record is readable.
    log = ShadowLog(path)
    log.append({"kind": "episode", "episode_id": "after_restart"})
    log.close()
    recs = read_log(path, stats)
    assert [r["episode_id"] for r in recs][-1] == "after_restart" and len(recs) == 6
    assert path.read_bytes().startswith(good) and stats["skipped_torn"] == 0  # the fragment was cut off ...
    assert (tmp_path / "log.jsonl.torn").read_bytes() == b'{"v":1,"kind":"chunk","episode_id":"e5","psn\n'  # ... kept
    # A tear right after a nested '}' looks like a record's end; after a restart it must not make the log
    # unreadable (it would sit mid-file among good records).
    with open(path, "ab") as fh:
        fh.write(b'{"v":1,"kind":"chunk","episode_id":"e6","per_frame":{"k":[1]}')
    log = ShadowLog(path)
    assert log.torn_bytes == len(b'{"v":1,"kind":"chunk","episode_id":"e6","per_frame":{"k":[1]}')
    log.append({"kind": "episode", "episode_id": "after_second_restart"})
    log.close()
    assert [r["episode_id"] for r in read_log(path)][-2:] == ["after_restart", "after_second_restart"]
    # A record written whole but for its newline is a record: it is kept, and the next one starts a new line.
    with open(path, "ab") as fh:
        fh.write(b'{"v":1,"kind":"episode","episode_id":"no_newline"}')
    with ShadowLog(path) as log:
        assert log.torn_bytes == 0
        log.append({"kind": "episode", "episode_id": "last"})
    assert [r["episode_id"] for r in read_log(path)][-2:] == ["no_newline", "last"]
    # A complete but corrupt line in the middle is corruption, not a crash: it raises.
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"a":1}\n{"a":}\n{"a":2}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_log(bad)


# ---------------------------------------------------------------------------------------------
# Queue / skip policy
# ---------------------------------------------------------------------------------------------


def test_queue_policies_count_skips():
    q = ChunkQueue(2, "drop_oldest")
    assert q.push(1) == [] and q.push(2) == []
    assert q.push(3) == [1] and q.push(4) == [2]
    assert q.items() == [3, 4] and q.skipped == 2
    q = ChunkQueue(2, "drop_newest")
    q.push(1), q.push(2)
    assert q.push(3) == [3] and q.push(4) == [4] and q.items() == [1, 2] and q.skipped == 2
    assert ChunkQueue(0, "drop_oldest").push(7) == [7]
    with pytest.raises(ValueError, match="policy"):
        ChunkQueue(1, "drop_random")


def _chunk(dq=0.1, duration=0.8, n=8, q0=None):
    """A chunk moving joint1 by dq from q0 (absolute positions, as a policy sends them)."""
    t = duration * np.arange(1, n + 1) / n
    start = np.zeros(6) if q0 is None else np.asarray(q0)[:6]
    return JointTrajectoryData(ARM, t, start + np.outer(t / duration, [dq, 0, 0, 0, 0, 0]))


def _region_cfg(scene, **kw):
    """A shadow config whose success region is a 10 cm box around the scene's box, 3-12 cm above the table."""
    box = scene.box_xy
    return ShadowConfig(num_frames=9, success_predicate="region", success_min_points=2, settle_s=0.1,
                        success_region_min=[box[0] - 0.05, box[1] - 0.05, 0.03],
                        success_region_max=[box[0] + 0.05, box[1] + 0.05, 0.12], **kw)


def _q_at(q0, t_s, dq=0.2, duration=0.8):
    """The joint state ``t_s`` into a ``_chunk(dq)`` from q0 (joint1 moving linearly)."""
    q = np.array(q0, dtype=float)
    q[0] += dq * min(max(t_s / duration, 0), 1)
    return q


@pytest.mark.parametrize("policy,expected_skipped", [("drop_oldest", [1, 2]), ("drop_newest", [2, 3])])
def test_session_skips_chunks_while_the_world_model_is_busy(scene, policy, expected_skipped):
    cfg = ShadowConfig(num_frames=9, queue_size=1, queue_policy=policy, save_frames=False)
    out = []
    kin = Kinematics(scene.model, scene.camera, scene.extrinsics)
    s = ShadowSession(cfg, kin, out.append)
    q0 = scene.home_q()
    s.on_frame(0, np.zeros((32, 48, 3), np.uint8), None, q0)
    t = 1_000_000
    s.on_chunk(_chunk(), "live", t, q0)
    assert s.next_dispatch(t, server_ready=True).chunk_index == 0  # in flight: the world model is busy
    for i in range(1, 4):  # three more chunks arrive during the imagination; the queue holds one
        s.on_chunk(_chunk(), "live", t + i * 1000, q0)
    skipped = [r for r in out if r["status"] == "skipped"]
    assert [r["chunk_index"] for r in skipped] == expected_skipped
    assert s.queue.skipped == 2 and s.status()["skipped"] == 2
    assert all("queue policy" in r["status_message"] for r in skipped)


# ---------------------------------------------------------------------------------------------
# Scoring with an oracle world model (perfect imagination = the scene itself)
# ---------------------------------------------------------------------------------------------


def _oracle_chunk(scene, cfg, start_event: str, frames_dir=None):
    """One live chunk of ``start_event``'s episode through a ShadowSession, imagined by an oracle (the scene
    rendered at the conditioning's joint positions, XYZ from its depth) and executed in front of the camera (10 Hz,
    the imagined frames' rate); returns (results, session, chunk start ns) once the chunk is scored."""
    out = []
    s = ShadowSession(cfg, Kinematics(scene.model, scene.camera, scene.extrinsics), out.append, frames_dir=frames_dir)
    q0 = scene.home_q()
    s.on_episode_event(start_event, 0)
    t0 = 100_000_000
    rgb, depth = scene.render(q0)
    s.on_frame(t0 - 10_000_000, rgb, depth, q0)
    rec = s.on_chunk(_chunk(0.2, q0=q0), "live", t0, q0)
    assert s.next_dispatch(t0, server_ready=True) is rec
    frames = [scene.render(q) for q in rec.seq.positions]
    imag = RolloutData(np.stack([f[0] for f in frames]), np.stack([backproject_depth(f[1], scene.camera)
                                                                   for f in frames]), True, "oracle")
    s.on_imagined(rec, imag, "", t0 + 50_000_000)
    for k in range(0, 11):
        t = t0 + int(k * 1e8)
        r, d = scene.render(_q_at(q0, k / 10))
        s.on_frame(t, r, d, _q_at(q0, k / 10))
        s.tick(t)
    s.tick(t0 + 2_000_000_000)
    return out, s, t0


@pytest.mark.parametrize("relative,imagined_points", [(False, 0), (True, 0), (False, 10**6)])
def test_scoring_of_a_perfect_imagination(scene, tmp_path, relative, imagined_points):
    """The box stands in the success region from the start: success as an absolute count; no success relative
    to the chunk's first frame (``success_relative``), in the imagination and in reality alike. An imagined-side
    threshold (``imagined_min_points``) that no frame reaches fails the imagination alone."""
    cfg = _region_cfg(scene, success_relative=relative, imagined_min_points=imagined_points)
    imagined_ok = not relative and not imagined_points
    out, s, t0 = _oracle_chunk(scene, cfg, "start pick_box", tmp_path / "frames")
    chunk = [r for r in out if r["kind"] == "chunk"]
    assert len(chunk) == 1 and chunk[0]["status"] == "ok", chunk
    c = chunk[0]
    assert c["frames_compared"] == 8
    assert c["psnr_db"] > 40 and c["ssim"] > 0.99  # same poses at the same times
    assert c["depth_mae_m"] < 0.02
    assert c["imagined_success"] == imagined_ok and c["actual_success"] == (not relative) and c["has_actual"]
    assert c["imagined_success_probability"] == (1.0 if imagined_ok else 0.0)
    for side in ("imagined", "actual"):  # the box's points are counted either way; relative names the baseline
        pr = c["predicate"][side]
        assert pr["valid"] and min(pr["counts"]) >= 2
        assert ("relative to" in pr["reason"]) == relative
    assert (tmp_path / "frames" / c["episode_id"] / "chunk_0000_live.npz").is_file()
    s.on_episode_event("end", t0 + 3_000_000_000)
    ep = [r for r in out if r["kind"] == "episode"]
    assert len(ep) == 1 and ep[0]["status"] == "ok" and ep[0]["actual_source"] == "depth"
    assert ep[0]["imagined_success"] == imagined_ok and ep[0]["actual_success"] == (not relative)


@pytest.mark.parametrize("config_top,event_top,check,success", [
    (0.0, {"min_z": 0.05}, (0.05, 2), True),  # the box's top face (6 cm) is in the slab above 5 cm
    (0.0, {"min_z": 0.08, "min_points": 1}, (0.08, 1), False),  # nothing in the region stands 8 cm tall
    (0.08, None, None, True),  # the episode turns the configured check off
    (0.08, "absent", (0.08, 2), False),  # an episode without its own check takes the configured one
])
@pytest.mark.parametrize("imagined_check", [True, False])
def test_scoring_with_the_standing_check(scene, config_top, event_top, check, success, imagined_check):
    """The standing check (``success_top_min_height_m`` / an episode's ``success_top``) judges the real side and,
    with ``imagined_standing_check``, the imagined side alike; a side asked logs the slab's counts with the rule.
    Without ``imagined_standing_check`` the imagination is judged by the box alone (which the box fills)."""
    event = {"event": "start", "label": "pick_box"}
    if event_top != "absent":
        event["success_top"] = event_top
    cfg = _region_cfg(scene, success_top_min_height_m=config_top, success_top_min_points=2, save_frames=False,
                      imagined_standing_check=imagined_check)
    out, _s, _t0 = _oracle_chunk(scene, cfg, json.dumps(event))
    (c,) = [r for r in out if r["kind"] == "chunk"]
    assert c["status"] == "ok" and c["has_actual"], c["status_message"]
    assert c["actual_success"] == success and c["imagined_success"] == (success if imagined_check else True)
    for side in ("imagined", "actual"):
        pr = c["predicate"][side]
        side_check = check if side == "actual" or imagined_check else None
        assert pr["valid"] and min(pr["counts"]) >= 2  # the box fills the region either way
        assert (pr.get("top_min_z"), pr.get("top_min_points")) == (side_check or (None, None))
        if side_check is not None:
            assert len(pr["top_counts"]) == len(pr["counts"]) and "standing check" in pr["reason"]
            assert (min(pr["top_counts"]) >= side_check[1]) == success
        else:
            assert "top_counts" not in pr


@pytest.mark.parametrize("start_depth", [True, False])
def test_relative_success_counts_both_sides_from_the_chunks_first_frame(scene, start_depth):
    """``success_relative``: the goal region is empty when the chunk starts and holds the box from the next frame
    on. A perfect imagination and reality then agree (success), both counted against the chunk's first frame;
    without depth at that frame reality cannot be counted so, and says why instead of using a later frame."""
    out = []
    s = ShadowSession(_region_cfg(scene, success_relative=True, save_frames=False),
                      Kinematics(scene.model, scene.camera, scene.extrinsics), out.append)
    q0 = scene.home_q()
    s.on_episode_event("start place_box", 0)
    t0 = 100_000_000
    rgb, depth = scene.render(q0)
    s.on_frame(t0, rgb, np.full_like(depth, np.nan) if start_depth else None, q0)  # nothing in the region yet
    rec = s.on_chunk(_chunk(0.2, q0=q0), "live", t0, q0)
    assert s.next_dispatch(t0, server_ready=True) is rec
    frames = [scene.render(q) for q in rec.seq.positions]
    xyz = np.stack([backproject_depth(f[1], scene.camera) for f in frames])
    xyz[0] = np.nan  # the imagination's first frame is the empty one too
    s.on_imagined(rec, RolloutData(np.stack([f[0] for f in frames]), xyz, True, "oracle"), "", t0 + 1)
    for k in range(1, 11):
        t = t0 + int(k * 1e8)
        r, d = scene.render(_q_at(q0, k / 10))
        s.on_frame(t, r, d, _q_at(q0, k / 10))
        s.tick(t)
    s.tick(t0 + 2_000_000_000)
    (c,) = [r for r in out if r["kind"] == "chunk"]
    assert c["status"] == "ok" and c["imagined_success"]
    if start_depth:
        assert c["has_actual"] and c["actual_success"]
        assert "relative to 0 points" in c["predicate"]["actual"]["reason"]
    else:
        assert not c["has_actual"] and "depth at the chunk's first frame" in c["predicate"]["actual"]["reason"]


def test_a_rollout_at_the_models_size_is_scored_and_a_scoring_defect_fails_only_its_chunk(scene, monkeypatch):
    """A server that answers at its model's size (``adapt_inputs``) gives a rollout smaller than the camera: the
    robot masks follow it and the chunk is scored. Any error while scoring fails that chunk by name; its episode
    is still written and the session goes on."""
    out = []
    s = ShadowSession(_region_cfg(scene, save_frames=False), Kinematics(scene.model, scene.camera, scene.extrinsics), out.append)
    q0 = scene.home_q()
    h, w = scene.camera.height // 2, scene.camera.width // 2
    frames = [scene.render(q) for q in [q0] * 9]
    small = RolloutData(np.stack([f[0][::2, ::2] for f in frames]),
                        np.stack([backproject_depth(f[1], scene.camera)[::2, ::2] for f in frames]), True, "half")
    assert small.rgb.shape[1:3] == (h, w)
    for i, fail in enumerate([False, True]):
        t0 = i * 10_000_000_000
        s.on_episode_event(f"start ep{i}", t0)
        s.on_frame(t0 + 1, *scene.render(q0), q0)
        rec = s.on_chunk(_chunk(0.0, q0=q0), "live", t0 + 2, q0)
        assert s.next_dispatch(t0 + 2, server_ready=True) is rec
        if fail:
            monkeypatch.setattr(s, "_score", lambda rec, now: (_ for _ in ()).throw(RuntimeError("bad rollout")))
        s.on_imagined(rec, small, "", t0 + 3)
        s.tick(t0 + 2_000_000_000)
        s.on_episode_event("end", t0 + 3_000_000_000)
        s.tick(t0 + 4_000_000_000)
    chunks = [r for r in out if r["kind"] == "chunk"]
    assert [c["status"] for c in chunks] == ["ok", "failed_to_evaluate"]
    assert chunks[0]["imagined_valid"] and chunks[0]["imagined_success"]  # the box stands in the region
    assert "scoring failed: RuntimeError: bad rollout" in chunks[1]["status_message"]
    assert [e["episode_id"] for e in out if e["kind"] == "episode"] == [c["episode_id"] for c in chunks]


def test_failed_imagination_fails_chunk_and_episode_keeps_earlier(scene):
    cfg = ShadowConfig(num_frames=9, save_frames=False, settle_s=0.0, server_wait_s=1.0)
    out = []
    s = ShadowSession(cfg, Kinematics(scene.model, scene.camera, scene.extrinsics), out.append)
    q0 = scene.home_q()
    img = np.zeros((32, 48, 3), np.uint8)
    s.on_episode_event("start one", 0)
    s.on_frame(0, img, None, q0)
    rec = s.on_chunk(_chunk(), "live", 1, q0)
    rec = s.next_dispatch(1, True)
    s.on_imagined(rec, RolloutData(np.zeros((9, 32, 48, 3), np.uint8), np.zeros((9, 32, 48, 3), np.float32), False),
                  "", 2)
    for k in range(10):
        s.on_frame(k * 100_000_000, img, None, q0)
    s.on_episode_event("end success", 2_000_000_000)
    s.on_episode_event("start two", 2_000_000_001)
    s.on_frame(2_000_000_002, img, None, q0)
    s.on_chunk(_chunk(), "live", 2_000_000_003, q0)
    rec2 = s.next_dispatch(2_000_000_003, True)
    s.fail_all_pending("world model action server /k4d/imagine disappeared", 2_100_000_000)
    s.on_chunk(_chunk(), "live", 2_200_000_000, q0)
    assert s.next_dispatch(2_300_000_000, server_ready=False) is None  # waits server_wait_s
    assert s.next_dispatch(3_300_000_000, server_ready=False) is None  # ... then fails
    s.on_episode_event("end failure", 3_400_000_000)
    s.tick(5_000_000_000)
    eps = [r for r in out if r["kind"] == "episode"]
    assert [e["status"] for e in eps] == ["ok", "failed_to_evaluate"]
    chunks = [r for r in out if r["kind"] == "chunk" and r["episode_id"] == rec2.episode_id]
    assert [c["status"] for c in chunks] == ["failed_to_evaluate"] * 2
    assert "disappeared" in chunks[0]["status_message"] and "not available" in chunks[1]["status_message"]
    assert eps[1]["has_actual"] and not eps[1]["actual_success"]


def test_a_chunk_answered_not_active_keeps_its_turn_then_fails_after_inactive_wait(scene):
    cfg = ShadowConfig(num_frames=9, queue_size=1, save_frames=False, settle_s=0.0, inactive_wait_s=2.0)
    out = []
    s = ShadowSession(cfg, Kinematics(scene.model, scene.camera, scene.extrinsics), out.append)
    q0 = scene.home_q()
    s.on_episode_event("start one", 0)
    s.on_frame(0, np.zeros((32, 48, 3), np.uint8), None, q0)
    s.on_chunk(_chunk(), "live", 1, q0)
    rec = s.next_dispatch(1, True)
    later = s.on_chunk(_chunk(), "live", 2, q0)  # waits behind it (the queue holds one)
    assert s.requeue(rec, 1_000_000_000, "not active") is True  # 1 s after it arrived: sent again, first
    assert rec.state == "queued" and rec.seq is None and s.queue.items() == [rec, later] and s.in_flight is None
    assert s.next_dispatch(1_000_000_001, True) is rec and rec.seq is not None  # conditioning built again
    assert s.requeue(rec, 3_000_000_000, "world model not active for inactive_wait_s=2 s") is False  # waited 3 s
    assert s.requeue(rec, 3_000_000_001, "twice") is False and s.queue.items() == [later]  # failed, not queued
    s.tick(10_000_000_000)
    (failed,) = [r for r in out if r["kind"] == "chunk" and r["chunk_index"] == rec.chunk_index]
    assert failed["status"] == "failed_to_evaluate"
    assert failed["status_message"] == "world model not active for inactive_wait_s=2 s"
    with pytest.raises(ValueError, match="inactive_wait_s"):
        ShadowConfig(inactive_wait_s=-1.0)


# ---------------------------------------------------------------------------------------------
# Aggregation: Table 3, Pearson r, MMRV, calibration
# ---------------------------------------------------------------------------------------------


def _episodes(scenario, policy, real, imag, probs=None, mode="live"):
    probs = probs or [float(x) for x in imag]
    return [{"kind": "episode", "scenario": scenario, "policy": policy, "mode": mode, "status": "ok",
             "has_actual": True, "actual_success": bool(r), "imagined_success": bool(i),
             "imagined_success_probability": p, "imagined_valid": True} for r, i, p in zip(real, imag, probs)]


def test_table3_pearson_and_mmrv_on_constructed_inputs():
    # Kinema4D Table 3 (simulation) success rates as three policies of 50 episodes each.
    gt, im = [0.48, 0.38, 0.80], [0.56, 0.46, 0.84]
    recs = []
    for name, g, i in zip(["pi_a", "pi_b", "pi_c"], gt, im):
        real = [k < round(g * 50) for k in range(50)]
        imag = [k < round(i * 50) for k in range(50)]
        recs += _episodes("sim", name, real, imag)
    recs.append({"kind": "episode", "scenario": "sim", "policy": "pi_a", "mode": "live",
                 "status": "failed_to_evaluate", "has_actual": True, "actual_success": True})
    rows = {r["policy"]: r for r in table3(recs)}
    assert rows["pi_a"]["episodes"] == 51 and rows["pi_a"]["paired"] == 50 and rows["pi_a"]["failed"] == 1
    for name, g, i in zip(["pi_a", "pi_b", "pi_c"], gt, im):
        assert rows[name]["gt_rate"] == pytest.approx(g) and rows[name]["imagined_rate"] == pytest.approx(i)
        assert rows[name]["diff"] == pytest.approx(i - g)
    rank = ranking(recs)["sim"]
    assert rank["pearson_r"] == pytest.approx(np.corrcoef(gt, im)[0, 1])
    assert rank["mmrv"] == 0.0  # same order
    # the scenario's pooled rates: all 150 paired episodes (the failed one is not paired)
    assert rank["paired"] == 150 and rank["gt_rate"] == pytest.approx(np.mean(gt))
    assert rank["imagined_rate"] == pytest.approx(np.mean(im))
    assert rank["diff"] == pytest.approx(np.mean(im) - np.mean(gt))
    # MMRV by hand: real [0.5, 0.3, 0.8], imagined order swaps the first two -> each of them violates by 0.2.
    assert mmrv([0.5, 0.3, 0.8], [0.3, 0.6, 0.9]) == pytest.approx(0.4 / 3)
    assert mmrv([0.2, 0.9], [0.9, 0.2]) == pytest.approx(0.7)
    assert pearson_r([0.1, 0.5, 0.9], [0.2, 0.6, 1.0]) == pytest.approx(1.0)
    assert pearson_r([0.1, 0.5, 0.9], [0.9, 0.5, 0.1]) == pytest.approx(-1.0)
    assert math.isnan(pearson_r([0.5], [0.4])) and math.isnan(pearson_r([0.5, 0.5], [0.1, 0.2]))
    assert math.isnan(mmrv([], []))
    for f in (pearson_r, mmrv):  # rates that do not pair up are a caller's bug, not a NaN
        with pytest.raises(ValueError, match="got 3 and 2"):
            f([0.9, 0.1, 0.5], [0.5, 0.2])


def test_calibration_of_imagined_probabilities():
    recs = _episodes("s", "p", [1, 1, 0, 0, 1, 0], [1, 1, 0, 0, 1, 1], probs=[0.9, 0.9, 0.1, 0.1, 0.9, 0.9])
    cal = calibration_of(recs, bins=5)
    assert cal["count"] == 6
    top = cal["bins"][-1]
    assert top["count"] == 4 and top["mean_prob"] == pytest.approx(0.9) and top["success_rate"] == pytest.approx(0.75)
    assert cal["ece"] == pytest.approx((4 * 0.15 + 2 * 0.1) / 6)
    assert cal["brier"] == pytest.approx((3 * 0.01 + 2 * 0.01 + 0.81) / 6)


# ---------------------------------------------------------------------------------------------
# Guard, config
# ---------------------------------------------------------------------------------------------


def test_actuator_guard_and_config_validation():
    cfg = ShadowConfig(candidate_topic="/policy_b/joint_trajectory")
    g = ActuatorGuard(cfg.actuator_topics, [cfg.chunk_topic, cfg.candidate_topic, "/my_robot/cmd"])
    for bad in ("/arm_controller/joint_trajectory", "/gripper_controller/command", "/gripper/command",
                "/arm_controller/follow_joint_trajectory/_action/send_goal", "/policy_b/joint_trajectory",
                "/my_robot/cmd", "/foo/joint_trajectory"):
        with pytest.raises(ValueError, match="refusing to publish"):
            g.check(bad)
    for ok in ("/k4d/shadow/result", "/diagnostics", "/k4d/overlay", "/rosout", "/parameter_events"):
        assert g.check(ok) == ok
    with pytest.raises(ValueError, match="queue_policy"):
        ShadowConfig(queue_policy="skip_all")
    with pytest.raises(ValueError, match="num_frames must be 4k\\+1"):
        ShadowConfig(num_frames=10)
    with pytest.raises(ValueError, match="success_region_min"):
        ShadowConfig(success_predicate="region")
    with pytest.raises(ValueError, match="imagined_min_points"):
        ShadowConfig(imagined_min_points=-1)


def _chunk_and_episode(eid, scenario, policy, actual, counts, chunk_index=0, reason=""):
    """A logged chunk with imagined counts (window = len(counts)) and its episode, as the session writes them."""
    chunk = {"kind": "chunk", "episode_id": eid, "chunk_index": chunk_index, "scenario": scenario,
             "policy": policy, "mode": "live", "status": "ok", "imagined_success": None,
             "predicate": {"imagined": {"valid": True, "counts": list(counts), "reason": reason}}}
    ep = {"kind": "episode", "episode_id": eid, "chunk_index": -1, "scenario": scenario, "policy": policy,
          "mode": "live", "status": "ok", "has_actual": True, "actual_success": bool(actual),
          "imagined_success": None, "imagined_valid": True}
    return [chunk, ep]


def test_shadow_calibrate_rescoring_and_choice():
    """k4d shadow calibrate's core: imagined success recomputed from the logged counts for any threshold (a frame
    with >= N points, a chunk with half its window, the episode = its last chunk); the threshold chosen is the one
    whose pooled imagined rates match the actual ones; a log counted relative to the first frame is refused unless
    it records the baseline count, and a logged standing check keeps judging."""
    from k4d_bringup.shadow.calibrate import choose_threshold, rescore, threshold_table

    recs = []
    # the imagination smears ~4 points into the box whatever happens; a real success adds ~8 more
    for i, (actual, n) in enumerate([(True, 12), (True, 13), (False, 4), (False, 5), (True, 11), (False, 3)]):
        recs += _chunk_and_episode(f"a{i}", "s", "good" if i < 3 else "bad", actual, [n])
    for i, (actual, n) in enumerate([(False, 4), (False, 9), (True, 12), (False, 2)]):
        recs += _chunk_and_episode(f"b{i}", "s", "worse", actual, [n])
    # an episode of two chunks: its answer is the last chunk's (window of 3 frames, 2 over 6 points -> success)
    recs += _chunk_and_episode("c", "s", "worse", True, [1, 1, 1])[:1]
    recs += _chunk_and_episode("c", "s", "worse", True, [7, 2, 8], chunk_index=1)
    r3 = {r["episode_id"]: r for r in rescore(recs, 3) if r["kind"] == "episode"}
    assert [r3[f"a{i}"]["imagined_success"] for i in range(6)] == [True, True, True, True, True, True]
    r6 = {r["episode_id"]: r for r in rescore(recs, 6) if r["kind"] == "episode"}
    assert [r6[f"a{i}"]["imagined_success"] for i in range(6)] == [True, True, False, False, True, False]
    assert r6["c"]["imagined_success"] and r6["c"]["imagined_success_probability"] == pytest.approx(2 / 3)
    assert not rescore(recs, 9)[-1]["imagined_success"] and recs[-1]["imagined_success"] is None  # copies
    table = threshold_table(recs, range(1, 15))
    best = choose_threshold(table)
    # actual: 5 of 11. Threshold 6 imagines 6 (b1's 9 points, and c), 8 and 9 imagine 5 (c's window fails), 10 four
    assert table[5]["scenarios"]["s"]["diff"] == pytest.approx(1 / 11)
    assert best["imagined_min_points"] == 8 and best["scenarios"]["s"]["diff"] == pytest.approx(0.0)
    assert best["agreement"] == pytest.approx(9 / 11)  # b1 and c are wrong either way round
    assert table[0]["scenarios"]["s"]["imagined_rate"] == 1.0  # threshold 1: everything is a success
    with pytest.raises(ValueError, match="success_relative"):
        rescore(_chunk_and_episode("r", "s", "p", True, [5], reason="relative to 3 points in the first frame"), 4)
    with pytest.raises(ValueError, match=">= 1"):
        rescore(recs, 0)
    # a relative log that records its baseline count is rescored against it: 9 - 3 >= 6, 9 - 3 < 7
    rel = _chunk_and_episode("r", "s", "p", True, [9], reason="relative to 3 points in the first frame")
    rel[0]["predicate"]["imagined"]["baseline_count"] = 3
    assert rescore(rel, 6)[-1]["imagined_success"] and not rescore(rel, 7)[-1]["imagined_success"]
    # the standing check as logged holds whatever the box threshold: 20 box points, but 0 in the slab over 2 needed
    lying = _chunk_and_episode("t", "s", "p", False, [20])
    lying[0]["predicate"]["imagined"].update(top_counts=[0], top_min_points=2)
    standing = _chunk_and_episode("u", "s", "p", True, [20])
    standing[0]["predicate"]["imagined"].update(top_counts=[5], top_min_points=2)
    assert not rescore(lying, 3)[-1]["imagined_success"] and rescore(standing, 3)[-1]["imagined_success"]
    assert not rescore(standing, 21)[-1]["imagined_success"]


def test_shadow_calibrated_probability_fit_apply_and_ranking(tmp_path):
    """k4d shadow calibrate --probability: the logistic fit on log(1 + count) recovers the parameters the outcomes
    were drawn with; applied to other episodes it replaces the imagined probability (chunk and episode, the last
    chunk's), leaves the hard answer alone, and ranking(rate="probability") ranks by the mean probability; logs it
    cannot fit are refused by name; the CLI writes the fit and the report shows the calibrated ranking."""
    from k4d_bringup.shadow.calibrate import apply_probability, fit_probability, probability_of
    from k4d_bringup.shadow_cli import add_commands
    import argparse

    rng = np.random.default_rng(0)
    a, b = -2.0, 1.2

    def draw(prefix, n, policy, mean_count):
        out = []
        for i in range(n):
            c = int(rng.poisson(mean_count))
            actual = rng.random() < 1 / (1 + math.exp(-(a + b * math.log1p(c))))
            recs = _chunk_and_episode(f"{prefix}{i}", "s", policy, actual, [c])
            recs[0].update(imagined_success=c >= 3, chunk_start_ns=i * 10**9, stamp_ns=i * 10**9 + 1)
            recs[1].update(imagined_success=c >= 3, stamp_ns=i * 10**9 + 1)
            out += recs
        return out

    calib = draw("c", 1500, "good", 12) + draw("d", 1500, "bad", 2)
    fit = fit_probability(calib)
    assert fit["converged"] and fit["episodes"] == 3000
    assert fit["intercept"] == pytest.approx(a, abs=0.3) and fit["slope"] == pytest.approx(b, abs=0.15)
    assert probability_of(0, fit) == pytest.approx(1 / (1 + math.exp(-fit["intercept"])))

    other = draw("g", 40, "good", 12) + draw("h", 40, "bad", 2)
    judged = apply_probability(other, fit)
    eps = {r["episode_id"]: r for r in judged if r["kind"] == "episode"}
    chunks = {r["episode_id"]: r for r in judged if r["kind"] == "chunk"}
    for eid, e in eps.items():
        n = chunks[eid]["predicate"]["imagined"]["counts"][-1]
        assert e["imagined_success_probability"] == pytest.approx(probability_of(n, fit))
        assert chunks[eid]["imagined_success_probability"] == e["imagined_success_probability"]
        assert e["imagined_success"] == (n >= 3)  # the hard answer is untouched
    assert "imagined_success_probability" not in other[1]  # copies
    by_p = ranking(judged, rate="probability")["s"]
    by_s = ranking(judged)["s"]
    good = [r["imagined_success_probability"] for r in judged if r["kind"] == "episode" and r["policy"] == "good"]
    assert by_p["imagined"][by_p["policies"].index("good")] == pytest.approx(np.mean(good))
    assert by_p["imagined"] != by_s["imagined"] and by_p["real"] == by_s["real"]
    with pytest.raises(ValueError, match="'success' or 'probability'"):
        ranking(judged, rate="mean")

    with pytest.raises(ValueError, match="same actual outcome"):
        fit_probability(sum((_chunk_and_episode(f"x{i}", "s", "p", True, [i]) for i in range(12)), []))
    with pytest.raises(ValueError, match="at least 10"):
        fit_probability(sum((_chunk_and_episode(f"x{i}", "s", "p", i % 2, [i]) for i in range(4)), []))
    with pytest.raises(ValueError, match="success_relative"):
        fit_probability(sum((_chunk_and_episode(f"x{i}", "s", "p", i % 2, [i], reason="relative to 2 points")
                             for i in range(12)), []))

    calib_log, other_log = tmp_path / "calib.jsonl", tmp_path / "other.jsonl"
    for path, recs in ((calib_log, calib), (other_log, other)):
        with ShadowLog(path) as lg:
            for r in recs:
                lg.append(r)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["shadow", "calibrate", str(calib_log), "--probability", "--json",
                              str(tmp_path / "fit.json")])
    assert args.func(args) == 0
    saved = json.loads((tmp_path / "fit.json").read_text())["probability"]
    assert saved["slope"] == pytest.approx(fit["slope"], rel=1e-3)
    args = parser.parse_args(["shadow", "report", str(other_log), "--out", str(tmp_path / "rep"), "--no-videos",
                              "--probability-fit", str(tmp_path / "fit.json")])
    assert args.func(args) == 0
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "with the calibrated success probability" in html and f"{saved['slope']:.3f}" in html
    args = parser.parse_args(["shadow", "report", str(other_log), "--out", str(tmp_path / "rep2"), "--no-videos",
                              "--probability-fit", str(tmp_path / "missing.json")])
    assert args.func(args) == 2
    (tmp_path / "bad_fit.json").write_text(json.dumps({"feature": "count", "intercept": 0, "slope": 1}))
    args = parser.parse_args(["shadow", "report", str(other_log), "--out", str(tmp_path / "rep3"), "--no-videos",
                              "--probability-fit", str(tmp_path / "bad_fit.json")])
    assert args.func(args) == 2
    with pytest.raises(ValueError, match="numeric intercept"):
        apply_probability(other, {"feature": fit["feature"], "intercept": "a", "slope": 1.0})



def test_a_probability_fit_records_its_model_and_composite_and_refuses_other_logs():
    """A fit says which model and composite it was fitted on (the chunk records' model_id and composite); applied
    to a log of another model or composite it stops with both named; older fits or chunks without them pass."""
    from k4d_bringup.shadow.calibrate import apply_probability, fit_probability

    def log(model, composite, n=20):
        recs = []
        for i in range(n):
            r = _chunk_and_episode(f"{model}{composite}{i}", "s", "p", i % 2, [i])
            r[0].update(model_id=model, composite=composite)
            recs += r
        return recs

    fit = fit_probability(log("m@1", "swept"))
    assert fit["model_ids"] == ["m@1"] and fit["composites"] == ["swept"]
    assert apply_probability(log("m@1", "swept", 4), fit)[0]["probability_fit"]
    with pytest.raises(ValueError, match=r"model \['m@1'\].*model \['m@2'\]"):
        apply_probability(log("m@2", "swept", 4), fit)
    with pytest.raises(ValueError, match=r"composite \['swept'\].*composite \['off'\]"):
        apply_probability(log("m@1", "off", 4), fit)
    served = log("m@1", "", 4)  # a served model's composite is unknown: not compared
    assert apply_probability(served, fit)[0]["imagined_success_probability"] >= 0
    older = {k: v for k, v in fit.items() if k not in ("model_ids", "composites")}
    assert apply_probability(log("m@2", "off", 4), older)[0]["probability_fit"]


# ---------------------------------------------------------------------------------------------
# Calibration check
# ---------------------------------------------------------------------------------------------


def test_calib_check_scores_correct_high_and_shifted_low(tmp_path):
    from k4d_bringup.shadow.calib import check_recording

    sc = SyntheticScene.default(96, 64)
    q = sc.home_q()
    rgb, _ = sc.render(q)
    good = alignment_score(rgb, sc.renderer().render(q).mask)
    bad = alignment_score(rgb, sc.renderer(sc.shifted(0.05, -0.05)).render(q).mask)
    assert good["valid"] and bad["valid"]
    assert good["score"] > 0.8 and bad["score"] < 0.6 and good["score"] - bad["score"] > 0.3
    # The same through a recording, as `k4d calib check` runs it.
    rec = tmp_path / "calib.mcap"
    sc.write_recording(rec, [{"dq": [0.2, 0, 0, 0, 0, 0], "duration": 0.4}], fps=10, gap_s=0.0)
    ok = check_recording(rec, sc.extrinsics, max_frames=6, depth_topic="/camera/depth/image_rect_raw")
    off = check_recording(rec, sc.shifted(0.05, -0.05), max_frames=6, depth_topic="/camera/depth/image_rect_raw")
    assert ok["summary"]["valid_frames"] == 6
    assert ok["summary"]["median_score"] > 0.8 > 0.6 > off["summary"]["median_score"]
    assert ok["summary"]["median_depth_fraction"] > 0.9 > off["summary"]["median_depth_fraction"]
    # Unsynchronised RGB-D streams: depth stamped 1 ms after its colour image pairs as the live node pairs it
    # (FramePairer, 20 ms), instead of silently dropping the depth check.
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CameraInfo, Image, JointState

    from k4d_bringup.recording import McapRecorder, deserialize, read_messages
    from k4d_kinematics.ros.conversions import time_from_ns, time_to_ns

    depth_topic, late = "/camera/depth/image_rect_raw", tmp_path / "late_depth.mcap"
    out = McapRecorder(late, compression="none")
    kinds = {"/camera/color/image_raw": Image, "/camera/color/camera_info": CameraInfo, depth_topic: Image,
             "/joint_states": JointState}
    for topic, cls in kinds.items():
        out.add_topic(topic, cls)
    for topic, datatype, log_ns, data in read_messages(rec, list(kinds)):
        if topic == depth_topic:
            msg = deserialize(datatype, data)
            msg.header.stamp = time_from_ns(time_to_ns(msg.header.stamp) + 1_000_000)
            data = serialize_message(msg)
        out.write(topic, data, log_ns)
    out.close()
    shifted = check_recording(late, sc.extrinsics, max_frames=6, depth_topic=depth_topic)["summary"]
    assert shifted["median_depth_fraction"] == pytest.approx(ok["summary"]["median_depth_fraction"])


# ---------------------------------------------------------------------------------------------
# Offline replay through the real (tiny) world model, then the report
# ---------------------------------------------------------------------------------------------


def test_replay_recording_with_tiny_world_model_and_report(scene, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from k4d_bringup.cli import main as k4d_main
    from k4d_worldmodel.engine import ImagineEngine
    from k4d_worldmodel.tiny import build_tiny_pipeline

    requests, run = [], ImagineEngine.run

    def recording_run(self, request, *args, **kwargs):  # what the in-process world model is asked; it runs
        requests.append(request)
        return run(self, request, *args, **kwargs)

    monkeypatch.setattr(ImagineEngine, "run", recording_run)

    model_dir = tmp_path / "tiny_model"
    build_tiny_pipeline("pmcond", seed=0).save_pretrained(model_dir)
    rec = tmp_path / "run.mcap"
    chunks = [{"dq": [0.15, 0, 0, 0, 0, 0], "episode_start": "start pick"},
              {"dq": [0.1, 0.05, 0, 0, 0, 0], "episode_end": "end success"},
              {"dq": [-0.1, 0, 0, 0, 0, 0], "episode_start": "start pick", "episode_end": "end failure"}]
    scene.write_recording(rec, chunks, fps=10, candidate_every=2)
    ext = tmp_path / "extrinsics.yaml"
    scene.extrinsics.to_yaml(ext)
    log = tmp_path / "out" / "shadow.jsonl"
    args = ["shadow", "replay", str(rec), "--checkpoint", str(model_dir), "--device", "cpu", "--log", str(log),
            "--set", "num_frames=9", "--set", "num_inference_steps=2", "--set", "guidance_scale=1.0",
            "--set", "extrinsics_source=file", "--set", f"extrinsics_file={ext}",
            "--set", "depth_topic=/camera/depth/image_rect_raw", "--set", "candidate_topic=/policy_b/joint_trajectory"]
    assert k4d_main(args) == 0
    recs = read_log(log)
    chunks_ = [r for r in recs if r["kind"] == "chunk"]
    eps = [r for r in recs if r["kind"] == "episode"]
    live = [c for c in chunks_ if c["mode"] == "live"]
    assert len(live) == 3 and all(c["status"] == "ok" for c in live)
    assert all(c["frames_compared"] >= 3 and 0 < c["psnr_db"] < 100 and -1 <= c["ssim"] <= 1 for c in live)
    assert any(c["mode"] == "candidate" and c["status"] == "ok" and c["psnr_db"] is None for c in chunks_)
    assert [(e["mode"], e["actual_success"]) for e in eps if e["mode"] == "live"] == [("live", True), ("live", False)]
    assert all(c["model_id"] for c in live)
    assert all(c["composite"] == "off" for c in live)  # the in-process engine's composite, logged with each chunk
    # Every request carried the depth of its chunk's start frame (send_initial_depth): metres of the table scene,
    # registered to the image, 0 in the recording -> NaN.
    assert len(requests) == len(chunks_) and all(r.anchor_depth is not None for r in requests)
    for r in requests:
        d = r.anchor_depth
        assert d.shape == r.image.shape[:2] and d.dtype == np.float32 and np.isfinite(d).mean() > 0.9
        assert 0.2 < np.nanmin(d) and np.nanmax(d) < 5.0
    # Report: index.html with the Table-3 table, plots and a real|imagined video per live episode.
    out = tmp_path / "report"
    assert k4d_main(["shadow", "report", str(log), "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert 'class="t3"' in html and "GT success" in html and "imagined success" in html and "MMRV" in html
    assert "live" in html and "candidate" in html
    videos = [p for p in os.listdir(out / "assets") if p.startswith("episode_")]
    assert len(videos) == 2
    assert any(p.startswith("metric_psnr_db") for p in os.listdir(out / "assets"))


def test_report_from_constructed_log_has_table_rows(tmp_path):
    from k4d_bringup.shadow.report import write_report

    log = tmp_path / "log.jsonl"
    with ShadowLog(log) as lg:
        for r in _episodes("real_ood", "pi_a", [1, 0, 0], [1, 1, 0]) + _episodes("real_ood", "pi_b", [1, 1, 1],
                                                                                [1, 1, 0]):
            lg.append({**r, "episode_id": "x", "chunk_index": -1})
    with open(log, "ab") as fh:
        fh.write(b'{"kind":"epis')  # torn by a crash
    html = write_report(log, tmp_path / "rep").read_text()
    assert "real_ood" in html and "pi_a" in html and "pi_b" in html and "1 torn" in html
    assert "0.33" in html and "0.67" in html and "1.00" in html
    assert json.loads(log.read_text().splitlines()[0])["policy"] == "pi_a"


def test_report_skips_an_unreadable_frames_file_and_names_it(tmp_path):
    """A frames file cut short by a crash (empty, or not an npz) costs only its own frames: the report is written,
    the readable chunk still makes the episode's video, and the unreadable file is named on the page."""
    from k4d_bringup.shadow.report import side_by_side_frames, write_report

    frames = tmp_path / "frames" / "e1"
    frames.mkdir(parents=True)
    rgb = np.zeros((3, 16, 24, 3), np.uint8)
    np.savez_compressed(frames / "chunk_0000_live.npz", imagined_rgb=rgb, real_rgb=rgb[1:], real_k=np.array([1, 2]),
                        times=np.arange(3.0), initial_rgb=rgb[0])
    (frames / "chunk_0001_live.npz").write_bytes(b"")
    (frames / "chunk_0002_live.npz").write_bytes(b"PK\x03\x04 cut short")
    log = tmp_path / "log.jsonl"
    with ShadowLog(log) as lg:
        for i in range(3):
            lg.append({"kind": "chunk", "episode_id": "e1", "chunk_index": i, "scenario": "s", "policy": "p",
                       "mode": "live", "status": "ok", "chunk_start_ns": i * 10**9, "psnr_db": 30.0,
                       "frames_file": f"frames/e1/chunk_{i:04d}_live.npz"})
        lg.append({**_episodes("s", "p", [1], [1])[0], "episode_id": "e1", "chunk_index": -1})
    bad = []
    assert len(side_by_side_frames(sorted(frames.glob("*.npz")), unreadable=bad)) == 2
    assert [p.name for p in bad] == ["chunk_0001_live.npz", "chunk_0002_live.npz"]
    page = write_report(log, tmp_path / "rep").read_text()
    assert "2 frames file(s) could not be read" in page and "frames/e1/chunk_0002_live.npz" in page
    assert list((tmp_path / "rep" / "assets").glob("episode_e1.*"))  # the readable chunk's video
