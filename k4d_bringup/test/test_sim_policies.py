"""Scripted policies, failure injection and the ground-truth outcome classification (no rendering)."""

import numpy as np
import pytest


from k4d_bringup.sim.config import SimConfig  # noqa: E402
from k4d_bringup.sim.policies import NoiseInjector, NoiseSpec, classify, make_policy, run_episode  # noqa: E402


def test_classify_constructed_states():
    goal, r, rest = (0.3, 0.0), 0.05, 0.02
    start = (0.2, -0.15)
    # resting inside the zone
    assert classify("pick_place", (0.31, 0.01, 0.02), start, goal, r, rest, 0.1).label == "success"
    # inside the zone but still held in the air -> not a success; lifted -> near miss
    assert classify("pick_place", (0.31, 0.01, 0.12), start, goal, r, rest, 0.1).label == "near_miss"
    # dropped on the way, never lifted, barely moved -> failure
    assert classify("pick_place", (0.2, -0.14, 0.02), start, goal, r, rest, 0.0).label == "failure"
    # lifted but dropped far away -> near miss (it was grasped)
    assert classify("pick_place", (0.05, 0.2, 0.02), start, goal, r, rest, 0.05).label == "near_miss"
    # push: inside / moved more than halfway / not moved
    assert classify("push", (0.29, 0.02, 0.02), start, goal, r, rest, 0.0).label == "success"
    assert classify("push", (0.27, -0.06, 0.02), start, goal, r, rest, 0.0).label == "near_miss"
    assert classify("push", (0.2, -0.15, 0.02), start, goal, r, rest, 0.0).label == "failure"
    with pytest.raises(ValueError, match="task"):
        classify("stack", (0, 0, 0), start, goal, r, rest, 0.0)


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
