"""Aggregation of shadow results: Table-3 success rates, Pearson r / MMRV across policies, calibration.

    records = read_log("log.jsonl")
    rows = table3(records)              # [{"scenario", "policy", "mode", "episodes", "gt_rate", "imagined_rate", ...}]
    rank = ranking(records)             # {scenario: {"policies", "real", "imagined", "pearson_r", "mmrv",
                                        #             "paired", "gt_rate", "imagined_rate", "diff"}}
    cal = calibration_of(records)       # reliability bins, ECE, Brier

Only episode records count (``kind == "episode"``). A Table-3 row is one (scenario, policy, mode); its rates
are over the *paired* episodes: evaluated OK, with a determinable imagined outcome (metric imagination and a
success predicate: ``imagined_valid``) and with an actual outcome (an end label, or the depth predicate), so both rates describe the same episodes, as in Kinema4D Table 3. For a
candidate row the actual outcome is the live policy's in the same episodes (the candidate never ran), so
its "GT" column is the reference it is compared against, not its own success. Pearson r and MMRV are
computed per scenario over the live policies' rows (SimplerEnv's definitions, ``metrics``), next to the
scenario's pooled rates: GT and imagined success over all its live paired episodes, whatever the policy (a
scenario's row of Kinema4D's Table 3, when the policies are its evaluation's mix).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from .metrics import calibration, mmrv, pearson_r


def episode_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("kind") == "episode"]


def chunk_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("kind") == "chunk"]


def _paired(r: dict) -> bool:
    """Evaluated OK, imagined success determinable (metric imagination + predicate) and actual outcome known."""
    return r.get("status") == "ok" and bool(r.get("has_actual")) and bool(r.get("imagined_valid", True))


def table3(records: list[dict]) -> list[dict]:
    groups: "OrderedDict[tuple, list]" = OrderedDict()
    for r in episode_records(records):
        groups.setdefault((r.get("scenario", ""), r.get("policy", ""), r.get("mode", "live")), []).append(r)
    rows = []
    for (scenario, policy, mode), rs in groups.items():
        paired = [r for r in rs if _paired(r)]
        known = [r for r in rs if r.get("has_actual")]
        gt = float(np.mean([bool(r["actual_success"]) for r in paired])) if paired else float("nan")
        im = float(np.mean([bool(r["imagined_success"]) for r in paired])) if paired else float("nan")
        probs = [r.get("imagined_success_probability") for r in paired]
        probs = [p for p in probs if p is not None and math.isfinite(p)]
        rows.append({"scenario": scenario, "policy": policy, "mode": mode, "episodes": len(rs),
                     "paired": len(paired), "failed": sum(r.get("status") == "failed_to_evaluate" for r in rs),
                     "gt_rate": gt, "imagined_rate": im, "actual_known": len(known),
                     "actual_rate_all": float(np.mean([bool(r["actual_success"]) for r in known])) if known
                     else float("nan"),
                     "imagined_undeterminable": sum(r.get("status") == "ok" and not r.get("imagined_valid", True)
                                                    for r in rs),
                     "mean_probability": float(np.mean(probs)) if probs else float("nan"),
                     "diff": im - gt if paired else float("nan")})
    return rows


def ranking(records: list[dict], rate: str = "success") -> dict:
    """Per scenario, across its live policies. ``rate="probability"``: a policy's imagined rate is the mean
    imagined success probability of its paired episodes (``mean_probability``) instead of the share judged
    successful; Pearson r, MMRV and the pooled difference then compare those."""
    if rate not in ("success", "probability"):
        raise ValueError(f"rate must be 'success' or 'probability', got {rate!r}")
    key = "imagined_rate" if rate == "success" else "mean_probability"
    out: dict = {}
    weights: dict[str, list[int]] = {}
    for row in table3(records):
        if row["mode"] != "live" or not row["paired"]:
            continue
        d = out.setdefault(row["scenario"], {"policies": [], "real": [], "imagined": []})
        d["policies"].append(row["policy"])
        d["real"].append(row["gt_rate"])
        d["imagined"].append(row[key])
        weights.setdefault(row["scenario"], []).append(row["paired"])
    for scenario, d in out.items():
        d["pearson_r"] = pearson_r(d["real"], d["imagined"])
        d["mmrv"] = mmrv(d["real"], d["imagined"])
        w = weights[scenario]  # pooled: each policy's rate weighed by its paired episodes
        d["paired"] = int(sum(w))
        d["gt_rate"] = float(np.average(d["real"], weights=w))
        d["imagined_rate"] = float(np.average(d["imagined"], weights=w))
        d["diff"] = d["imagined_rate"] - d["gt_rate"]
    return out


def calibration_of(records: list[dict], bins: int = 5) -> dict:
    eps = [r for r in episode_records(records) if _paired(r) and r.get("mode") == "live"]
    prob = [r.get("imagined_success_probability") for r in eps]
    prob = [float("nan") if p is None else float(p) for p in prob]
    return calibration(prob, [bool(r["actual_success"]) for r in eps], bins)


def chunk_summary(records: list[dict]) -> dict:
    cs = chunk_records(records)

    def mean(key):
        v = [r.get(key) for r in cs if r.get("status") == "ok" and r.get("mode") == "live"]
        v = [x for x in v if x is not None and math.isfinite(x)]
        return float(np.mean(v)) if v else float("nan")

    return {"chunks": len(cs), "ok": sum(r.get("status") == "ok" for r in cs),
            "skipped": sum(r.get("status") == "skipped" for r in cs),
            "failed_to_evaluate": sum(r.get("status") == "failed_to_evaluate" for r in cs),
            "candidate": sum(r.get("mode") == "candidate" for r in cs),
            "psnr_db": mean("psnr_db"), "ssim": mean("ssim"), "depth_mae_m": mean("depth_mae_m"),
            "imagine_latency_s": mean("imagine_latency_s")}
