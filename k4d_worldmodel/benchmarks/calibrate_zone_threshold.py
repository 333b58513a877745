"""Choose the imagined side's zone threshold of `k4d eval`'s success predicate on a calibration run, and judge a
held-out run with it.

    python k4d_worldmodel/benchmarks/calibrate_zone_threshold.py --calib EVAL_CALIB --heldout EVAL_HELDOUT \
        --method k4d_swept --json out.json
    python k4d_worldmodel/benchmarks/calibrate_zone_threshold.py --heldout RUN [RUN ...] --json out.json

`k4d eval` judges an imagined 4D rollout successful when the goal zone holds at least `zone_min_points` more
points in its last frame than in its first (`evaluate.success_zone_4d`, whose box rule on the two counts is
`evaluate.zone_gain_success`; 12 at 192 x 128, set on the ground truth).
A model's lifted output smears or loses points, so the count that means "the object is there" can differ on
the imagined side. Every row of a run since the twenty-ninth session logs the two counts (`zone_counts`), so any
threshold can be applied again without running the model. This script picks, on the calibration run's episodes
(seeds other than the held-out ones), the threshold with the highest agreement with the simulator's labels (ties:
the smaller |imagined - simulator| success rate, then the threshold nearest the default), and reports the
held-out run's summary (`evaluate.summarize`: agreement with its 95 % interval, rate difference, Pearson r and
MMRV over the noise levels) at the default and at the chosen threshold. Nothing is fitted on the held-out run.
It also reports that run's ceiling: the best agreement any threshold reaches on the held-out episodes themselves
(an upper bound on every threshold rule, not a choice), and how well the imagined count gain ranks successes
above failures beside the ground truth's gain (`rank_separation`, the ROC AUC). Without ``--calib`` it reports
only that, for each run given to ``--heldout`` (e.g. one model on its own training episodes and on held-out
ones: does it separate the outcomes of clips it was trained on any better?).

The standing check of label rule 3 is applied to the imagined side only when the run asked for it
(`--imagined-upright`); such runs are refused here, because their rows do not log the slab's counts.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path


def _rows(out: Path, method: str) -> tuple[list[dict], dict]:
    from k4d_worldmodel.evaluate import read_episode_rows

    header = json.loads((out / "metrics.json").read_text())["header"] if (out / "metrics.json").is_file() else {}
    if "imagined" in str(header.get("zone_upright_check", "")):
        raise SystemExit(f"{out}: made with --imagined-upright; its rows lack the slab counts, so a threshold "
                         "cannot be applied again")
    rows = [r for r in read_episode_rows(out) if "sim_success" in r and method in r]
    if not rows:
        raise SystemExit(f"{out}: no episode with a simulator label and method {method!r}")
    missing = [r["name"] for r in rows if "zone_counts" not in r[method]]
    if missing:
        raise SystemExit(f"{out}: {len(missing)} rows of {method!r} have no zone_counts (a run older than this "
                         f"script, e.g. {missing[0]}); run k4d eval again")
    return rows, header


def rejudge(rows: list[dict], method: str, threshold: int) -> list[dict]:
    """Copies of ``rows`` with ``method``'s ``success_4d`` recomputed from its logged zone counts at
    ``threshold``."""
    from k4d_worldmodel.evaluate import zone_gain_success

    out = copy.deepcopy(rows)
    for r in out:
        r[method]["success_4d"] = zone_gain_success(r[method]["zone_counts"], threshold)
    return out


def table(rows: list[dict], method: str, thresholds) -> list[dict]:
    """Agreement with the simulator and success-rate difference of ``method`` at each threshold."""
    import numpy as np

    real = np.array([r["sim_success"] for r in rows], bool)
    out = []
    for k in thresholds:
        pred = np.array([r[method]["success_4d"] for r in rejudge(rows, method, k)], bool)
        out.append({"threshold": int(k), "agreement": float(np.mean(pred == real)),
                    "rate_difference": float(pred.mean() - real.mean())})
    return out


def choose(tab: list[dict], default: int) -> dict:
    return max(tab, key=lambda t: (round(t["agreement"], 9), -round(abs(t["rate_difference"]), 9),
                                   -abs(t["threshold"] - default)))


def rank_separation(rows: list[dict], gains: list[int]) -> float | None:
    """Probability that a simulated success has a larger zone-count gain than a simulated failure (ties count
    half; the ROC AUC of the gain as a score): 0.5 says the count carries nothing about the outcome, 1 that some
    threshold separates them all. None when the rows hold only one outcome."""
    from scipy.stats import mannwhitneyu

    pos = [g for g, r in zip(gains, rows) if r["sim_success"]]
    neg = [g for g, r in zip(gains, rows) if not r["sim_success"]]
    if not pos or not neg:
        return None
    return float(mannwhitneyu(pos, neg).statistic) / (len(pos) * len(neg))


def ceiling(rows: list[dict], method: str, thresholds) -> dict:
    """What no threshold rule can beat on ``rows``: the best agreement of any threshold chosen on these very rows
    (an upper bound, never a choice), and the rank separation of the imagined count gain beside the ground
    truth's (`gt_zone_counts`)."""
    tab = table(rows, method, thresholds)
    top = max(tab, key=lambda t: t["agreement"])
    gain = [int(r[method]["zone_counts"][1]) - int(r[method]["zone_counts"][0]) for r in rows]
    truth = [int(r["gt_zone_counts"][1]) - int(r["gt_zone_counts"][0]) for r in rows if "gt_zone_counts" in r]
    return {"best_agreement_on_itself": top["agreement"], "at_threshold": top["threshold"],
            "rank_separation_imagined": rank_separation(rows, gain),
            "rank_separation_truth": rank_separation(rows, truth) if len(truth) == len(rows) else None}


