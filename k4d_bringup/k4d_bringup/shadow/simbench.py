"""Shadow-mode evaluation of simulated episodes in batch (``k4d shadow bench``): the must-show numbers.

    k4d dataset generate --episodes 90 --seed 4000 --scenario easy --sigmas 0,0.6,1.2 --tasks pick_place \\
        --frames 17 --width 96 --height 64 --fy 80 --out /tmp/shadow/easy        # + medium, hard
    k4d shadow bench /tmp/shadow --checkpoint k4d_worldmodel/checkpoints/k4d-yam-sim --log /tmp/shadow.jsonl
    k4d shadow report /tmp/shadow.jsonl --out /tmp/shadow_report

Each episode of a ``k4d dataset generate`` folder (or of its scenario sub-folders) is fed to the SAME
``ShadowSession`` as the live node, with the episode's time as the clock: an episode start event (scenario;
policy = ``sigma=<noise level>``, the scripted policy's quality; the episode's own goal zone as the success
region), the executed joint trajectory as one live action chunk, the camera frames (RGB + depth + joint state)
as they were recorded, and an end event with the simulator's success label. The world model imagines the chunk
from the frame at its start (in process, ``EngineImaginer``: the imagine node's engine), then the session scores
it against the recorded frames and applies the region predicate to the imagined metric pointmaps. The JSONL log
is the node's format, so ``k4d shadow report`` writes Table 3, Pearson r and MMRV across the policies.

Success region: the zone is a disc of radius r around its centre; the box is the inscribed square
(centre +- r / sqrt 2) from 6 mm above the table to the object's height + 1.5 cm, so an object carried above the
zone does not count. Standing check (``zone_top``, on unless ``--upright off``): the end event's label (label rule
3, ``sim.policies``) asks a pick-place target to end upright, and a cylinder toppled in the zone fills the box as
well as a standing one; so a pick-place cylinder's start event also carries ``success_top``, the slab of the box
above ``r + h`` (``predicate.upright_top_height``: halfway between the top of the cylinder lying, 2 r, and
standing, 2 h; none for push, cubes and cylinders less than 3 mm taller than wide), which a frame must also fill
with ``success_top_min_points`` points: the rule of ``k4d eval``'s ``success_zone_4d``. Like ``k4d eval`` it asks
the measured side (the recorded depth) for the slab, and the imagined side only with ``--imagined-upright on``
(``ShadowConfig.imagined_standing_check``): the shipped model's lifted pointmaps left the slab empty on 57 of 64
standing cylinders whose box they filled, and with the check on its imagined rates fell up to 0.63 below the true
ones (270 episodes, seeds 4000-4002).
``success_min_points`` (3 at 96 x 64 pixels, scaled with the model's image area by default:
``predicate.min_points_for``), ``success_top_min_points`` (1 at 96 x 64, ``predicate.standing_min_points_for``:
4 at 192 x 128) and the window come from the ShadowConfig.
``--relative on`` (``ShadowConfig.success_relative``) counts the region relative to the chunk's first frame, on
the imagined and on the real side alike; ``--imagined-min-points N`` gives the imagined side its own threshold
(``ShadowConfig.imagined_min_points``, chosen with ``k4d shadow calibrate`` on other episodes); ``--register off``
scores the world model's lift without the still-scene registration (``WorldModelConfig.metric_register``).
Throughput: the returned summary has ``chunks_per_min`` (imagination + scoring wall time only; episodes were
simulated beforehand).

``--served`` sends every chunk instead to a running imagine node through its ``/k4d/imagine`` action, over DDS
(``ActionImaginer``, the client ``k4d shadow replay`` uses): the deployment where the world model sits on a GPU
workstation. The client does not know the model, so ``--frames`` must be the model's frame count and
``--min-points`` its threshold (``--top-min-points`` defaults to a third of it, rounded, at least 1).
``benchmarks/bench_shadow_dds.py`` runs both ways on the same episodes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .config import ShadowConfig
from .log import ShadowLog
from .predicate import upright_top_height
from .session import Kinematics, ShadowSession


# The configured box is only a fallback: every episode's start event carries its own zone (``zone_box``).
NOMINAL_REGION = {"success_region_min": [0.1, -0.35, 0.006], "success_region_max": [0.5, 0.35, 0.08]}


def episode_files(root: str | Path) -> list[Path]:
    """``dataset.generate.episode_paths`` of ``root``; FileNotFoundError naming the folder when there are none."""
    from k4d_bringup.dataset.generate import episode_paths

    if not Path(root).is_dir():
        raise FileNotFoundError(f"episode folder not found: {root}")
    files = episode_paths(root)
    if not files:
        raise FileNotFoundError(f"no episodes (*.npz) in {root} or its sub-folders")
    return files


def zone_box(meta: dict, object_height_m: float) -> dict:
    """The success region of an episode: the zone's inscribed square, from 6 mm to object height + 1.5 cm."""
    c = np.asarray(meta["zone"]["center_base"], np.float64)[:2]
    h = float(meta["zone"]["radius"]) / math.sqrt(2.0)
    return {"min": [c[0] - h, c[1] - h, 0.006], "max": [c[0] + h, c[1] + h, object_height_m + 0.015]}


