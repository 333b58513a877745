# Copyright 2026 k4d developers. Apache-2.0.
"""Re-score `k4d eval` logs with the simulator's current outcome labels (``sim.policies.LABEL_RULE``).

    .venv/bin/python k4d_worldmodel/benchmarks/rescore_labels.py --data /work/data/sub48_hr \\
        k4d_worldmodel/benchmarks/results/eval_heldout48b_v2 ... [--json out.json]

A log's rows keep the label each episode had when it was evaluated (``sim_success``). Label rule 2 changed the
push outcome (a push whose target the gripper carried off above the zone is no longer a success) and rule 3 the
pick-place outcome (a target toppled in the zone is no longer a success), so logs made under an older rule
compare the imagined outcomes with partly wrong truths. This reads each log's ``episodes.jsonl``,
(or the rows in ``metrics.json`` where an old log kept no ``episodes.jsonl``), checks that every row's recorded
label is the one the episode's file records (so the log and ``--data`` hold the same episodes, whatever their
image size), swaps in the episode's label by the current rule (``dataset.generate.load_meta``: the ``.json`` and,
for the tilt rule 3 needs, the ``.npz``'s object orientations) and recomputes the summary
(``evaluate.summarize``). It writes ``metrics_label_rule<LABEL_RULE>.json`` beside each log's ``metrics.json`` and
prints agreement, rate difference, Pearson r and MMRV per method before and after. The model outputs and every
other metric are unchanged; nothing is re-run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from k4d_bringup.dataset.generate import episode_paths, load_meta
from k4d_bringup.sim.policies import LABEL_RULE
from k4d_worldmodel.evaluate import read_episode_rows, summarize


def episode_labels(data: str | Path) -> dict[str, tuple[bool, bool]]:
    """``name -> (label as recorded in the file, label by the current rule)`` for every episode of ``data``
    (names as ``k4d eval`` writes them: ``<scenario folder>/<n>`` or ``<n>``)."""
    root = Path(data)
    out = {}
    for p in episode_paths(root):
        meta_file = p.with_suffix(".json")
        if not meta_file.is_file():
            continue
        recorded = json.loads(meta_file.read_text())["success"]
        rel = p.relative_to(root).with_suffix("").as_posix()
        out[rel] = (bool(recorded), bool(load_meta(p)["success"]))
    return out


def rescore(log_dir: str | Path, labels: dict[str, tuple[bool, bool]]) -> dict:
    log_dir = Path(log_dir)
    rows = read_episode_rows(log_dir)
    if not rows:
        raise ValueError(f"{log_dir}: no episode rows")
    missing = [r["name"] for r in rows if r["name"] not in labels]
    if missing:
        raise ValueError(f"{log_dir}: {len(missing)} episodes are not in the data (first: {missing[0]})")
    mismatched = [r["name"] for r in rows if "sim_success" in r and bool(r["sim_success"]) != labels[r["name"]][0]]
    if mismatched:
        raise ValueError(f"{log_dir}: {len(mismatched)} rows' labels differ from the data's recorded labels "
                         f"(first: {mismatched[0]}); the log was made on other episodes")
    methods = [k for k, v in rows[0].items() if isinstance(v, dict) and "psnr" in v]
    before = summarize(rows, methods)
    new_rows = [dict(r, sim_success=labels[r["name"]][1]) for r in rows]
    after = summarize(new_rows, methods)
    changed = sum(1 for r in rows if labels[r["name"]][0] != labels[r["name"]][1])
    result = {"log": str(log_dir), "label_rule": LABEL_RULE, "episodes": len(rows), "relabelled": changed,
              "summary": after}
    (log_dir / f"metrics_label_rule{LABEL_RULE}.json").write_text(json.dumps(result, indent=1))
    result["before"] = before
    return result


def _brief(succ: dict, m: str) -> str:
    e = succ[m]
    return (f"agree {e['agreement_with_sim']:.3f} diff {e['rate_difference']:+.3f} "
            f"r {e.get('pearson_r', float('nan')):.2f} mmrv {e.get('mmrv', float('nan')):.3f}")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+", help="k4d eval output folders (with episodes.jsonl)")
    p.add_argument("--data", required=True, help="the episodes the logs were made on (any image size)")
    p.add_argument("--json", help="also write every log's before/after summary here")
    args = p.parse_args(argv)
    labels = episode_labels(args.data)
    results = []
    for log in args.logs:
        res = rescore(log, labels)
        results.append(res)
        b, a = res["before"]["success"], res["summary"]["success"]
        print(f"{log}: {res['relabelled']} of {res['episodes']} relabelled; simulator success "
              f"{b['sim_overall']:.3f} -> {a['sim_overall']:.3f}; GT 4D agreement {b['gt_4d_agreement_with_sim']:.3f}"
              f" -> {a['gt_4d_agreement_with_sim']:.3f}")
        for m in res["summary"]["methods"]:
            print(f"  {m:12s} as logged: {_brief(b, m)} | rule {LABEL_RULE}: {_brief(a, m)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
