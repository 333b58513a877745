"""Scripted policies, failure injection and the ground-truth outcome classification (no rendering)."""

import numpy as np
import pytest


from k4d_bringup.sim.config import SimConfig  # noqa: E402
from k4d_bringup.sim.policies import (NoiseInjector, NoiseSpec, classify, make_policy, object_tilt_deg,  # noqa: E402
                                      run_episode)

C45 = float(np.sqrt(0.5))
UPRIGHT, ON_SIDE = (1.0, 0.0, 0.0, 0.0), (C45, C45, 0.0, 0.0)  # w, x, y, z; ON_SIDE: 90 degrees about base x


def test_classify_constructed_states():
    goal, r, rest = (0.3, 0.0), 0.05, 0.02
    start = (0.2, -0.15)
    # resting inside the zone, upright
    assert classify("pick_place", (0.31, 0.01, 0.02), start, goal, r, rest, 0.1, tilt_deg=0.0).label == "success"
    # inside the zone but still held in the air -> not a success; lifted -> near miss
    assert classify("pick_place", (0.31, 0.01, 0.12), start, goal, r, rest, 0.1, tilt_deg=0.0).label == "near_miss"
    # dropped on the way, never lifted, barely moved -> failure
    assert classify("pick_place", (0.2, -0.14, 0.02), start, goal, r, rest, 0.0, tilt_deg=0.0).label == "failure"
    # lifted but dropped far away -> near miss (it was grasped)
    assert classify("pick_place", (0.05, 0.2, 0.02), start, goal, r, rest, 0.05, tilt_deg=0.0).label == "near_miss"
    # rule 3: in the zone at the resting height but tilted past 20 degrees -> near miss; None = tilt not observed
    tilted = classify("pick_place", (0.31, 0.01, 0.02), start, goal, r, rest, 0.1, tilt_deg=25.0)
    assert tilted.label == "near_miss" and tilted.metrics["final_tilt_deg"] == 25.0
    assert classify("pick_place", (0.31, 0.01, 0.02), start, goal, r, rest, 0.1, tilt_deg=19.0).success
    assert classify("pick_place", (0.31, 0.01, 0.02), start, goal, r, rest, 0.1, tilt_deg=None).success
    # push: inside / moved more than halfway / not moved
    assert classify("push", (0.29, 0.02, 0.02), start, goal, r, rest, 0.0, tilt_deg=0.0).label == "success"
    assert classify("push", (0.27, -0.06, 0.02), start, goal, r, rest, 0.0, tilt_deg=0.0).label == "near_miss"
    assert classify("push", (0.2, -0.15, 0.02), start, goal, r, rest, 0.0, tilt_deg=0.0).label == "failure"
    # push, rule 2: above the zone but carried 9 cm up by the gripper -> no success; toppled in the zone -> success
    assert classify("push", (0.29, 0.02, 0.11), start, goal, r, rest, 0.09, tilt_deg=0.0).label == "near_miss"
    assert classify("push", (0.29, 0.02, 0.012), start, goal, r, rest, 0.0, tilt_deg=90.0).label == "success"
    with pytest.raises(ValueError, match="task"):
        classify("stack", (0, 0, 0), start, goal, r, rest, 0.0, tilt_deg=0.0)
    with pytest.raises(ValueError, match="tilt_deg"):
        classify("pick_place", (0.31, 0.01, 0.02), start, goal, r, rest, 0.1, tilt_deg=float("nan"))
    with pytest.raises(TypeError, match="tilt_deg"):  # every caller says what it knows of the orientation
        classify("pick_place", (0.31, 0.01, 0.02), start, goal, r, rest, 0.1)


def test_object_tilt():
    from scipy.spatial.transform import Rotation

    def wxyz(rot):
        x, y, z, w = rot.as_quat()
        return (w, x, y, z)

    assert object_tilt_deg(UPRIGHT, "cylinder") == 0.0
    assert object_tilt_deg(ON_SIDE, "cylinder") == pytest.approx(90.0)
    assert object_tilt_deg(wxyz(Rotation.from_euler("zyx", [1.0, 0.3, 0.0])), "cylinder") == pytest.approx(
        np.degrees(0.3))  # yaw does not tilt
    assert object_tilt_deg((0.0, 1.0, 0.0, 0.0), "cylinder") == pytest.approx(0.0)  # on its other end face
    assert object_tilt_deg((2.0, 0.0, 0.0, 0.0), "cylinder") == 0.0  # normalised
    # a cube stands on any face: tilt is measured to the nearest body axis
    assert object_tilt_deg(ON_SIDE, "cube") == pytest.approx(0.0, abs=1e-6)
    assert object_tilt_deg(wxyz(Rotation.from_euler("xyz", [90, 0, 37], degrees=True)), "cube") == pytest.approx(
        0.0, abs=1e-6)
    assert object_tilt_deg(wxyz(Rotation.from_euler("x", 45, degrees=True)), "cube") == pytest.approx(45.0)
    assert object_tilt_deg(wxyz(Rotation.from_euler("x", 100, degrees=True)), "cube") == pytest.approx(10.0)
    assert object_tilt_deg(wxyz(Rotation.from_euler("x", 100, degrees=True)), "cylinder") == pytest.approx(80.0)
    with pytest.raises(ValueError, match="not finite"):
        object_tilt_deg((float("nan"), 0, 0, 0), "cube")
    with pytest.raises(ValueError, match="zero norm"):
        object_tilt_deg((0, 0, 0, 0), "cylinder")
    with pytest.raises(ValueError, match=r"shape \(4,\).*\(3,\)"):
        object_tilt_deg((0, 0, 1), "cylinder")
    with pytest.raises(ValueError, match="kind"):
        object_tilt_deg(UPRIGHT, "sphere")