def zone_top(meta: dict) -> dict | None:
    """The standing check of an episode (its start event's ``success_top``): ``{"min_z": r + h}`` for a pick-place
    cylinder target (``predicate.upright_top_height`` of ``meta["objects"][0]``), None where label rule 3 asks no
    orientation of it or no slab tells standing from toppled (push, a cube, a cylinder less than 3 mm taller than
    wide). The slab's threshold is the ShadowConfig's ``success_top_min_points``."""
    try:
        target = meta["objects"][0]
        z = upright_top_height(meta.get("task", "pick_place"), target["kind"], target["size"])
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"episode {meta.get('name', '?')}: no target kind and size in its metadata ({exc!r})") \
            from None
    return None if z is None else {"min_z": z}


def object_height(meta: dict) -> float:
    """Full height (m) of the episode's target: twice its resting centre height."""
    from k4d_bringup.dataset.generate import target_rest_height

    return 2.0 * target_rest_height(meta)


def start_event(meta: dict, label: str, upright: bool = True) -> dict:
    """An episode's start event (JSON object): its scenario, its policy (``sigma=<noise level>``), its goal zone as
    the success region (``zone_box``) and, with ``upright``, its standing check (``zone_top``, null where it has
    none, so a configured one does not apply either)."""
    ev = {"event": "start", "label": label, "scenario": meta["scenario"], "policy": f"sigma={meta['sigma']:g}",
          "success_region": zone_box(meta, object_height(meta))}
    if upright:
        ev["success_top"] = zone_top(meta)
    return ev


def _kinematics(model, ep: dict) -> Kinematics:
    """The episode's own robot view: its intrinsics (``K``, image size) and its recorded extrinsics."""
    from k4d_kinematics.camera import Extrinsics, PinholeCamera

    meta = ep["meta"]
    extrinsics = Extrinsics.from_dict(meta["extrinsics"], f"episode {meta.get('name', '?')}")
    h, w = ep["rgb"].shape[1:3]
    camera = PinholeCamera.from_camera_info_fields(w, h, np.asarray(ep["K"]).ravel(),
                                                   frame_id=extrinsics.child_frame)
    return Kinematics(model, camera, extrinsics, limits="clamp")


