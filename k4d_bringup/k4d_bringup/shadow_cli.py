"""``k4d shadow ...`` and ``k4d calib check``: shadow-mode evaluation reports, offline replay, calibration check.

    k4d shadow report out/shadow/shadow_log.jsonl --out out/shadow/report   # index.html + assets/
    k4d shadow replay run.mcap --checkpoint ckpt/ --log out/replay.jsonl    # evaluate a recording in batch
    k4d shadow calibrate calib_log.jsonl --json calib.json                 # imagined_min_points from known outcomes
    k4d shadow calibrate calib_log.jsonl --probability --json fit.json     # a calibrated success probability
    k4d shadow run --params k4d_bringup/config/robot.yaml                   # the k4d nodes beside a robot (pip-only)
    k4d calib check run.mcap --extrinsics config/extrinsics.yaml            # per-frame robot/image alignment

``shadow replay`` runs the world model in this process with ``--checkpoint`` (through
``k4d_worldmodel.engine`` when it exists, else the pipeline + metric lifting); without it, a running
/k4d/imagine server is required. ``shadow run`` starts shadow_node, pointmap_node and overlay_node as
processes with the same parameter files as ``ros2 launch k4d_bringup shadow.launch.py``; feed it the real
robot's drivers or a recording replayed as if it were the robot (``k4d replay run.mcap``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


def _shadow_config(params_files: list, overrides: dict):
    from k4d_bringup.shadow.config import ShadowConfig
    from k4d_bringup.sim_cli import config_path, load_ros_params

    files = params_files or [config_path("k4d_bringup", "shadow_node.yaml")]
    values: dict = {}
    for f in files:
        values.update(load_ros_params(f, "k4d_shadow"))
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = ShadowConfig.__dataclass_fields__
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        print(f"k4d shadow: ignoring parameters that are not ShadowConfig fields: {unknown}", file=sys.stderr)
    return ShadowConfig(**{k: v for k, v in values.items() if k in known})


def _parse_set(items: list) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def cmd_report(args) -> int:
    from k4d_bringup.shadow.report import write_report

    fit = None
    if args.probability_fit:
        try:
            fit = json.loads(Path(args.probability_fit).read_text())
            if isinstance(fit, dict) and "probability" in fit:  # the file `calibrate --probability --json` writes
                fit = fit["probability"]
        except (OSError, ValueError) as exc:
            print(f"k4d shadow report: cannot read --probability-fit {args.probability_fit}: {exc}", file=sys.stderr)
            return 2
    try:
        index = write_report(args.log, args.out, videos=not args.no_videos, max_videos=args.max_videos,
                             probability_fit=fit)
    except ValueError as exc:
        print(f"k4d shadow report: {exc}", file=sys.stderr)
        return 2
    print(f"k4d shadow report: {index}")
    return 0


def cmd_replay(args) -> int:
    from k4d_bringup.shadow.imaginers import make_imaginer
    from k4d_bringup.shadow.offline import replay_recording

    path = Path(args.recording)
    if not path.is_file():
        raise FileNotFoundError(f"recording not found: {path}")
    log = Path(args.log) if args.log else path.with_name(path.stem + "_shadow.jsonl")
    cfg = _shadow_config(args.params, {**_parse_set(args.set), "log_path": str(log)})
    imaginer = make_imaginer(cfg, args.checkpoint or "", args.device)
    t0 = time.time()
    try:
        out = replay_recording(path, cfg, imaginer, log, progress=(lambda s: print(f"k4d shadow replay: {s}"))
                               if args.verbose else None)
    finally:
        if hasattr(imaginer, "close"):
            imaginer.close()
    print(f"k4d shadow replay: {out['chunks']} chunks ({out['ok']} ok, {out['failed']} failed), {out['episodes']} "
          f"episodes in {time.time() - t0:.1f} s -> {out['log']}")
    if args.report:
        from k4d_bringup.shadow.report import write_report

        print(f"k4d shadow replay: report {write_report(log, args.report)}")
    return 0


def cmd_run(args) -> int:
    import os
    import signal
    import subprocess

    from k4d_bringup.sim_cli import config_path, load_ros_params, write_ros_params

    params = [Path(p).resolve() for p in (args.params or [config_path("k4d_bringup", "robot.yaml")])]
    robot: dict = {}
    for p in params:
        robot.update(load_ros_params(p))
    workdir = Path(args.workdir or "k4d_shadow_run").resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    over = {}
    ext = robot.get("extrinsics_file", "")
    if ext and not Path(ext).is_absolute():  # relative to the robot file, as in shadow.launch.py
        over["extrinsics_file"] = str((params[-1].parent / ext).resolve())
    over_files = [write_ros_params(workdir / "params" / "robot_overrides.yaml", over)] if over else []
    js = robot.get("joint_states_topic", "/joint_states")
    # (name, module, parameter files, remappings): the nodes and files of shadow.launch.py
    nodes = [("k4d_shadow", "k4d_bringup.ros.shadow_node",
              [config_path("k4d_bringup", "shadow_node.yaml")] + params + over_files, [])]
    if not args.no_overlay:
        nodes.append(("k4d_pointmap", "k4d_kinematics.ros.pointmap_node",
                      [config_path("k4d_kinematics", "pointmap_node.yaml")] + params + over_files,
                      [f"joint_states:={js}"]))
        nodes.append(("k4d_overlay", "k4d_bringup.ros.overlay_node", params, []))
    env = dict(os.environ)
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(config_path("k4d_bringup", "fastdds_large_data.xml")))
    env["PYTHONUNBUFFERED"] = "1"
    procs = {}
    for name, module, files, remaps in nodes:
        cmd = [sys.executable, "-m", module, "--ros-args", "-r", f"__node:={name}"]
        for r in remaps:
            cmd += ["-r", r]
        for f in files:
            cmd += ["--params-file", str(f)]
        procs[name] = subprocess.Popen(cmd, cwd=str(workdir), env=env, stdout=open(workdir / "logs" / f"{name}.log",
                                                                                   "w"), stderr=subprocess.STDOUT)
    print(f"k4d shadow run: {', '.join(procs)} (logs in {workdir / 'logs'}); Ctrl-C to stop")
    code = 0
    try:
        t0 = time.monotonic()
        while args.duration is None or time.monotonic() - t0 < args.duration:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                log = (workdir / "logs" / f"{dead[0]}.log").read_text(errors="replace").splitlines()[-20:]
                print(f"k4d shadow run: node {dead[0]} exited:\n" + "\n".join(log), file=sys.stderr)
                code = 1
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    return code


def cmd_calib_check(args) -> int:
    from k4d_bringup.shadow.calib import check_recording
    from k4d_kinematics.camera import Extrinsics, PinholeCamera
    from k4d_kinematics.robot import RobotModel

    ext = Extrinsics.from_yaml(args.extrinsics)
    camera = PinholeCamera.from_yaml(args.camera_info, frame_id=ext.child_frame) if args.camera_info else None
    model = RobotModel.from_urdf_file(args.urdf) if args.urdf else None
    out = check_recording(args.recording, ext, model, camera, args.image_topic, args.camera_info_topic,
                          args.joint_states_topic, args.depth_topic, args.every, args.max_frames)
    s = out["summary"]
    t0 = out["frames"][0]["stamp_ns"] if out["frames"] else 0
    if not args.quiet:
        print(f"{'t (s)':>8} {'score':>7} {'edge hit':>9} {'chance':>7} {'depth ok':>9}")
        for f in out["frames"]:
            print(f"{(f['stamp_ns'] - t0) * 1e-9:8.2f} {f['score']:7.3f} {f['edge_hit']:9.3f} {f['chance']:7.3f} "
                  f"{f.get('depth_fraction', float('nan')):9.3f}")
    print(f"k4d calib check: {s['valid_frames']}/{s['frames']} frames scored; median score {s['median_score']:.3f} "
          f"(1 = outline on image edges, 0 = chance), min {s['min_score']:.3f}; median depth agreement "
          f"{s['median_depth_fraction']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=lambda v: None))
    if args.min_score is not None and not (math.isfinite(s["median_score"]) and s["median_score"] >= args.min_score):
        print(f"k4d calib check: FAIL: median score below {args.min_score}", file=sys.stderr)
        return 1
    return 0


def _calibrate_probability(args) -> int:
    from k4d_bringup.shadow.aggregate import ranking
    from k4d_bringup.shadow.calibrate import apply_probability, fit_probability
    from k4d_bringup.shadow.log import read_log

    try:
        recs = read_log(args.log)
        fit = fit_probability(recs)
        rank = ranking(apply_probability(recs, fit), rate="probability")
    except ValueError as exc:
        print(f"k4d shadow calibrate: {exc}", file=sys.stderr)
        return 2
    print(f"k4d shadow calibrate: P(success) = sigmoid({fit['intercept']:.4f} + {fit['slope']:.4f} * log(1 + n)), "
          f"n = imagined zone points in the last frame; {fit['episodes']} episodes, log loss {fit['log_loss']:.3f}, "
          f"Brier {fit['brier']:.3f} (on the episodes it was fitted on)")
    for s, d in sorted(rank.items()):
        print(f"  {s}: actual {d['gt_rate']:.3f}, mean probability {d['imagined_rate']:.3f} ({d['diff']:+.3f}), "
              f"Pearson r {d['pearson_r']:.2f}, MMRV {d['mmrv']:.3f}")
    print("k4d shadow calibrate: pass the JSON to `k4d shadow report --probability-fit` for other episodes")
    if args.json:
        Path(args.json).write_text(json.dumps({"log": str(args.log), "probability": fit, "ranking": rank},
                                              indent=1))
    return 0


def cmd_calibrate(args) -> int:
    from k4d_bringup.shadow.calibrate import choose_threshold, threshold_table
    from k4d_bringup.shadow.log import read_log

    if not Path(args.log).is_file():
        print(f"k4d shadow calibrate: log not found: {args.log}", file=sys.stderr)
        return 2
    if args.probability:
        return _calibrate_probability(args)
    if not 1 <= args.min_points <= args.max_points:
        print(f"k4d shadow calibrate: need 1 <= --min-points <= --max-points, got {args.min_points} and "
              f"{args.max_points}", file=sys.stderr)
        return 2
    try:
        table = threshold_table(read_log(args.log), range(args.min_points, args.max_points + 1))
        best = choose_threshold(table)
    except ValueError as exc:
        print(f"k4d shadow calibrate: {exc}", file=sys.stderr)
        return 2
    scen = sorted(best["scenarios"])
    print(f"{'points':>6} {'mean |diff|':>11} {'max cell':>8} {'agree':>6}  " + "  ".join(
        f"{s + ' diff / r / MMRV':>24}" for s in scen))
    for r in table:
        cells = "  ".join(f"{r['scenarios'][s]['diff']:+8.3f} / {r['scenarios'][s]['pearson_r']:5.2f} / "
                          f"{r['scenarios'][s]['mmrv']:5.3f}" for s in scen)
        mark = "  <-" if r is best else ""
        print(f"{r['imagined_min_points']:6d} {r['mean_abs_scenario_diff']:11.3f} {r['max_abs_cell_diff']:8.3f} "
              f"{r['agreement']:6.3f}  {cells}{mark}")
    print(f"k4d shadow calibrate: imagined_min_points {best['imagined_min_points']} matches the actual success rates "
          f"best (mean |imagined - actual| per scenario {best['mean_abs_scenario_diff']:.3f}); set it in the shadow "
          f"node's parameters and judge other episodes with it")
    if args.json:
        Path(args.json).write_text(json.dumps({"log": str(args.log), "best": best, "table": table}, indent=1))
    return 0


def cmd_bench(args) -> int:
    from k4d_bringup.shadow.simbench import run_bench

    return run_bench(args)


def add_commands(sub) -> None:
    p = sub.add_parser("shadow", help="shadow-mode policy evaluation: report, offline replay, run beside a robot",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ss = p.add_subparsers(dest="shadow_command", metavar="SUBCOMMAND")
    r = ss.add_parser("report", help="write index.html + assets from a shadow JSONL log")
    r.add_argument("log", metavar="LOG.jsonl")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--no-videos", action="store_true", help="skip the per-episode real|imagined videos")
    r.add_argument("--max-videos", type=int, default=None, metavar="N",
                   help="at most N episode videos, the first ones (default: every live episode)")
    r.add_argument("--probability-fit", metavar="FIT.json",
                   help="calibrated success probability from `k4d shadow calibrate --probability` (fitted on other "
                        "episodes): the report adds policy rates from it and its reliability diagram")
    r.set_defaults(func=cmd_report)

    rp = ss.add_parser("replay", help="evaluate an MCAP recording offline, in batch")
    rp.add_argument("recording", metavar="RECORDING.mcap")
    rp.add_argument("--checkpoint", metavar="DIR", help="run the world model in this process (else: needs a running "
                                                        "/k4d/imagine server)")
    rp.add_argument("--device", default="auto", help="device for --checkpoint (auto, cpu, cuda, cuda:N)")
    rp.add_argument("--params", action="append", metavar="YAML",
                    help="ROS parameter file(s) of the shadow node (default config/shadow_node.yaml)")
    rp.add_argument("--set", action="append", metavar="NAME=VALUE", help="override one parameter (YAML value)")
    rp.add_argument("--log", metavar="LOG.jsonl", help="output log (default next to the recording)")
    rp.add_argument("--report", metavar="DIR", help="also write the HTML report here")
    rp.add_argument("-v", "--verbose", action="store_true")
    rp.set_defaults(func=cmd_replay)

    b = ss.add_parser("bench", help="shadow-evaluate simulated episodes (k4d dataset generate) in batch")
    from k4d_bringup.shadow.simbench import add_arguments

    add_arguments(b)
    b.set_defaults(func=cmd_bench)

    cb = ss.add_parser("calibrate", help="choose imagined_min_points from a log of episodes with known outcomes")
    cb.add_argument("log", metavar="LOG.jsonl", help="a shadow log made with success_relative false")
    cb.add_argument("--min-points", type=int, default=1, help="smallest threshold tried (default 1)")
    cb.add_argument("--max-points", type=int, default=30, help="largest threshold tried (default 30)")
    cb.add_argument("--json", metavar="FILE", help="write the table and the choice here")
    cb.add_argument("--probability", action="store_true",
                    help="fit a success probability to the imagined count instead of choosing a threshold (Platt "
                         "scaling); its JSON is what `k4d shadow report --probability-fit` takes")
    cb.set_defaults(func=cmd_calibrate)

    rn = ss.add_parser("run", help="start shadow_node, pointmap_node and overlay_node (pip-only shadow.launch.py)")
    rn.add_argument("--params", action="append", metavar="YAML", help="robot parameter file(s) (default "
                                                                      "config/robot.yaml)")
    rn.add_argument("--no-overlay", action="store_true", help="only the shadow node")
    rn.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    rn.add_argument("--workdir", help="folder for logs and parameter overrides (default ./k4d_shadow_run)")
    rn.set_defaults(func=cmd_run)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1] if not getattr(a, "shadow_command", None) else 0)

    c = sub.add_parser("calib", help="camera calibration tools", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    cs = c.add_subparsers(dest="calib_command", metavar="SUBCOMMAND")
    ck = cs.add_parser("check", help="per-frame alignment of the projected robot with the image of a recording")
    ck.add_argument("recording", metavar="RECORDING.mcap")
    ck.add_argument("--extrinsics", required=True, metavar="YAML",
                    help="extrinsics YAML {parent_frame, child_frame, translation, rotation} to check")
    ck.add_argument("--camera-info", metavar="YAML", help="intrinsics file (default: the recording's CameraInfo)")
    ck.add_argument("--urdf", metavar="FILE", help="robot URDF (default: built-in YAM)")
    ck.add_argument("--image-topic", default="/camera/color/image_raw")
    ck.add_argument("--camera-info-topic", default="/camera/color/camera_info")
    ck.add_argument("--joint-states-topic", default="/joint_states")
    ck.add_argument("--depth-topic", default="", help="registered depth topic for the depth agreement (optional)")
    ck.add_argument("--every", type=int, default=1, help="score every N-th image")
    ck.add_argument("--max-frames", type=int, default=0, help="stop after this many scored frames (0 = all)")
    ck.add_argument("--min-score", type=float, default=None, help="exit 1 when the median score is below this")
    ck.add_argument("--json", metavar="FILE", help="write the per-frame scores as JSON")
    ck.add_argument("-q", "--quiet", action="store_true", help="summary only")
    ck.set_defaults(func=cmd_calib_check)
    c.set_defaults(func=lambda a: (c.print_help(), 0)[1] if not getattr(a, "calib_command", None) else 0)