def _placed_in_zone(task: str, kind: str, size: tuple, quat_wxyz, z: float):
    """A simulated scene (seed 3, easy, no distractors) whose target -- replaced by a ``kind`` of ``size`` -- is put
    at the zone centre with orientation ``quat_wxyz`` and centre height ``z``, left to settle for 1 s and judged by
    ``TaskMonitor`` (started at the target's sampled place); returns (outcome, final centre height)."""
    import dataclasses

    from k4d_bringup.sim.config import CameraConfig
    from k4d_bringup.sim.policies import TaskMonitor
    from k4d_bringup.sim.scene import sample_layout
    from k4d_bringup.sim.workcell import YamSim

    cfg = SimConfig(task=task, shadows=False, camera=CameraConfig(width=32, height=24, fy=25.0))
    lay = sample_layout(cfg, 3)
    target = dataclasses.replace(lay.target, kind=kind, size=size)
    lay = dataclasses.replace(lay, objects=(target,) + lay.objects[1:], zone=dataclasses.replace(lay.zone, kind="zone"))
    sim = YamSim(cfg, layout=lay)
    monitor = TaskMonitor(sim)
    sim.set_object_pose(0, [*lay.zone.center_base[:2], z], quat_wxyz)
    sim.step_for(1.0)
    out = monitor.outcome(sim)
    final_z = float(sim.object_states()[0].pos_base[2])
    sim.close()
    return out, final_z


def test_toppled_cylinder_in_the_zone_is_no_pick_place_success():
    """Rule 3: the same cylinder (radius 1.6 cm, half height 2.5 cm) at the zone centre succeeds upright; lying on
    its side, its centre 0.9 cm lower than upright (inside rule 2's 1.5 cm tolerance), it is a near miss for
    pick_place and still a success for push; a cube rolled onto another face still succeeds."""
    size = (0.016, 0.025, 0.0)
    up, z_up = _placed_in_zone("pick_place", "cylinder", size, UPRIGHT, 0.025)
    assert up.label == "success", up
    assert up.metrics["final_tilt_deg"] < 2.0
    side, z_side = _placed_in_zone("pick_place", "cylinder", size, ON_SIDE, 0.016)
    assert abs(z_side - 0.025) < 0.015  # rule 2's height test alone would pass it
    assert side.label == "near_miss" and not side.success, side
    assert side.metrics["final_tilt_deg"] > 85.0
    pushed, _ = _placed_in_zone("push", "cylinder", size, ON_SIDE, 0.016)
    assert pushed.label == "success", pushed  # push: toppled in the zone counts
    cube, _ = _placed_in_zone("pick_place", "cube", (0.018, 0.018, 0.018), ON_SIDE, 0.018)
    assert cube.label == "success" and cube.metrics["final_tilt_deg"] < 2.0, cube


def test_noise_injector_accumulates_in_one_segment_and_persists():
    T = np.tile(np.eye(4), (30, 1, 1))
    T[:, 2, 3] = 0.2
    inj = NoiseInjector(NoiseSpec(sigma=1.0, segment=1), 30, np.random.default_rng(0))
    out = np.stack([inj(t) for t in T])
    off = out[:, :3, 3] - T[:, :3, 3]
    assert np.allclose(off[:10], 0)  # segment 0 untouched
    assert np.abs(off[10:20]).max() > 0.005  # noise accumulates inside segment 1
    np.testing.assert_allclose(off[20:], np.broadcast_to(off[19], off[20:].shape))  # the offset persists
    with pytest.raises(ValueError, match="sigma"):
        NoiseSpec(sigma=-1)