def bench(data: str | Path, imaginer: Callable, log_path: str | Path, cfg: Optional[ShadowConfig] = None,
          max_episodes: Optional[int] = None, progress: Optional[Callable[[str], None]] = None,
          upright: bool = True) -> dict:
    """Evaluate the episodes under ``data`` (see module doc); every result goes to the JSONL log. Returns counts,
    wall times and ``chunks_per_min``. ``upright`` (default): every start event carries the episode's standing
    check (``zone_top``; null where it has none); False: none of its own (the configured one, default off,
    applies: the box alone, as before label rule 3)."""
    from k4d_bringup.dataset.generate import load_episode
    from k4d_kinematics.robot import RobotModel
    from k4d_kinematics.sequence import JointTrajectoryData

    files = episode_files(data)[: max_episodes or None]
    if Path(log_path).is_file() and Path(log_path).stat().st_size:
        import sys

        print(f"k4d shadow bench: {log_path} already holds records; this run appends to them (the log is durable "
              "and never truncated: pass a new --log to keep runs apart)", file=sys.stderr)
    cfg = cfg or ShadowConfig(num_frames=17, success_predicate="region", **NOMINAL_REGION, success_min_points=3,
                              success_top_min_points=1, success_window_frames=1, save_frames=False)
    log = ShadowLog(log_path)
    kin_box: dict = {"kin": None}
    session = ShadowSession(cfg, lambda: kin_box["kin"], log.append, Path(log.path).parent / (Path(log.path).stem
                                                                                                  + "_frames"))
    say = progress or (lambda _s: None)
    model = RobotModel.yam()
    t_imagine = 0.0
    t0_wall = time.perf_counter()
    try:
        for i, path in enumerate(files):
            ep = load_episode(path)
            meta = ep["meta"]
            kin_box["kin"] = _kinematics(model, ep)
            base = (i + 1) * 1_000_000_000_000  # 1000 s apart: nothing of one episode reaches the next
            stamps = base + np.round(np.asarray(ep["times"]) * 1e9).astype(np.int64)
            names = list(meta["joint_names"])
            if names != list(model.joint_names):
                raise ValueError(f"{path}: joints {names} are not the YAM model's {list(model.joint_names)}")
            session.on_episode_event(json.dumps(start_event(meta, f"{path.parent.name}/{path.stem}", upright)), base)
            session.on_frame(int(stamps[0]), ep["rgb"][0], ep["depth"][0], ep["q"][0])
            traj = JointTrajectoryData(names, np.asarray(ep["traj_times"], np.float64),
                                       np.asarray(ep["traj_positions"], np.float64))
            session.on_chunk(traj, "live", base, ep["q"][0])
            rec = session.next_dispatch(base, server_ready=True)
            if rec is not None:
                t = time.perf_counter()
                try:
                    ro, err = imaginer(rec.real[0].rgb, rec.seq, rec), ""
                except Exception as exc:  # noqa: BLE001 - one failed imagination fails one chunk
                    ro, err = None, f"world model failed: {exc}"
                t_imagine += time.perf_counter() - t
                session.on_imagined(rec, ro, err, base)
            for k in range(1, len(stamps)):
                session.on_frame(int(stamps[k]), ep["rgb"][k], ep["depth"][k], ep["q"][k])
            end = int(stamps[-1]) + int(cfg.settle_s * 1e9) + 1
            session.tick(end)
            session.on_episode_event(json.dumps({"event": "end", "success": bool(meta["success"])}), end)
            session.tick(end + 1)
            say(f"{i + 1}/{len(files)} {path.parent.name}/{path.stem} sigma={meta['sigma']:g} "
                f"label={'success' if meta['success'] else 'failure'}")
        session.flush(len(files) * 1_000_000_000_000 + 2_000_000_000_000)
    finally:
        log.close()
    wall = time.perf_counter() - t0_wall
    n = session.counts["chunks"]
    return {**session.status(), "log": str(log.path), "episodes_in": len(files), "wall_s": wall,
            "imagine_s": t_imagine, "chunks_per_min": 60.0 * n / wall if wall > 0 else float("nan"),
            "config": {k: v for k, v in dataclasses.asdict(cfg).items() if not isinstance(v, (list, tuple))}}


