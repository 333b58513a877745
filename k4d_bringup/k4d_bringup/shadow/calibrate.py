"""Choose the imagined side's point threshold (``ShadowConfig.imagined_min_points``) from a shadow log.

    recs = read_log("calib.jsonl")                  # episodes whose actual outcome is known
    table = threshold_table(recs, range(1, 31))     # per threshold: rates, differences, Pearson r, MMRV
    best = choose_threshold(table)                  # the row whose imagined rates match the actual ones best

A world model's lifted output smears a few points into the goal box where the real depth has none, so the count
that means "the object is there" can differ between the imagination and the camera. The log already holds every
chunk's imagined counts (``predicate.imagined.counts``, absolute), so any threshold can be applied again without
running the model: the predicate's own rule (``predicate.success_from_counts``) judges every chunk again, and an
episode takes its last evaluated chunk's answer, as the session does. ``choose_threshold`` picks the
threshold with the smallest mean over scenarios of |imagined - actual| pooled success rate (ties: the smaller
threshold). Calibrate on episodes other than those you then judge: this fits one number to the log.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable

import numpy as np

from .aggregate import episode_records, ranking, table3
from .predicate import RELATIVE_PREFIX, success_from_counts


def rescore(records: list[dict], imagined_min_points: int) -> list[dict]:
    """Copies of ``records`` with the imagined success of every chunk (from its logged counts) and episode (its
    last OK chunk's) recomputed for ``imagined_min_points``. ValueError when a chunk was counted relative to its
    first frame (``success_relative``: the baseline count is not in the log) or has no counts."""
    if int(imagined_min_points) < 1:
        raise ValueError(f"imagined_min_points must be >= 1, got {imagined_min_points!r}")
    out = copy.deepcopy(records)
    last: dict[tuple, dict] = {}
    for r in out:
        if r.get("kind") != "chunk" or r.get("status") != "ok":
            continue
        key = (r.get("episode_id"), r.get("mode", "live"))
        if key not in last or r.get("chunk_index", 0) >= last[key].get("chunk_index", 0):
            last[key] = r  # the episode's answer is its last evaluated chunk's, valid or not
        pred = (r.get("predicate") or {}).get("imagined") or {}
        if not pred.get("valid"):
            continue
        if str(pred.get("reason", "")).startswith(RELATIVE_PREFIX):
            raise ValueError(f"chunk {r.get('episode_id')}/{r.get('chunk_index')} was counted relative to its first "
                             "frame (success_relative): its baseline count is not logged; calibrate a log made "
                             "with success_relative false")
        counts = pred.get("counts") or []
        if not counts:
            raise ValueError(f"chunk {r.get('episode_id')}/{r.get('chunk_index')} has no imagined counts")
        r["imagined_success"], r["imagined_success_probability"] = success_from_counts(counts, imagined_min_points)
    for e in episode_records(out):
        c = last.get((e.get("episode_id"), e.get("mode", "live")))
        if c is not None and e.get("status") == "ok":
            e["imagined_success"] = c["imagined_success"]
            e["imagined_success_probability"] = c["imagined_success_probability"]
    return out


def threshold_table(records: list[dict], thresholds: Iterable[int]) -> list[dict]:
    """One row per threshold: per scenario (live policies) the pooled actual and imagined rates, their
    difference, Pearson r and MMRV across the policies; the largest |difference| of any (scenario, policy) cell;
    and the per-episode agreement of imagined with actual success."""
    rows = []
    for t in thresholds:
        recs = rescore(records, int(t))
        rank = ranking(recs)
        cells = [r for r in table3(recs) if r["mode"] == "live" and r["paired"]]
        eps = [e for e in episode_records(recs) if e.get("mode", "live") == "live" and e.get("status") == "ok"
               and e.get("has_actual") and e.get("imagined_valid", True)]
        rows.append({
            "imagined_min_points": int(t),
            "scenarios": {s: {k: d[k] for k in ("paired", "gt_rate", "imagined_rate", "diff", "pearson_r", "mmrv")}
                          for s, d in rank.items()},
            "mean_abs_scenario_diff": float(np.mean([abs(d["diff"]) for d in rank.values()])) if rank
            else math.nan,
            "max_abs_cell_diff": max((abs(c["diff"]) for c in cells), default=math.nan),
            "agreement": float(np.mean([bool(e["imagined_success"]) == bool(e["actual_success"]) for e in eps]))
            if eps else math.nan})
    return rows


def choose_threshold(table: list[dict]) -> dict:
    """The row with the smallest ``mean_abs_scenario_diff`` (ties: the smaller threshold); ValueError when no
    row has paired episodes."""
    usable = [r for r in table if math.isfinite(r["mean_abs_scenario_diff"])]
    if not usable:
        raise ValueError("no paired live episodes in the log (imagined and actual outcome both known)")
    return min(usable, key=lambda r: (round(r["mean_abs_scenario_diff"], 9), r["imagined_min_points"]))