@pytest.mark.parametrize("task", ["pick_place", "push"])
def test_clean_demo_succeeds_and_big_noise_degrades(task):
    from k4d_bringup.sim.workcell import YamSim

    sim = YamSim(SimConfig(task=task), seed=3)
    policy = make_policy(sim)
    res = run_episode(sim, policy, NoiseSpec(sigma=0.0), np.random.default_rng(0))
    assert res.outcome.label == "success", res.outcome
    assert res.ik_failures == 0
    assert policy.act(sim) is None  # the path is exhausted
    labels = []
    for seed in range(3):
        sim = YamSim(SimConfig(task=task), seed=3)
        labels.append(run_episode(sim, make_policy(sim), NoiseSpec(sigma=3.0, segment=0),
                                  np.random.default_rng(seed)).outcome.label)
    assert labels.count("success") < 3, labels


def test_action_chunks():
    from k4d_bringup.sim.workcell import YamSim

    sim = YamSim(SimConfig(), seed=4)
    policy = make_policy(sim, dt=0.1, chunk_size=12)
    policy.reset(sim)
    chunks = []
    while (c := policy.act(sim)) is not None:
        chunks.append(c)
    assert all(len(c) == 12 for c in chunks[:-1]) and 1 <= len(chunks[-1]) <= 12
    assert chunks[0].T_base_tcp.shape[1:] == (4, 4) and chunks[0].dt == 0.1
    g = np.concatenate([c.gripper for c in chunks])
    assert g.max() == 1.0 and g.min() == 0.0  # opens, closes on the object, opens to release


def _rule1_push_meta(final_z: float, label: str = "success") -> dict:
    return {"name": "000003", "task": "push", "label": label, "success": label == "success", "near_miss": False,
            "metrics": {"d_start_m": 0.1, "d_final_m": 0.01, "max_lift_m": 0.09, "final_pos_base": [0.3, 0.0, final_z]},
            "objects": [{"kind": "cylinder", "size": [0.02, 0.021]}], "zone": {"center_base": [0.3, 0.0], "radius": 0.05}}


def _rule2_pick_place_meta(final_z: float = 0.018) -> dict:
    """A rule-2 pick-place success: its cylinder (radius 1.6 cm, half height 2.5 cm) ended in the zone 0.7 cm
    below its upright resting height; no tilt recorded."""
    return {"name": "000004", "task": "pick_place", "label": "success", "success": True, "near_miss": False,
            "label_rule": 2, "metrics": {"d_start_m": 0.2, "d_final_m": 0.01, "max_lift_m": 0.1,
                                         "final_pos_base": [0.3, 0.01, final_z]},
            "objects": [{"kind": "cylinder", "size": [0.016, 0.025, 0.0]}],
            "zone": {"center_base": [0.3, 0.0], "radius": 0.05}}


def _quats(final_target, frames: int = 3, objects: int = 2) -> np.ndarray:
    """``object_quat_wxyz`` (frames, objects, 4): everything upright, the target at the last frame ``final_target``."""
    q = np.tile(np.asarray(UPRIGHT), (frames, objects, 1))
    q[-1, 0] = final_target
    return q


def test_relabel_meta_applies_label_rule_2_to_older_episodes():
    from k4d_bringup.dataset.generate import relabel_meta
    from k4d_bringup.sim.policies import LABEL_RULE

    carried = relabel_meta(_rule1_push_meta(0.115))  # rule 1 called it a success
    assert carried["label"] == "near_miss" and carried["success"] is False and carried["relabelled"] is True
    assert carried["label_recorded"] == "success" and carried["label_rule"] == LABEL_RULE
    resting = relabel_meta(_rule1_push_meta(0.021))
    assert resting["success"] is True and "relabelled" not in resting and resting["label_rule"] == LABEL_RULE
    assert resting["metrics"]["final_tilt_deg"] is None  # a push needs no tilt; none was given
    current = dict(_rule1_push_meta(0.115), label_rule=LABEL_RULE)  # written by the current rule: kept as is
    assert relabel_meta(current) == current
    synthetic = {"task": "push", "success": True}  # nothing to recompute from
    assert relabel_meta(synthetic) == synthetic
    broken = _rule1_push_meta(0.115)
    broken["metrics"]["final_pos_base"] = [0.3, float("nan"), 0.1]
    with pytest.raises(ValueError, match="000003.*not finite"):
        relabel_meta(broken)