def add_arguments(p) -> None:
    """The options of ``k4d shadow bench`` (also ``python -m k4d_bringup.shadow.simbench``, no ROS needed)."""
    p.add_argument("data", metavar="EPISODES_DIR", help="episode folder, or a folder of scenario sub-folders")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--checkpoint", metavar="DIR", help="world model run in this process "
                                                           "('default' = the shipped model)")
    where.add_argument("--served", action="store_true",
                       help="send each chunk to a running imagine node instead (Imagine action over DDS; needs "
                            "--min-points)")
    p.add_argument("--imagine-action", default="/k4d/imagine", help="--served: the action name")
    p.add_argument("--frames", type=int, default=17, help="--served: the model's frame count (default 17)")
    p.add_argument("--wait-server-s", type=float, default=10.0,
                   help="--served: how long to wait for the action server to appear (default 10 s); a server "
                        "that is there but still loads its model is waited for up to inactive_wait_s (120 s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--cuda-graphs", choices=("on", "off"), default="on",
                   help="replay the transformer as a CUDA graph on a GPU (WorldModelConfig.cuda_graphs; default on)")
    p.add_argument("--register", choices=("on", "off"), default="on",
                   help="register the lifted frames to the chunk-start depth on the still scene "
                        "(WorldModelConfig.metric_register; default on; off: the lift alone, as before it existed)")
    p.add_argument("--upright", choices=("on", "off"), default="on",
                   help="the standing check for pick-place cylinders (points above r + h, as k4d eval's zone "
                        "predicate and label rule 3 ask; default on; off: the box alone, as before)")
    p.add_argument("--imagined-upright", choices=("on", "off"), default="off",
                   help="imagined_standing_check: apply the standing check to the imagined side too (default off: "
                        "the models' pointmaps flatten standing objects; the camera's depth is always asked)")
    p.add_argument("--top-min-points", type=int, default=None,
                   help="success_top_min_points, the standing check's threshold (default: 1 at 96 x 64 pixels, "
                        "scaled with the model's image area, predicate.standing_min_points_for; --served: a third "
                        "of --min-points, at least 1)")
    p.add_argument("--compose", choices=("off", "current", "swept"), default="off",
                   help="in-process model: composite each imagination onto the chunk's measured first frame "
                        "(the engine's compose_static with this compose_region; default off)")
    p.add_argument("--flying-rel", type=float, default=None,
                   help="with --compose: leave the model's points on a depth ramp NaN (compose_flying_rel, a range "
                        "jump of more than this fraction to a 3x3 neighbour on either side, the engine's mode; "
                        "default 0.12 as the engine's, 0 = off, as the twenty-ninth session's runs)")
    p.add_argument("--relative", choices=("on", "off"), default="off",
                   help="success_relative: count the goal region relative to the chunk's first frame (default off)")
    p.add_argument("--log", required=True, metavar="LOG.jsonl")
    p.add_argument("--max-episodes", type=int, default=None)
    p.add_argument("--min-points", type=int, default=None,
                   help="success_min_points (default: 3 at 96 x 64 pixels, scaled with the model's image area)")
    p.add_argument("--imagined-min-points", type=int, default=0,
                   help="imagined_min_points: the imagined side's threshold (default 0 = --min-points; choose it "
                        "with k4d shadow calibrate on other episodes)")
    p.add_argument("--json", metavar="PATH", help="also write the summary (counts, throughput, Table 3) here")
    p.add_argument("--report", metavar="DIR", help="also write the HTML report here")
    p.add_argument("-v", "--verbose", action="store_true")


