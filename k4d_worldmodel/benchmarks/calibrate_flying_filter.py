"""Choose the flying-point filter of the composited rollout on a calibration run's saved rollouts.

    k4d eval --checkpoint CKPT --data CALIB --split all --out RUN --methods k4d,k4d_swept,copy_first \
        --save-rollouts --flying-rel 0
    python k4d_worldmodel/benchmarks/calibrate_flying_filter.py --run RUN --json out.json

A small model's depth is blurred where the robot was: at the edge between the arm and the floor behind it, or
where the robot uncovers the background, it leaves points between the near surface and the far one that lie on
neither ("flying pixels"). They cost little in Chamfer L1 and much in Chamfer L2, which squares the distance.
`composite.flying_points` flags such points among the pixels the model produced (the composite's active pixels
off the robot; measured and kinematic points are never touched); the filtered composite leaves them NaN, as a
depth camera's own filter does.

For every setting of the grid (mode x relative jump) this script filters the run's saved composite
(`<method>_xyz` of `rollouts/*.npz`), scores it as `k4d eval` does (`evaluate.geometry_metrics`, the zone
predicate `evaluate.success_zone_4d`), and picks, among the settings that change at most `--max-flips` of the
unfiltered predicate's answers and do not lower the F-score, the one with the lowest Chamfer L2. The unfiltered
scores are recomputed too and must match the run's logged ones (a check that the rollouts are the run's).
Nothing here is fitted on a held-out run: judge the choice with `k4d eval --flying-rel R --flying-mode M` there.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def filtered(xyz: np.ndarray, robot_mask: np.ndarray, margin_px: int, region: str, rel: float,
             mode: str) -> np.ndarray:
    """``xyz`` (a composite of ``region``) with the flying points of its model-produced pixels set to NaN."""
    from k4d_worldmodel.composite import flying_points, model_pixels

    out = np.array(xyz, dtype=np.float32, copy=True)
    out[flying_points(out, rel, mode, where=model_pixels(robot_mask, margin_px, region))] = np.nan
    return out


def write_figure(path: Path, clip: dict, xyz: np.ndarray, region: str, margin_px: int, rel: float, mode: str,
                 scale: int = 3) -> None:
    """PNG of the frame with the most removed points: the truth's range, the composite's, and the filtered
    composite's with the removed points magenta (one colour scale; black = no point)."""
    import imageio.v2 as imageio

    from k4d_kinematics.overlay import depth_colormap
    from k4d_worldmodel.composite import flying_points, model_pixels

    removed = flying_points(xyz, rel, mode, where=model_pixels(clip["robot_mask"], margin_px, region))
    t = int(np.argmax(removed.sum(axis=(1, 2))))
    ranges = [np.linalg.norm(a, axis=-1) for a in (clip["world_xyz"][t], xyz[t], np.where(removed[t, ..., None],
                                                                                           np.nan, xyz[t]))]
    finite = ranges[0][np.isfinite(ranges[0])]
    lo, hi = (np.percentile(finite, 2), np.percentile(finite, 98)) if finite.size else (0.0, 1.0)
    panels = [depth_colormap(r, lo, hi) for r in ranges]
    panels[2][removed[t]] = (255, 0, 255)
    gap = np.full((panels[0].shape[0], 2, 3), 255, np.uint8)
    img = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, np.repeat(np.repeat(img, scale, 0), scale, 1))