def test_relabel_meta_applies_label_rule_3_with_the_tilt_from_the_orientations():
    from k4d_bringup.dataset.generate import relabel_meta
    from k4d_bringup.sim.policies import LABEL_RULE

    assert LABEL_RULE == 3
    toppled = relabel_meta(_rule2_pick_place_meta(), _quats(ON_SIDE))
    assert toppled["label"] == "near_miss" and toppled["success"] is False and toppled["relabelled"] is True
    assert toppled["label_recorded"] == "success" and toppled["label_rule"] == 3
    assert toppled["metrics"]["final_tilt_deg"] == pytest.approx(90.0)
    assert _rule2_pick_place_meta()["metrics"].get("final_tilt_deg") is None  # the input is not modified
    upright = relabel_meta(_rule2_pick_place_meta(0.025), _quats(UPRIGHT))
    assert upright["success"] is True and "relabelled" not in upright and upright["label_rule"] == 3
    assert upright["metrics"]["final_tilt_deg"] == 0.0
    # only the target's last orientation counts (the second object lies on its side)
    q = _quats(UPRIGHT)
    q[:, 1] = ON_SIDE
    assert relabel_meta(_rule2_pick_place_meta(0.025), q)["success"] is True
    # a pick-place episode of rule 2 without its orientations cannot be relabelled
    with pytest.raises(ValueError, match="000004.*final_tilt_deg.*object_quat_wxyz"):
        relabel_meta(_rule2_pick_place_meta())
    with pytest.raises(ValueError, match=r"000004.*object_quat_wxyz must have shape \(T, n_objects, 4\)"):
        relabel_meta(_rule2_pick_place_meta(), np.tile(np.asarray(UPRIGHT), (3, 1)))
    with pytest.raises(ValueError, match="000004.*zero norm"):
        relabel_meta(_rule2_pick_place_meta(), _quats((0.0, 0.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match="000004.*not finite"):
        relabel_meta(_rule2_pick_place_meta(), _quats((float("nan"), 0.0, 0.0, 1.0)))
    # a rule-2 push keeps its label whatever the tilt, which is recorded when known
    push = dict(_rule2_pick_place_meta(), task="push")
    assert relabel_meta(push, _quats(ON_SIDE))["success"] is True
    assert relabel_meta(push, _quats(ON_SIDE))["metrics"]["final_tilt_deg"] == pytest.approx(90.0)


def test_load_episode_relabels(tmp_path):
    import json

    from k4d_bringup.dataset.generate import load_episode, load_meta

    K = np.array([[50.0, 0, 4], [0, 50.0, 3], [0, 0, 1]])
    arrays = dict(depth=np.ones((2, 6, 8), np.float32), K=K, robot_link=np.full((2, 6, 8), -1, np.int16))
    np.savez(tmp_path / "000003.npz", **arrays)
    (tmp_path / "000003.json").write_text(json.dumps(_rule1_push_meta(0.115)))
    ep = load_episode(tmp_path / "000003.npz")
    assert ep["meta"]["success"] is False and ep["meta"]["label_recorded"] == "success"
    assert json.loads((tmp_path / "000003.json").read_text())["success"] is True  # the file is not rewritten
    # a rule-2 pick-place episode: the tilt comes from the file's object orientations
    np.savez(tmp_path / "000004.npz", object_quat_wxyz=_quats(ON_SIDE, frames=2), **arrays)
    (tmp_path / "000004.json").write_text(json.dumps(_rule2_pick_place_meta()))
    for meta in (load_episode(tmp_path / "000004.npz")["meta"], load_meta(tmp_path / "000004.npz")):
        assert meta["label"] == "near_miss" and meta["label_recorded"] == "success"
        assert meta["metrics"]["final_tilt_deg"] == pytest.approx(90.0)
    assert load_meta(tmp_path / "000003") == ep["meta"] and load_meta(tmp_path / "000009.npz") == {}
    np.savez(tmp_path / "000005.npz", **arrays)  # no orientations stored: named, not guessed
    (tmp_path / "000005.json").write_text(json.dumps(dict(_rule2_pick_place_meta(), name="000005")))
    for load in (load_episode, load_meta):
        with pytest.raises(ValueError, match="000005.*object_quat_wxyz"):
            load(tmp_path / "000005.npz")


def test_clean_push_releases_the_object_in_the_zone():
    """Regression: with the closed fingers rising after the push, this episode's object (seed 11, index 3 of the
    generator) was wedged between them and carried 9 cm up; rule 1 called that a success."""
    from k4d_bringup.dataset.generate import GenerateOptions, episode_spec
    from k4d_bringup.sim.workcell import YamSim

    opts = GenerateOptions(scenario="easy", sigmas=(0.0,), tasks=("push",))
    spec = episode_spec(3, 11, opts)
    sim = YamSim(opts.sim_cfg("push"), seed=spec["scene_seed"])
    res = run_episode(sim, make_policy(sim), NoiseSpec(sigma=0.0), np.random.default_rng(spec["noise_seed"]))
    final = res.outcome.metrics["final_pos_base"]
    assert final[2] - sim.layout.target.half_height < 0.015, final
    assert res.outcome.label == "success", res.outcome