def run_bench(args) -> int:
    """``k4d shadow bench``: run, then print Table 3 and Pearson r / MMRV per scenario."""
    from .aggregate import ranking, table3
    from .imaginers import ActionImaginer, EngineImaginer
    from .log import read_log
    from .predicate import min_points_for, standing_min_points_for

    common = dict(success_predicate="region", **NOMINAL_REGION, success_window_frames=1,
                  save_frames=bool(args.report), success_relative=args.relative == "on",
                  imagined_min_points=args.imagined_min_points,
                  imagined_standing_check=args.imagined_upright == "on")
    if args.flying_rel is not None and args.compose == "off":
        raise SystemExit("k4d shadow bench: --flying-rel filters the composite; give --compose current or swept")
    if args.served and args.compose != "off":
        raise SystemExit("k4d shadow bench --served: --compose applies to a model run in this process; set the "
                         "imagine node's compose_static / compose_region parameters instead")
    if args.served:
        if args.min_points is None:
            raise SystemExit("k4d shadow bench --served: give --min-points, the served model's zone threshold "
                             "(3 at 96 x 64 pixels, 12 at 192 x 128): the client cannot see the model")
        top = args.top_min_points if args.top_min_points is not None else max(1, round(args.min_points / 3))
        cfg = ShadowConfig(num_frames=args.frames, success_min_points=args.min_points, success_top_min_points=top,
                           imagine_action=args.imagine_action, num_inference_steps=args.steps, guidance_scale=1.0,
                           **common)
        try:
            imag = ActionImaginer(cfg, wait_server_s=args.wait_server_s)
        except RuntimeError as exc:
            raise SystemExit(f"k4d shadow bench --served: {exc}") from None
        device = f"served on {args.imagine_action}"
    else:
        imag = EngineImaginer(args.checkpoint, args.device, num_inference_steps=args.steps, guidance_scale=1.0,
                              cuda_graphs=args.cuda_graphs == "on", metric_register=args.register == "on",
                              compose=args.compose, flying_rel=args.flying_rel)
        pipe = imag.engine.pipe
        min_points = args.min_points if args.min_points is not None else min_points_for(pipe.height, pipe.width)
        top = args.top_min_points if args.top_min_points is not None else \
            standing_min_points_for(pipe.height, pipe.width)
        cfg = ShadowConfig(num_frames=pipe.num_frames, success_min_points=min_points, success_top_min_points=top,
                           **common)
        device = str(pipe.device)
    try:
        out = bench(args.data, imag, args.log, cfg, args.max_episodes, print if args.verbose else None,
                    upright=args.upright == "on")
    finally:
        if args.served:
            imag.close()
    recs = read_log(args.log)
    out["device"] = device
    out["cuda_graphs"] = args.cuda_graphs
    out["register"] = args.register
    out["relative"] = args.relative
    out["compose"] = args.compose
    out["composite"] = getattr(imag, "compose", "")  # with the filter the engine applied ("swept/either:0.12")
    out["upright"] = args.upright
    out["imagined_upright"] = args.imagined_upright
    out["table3"], out["ranking"] = table3(recs), ranking(recs)
    print(f"k4d shadow bench: {out['episodes_in']} episodes, {out['chunks']} chunks ({out['ok']} ok, "
          f"{out['failed']} failed, {out['skipped']} skipped) in {out['wall_s']:.0f} s = "
          f"{out['chunks_per_min']:.1f} chunks/min on {out['device']}")
    print(f"{'scenario':10s} {'policy':12s} {'episodes':>8s} {'paired':>6s} {'not metric':>10s} {'GT rate':>8s} "
          f"{'imagined':>9s} {'diff':>7s} {'GT rate (all known)':>20s}")
    for r in out["table3"]:
        print(f"{r['scenario']:10s} {r['policy']:12s} {r['episodes']:8d} {r['paired']:6d} "
              f"{r['imagined_undeterminable']:10d} {r['gt_rate']:8.3f} {r['imagined_rate']:9.3f} {r['diff']:+7.3f} "
              f"{r['actual_rate_all']:20.3f}")
    for sc, d in out["ranking"].items():
        print(f"{sc}: Pearson r {d['pearson_r']:.3f}, MMRV {d['mmrv']:.3f} over {len(d['policies'])} policies; "
              f"pooled over its {d['paired']} paired episodes: GT {d['gt_rate']:.3f}, imagined "
              f"{d['imagined_rate']:.3f}, diff {d['diff']:+.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=lambda v: v.item() if hasattr(v, "item")
                                              else str(v)))
    if args.report:
        from .report import write_report

        print(f"report: {write_report(args.log, args.report)}")
    return 0


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m k4d_bringup.shadow.simbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run_bench(parser.parse_args()))
