"""Choose the imagined side's point threshold (``ShadowConfig.imagined_min_points``) from a shadow log.

    recs = read_log("calib.jsonl")                  # episodes whose actual outcome is known
    table = threshold_table(recs, range(1, 31))     # per threshold: rates, differences, Pearson r, MMRV
    best = choose_threshold(table)                  # the row whose imagined rates match the actual ones best

A world model's lifted output smears a few points into the goal box where the real depth has none, so the count
that means "the object is there" can differ between the imagination and the camera. The log already holds every
chunk's imagined counts (``predicate.imagined.counts``, absolute), so any threshold can be applied again without
running the model: the predicate's own rule (``predicate.success_from_logged``: the box counts, the baseline
frame's count of a relative log and the standing check as logged) judges every chunk again, and an
episode takes its last evaluated chunk's answer, as the session does. ``choose_threshold`` picks the
threshold with the smallest mean over scenarios of |imagined - actual| pooled success rate (ties: the smaller
threshold). Calibrate on episodes other than those you then judge: this fits one number to the log.

A calibrated success probability instead of a threshold (Platt scaling):

    fit = fit_probability(read_log("calib.jsonl"))   # P(success) = sigmoid(a + b * log(1 + last-frame count))
    judged = apply_probability(read_log("other.jsonl"), fit)   # imagined_success_probability replaced
    ranking(judged, rate="probability")              # imagined rates = mean calibrated probability

The logistic model is fitted by maximum likelihood on the live paired episodes' actual outcomes (their last
evaluated chunk's imagined count in its last frame). It leaves ``imagined_success`` as it was, so the
per-episode answer and the hard-threshold Table 3 stay; what changes is the probability, which the report's
reliability diagram and the probability-rate columns show.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable, Optional

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from .aggregate import _paired, episode_records, ranking, table3
from .predicate import RELATIVE_PREFIX, success_from_logged


def rescore(records: list[dict], imagined_min_points: int) -> list[dict]:
    """Copies of ``records`` with the imagined success of every chunk (from its logged predicate result) and
    episode (its last OK chunk's) recomputed for ``imagined_min_points``: ``predicate.success_from_logged``, so a
    relative count keeps its logged baseline and a standing check its logged slab. ValueError naming the chunk when
    its result has no counts or was counted relative to a frame whose count the log lacks (older logs)."""
    if int(imagined_min_points) < 1:
        raise ValueError(f"imagined_min_points must be >= 1, got {imagined_min_points!r}")
    out = copy.deepcopy(records)
    for r in out:
        if r.get("kind") == "chunk" and r.get("status") == "ok":
            pred = (r.get("predicate") or {}).get("imagined") or {}
            if not pred.get("valid"):
                continue
            if not pred.get("counts"):
                raise ValueError(f"chunk {r.get('episode_id')}/{r.get('chunk_index')} has no imagined counts")
            try:
                r["imagined_success"], r["imagined_success_probability"] = success_from_logged(
                    pred, int(imagined_min_points))
            except ValueError as exc:
                raise ValueError(f"chunk {r.get('episode_id')}/{r.get('chunk_index')}: {exc}; calibrate a log made "
                                 "with success_relative false, or one written since baseline counts are logged") \
                    from None
    _episodes_take_last_chunk(out, ("imagined_success", "imagined_success_probability"))
    return out


def _imagined_counts(chunk: dict) -> Optional[list]:
    """The logged imagined counts of an OK chunk; None when its imagined predicate was not valid. ValueError
    when it was counted relative to its first frame (the baseline count is not logged) or has no counts."""
    pred = (chunk.get("predicate") or {}).get("imagined") or {}
    if not pred.get("valid"):
        return None
    if str(pred.get("reason", "")).startswith(RELATIVE_PREFIX):
        raise ValueError(f"chunk {chunk.get('episode_id')}/{chunk.get('chunk_index')} was counted relative to its "
                         "first frame (success_relative): its baseline count is not logged; calibrate a log made "
                         "with success_relative false")
    counts = pred.get("counts") or []
    if not counts:
        raise ValueError(f"chunk {chunk.get('episode_id')}/{chunk.get('chunk_index')} has no imagined counts")
    return list(counts)


def _last_ok_chunks(records: list[dict]) -> dict[tuple, dict]:
    """(episode_id, mode) -> that episode's OK chunk of the highest index."""
    last: dict[tuple, dict] = {}
    for r in records:
        if r.get("kind") != "chunk" or r.get("status") != "ok":
            continue
        key = (r.get("episode_id"), r.get("mode", "live"))
        if key not in last or r.get("chunk_index", 0) >= last[key].get("chunk_index", 0):
            last[key] = r
    return last


def _episodes_take_last_chunk(records: list[dict], keys: tuple) -> None:
    """An OK episode's answer is its last evaluated chunk's, as in the session: copy ``keys`` from it (in place)."""
    last = _last_ok_chunks(records)
    for e in episode_records(records):
        c = last.get((e.get("episode_id"), e.get("mode", "live")))
        if c is not None and e.get("status") == "ok":
            for k in keys:
                if k in c:
                    e[k] = c[k]


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


PROBABILITY_FEATURE = "log1p_last_frame_count"


def _check_fit(fit: dict) -> tuple[float, float]:
    """(intercept, slope) of a ``fit_probability`` result; ValueError naming what is wrong with it."""
    if not isinstance(fit, dict) or fit.get("feature") != PROBABILITY_FEATURE:
        got = fit.get("feature") if isinstance(fit, dict) else type(fit).__name__
        raise ValueError(f"not a probability fit of feature {PROBABILITY_FEATURE!r}: got {got!r}")
    try:
        a, b = float(fit["intercept"]), float(fit["slope"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"probability fit without a numeric intercept and slope: {exc}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"probability fit with a non-finite intercept or slope: {a}, {b}")
    return a, b


def probability_of(count: int, fit: dict) -> float:
    """The calibrated success probability of an imagined zone count."""
    a, b = _check_fit(fit)
    return float(expit(a + b * math.log1p(max(int(count), 0))))


def fit_probability(records: list[dict]) -> dict:
    """Logistic fit of the actual outcome on log(1 + imagined count in the last frame) over the live paired
    episodes; ValueError when fewer than 10 episodes or only one outcome is present."""
    last = _last_ok_chunks(records)
    xs, ys, models, composites = [], [], set(), set()
    for e in episode_records(records):
        if e.get("mode", "live") != "live" or not _paired(e):
            continue
        c = last.get((e.get("episode_id"), "live"))
        counts = _imagined_counts(c) if c is not None else None
        if counts is None:
            continue
        xs.append(math.log1p(counts[-1]))
        ys.append(float(bool(e["actual_success"])))
        models.add(str(c.get("model_id") or ""))
        composites.add(str(c.get("composite") or ""))
    if len(xs) < 10:
        raise ValueError(f"need at least 10 live paired episodes with imagined counts to fit a probability, got "
                         f"{len(xs)}")
    x, y = np.asarray(xs), np.asarray(ys)
    if y.min() == y.max():
        raise ValueError("every episode in the log has the same actual outcome: a probability cannot be fitted")

    def nll(w):
        z = w[0] + w[1] * x
        return float(np.sum(np.logaddexp(0.0, z) - y * z))

    def grad(w):
        r = expit(w[0] + w[1] * x) - y
        return np.array([r.sum(), (r * x).sum()])

    res = minimize(nll, np.zeros(2), jac=grad, method="BFGS")
    p = expit(res.x[0] + res.x[1] * x)
    return {"feature": PROBABILITY_FEATURE, "intercept": float(res.x[0]), "slope": float(res.x[1]),
            "episodes": int(len(x)), "success_rate": float(y.mean()), "log_loss": float(res.fun / len(x)),
            "brier": float(np.mean((p - y) ** 2)), "converged": bool(res.success),
            # what it was fitted on: apply_probability refuses logs of other models or composites
            "model_ids": sorted(m for m in models if m), "composites": sorted(c for c in composites if c)}


def check_provenance(records: list[dict], fit: dict) -> None:
    """ValueError when ``records`` hold imaginations of a model (``model_id``) or a composite (``composite``) that
    ``fit`` was not fitted on: the imagined count means another thing there. Fields a fit or a chunk does not
    record (fits and logs made before they existed, a served model's composite) are not compared."""
    for key, field, what in (("model_ids", "model_id", "model"), ("composites", "composite", "composite")):
        allowed = set(fit.get(key) or [])
        if not allowed:
            continue
        seen = {str(r.get(field)) for r in records if r.get("kind") == "chunk" and r.get("status") == "ok"
                and r.get(field)}
        other = sorted(seen - allowed)
        if other:
            raise ValueError(f"the probability fit was fitted on imaginations of {what} {sorted(allowed)}, but this "
                             f"log holds {what} {other}; fit it again on a log of the same {what} "
                             "(k4d shadow calibrate --probability)")


def apply_probability(records: list[dict], fit: dict) -> list[dict]:
    """Copies of ``records`` whose chunks and episodes carry the calibrated ``imagined_success_probability``
    (an episode: its last OK chunk's); chunks without a valid imagined prediction keep theirs. ValueError for a
    malformed fit, or one fitted on another model or composite (``check_provenance``)."""
    _check_fit(fit)
    check_provenance(records, fit)
    out = copy.deepcopy(records)
    for r in out:
        if r.get("kind") == "chunk" and r.get("status") == "ok":
            counts = _imagined_counts(r)
            if counts is not None:
                r["imagined_success_probability"] = probability_of(counts[-1], fit)
                r["probability_fit"] = PROBABILITY_FEATURE
    _episodes_take_last_chunk(out, ("imagined_success_probability", "probability_fit"))
    return out
