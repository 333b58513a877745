"""Evaluation: object tracker / 4D success predicate, no-robot path, end-to-end report on tiny data."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from k4d_worldmodel.training.synthetic import write_synthetic_episodes

    root = tmp_path_factory.mktemp("synth_eval")
    write_synthetic_episodes(root, episodes=2, num_frames=9, height=32, width=48)
    return root


def test_tracker_and_success_predicate_on_ground_truth(synth):
    from k4d_worldmodel.evaluate import object_info, success_4d, track_object
    from k4d_worldmodel.training.data import open_dataset

    ds = open_dataset(synth, 9, 32, 48, split="all")
    for i in range(2):
        c = ds[i]
        info = object_info(c)
        track, seen = track_object(c["world_xyz"], c["robot_mask"], info["T_base_cam"], info["init"],
                                   info["half_height"])
        assert seen.all()
        assert np.abs(track - c["object_pos"][:, 0]).max() < 0.03  # one pixel is 2.5 cm here
        assert success_4d(info["task"], track, info["goal"], info["radius"], info["half_height"]) == c["meta"]["success"]


def _table_scene(T, objects, H=30, W=40):
    """A flat table seen straight down with identity camera pose (camera frame = base frame): pixel (i, j) is
    the point (0.3 + 0.01 j, -0.15 + 0.01 i, 0); ``objects[t]`` lists (x, y) centres of 3 x 3 px, 4 cm tall
    blocks in frame t."""
    xyz = np.zeros((T, H, W, 3), np.float32)
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    xyz[..., 0], xyz[..., 1] = 0.3 + 0.01 * jj, -0.15 + 0.01 * ii
    for t in range(T):
        for x, y in objects[t]:
            j, i = int(round((x - 0.3) / 0.01)), int(round((y + 0.15) / 0.01))
            xyz[t, i - 1:i + 2, j - 1:j + 2, 2] = 0.04
    return xyz


def test_tracker_follows_a_carried_object_to_where_it_is_put_down():
    """An object that vanishes beside the gripper is carried: with the gripper's positions the track follows it
    and finds it again 25 cm away where it is put down, not the distractor that stays on the table;
    without them (and when it vanishes far from the gripper) the track keeps its last position, as before."""
    from k4d_worldmodel.evaluate import gripper_positions, track_object

    A, B, D = (0.40, -0.05), (0.60, 0.10), (0.40, 0.06)  # pick, place, distractor
    objects = [[A, D], [A, D], [D], [D], [D], [B, D], [B, D]]
    xyz = _table_scene(7, objects)
    mask = np.zeros(xyz.shape[:3], bool)
    grip = np.array([[0.40, -0.05, 0.2], [0.40, -0.05, 0.06], [0.41, -0.05, 0.1], [0.5, 0.03, 0.15],
                     [0.58, 0.09, 0.1], [0.60, 0.10, 0.15], [0.60, 0.10, 0.2]])
    T = np.eye(4)
    track, seen = track_object(xyz, mask, T, np.r_[A, 0.02], 0.02, gripper=grip)
    assert seen.tolist() == [True, True, False, False, False, True, True]
    assert np.linalg.norm(track[-1, :2] - B) < 0.01 and np.linalg.norm(track[3, :2] - grip[3, :2]) < 0.02
    old, _ = track_object(xyz, mask, T, np.r_[A, 0.02], 0.02)
    assert np.linalg.norm(old[-1, :2] - A) < 0.01  # no gripper: it never finds the object again
    far = grip.copy()
    far[:, 0] += 0.3  # the gripper nowhere near: not carried
    kept, _ = track_object(xyz, mask, T, np.r_[A, 0.02], 0.02, gripper=far)
    assert np.linalg.norm(kept[-1, :2] - A) < 0.01

    # gripper_positions: the median of the finger links' pixels in the base frame, NaN where none is seen
    link = np.full(xyz.shape[:3], -1, np.int16)
    link[0, 2:4, 2:4] = 1  # tip_left
    link[1, 5, 5] = 0      # the gripper body only
    rx = xyz.copy()
    g = gripper_positions(rx, link, ["gripper", "tip_left", "tip_right"], T)
    assert np.allclose(g[0], np.median(xyz[0, 2:4, 2:4].reshape(-1, 3), 0)) and np.allclose(g[1], xyz[1, 5, 5])
    assert np.isnan(g[2:]).all() and np.isnan(gripper_positions(rx, None, None, T)).all()


def test_raised_height_error_sees_objects_sink(synth):
    """The objects' height error: 0 on the truth, -2 cm when the scene is lowered 2 cm along the base z axis,
    and NaN-free only where the truth has raised points."""
    from k4d_worldmodel.evaluate import object_info, raised_height_error
    from k4d_worldmodel.training.data import open_dataset

    c = open_dataset(synth, 9, 32, 48, split="all")[0]
    T = object_info(c)["T_base_cam"]
    gt, mask = c["world_xyz"], c["robot_mask"]
    assert raised_height_error(gt, gt, mask, T) == 0.0
    lowered = (gt - 0.02 * T[2, :3]).astype(np.float32)  # base z row of the rotation: down 2 cm in the base frame
    assert abs(raised_height_error(lowered, gt, mask, T) + 0.02) < 1e-4
    holes = np.full_like(gt, np.nan)
    assert np.isnan(raised_height_error(holes, gt, mask, T))
    # the robot's pixels do not count (a 0/1 integer mask too): a mask over everything leaves nothing
    assert np.isnan(raised_height_error(gt, gt, np.ones(mask.shape, np.uint8), T))


def test_arm_psnr_scores_only_where_the_arm_moved(synth):
    """arm_psnr pools the pixels whose robot occupancy changed since frame 0: the truth is perfect there,
    copy-first is not, an error outside those pixels does not count, and a still arm gives NaN."""
    from k4d_worldmodel.evaluate import arm_psnr
    from k4d_worldmodel.training.data import open_dataset

    c = open_dataset(synth, 9, 32, 48, split="all")[0]
    gt, mask = c["rgb"], np.asarray(c["robot_mask"], bool)
    changed = mask[1:] != mask[:1]
    assert changed.any()
    assert arm_psnr(gt, gt, mask) == 100.0
    copy = np.repeat(gt[:1], len(gt), 0)
    assert arm_psnr(copy, gt, mask) < 40.0
    elsewhere = gt.copy()
    elsewhere[1:][~changed] = 255 - elsewhere[1:][~changed]  # wrong everywhere the arm did not move
    elsewhere[0] = 0                                          # and frame 0 is never scored
    assert arm_psnr(elsewhere, gt, mask) == 100.0
    wrong = gt.copy()
    wrong[1:][changed] = np.clip(gt[1:][changed].astype(int) + 10, 0, 255).astype(np.uint8)
    assert 26.0 < arm_psnr(wrong, gt, mask) < 29.0  # an error of about 10 / 255 there: about 28 dB
    still = np.repeat(mask[:1], len(mask), 0)
    assert np.isnan(arm_psnr(gt, gt, still))
    with pytest.raises(ValueError, match="robot_mask"):
        arm_psnr(gt, gt, mask[:, :-1])


def test_robot_condition_removed_is_the_unconditional_path(pmcond_pipe):
    from k4d_worldmodel.evaluate import robot_condition_removed
    from k4d_worldmodel.tiny import tiny_inputs

    pipe = pmcond_pipe
    inp = tiny_inputs(pipe)
    cond = pipe(**inp, num_inference_steps=2, seed=0, output_type="latent").latents
    with robot_condition_removed(pipe):
        unc = pipe(**inp, num_inference_steps=2, seed=0, output_type="latent").latents
        unc_other_robot = pipe(**tiny_inputs(pipe, shift_px=6), num_inference_steps=2, seed=0,
                               output_type="latent").latents
    assert not torch.allclose(cond, unc)
    torch.testing.assert_close(unc, unc_other_robot)  # the robot no longer matters
    torch.testing.assert_close(pipe(**inp, num_inference_steps=2, seed=0, output_type="latent").latents, cond)


def test_eval_end_to_end_writes_report(synth, pmcond_pipe, tmp_path):
    from k4d_worldmodel.evaluate import evaluate, print_summary

    r = evaluate("tiny-random", synth, tmp_path, split="all", steps=2, pipe=pmcond_pipe, videos=1, progress=False)
    s = r["summary"]
    assert s["episodes"] == 2 and set(s["methods"]) == {"k4d", "k4d_static", "no_robot", "copy_first"}
    assert s["success"]["gt_4d_agreement_with_sim"] == 1.0
    assert s["success"]["copy_first"]["overall"] == 0.0  # nothing moves -> the push never succeeds
    assert s["success"]["sim_overall"] == 0.5
    for m in s["methods"].values():
        assert np.isfinite(m["psnr"]) and np.isfinite(m["chamfer_l1"]) and np.isfinite(m["arm_psnr"])
    assert "pearson_r" in s["success"]["k4d"] and "mmrv" in s["success"]["k4d"]
    for m in s["methods"]:  # every agreement comes with its interval over these (2) episodes
        lo, hi = s["success"][m]["agreement_with_sim_ci95"]
        assert 0.0 <= lo <= s["success"][m]["agreement_with_sim"] <= hi <= 1.0 and hi - lo > 0.5
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["summary"]["episodes"] == 2
    h, w = pmcond_pipe.height, pmcond_pipe.width
    assert saved["header"]["zone_min_points"] == max(1, round(3 * h * w / (96 * 64)))  # the threshold it used
    assert saved["header"]["zone_upright_check"] == "truth"  # the standing check: the ground truth's side only
    # each row logs the zone counts its success answer came from (no standing check on the imagined side here)
    k = saved["header"]["zone_min_points"]
    for row in r["episodes"]:
        for m in s["methods"]:
            first, last = row[m]["zone_counts"]
            assert row[m]["success_4d"] == (last - first >= k)
        assert len(row["gt_zone_counts"]) == 2 and all(c >= 0 for c in row["gt_zone_counts"])
    md = (tmp_path / "report.md").read_text()
    assert "| k4d |" in md and "copy_first" in md and "Pearson" in md and "raised_height_err_m" in md
    assert "arm_psnr" in md
    assert "<table>" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "videos" / "000000.mp4").stat().st_size > 0
    print_summary(r)


def test_eval_cli(synth, tmp_path, capsys):
    from k4d_worldmodel.tiny import build_tiny_pipeline
    from k4d_bringup.cli import main

    pipe = build_tiny_pipeline("pmcond")
    pipe.save_pretrained(tmp_path / "ckpt")
    rc = main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(synth), "--split", "all", "--out",
               str(tmp_path / "ev"), "--steps", "1", "--methods", "k4d,copy_first", "--videos", "0",
               "--no-progress", "--device", "cpu"])
    assert rc == 0 and "success rate" in capsys.readouterr().out
    assert (tmp_path / "ev" / "report.html").is_file()
    header = json.loads((tmp_path / "ev" / "metrics.json").read_text())["header"]
    from k4d_worldmodel.config import WorldModelConfig

    want = WorldModelConfig(device="cpu").resolved_vae_autocast()  # auto: this CPU's choice, recorded
    assert header["vae_autocast"] == ("off" if want is None else "bfloat16")
    # float32 asked for by name: recorded, and a resume of the bfloat16 or auto log under it is refused by name
    args = ["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(synth), "--split", "all", "--steps", "1",
            "--methods", "k4d,copy_first", "--videos", "0", "--no-progress", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "f32"), "--vae-autocast", "off"]) == 0
    assert json.loads((tmp_path / "f32" / "metrics.json").read_text())["header"]["vae_autocast"] == "off"
    assert main(args + ["--out", str(tmp_path / "b16"), "--vae-autocast", "bfloat16"]) == 0
    assert json.loads((tmp_path / "b16" / "metrics.json").read_text())["header"]["vae_autocast"] == "bfloat16"
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "b16"), "--vae-autocast", "off", "--resume"]) != 0
    assert "vae_autocast" in capsys.readouterr().err


def test_eval_log_survives_a_crash_and_resumes(synth, pmcond_pipe, tmp_path):
    from k4d_bringup.shadow.log import read_log
    from k4d_worldmodel.evaluate import clip_metrics, evaluate, object_info
    from k4d_worldmodel.training.data import open_dataset

    kw = dict(split="all", steps=2, pipe=pmcond_pipe, videos=1, progress=False, methods=("k4d", "copy_first"))
    full = evaluate("tiny-random", synth, tmp_path, save_rollouts=True, **kw)
    log = tmp_path / "episodes.jsonl"
    records = read_log(log)
    assert [r["kind"] for r in records] == ["run", "episode", "episode"]
    assert records[0]["run"]["steps"] == 2 and records[0]["run"]["methods"] == ["k4d", "copy_first"]

    # the saved rollout is the scored one: its metrics recomputed from the file equal the row's
    ds = open_dataset(synth, pmcond_pipe.num_frames, pmcond_pipe.height, pmcond_pipe.width, split="all")
    clip = ds[0]
    saved = np.load(tmp_path / "rollouts" / f"{clip['name'].replace('/', '_')}.npz")
    assert set(saved.files) == {"k4d_rgb", "k4d_xyz"}  # copy_first is the first frame: not stored
    again = clip_metrics(saved["k4d_rgb"], saved["k4d_xyz"], clip, object_info(clip), 0.01, 4096)
    row0 = full["episodes"][0]["k4d"]
    assert again["psnr"] == pytest.approx(row0["psnr"]) and again["chamfer_l1"] == pytest.approx(row0["chamfer_l1"])

    # a crash while the second episode was being written: the run record, episode 1, half a line
    lines = log.read_bytes().split(b"\n")
    first = json.loads(lines[1])
    first["row"]["k4d"]["psnr"] = 99.0  # a marker: a resumed run must keep this row, not recompute it
    log.write_bytes(lines[0] + b"\n" + json.dumps(first).encode() + b"\n" + lines[2][: len(lines[2]) // 2])
    resumed = evaluate("tiny-random", synth, tmp_path, resume=True, **kw)
    assert resumed["summary"]["episodes"] == 2
    assert resumed["episodes"][0]["k4d"]["psnr"] == 99.0  # kept from the log
    assert resumed["episodes"][1]["k4d"]["psnr"] == pytest.approx(full["episodes"][1]["k4d"]["psnr"])  # re-run
    assert resumed["episodes"][1]["k4d"]["chamfer_l1"] == pytest.approx(full["episodes"][1]["k4d"]["chamfer_l1"])
    assert len([r for r in read_log(log) if r["kind"] == "episode"]) == 2
    from k4d_worldmodel.evaluate import read_episode_rows

    rows = read_episode_rows(tmp_path)  # what rescore_labels.py reads: the log's rows, the marker kept
    assert [r["name"] for r in rows] == [r["name"] for r in resumed["episodes"]] and rows[0]["k4d"]["psnr"] == 99.0
    (tmp_path / "episodes.jsonl").rename(tmp_path / "kept.jsonl")  # an old report without a log: metrics.json
    assert read_episode_rows(tmp_path)[1]["k4d"]["psnr"] == pytest.approx(resumed["episodes"][1]["k4d"]["psnr"])
    (tmp_path / "kept.jsonl").rename(tmp_path / "episodes.jsonl")
    with pytest.raises(FileNotFoundError, match="not a k4d eval output"):
        read_episode_rows(tmp_path / "nowhere")

    # another run's log is not silently mixed in
    with pytest.raises(ValueError, match=r"steps \(log 2, now 3\)"):
        evaluate("tiny-random", synth, tmp_path, resume=True, **{**kw, "steps": 3})
    # without --resume the log starts afresh
    evaluate("tiny-random", synth, tmp_path, **{**kw, "max_episodes": 1})
    assert [r["kind"] for r in read_log(log)] == ["run", "episode"]


def test_eval_records_and_switches_the_completion(synth, pmcond_pipe, tmp_path):
    """The tiny model has unreachable output directions: its report says the completion acted, the switch turns it
    off for that run only (the caller's pipeline keeps its setting), and the two runs' rollouts differ."""
    from k4d_worldmodel.evaluate import evaluate

    kw = dict(split="all", steps=2, pipe=pmcond_pipe, videos=0, progress=False, methods=("k4d",), max_episodes=1)
    on = evaluate("tiny-random", synth, tmp_path / "on", **kw)
    off = evaluate("tiny-random", synth, tmp_path / "off", complete_unreachable=False, **kw)
    assert on["header"]["unreachable_completed"] is True and off["header"]["unreachable_completed"] is False
    assert pmcond_pipe.complete_unreachable is True
    assert on["episodes"][0]["k4d"]["psnr"] != off["episodes"][0]["k4d"]["psnr"]
    with pytest.raises(ValueError, match="unreachable_completed"):  # a resumed log must be of the same sampling
        evaluate("tiny-random", synth, tmp_path / "on", resume=True, complete_unreachable=False, **kw)


def test_eval_flying_filter_is_recorded_and_acts_on_the_composites_only(synth, pmcond_pipe, tmp_path):
    """``flying_rel``: the composited method's saved cloud has the filter's holes among the model's pixels, the raw
    method's is the unfiltered run's, the header records the setting and a resume under another is refused."""
    from k4d_worldmodel.composite import model_pixels
    from k4d_worldmodel.evaluate import evaluate
    from k4d_worldmodel.training.data import open_dataset

    kw = dict(split="all", steps=2, pipe=pmcond_pipe, videos=0, progress=False, methods=("k4d", "k4d_swept"),
              max_episodes=1, save_rollouts=True)
    plain = evaluate("tiny-random", synth, tmp_path / "plain", flying_rel=None, **kw)
    filt = evaluate("tiny-random", synth, tmp_path / "filt", flying_rel=0.02, flying_mode="between", **kw)
    assert plain["header"]["flying_rel"] == 0.0 and filt["header"]["flying_rel"] == 0.02
    assert filt["header"]["flying_mode"] == "between"
    default = evaluate("tiny-random", synth, tmp_path / "default", **kw)  # the filter is on by default
    assert (default["header"]["flying_rel"], default["header"]["flying_mode"]) == (0.12, "either")
    ds = open_dataset(synth, pmcond_pipe.num_frames, pmcond_pipe.height, pmcond_pipe.width, split="all")
    name = ds[0]["name"].replace("/", "_")
    a, b = np.load(tmp_path / "plain" / "rollouts" / f"{name}.npz"), np.load(tmp_path / "filt" / "rollouts" / f"{name}.npz")
    np.testing.assert_array_equal(a["k4d_xyz"], b["k4d_xyz"])
    removed = np.isnan(b["k4d_swept_xyz"]).any(-1) & ~np.isnan(a["k4d_swept_xyz"]).any(-1)
    assert removed.any() and not (removed & ~model_pixels(ds[0]["robot_mask"], 2, "swept")).any()
    assert filt["episodes"][0]["k4d"]["psnr"] == plain["episodes"][0]["k4d"]["psnr"]
    with pytest.raises(ValueError, match="flying_rel"):
        evaluate("tiny-random", synth, tmp_path / "filt", resume=True, **kw)
    with pytest.raises(ValueError, match="flying_rel"):  # an unfiltered log is not resumed under the default
        evaluate("tiny-random", synth, tmp_path / "plain", resume=True, **kw)
    with pytest.raises(ValueError, match="flying_rel"):
        evaluate("tiny-random", synth, tmp_path / "bad", flying_rel=1.5, **kw)


def test_geometry_metrics_compare_both_sides_on_the_same_pixels_and_count_missing_points():
    """Above max_points valid pixels per frame (every 96 x 64 clip) a perfect prediction scores Chamfer 0 and
    F-score 1: both sides are drawn from one pixel subset (two independent draws left F about 0.7 for the
    truth itself). Pixels the prediction leaves without a point lower recall; a frame without any is F 0."""
    from k4d_worldmodel.evaluate import geometry_metrics

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:96]
    depth = 1.0 + 0.3 * rng.random((64, 96))
    frame = np.stack([(xx - 48) / 80 * depth, (yy - 32) / 80 * depth, depth], -1)
    gt = np.repeat(frame[None], 5, 0).astype(np.float32)
    gt[:, :4] = np.nan  # some pixels without depth
    assert geometry_metrics(gt.copy(), gt, max_points=4096) == {"chamfer_l1": 0.0, "chamfer_l2": 0.0, "fscore": 1.0}
    half = gt.copy()
    half[:, :, 48:] = np.nan  # the prediction has no point on the right half
    m = geometry_metrics(half, gt)
    assert 0.55 < m["fscore"] < 0.8 and m["chamfer_l1"] > 0.05
    none = np.full_like(gt, np.nan)
    m = geometry_metrics(none, gt)
    assert m["fscore"] == 0.0 and np.isnan(m["chamfer_l1"])


def test_skipped_episodes_are_named_and_a_resume_covers_only_what_is_asked(synth, pmcond_pipe, tmp_path,
                                                                             monkeypatch):
    """An episode that cannot be imagined is counted in the header and named in the report and metrics.json
    (no mean silently covers fewer episodes); a resumed run with max_episodes reports those episodes only."""
    import k4d_worldmodel.evaluate as E

    real = E.imagine

    def flaky(pipe, clip, *a, **k):
        if clip["name"] == "000000":
            raise ValueError("no robot pixel in the clip (simulated)")
        return real(pipe, clip, *a, **k)

    monkeypatch.setattr(E, "imagine", flaky)
    kw = dict(split="all", steps=1, pipe=pmcond_pipe, videos=0, progress=False, methods=("k4d", "copy_first"))
    r = E.evaluate("tiny", synth, tmp_path, **kw)
    n = len([p for p in Path(synth).rglob("*.npz")])
    assert r["header"]["skipped"] == 1 and r["skipped"][0]["name"] == "000000"
    assert r["summary"]["episodes"] == n - 1 == r["header"]["episodes"]
    assert "1 episode(s) could not be imagined" in (tmp_path / "report.md").read_text()
    monkeypatch.setattr(E, "imagine", real)
    r2 = E.evaluate("tiny", synth, tmp_path, resume=True, max_episodes=2, **kw)
    assert r2["summary"]["episodes"] == 2 and r2["header"]["skipped"] == 0
    assert sorted(x["name"] for x in r2["episodes"]) == ["000000", "000001"]


def _calibration_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "calibrate_zone_threshold.py"
    spec = importlib.util.spec_from_file_location("calibrate_zone_threshold", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_zone_threshold_is_chosen_on_one_run_and_applied_to_another(synth, pmcond_pipe, tmp_path):
    from k4d_worldmodel.evaluate import evaluate, read_episode_rows, zone_min_points

    kw = dict(split="all", steps=2, pipe=pmcond_pipe, videos=0, progress=False, methods=("k4d", "copy_first"))
    evaluate("tiny-random", synth, tmp_path / "calib", seed=1, **kw)
    evaluate("tiny-random", synth, tmp_path / "held", seed=2, **kw)
    mod = _calibration_script()
    rows = read_episode_rows(tmp_path / "held")
    default = zone_min_points(pmcond_pipe.height, pmcond_pipe.width)
    # the logged counts reproduce the logged answers at the default threshold
    again = mod.rejudge(rows, "k4d", default)
    assert [r["k4d"]["success_4d"] for r in again] == [r["k4d"]["success_4d"] for r in rows]
    out = tmp_path / "choice.json"
    assert mod.main(["--calib", str(tmp_path / "calib"), "--heldout", str(tmp_path / "held"), "--method", "k4d",
                     "--max-threshold", "20", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    tab = res["calib_table"]
    assert [t["threshold"] for t in tab] == list(range(1, 21)) and res["default_threshold"] == default
    assert max(t["agreement"] for t in tab) == next(t for t in tab if t["threshold"] == res["chosen_threshold"])[
        "agreement"]
    # the ceiling bounds both held-out judgements (it may pick its threshold on the held-out rows themselves)
    top = res["heldout_ceiling"]["best_agreement_on_itself"]
    assert top >= max(res["heldout_chosen"]["agreement_with_sim"], res["heldout_default"]["agreement_with_sim"])
    assert top == max(
        t["agreement"] for t in mod.table(rows, "k4d", range(1, 21)))
    fake = [{"sim_success": s, "k4d": {"zone_counts": [0, g]}, "gt_zone_counts": [0, 10 * s]}
            for s, g in ((True, 9), (True, 4), (False, 4), (False, 1))]
    assert mod.rank_separation(fake, [9, 4, 4, 1]) == pytest.approx(0.875)  # 3 of 4 pairs, one tie counts half
    assert mod.ceiling(fake, "k4d", range(1, 12))["rank_separation_truth"] == 1.0
    assert mod.rank_separation(fake[:2], [9, 4]) is None  # one outcome only
    # without --calib: each run's ceiling alone, the same figures as the held-out part of a calibration
    only = tmp_path / "ceilings.json"
    assert mod.main(["--heldout", str(tmp_path / "held"), str(tmp_path / "calib"), "--method", "k4d",
                     "--max-threshold", "20", "--json", str(only)]) == 0
    runs = json.loads(only.read_text())["runs"]
    assert [r["run"] for r in runs] == [str(tmp_path / "held"), str(tmp_path / "calib")]
    assert {k: runs[0][k] for k in res["heldout_ceiling"]} == res["heldout_ceiling"]
    assert runs[1]["best_agreement_on_itself"] == max(t["agreement"] for t in tab) and runs[1]["episodes"] == len(
        read_episode_rows(tmp_path / "calib"))
    with pytest.raises(SystemExit, match="one --heldout"):
        mod.main(["--calib", str(tmp_path / "calib"), "--heldout", str(tmp_path / "held"), str(tmp_path / "calib")])
    # a threshold no count reaches judges every held-out episode a failure: its rate is 0
    never = mod._success_summary(mod.rejudge(rows, "k4d", 10 ** 6), "k4d")
    assert never["overall"] == 0.0 and never["rate_difference"] == -never["sim_overall"]
    # k4d eval at the chosen threshold answers as the script's re-judgement does; the truth keeps the camera's
    chosen = res["chosen_threshold"]
    at = evaluate("tiny-random", synth, tmp_path / "at_chosen", seed=2, imagined_min_points=chosen, **kw)
    assert at["header"]["imagined_min_points"] == chosen and at["header"]["zone_min_points"] == default
    assert [r["k4d"]["success_4d"] for r in at["episodes"]] == \
        [r["k4d"]["success_4d"] for r in mod.rejudge(rows, "k4d", chosen)]
    assert [r["gt_success_4d"] for r in at["episodes"]] == [r["gt_success_4d"] for r in rows]
    with pytest.raises(ValueError, match="imagined_min_points"):  # a log of the other threshold is not resumed
        evaluate("tiny-random", synth, tmp_path / "held", seed=2, imagined_min_points=chosen, resume=True, **kw)
    with pytest.raises(ValueError, match="imagined_min_points"):
        evaluate("tiny-random", synth, tmp_path / "bad", imagined_min_points=0, **kw)
    # an older run without the counts, and runs of two models, are refused by name
    old = tmp_path / "old"
    old.mkdir()
    lines = (tmp_path / "held" / "episodes.jsonl").read_text().splitlines()
    stripped = []
    for line in lines:
        rec = json.loads(line)
        if rec.get("kind") == "episode":
            rec["row"]["k4d"].pop("zone_counts")
        stripped.append(json.dumps(rec))
    (old / "episodes.jsonl").write_text("\n".join(stripped) + "\n")
    (old / "metrics.json").write_text((tmp_path / "held" / "metrics.json").read_text())
    with pytest.raises(SystemExit, match="no zone_counts"):
        mod.main(["--calib", str(tmp_path / "calib"), "--heldout", str(old), "--method", "k4d"])
    other = json.loads((tmp_path / "held" / "metrics.json").read_text())
    other["header"]["checkpoint"] = "another-model"
    (old / "metrics.json").write_text(json.dumps(other))
    (old / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match="differ in model"):
        mod.main(["--calib", str(tmp_path / "calib"), "--heldout", str(old), "--method", "k4d"])


def test_flying_filter_is_chosen_on_saved_rollouts(synth, pmcond_pipe, tmp_path):
    """``benchmarks/calibrate_flying_filter.py`` re-scores a run's saved composite at every setting: its
    unfiltered row is the run's own (checked against the log), its choice obeys the flip and F-score limits, and
    a rollout that is not the run's, or a run filtered already, is refused by name."""
    import importlib.util

    from k4d_worldmodel.evaluate import evaluate

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "calibrate_flying_filter.py"
    spec = importlib.util.spec_from_file_location("calibrate_flying_filter", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kw = dict(split="all", steps=2, pipe=pmcond_pipe, videos=0, progress=False, save_rollouts=True,
              methods=("k4d", "k4d_swept", "copy_first"))
    run = evaluate("tiny-random", synth, tmp_path / "run", flying_rel=None, **kw)  # calibrated unfiltered
    out = tmp_path / "choice.json"
    fig = tmp_path / "fig.png"
    assert mod.main(["--run", str(tmp_path / "run"), "--rels", "0.02,0.1", "--json", str(out), "--figure",
                     str(fig)]) == 0
    res = json.loads(out.read_text())
    assert res["chosen"] is not None  # the tiny model's composite has removable points (either at 2 %)
    import imageio.v2 as imageio

    img = imageio.imread(fig)  # three panels side by side, 3x enlarged, removed points magenta
    assert img.shape == (3 * pmcond_pipe.height, 3 * (3 * pmcond_pipe.width + 4), 3)
    assert (img == (255, 0, 255)).all(-1).any()
    table = res["table"]
    assert [(t["mode"], t["rel"]) for t in table] == [("none", 0.0), ("between", 0.02), ("between", 0.1),
                                                      ("either", 0.02), ("either", 0.1)]
    logged = np.mean([r["k4d_swept"]["chamfer_l2"] for r in run["episodes"]])
    assert table[0]["chamfer_l2"] == pytest.approx(logged) and table[0]["flips"] == 0
    assert res["copy_first"]["chamfer_l2"] == pytest.approx(run["summary"]["methods"]["copy_first"]["chamfer_l2"])
    assert table[3]["chamfer_l2"] != table[0]["chamfer_l2"]  # "either" at 2 % removes points of the random model
    ok = [t for t in table[1:] if t["flips"] <= 2 and t["fscore"] >= table[0]["fscore"]]
    assert res["chosen"] == (min(ok, key=lambda t: (t["chamfer_l2"], t["flips"])) if ok else None)
    # a rollout that is not the run's is refused
    npz = sorted((tmp_path / "run" / "rollouts").glob("*.npz"))[0]
    arrays = dict(np.load(npz))
    arrays["k4d_swept_xyz"] = arrays["k4d_swept_xyz"] + 0.05
    np.savez_compressed(npz, **arrays)
    with pytest.raises(SystemExit, match="not this run's rollout"):
        mod.main(["--run", str(tmp_path / "run"), "--rels", "0.1"])
    evaluate("tiny-random", synth, tmp_path / "filtered", flying_rel=0.05, max_episodes=1, **kw)
    with pytest.raises(SystemExit, match="filtered already"):
        mod.main(["--run", str(tmp_path / "filtered")])