def ceiling_line(label: str, c: dict) -> str:
    """One printed line of a `ceiling` result."""
    sep = {k: "-" if c[f"rank_separation_{k}"] is None else f"{c[f'rank_separation_{k}']:.3f}"
           for k in ("imagined", "truth")}
    return (f"{label}: no threshold agrees in more than {c['best_agreement_on_itself']:.3f} (threshold "
            f"{c['at_threshold']}, chosen on these episodes themselves); rank separation of the count gain "
            f"{sep['imagined']} imagined, {sep['truth']} on the ground truth")


def _success_summary(rows: list[dict], method: str) -> dict:
    from k4d_worldmodel.evaluate import summarize

    s = summarize(rows, [method])["success"]
    keep = ("overall", "rate_difference", "agreement_with_sim", "agreement_with_sim_ci95", "pearson_r", "mmrv",
            "rates")
    return {"sim_overall": s["sim_overall"], "sim_rates": s["sim"],
            **{k: s[method][k] for k in keep if k in s[method]}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calib", type=Path, help="k4d eval output folder of the calibration episodes (without it: only "
                   "each --heldout run's ceiling and rank separation)")
    p.add_argument("--heldout", required=True, type=Path, nargs="+",
                   help="k4d eval output folder of the held-out episodes (several only without --calib)")
    p.add_argument("--method", default="k4d_swept", help="the method whose threshold is chosen (default k4d_swept)")
    p.add_argument("--max-threshold", type=int, default=60, help="largest threshold tried (default 60)")
    p.add_argument("--json", type=Path, help="write the table, the choice and both summaries here")
    args = p.parse_args(argv)

    from k4d_worldmodel.evaluate import zone_min_points

    thresholds = range(1, args.max_threshold + 1)
    if args.calib is None:
        runs = []
        for run in args.heldout:
            rows, header = _rows(run, args.method)
            c = ceiling(rows, args.method, thresholds)
            runs.append({"run": str(run), "checkpoint": header.get("checkpoint"), "episodes": len(rows), **c})
            print(ceiling_line(f"{run} ({len(rows)} episodes)", c))
        if args.json:
            args.json.write_text(json.dumps({"method": args.method, "runs": runs}, indent=1, default=float))
        return 0
    if len(args.heldout) != 1:
        raise SystemExit("with --calib, give one --heldout run: the one the chosen threshold is judged on")
    heldout = args.heldout[0]
    calib, h_calib = _rows(args.calib, args.method)
    held, h_held = _rows(heldout, args.method)
    sizes = {h.get("size") for h in (h_calib, h_held)}
    if len(sizes) != 1 or h_calib.get("checkpoint") != h_held.get("checkpoint"):
        raise SystemExit(f"the runs differ in model or size ({h_calib.get('checkpoint')} {h_calib.get('size')} "
                         f"against {h_held.get('checkpoint')} {h_held.get('size')}): calibrate the model you judge")
    hgt, wid = (int(v) for v in str(h_held["size"]).split("x"))
    default = zone_min_points(hgt, wid)
    tab = table(calib, args.method, thresholds)
    best = choose(tab, default)
    result = {"method": args.method, "calib": str(args.calib), "heldout": str(heldout),
              "default_threshold": default, "chosen_threshold": best["threshold"], "calib_table": tab,
              "calib_episodes": len(calib), "heldout_episodes": len(held),
              "heldout_default": _success_summary(rejudge(held, args.method, default), args.method),
              "heldout_chosen": _success_summary(rejudge(held, args.method, best["threshold"]), args.method),
              "heldout_ceiling": ceiling(held, args.method, thresholds)}
    at_default = next(t for t in tab if t["threshold"] == default)
    print(f"calibration ({len(calib)} episodes): default threshold {default}: agreement "
          f"{at_default['agreement']:.3f}, rate difference {at_default['rate_difference']:+.3f}; chosen "
          f"{best['threshold']}: agreement {best['agreement']:.3f}, rate difference {best['rate_difference']:+.3f}")
    for name in ("heldout_default", "heldout_chosen"):
        s = result[name]
        lo, hi = s["agreement_with_sim_ci95"]
        print(f"held-out ({len(held)} episodes), {name.split('_')[1]} threshold: agreement "
              f"{s['agreement_with_sim']:.3f} ({lo:.2f}-{hi:.2f}), rate difference {s['rate_difference']:+.3f}, "
              f"Pearson {s.get('pearson_r', float('nan')):.3f}, MMRV {s.get('mmrv', float('nan')):.3f}")
    print(ceiling_line("held-out ceiling", result["heldout_ceiling"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
