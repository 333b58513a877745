"""The shadow region predicate's standing check (``top_min_z`` / ``top_min_points``, ``ShadowConfig``'s
``success_top_*``, an episode's ``success_top``) on ray-cast pointmaps of a cylinder standing or lying in a goal
zone, and the geometric rule that sets it for simulated pick-place targets (``upright_top_height``)."""
import json
import math

import numpy as np
import pytest

from k4d_bringup.shadow.config import ShadowConfig
from k4d_bringup.shadow.predicate import (RegionPredicate, make_predicate, min_points_for, success_from_counts,
                                          success_from_logged, upright_top_height)
from k4d_bringup.shadow.session import ShadowSession, parse_episode_event

H, W, F = 64, 96, 80.0  # the simulated episodes' image (96 x 64, fy 80)
ZONE_XY, ZONE_R = (0.30, 0.0), 0.05
R, HH = 0.016, 0.025  # cylinder radius and half height (m): lying, its top is at 2 R = 3.2 cm; standing 2 HH = 5 cm
TOP_Z = R + HH  # halfway: 4.1 cm


def _camera(eye=(0.75, 0.25, 0.45), target=(0.30, 0.0, 0.02)) -> np.ndarray:
    """T_base_cam (4, 4) of a camera optical frame (x right, y down, z forward) at ``eye`` looking at ``target``."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = np.stack([x, np.cross(z, x), z], axis=1), eye
    return T


def _render(T_base_cam: np.ndarray, cylinders=()) -> np.ndarray:
    """Camera-frame pointmap (H, W, 3) of the table (plane z = 0) and closed cylinders ``(centre (3,), unit axis
    (3,))`` of radius R and half height HH, ray-cast per pixel (nearest hit; NaN where a ray hits nothing)."""
    v, u = np.mgrid[0:H, 0:W] + 0.5
    d_cam = np.stack([(u - W / 2) / F, (v - H / 2) / F, np.ones((H, W))], -1)  # z = 1: t is the depth
    d = d_cam @ T_base_cam[:3, :3].T
    o = T_base_cam[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_best = np.where(d[..., 2] < 0, -o[2] / d[..., 2], np.inf)  # the table
        for c, a in cylinders:
            c, a = np.asarray(c, float), np.asarray(a, float)
            oc = o - c
            dp = d - (d @ a)[..., None] * a  # ray direction and origin perpendicular to the axis
            wp = oc - (oc @ a) * a
            qa, qb, qc = (dp * dp).sum(-1), 2 * (dp @ wp), wp @ wp - R * R
            disc = qb * qb - 4 * qa * qc
            for sign in (-1.0, 1.0):  # the side wall
                t = (-qb + sign * np.sqrt(np.maximum(disc, 0))) / (2 * qa)
                along = oc @ a + t * (d @ a)
                ok = (disc >= 0) & (t > 0) & (np.abs(along) <= HH)
                t_best = np.where(ok & (t < t_best), t, t_best)
            for end in (-HH, HH):  # the end faces
                t = (end - oc @ a) / (d @ a)
                p = o + t[..., None] * d - c
                radial = p - (p @ a)[..., None] * a
                ok = (t > 0) & (np.linalg.norm(radial, axis=-1) <= R)
                t_best = np.where(ok & (t < t_best), t, t_best)
    xyz = d_cam * t_best[..., None]
    xyz[~np.isfinite(t_best)] = np.nan
    return xyz


STANDING = ((ZONE_XY[0], ZONE_XY[1], HH), (0.0, 0.0, 1.0))
LYING = ((ZONE_XY[0], ZONE_XY[1], R), (0.0, 1.0, 0.0))


def _zone(T, **kw) -> RegionPredicate:
    """The goal zone as k4d shadow bench and k4d eval count it: 6 mm to object height + 1.5 cm."""
    kw = {"min_points": min_points_for(H, W), "window": 1, "robot_margin_px": 0, **kw}
    return RegionPredicate.zone(T, ZONE_XY, ZONE_R, 0.006, 2 * HH + 0.015, **kw)


def test_standing_check_tells_a_standing_cylinder_from_a_lying_one():
    T = _camera()
    standing, lying, empty = _render(T, [STANDING]), _render(T, [LYING]), _render(T)
    slab = {"top_min_z": TOP_Z, "top_min_points": min_points_for(H, W, at_reference=1)}
    box, checked = _zone(T), _zone(T, **slab)
    assert box.count(empty) == 0 and box.count(standing) >= 3 and box.count(lying) >= 3
    # The box alone: both fill it (the gap label rule 3 closed in the simulator).
    assert box.evaluate(standing).success and box.evaluate(lying).success
    up, down = checked.evaluate(standing), checked.evaluate(lying)
    assert up.valid and up.success and up.top_counts[0] >= 1 and up.counts == box.evaluate(standing).counts
    assert down.valid and not down.success and down.top_counts == [0] and down.counts[0] >= 3
    assert checked.top_count(standing) == up.top_counts[0] and checked.top_count(lying) == 0
    # The logged form: the slab's counts and rule when the check is on; the old keys alone when it is off.
    d = up.to_dict()
    assert d["top_counts"] == up.top_counts and d["top_min_z"] == TOP_Z and d["top_min_points"] == 1
    assert "standing check" in d["reason"] and success_from_logged(d, box.min_points) == (True, 1.0)
    assert success_from_logged(down.to_dict(), box.min_points) == (False, 0.0)
    assert set(box.evaluate(lying).to_dict()) == {"valid", "success", "probability", "counts", "reason"}
    assert box.evaluate(lying).reason == ""
    # A window of frames: the probability is the fraction of frames passing both counts.
    res = _zone(T, window=3, **slab).evaluate(np.stack([lying, standing, standing]))
    assert res.success and res.probability == pytest.approx(2 / 3) and res.top_counts[0] == 0


def test_standing_check_counts_against_the_baseline_frame():
    """With a baseline frame both counts are relative to it: a cylinder standing there from the start and a second
    one laid down beside it add box points but no slab points, so the frame fails; a slab threshold the standing
    one reaches over an empty first frame passes."""
    T = _camera()
    slab = {"top_min_z": TOP_Z, "top_min_points": 1}
    pred = _zone(T, **slab)
    empty, standing = _render(T), _render(T, [STANDING])
    beside = ((ZONE_XY[0] - 0.025, ZONE_XY[1] - 0.01, R), (1.0, 0.0, 0.0))
    both = _render(T, [STANDING, beside])
    res = pred.evaluate(standing[None], baseline=(empty, None))
    assert res.success and res.baseline_count == 0 and res.top_baseline_count == 0
    res = pred.evaluate(both[None], baseline=(standing, None))
    assert res.counts[0] - res.baseline_count >= pred.min_points  # the box count alone would pass
    assert res.top_counts[0] == res.top_baseline_count and not res.success
    assert res.reason.startswith("relative to ") and "in the standing slab" in res.reason
    d = res.to_dict()
    assert d["baseline_count"] == res.baseline_count and d["top_baseline_count"] == res.top_baseline_count
    assert success_from_logged(d, pred.min_points) == (False, 0.0)
    assert _zone(T).evaluate(both[None], baseline=(standing, None)).success  # no check: success
    # A relative result logged before the baseline count was recorded cannot be judged again.
    with pytest.raises(ValueError, match="relative"):
        success_from_logged({"valid": True, "counts": [9], "reason": "relative to 3 points in the first frame"}, 2)


def test_success_from_counts_with_the_slab():
    assert success_from_counts([5, 5, 5], 3) == (True, 1.0)
    assert success_from_counts([5, 5, 5], 3, top_counts=[0, 2, 2], top_min_points=2) == (True, pytest.approx(2 / 3))
    assert success_from_counts([5, 5, 5], 3, top_counts=[3, 1, 1], top_min_points=2, top_baseline=1)[0] is False
    with pytest.raises(ValueError, match="top_min_points"):
        success_from_counts([5], 3, top_counts=[1])
    with pytest.raises(ValueError, match="one count per frame"):
        success_from_counts([5, 5], 3, top_counts=[1], top_min_points=1)
    with pytest.raises(ValueError, match="not valid"):
        success_from_logged({"valid": False, "reason": "no depth frames"}, 3)


@pytest.mark.parametrize("kw,match", [
    ({"top_min_z": 0.04}, "top_min_points must be given with top_min_z"),
    ({"top_min_points": 2}, "top_min_z must be given with top_min_points"),
    ({"top_min_z": 0.006, "top_min_points": 1}, "top_min_z = 0.006 must lie inside"),
    ({"top_min_z": 0.2, "top_min_points": 1}, "top_min_z = 0.2 must lie inside"),
    ({"top_min_z": math.nan, "top_min_points": 1}, "top_min_z must be a finite height"),
    ({"top_min_z": True, "top_min_points": 1}, "top_min_z must be a finite height"),
    ({"top_min_z": 0.04, "top_min_points": 0}, "top_min_points must be an integer >= 1"),
    ({"top_min_z": 0.04, "top_min_points": 1.5}, "top_min_points must be an integer >= 1"),
    ({"top_min_z": 0.04, "top_min_points": True}, "top_min_points must be an integer >= 1"),
])
def test_standing_check_parameters_are_validated(kw, match):
    with pytest.raises(ValueError, match=match):
        _zone(_camera(), **kw)


def test_top_count_needs_the_check():
    with pytest.raises(ValueError, match="standing check"):
        _zone(_camera()).top_count(_render(_camera()))


def _cfg(**kw) -> ShadowConfig:
    return ShadowConfig(num_frames=9, success_predicate="region", success_region_min=[0.2, -0.1, 0.006],
                        success_region_max=[0.4, 0.1, 0.065], success_window_frames=1, **kw)


def test_shadow_config_standing_check():
    cfg = _cfg(success_top_min_height_m=TOP_Z, success_top_min_points=2)
    pred = make_predicate(cfg, _camera())
    assert (pred.top_min_z, pred.top_min_points) == (TOP_Z, 2) and pred.standing
    assert make_predicate(cfg, _camera(), imagined=True).top_min_points is None  # the camera's side only
    both = _cfg(success_top_min_height_m=TOP_Z, success_top_min_points=2, imagined_standing_check=True)
    assert make_predicate(both, _camera(), imagined=True).top_min_points == 2  # asked of the imagination too
    assert not make_predicate(cfg, _camera(), top=None).standing  # an episode that turns it off
    assert make_predicate(cfg, _camera(), top=(0.03, 5)).top_min_z == 0.03
    off = make_predicate(_cfg(), _camera())
    assert not off.standing and off.top_min_points is None  # default: off, the box alone
    for kw, match in (({"success_top_min_height_m": -0.01}, "success_top_min_height_m"),
                      ({"success_top_min_height_m": math.inf}, "success_top_min_height_m"),
                      ({"success_top_min_points": 0}, "success_top_min_points"),
                      ({"success_top_min_points": True}, "success_top_min_points"),
                      ({"success_top_min_height_m": 0.07}, "success_top_min_height_m must lie inside"),
                      ({"success_top_min_height_m": 0.006}, "success_top_min_height_m must lie inside")):
        with pytest.raises(ValueError, match=match):
            _cfg(**kw)
    ShadowConfig(success_top_min_height_m=0.5)  # predicate 'none': no region to check it against


def test_upright_top_height_is_k4d_evals_rule():
    assert upright_top_height("pick_place", "cylinder", [R, HH]) == pytest.approx(R + HH)
    assert upright_top_height("pick_place", "cylinder", (0.014, 0.035, 0.0)) == pytest.approx(0.049)
    assert upright_top_height("push", "cylinder", [R, HH]) is None  # a toppled pushed target counts
    assert upright_top_height("pick_place", "cube", [0.02, 0.02, 0.02]) is None  # upright on any face
    assert upright_top_height("pick_place", "cylinder", [0.02, 0.022]) is None  # h - r = 2 mm < 3 mm
    assert upright_top_height("pick_place", "cylinder", [0.02, 0.0235]) == pytest.approx(0.0435)
    for args, match in ((("lift", "cylinder", [R, HH]), "task"), (("push", "sphere", [R]), "kind"),
                        (("pick_place", "cylinder", [R]), "size"), (("pick_place", "cylinder", [R, -HH]), "size"),
                        (("pick_place", "cube", [0.02, 0.02]), "size"), (("push", "cube", None), "size")):
        with pytest.raises(ValueError, match=match):
            upright_top_height(*args)


def test_episode_event_success_top():
    d = parse_episode_event(json.dumps({"event": "start", "success_top": {"min_z": 0.04, "min_points": 3}}))
    assert d["success_top"] == (0.04, 3)
    assert parse_episode_event(json.dumps({"event": "start", "success_top": {"min_z": 0.04}}))["success_top"] \
        == (0.04, None)
    assert parse_episode_event(json.dumps({"event": "start", "success_top": None}))["success_top"] is None
    for bad, match in (({"min_z": "high"}, "success_top must be"), ({"min_points": 3}, "success_top must be"),
                       ({"min_z": 0.04, "z": 1}, "success_top must be"), (0.04, "success_top must be"),
                       ({"min_z": 0.04, "min_points": 0}, "min_points must be an integer >= 1")):
        with pytest.raises(ValueError, match=match):
            parse_episode_event(json.dumps({"event": "start", "success_top": bad}))


def test_session_episode_standing_check():
    """An episode's standing check: the configured one unless its start event sets its own (min_points defaulting
    to the configured one) or null; one outside the episode's region is refused before anything changes."""
    s = ShadowSession(_cfg(success_top_min_height_m=TOP_Z, success_top_min_points=2), None, lambda _r: None)

    def start(**kw):
        s.on_episode_event(json.dumps({"event": "start", **kw}), 1)
        return s.episode

    assert start().top == (TOP_Z, 2)
    assert start(success_top=None).top is None
    assert start(success_top={"min_z": 0.03}).top == (0.03, 2)
    ep = start(success_top={"min_z": 0.03, "min_points": 4}, success_region={"min": [0, 0, 0.01], "max": [1, 1, 0.1]})
    assert ep.top == (0.03, 4)
    with pytest.raises(ValueError, match="inside the episode's success region's height range"):
        start(success_top={"min_z": 0.2})
    with pytest.raises(ValueError, match="inside the episode's success region's height range"):
        start(success_region={"min": [0, 0, 0.05], "max": [1, 1, 0.1]})  # the configured 4.1 cm is below it
    assert s.episode is ep  # the refused events opened nothing