def score(xyz: np.ndarray, clip: dict, info: dict | None, upright: bool) -> dict:
    from k4d_worldmodel.evaluate import geometry_metrics, success_zone_4d

    row = dict(geometry_metrics(xyz, clip["world_xyz"]))
    if info is not None:
        row["success_4d"] = bool(success_zone_4d(xyz, clip["robot_mask"], info, upright=upright))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a k4d eval folder made with --save-rollouts")
    ap.add_argument("--method", default="k4d_swept", choices=("k4d_swept", "k4d_static"))
    ap.add_argument("--rels", default="0.02,0.03,0.05,0.08,0.12", help="relative jumps to try (comma list)")
    ap.add_argument("--modes", default="between,either")
    ap.add_argument("--margin-px", type=int, default=2, help="the composite's margin (k4d eval: 2)")
    ap.add_argument("--max-flips", type=int, default=2, help="answers a setting may change (default 2)")
    ap.add_argument("--json", help="write the table and the choice here")
    ap.add_argument("--figure", help="write a PNG of the episode the choice helps most: range of the truth, of the "
                                     "composite, and of the filtered composite with the removed points in magenta")
    args = ap.parse_args(argv)

    from k4d_worldmodel.evaluate import object_info, read_episode_rows
    from k4d_worldmodel.training.data import open_dataset

    run = Path(args.run)
    header = json.loads((run / "metrics.json").read_text())["header"]
    region = {"k4d_swept": "swept", "k4d_static": "current"}[args.method]
    if "imagined" in str(header.get("zone_upright_check", "")):
        raise SystemExit(f"{run}: made with --imagined-upright; score it without (this script does not)")
    if header.get("flying_rel"):
        raise SystemExit(f"{run}: its composites are filtered already (flying_rel {header['flying_rel']})")
    h, w = (int(v) for v in header["size"].split("x"))
    ds = open_dataset(header["data"], int(header["frames"]), h, w, split=header["split"])
    index = {n: i for i, n in enumerate(ds.names)}
    rows = [r for r in read_episode_rows(run) if args.method in r and "sim_success" in r]
    if not rows:
        raise SystemExit(f"{run}: no row with a simulator label and method {args.method!r}")
    settings = [(m, float(r)) for m in args.modes.split(",") for r in args.rels.split(",")]
    per = {s: [] for s in [("none", 0.0)] + settings}
    from tqdm.auto import tqdm

    real = []
    for row in tqdm(rows, desc="episodes"):
        npz = run / "rollouts" / f"{row['name'].replace('/', '_')}.npz"
        if not npz.is_file():
            raise SystemExit(f"{npz}: missing; the run was not made with --save-rollouts")
        clip = ds[index[row["name"]]]
        info = object_info(clip)
        xyz = np.load(npz)[f"{args.method}_xyz"]
        base = score(xyz, clip, info, upright=False)
        logged = row[args.method]
        if abs(base["chamfer_l2"] - logged["chamfer_l2"]) > 1e-6 or base.get("success_4d") != logged.get("success_4d"):
            raise SystemExit(f"{row['name']}: the saved rollout scores chamfer_l2 {base['chamfer_l2']:.6f} / "
                             f"success {base.get('success_4d')}, the log {logged['chamfer_l2']:.6f} / "
                             f"{logged.get('success_4d')}: not this run's rollout")
        per[("none", 0.0)].append(base)
        for mode, rel in settings:
            per[(mode, rel)].append(score(filtered(xyz, clip["robot_mask"], args.margin_px, region, rel, mode),
                                          clip, info, upright=False))
        real.append(bool(row["sim_success"]))
    real = np.array(real)
    base_answers = np.array([r["success_4d"] for r in per[("none", 0.0)]])
    table = []
    for (mode, rel), scored in per.items():
        answers = np.array([r["success_4d"] for r in scored])
        table.append({"mode": mode, "rel": rel,
                      **{m: float(np.nanmean([r[m] for r in scored])) for m in ("chamfer_l1", "chamfer_l2", "fscore")},
                      "agreement": float(np.mean(answers == real)), "flips": int(np.sum(answers != base_answers))})
    copy = {m: float(np.nanmean([r["copy_first"][m] for r in rows if "copy_first" in r]))
            for m in ("chamfer_l1", "chamfer_l2", "fscore")} if all("copy_first" in r for r in rows) else None
    none = table[0]
    ok = [t for t in table[1:] if t["flips"] <= args.max_flips and t["fscore"] >= none["fscore"]]
    chosen = min(ok, key=lambda t: (t["chamfer_l2"], t["flips"])) if ok else None
    for t in table:
        print(f"{t['mode']:>8} {t['rel']:.2f}  L1 {t['chamfer_l1']:.5f}  L2 {t['chamfer_l2']:.6f}  "
              f"F {t['fscore']:.4f}  agreement {t['agreement']:.3f}  flips {t['flips']}")
    if copy:
        print(f"copy_first      L1 {copy['chamfer_l1']:.5f}  L2 {copy['chamfer_l2']:.6f}  F {copy['fscore']:.4f}")
    print("chosen:", None if chosen is None else f"{chosen['mode']} {chosen['rel']}")
    if args.figure and chosen is not None:
        k = int(np.argmax([a["chamfer_l2"] - b["chamfer_l2"] for a, b in
                           zip(per[("none", 0.0)], per[(chosen["mode"], chosen["rel"])])]))
        clip = ds[index[rows[k]["name"]]]
        xyz = np.load(run / "rollouts" / f"{rows[k]['name'].replace('/', '_')}.npz")[f"{args.method}_xyz"]
        write_figure(Path(args.figure), clip, xyz, region, args.margin_px, chosen["rel"], chosen["mode"])
        print(f"figure: {args.figure} ({rows[k]['name']})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"run": str(run), "checkpoint": header.get("checkpoint"), "data": header.get("data"),
             "method": args.method, "episodes": len(rows), "max_flips": args.max_flips, "table": table,
             "copy_first": copy, "chosen": chosen}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
