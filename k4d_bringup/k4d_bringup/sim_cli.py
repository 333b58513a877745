"""``k4d sim`` and ``k4d replay``: the simulated workcell graph without a ROS distro (the pip-only path).

    k4d sim --headless --duration 30 --record out/demo        # run the demo, record, then video + summary
    k4d sim --composed --scenario medium --seed 3             # all nodes in one process
    k4d replay out/demo/k4d_sim.mcap --rate 0.5               # publish a recording into the graph

``k4d sim`` starts the same nodes with the same YAML parameter files as ``ros2 launch k4d_bringup
sim.launch.py``: sim_node, planner_node, demo_node (k4d_bringup) and pointmap_node, plan_node
(k4d_kinematics), plus the world model's imagine_node serving ``/k4d/imagine`` with ``--checkpoint`` (default:
the model shipped with k4d_worldmodel; ``--no-world-model`` leaves it out). By default
each node is its own process (``python -m MODULE --ros-args --params-file BASE.yaml --params-file
OVERRIDES.yaml``), so they use all cores; ``--composed`` runs them in one MultiThreadedExecutor with the
YAML loaded as ``parameter_overrides``. ``--duration`` counts from the first /joint_states (the sim is up).

With ``--record DIR`` the CLI process subscribes (raw CDR) to the sensor, command and /k4d topics and
writes ``DIR/k4d_sim.mcap``; after the run it writes ``DIR/k4d_sim.mp4`` (the camera with the live robot
mask and the plan ghost; ``--video PATH`` elsewhere), ``DIR/summary.json`` (topic rates, sim lag, demo
episodes), ``DIR/logs/*.log`` and the parameter files used (``DIR/params/``).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

SCENARIOS = ("easy", "medium", "hard")
RECORDING_NAME = "k4d_sim.mcap"
VIDEO_NAME = "k4d_sim.mp4"


# ---------------------------------------------------------------------------------------------
# Parameter files
# ---------------------------------------------------------------------------------------------


def config_path(package: str, name: str) -> Path:
    """``<package>/config/<name>``: the source tree next to the imported package first (editable/pip-only),
    else the ament share directory (colcon install)."""
    mod = importlib.import_module(package)
    src = Path(mod.__file__).resolve().parents[1] / "config" / name
    if src.is_file():
        return src
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory(package)) / "config" / name
        if share.is_file():
            return share
    except Exception:  # noqa: BLE001 - package not in the ament index
        pass
    raise FileNotFoundError(f"parameter file {name!r} of {package} not found (looked in {src.parent})")


def load_ros_params(path: str | Path, node_name: str = "") -> dict:
    """The ``ros__parameters`` of a ROS 2 params YAML for ``node_name`` (``/**`` entries, then the node's own)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a ROS 2 parameter file (top level must be a mapping)")
    out: dict = {}
    for key in ("/**", node_name, "/" + node_name if node_name else None):
        if key and isinstance(data.get(key), dict):
            out.update(data[key].get("ros__parameters") or {})
    return out


def write_ros_params(path: str | Path, params: dict) -> Path:
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=False))
    return path


def to_parameters(params: dict) -> list:
    """{name: value} -> [rclpy.parameter.Parameter] for ``Node(parameter_overrides=...)``."""
    from rclpy.parameter import Parameter

    return [Parameter(k, value=list(v) if isinstance(v, tuple) else v) for k, v in params.items()]


@dataclass
class NodeSpec:
    """One node of the graph: module (``python -m``), class (composed), name, parameter files and overrides."""

    name: str
    module: str
    cls: str
    params_files: list
    overrides: dict = field(default_factory=dict)
    nice: int = 0  # process niceness (processes mode): > 0 yields the CPU to the robot's nodes
    threads: int = 0  # OMP / torch threads of the process (0 = library default)

    def parameters(self) -> dict:
        out: dict = {}
        for f in self.params_files:
            out.update(load_ros_params(f, self.name))
        out.update(self.overrides)
        return out


def _default_checkpoint_present() -> bool:
    try:
        from k4d_worldmodel.config import default_checkpoint_dir
    except ImportError:
        return False
    return (Path(default_checkpoint_dir()) / "model_index.json").is_file()


def build_graph(args, workdir: Path) -> list[NodeSpec]:
    """The nodes of ``k4d sim`` with their parameter files and the run's overrides."""
    from k4d_bringup.ros.sim_node import SimNodeConfig, build_sim_config
    from k4d_bringup.sim.scene import resolve_camera

    sim_yaml = config_path("k4d_bringup", "sim_node.yaml")
    sim_over = {"scenario": args.scenario, "seed": int(args.seed)}
    if args.camera_size:
        w, h = (int(v) for v in args.camera_size.lower().split("x"))
        sim_over.update(camera_width=w, camera_height=h)
    if args.camera_fy:
        sim_over["camera_fy"] = float(args.camera_fy)
    # The pointmap and plan nodes must use the sim camera's extrinsics: written here, read as 'file'.
    sim_params = {**load_ros_params(sim_yaml, "k4d_sim"), **sim_over}
    cfg = SimNodeConfig(**{k: v for k, v in sim_params.items() if k in SimNodeConfig.__dataclass_fields__})
    _cam, ext = resolve_camera(build_sim_config(cfg).camera)
    ext_file = workdir / "params" / "sim_camera_extrinsics.yaml"
    ext_file.parent.mkdir(parents=True, exist_ok=True)
    import dataclasses

    dataclasses.replace(ext, parent_frame=cfg.base_frame, child_frame=cfg.camera_frame).to_yaml(ext_file)
    kin_over = {"extrinsics_source": "file", "extrinsics_file": str(ext_file), "camera_frame": cfg.camera_frame}
    nodes = [
        NodeSpec("k4d_sim", "k4d_bringup.ros.sim_node", "k4d_bringup.ros.sim_node:SimNode", [sim_yaml], sim_over),
        NodeSpec("k4d_planner", "k4d_bringup.ros.planner_node", "k4d_bringup.ros.planner_node:PlannerNode",
                 [config_path("k4d_bringup", "planner_node.yaml")]),
        NodeSpec("k4d_pointmap", "k4d_kinematics.ros.pointmap_node", "k4d_kinematics.ros.pointmap_node:PointmapNode",
                 [config_path("k4d_kinematics", "pointmap_node.yaml")], dict(kin_over)),
        NodeSpec("k4d_plan", "k4d_kinematics.ros.plan_node", "k4d_kinematics.ros.plan_node:PlanNode",
                 [config_path("k4d_kinematics", "plan_node.yaml")], dict(kin_over)),
    ]
    if not args.no_demo:
        nodes.append(NodeSpec("k4d_demo", "k4d_bringup.ros.demo_node", "k4d_bringup.ros.demo_node:DemoNode",
                              [config_path("k4d_bringup", "demo_node.yaml")]))
    checkpoint = "" if getattr(args, "no_world_model", False) else (args.checkpoint or "")
    if checkpoint:
        if importlib.util.find_spec("k4d_worldmodel.ros.imagine_node") is None:
            print("k4d sim: k4d_worldmodel.ros.imagine_node is not installed; running without the world model",
                  file=sys.stderr)
        elif checkpoint == "default" and not _default_checkpoint_present():
            print("k4d sim: the default world model is not installed with k4d_worldmodel; running without it "
                  "(pass --checkpoint DIR)", file=sys.stderr)
        else:
            files = []
            try:
                files.append(config_path("k4d_worldmodel", "imagine_node.yaml"))
            except FileNotFoundError:
                pass
            # autostart: no lifecycle manager here; the sim camera's extrinsics serve trajectory goals.
            # adapt_inputs: the sim camera (360x240) and the plans (49 frames) are fitted to the model; the
            # default model previews with 20 steps and no CFG, so a preview takes seconds on the CPU.
            # depth_topic: the sim's depth (registered to its colour camera) anchors the metric lift of previews
            sim_model = {"adapt_inputs": True, "depth_topic": "/camera/depth/image_rect_raw"}
            if checkpoint == "default":
                sim_model.update(num_inference_steps=20, guidance_scale=1.0)
            nodes.append(NodeSpec("k4d_imagine", "k4d_worldmodel.ros.imagine_node",
                                  "k4d_worldmodel.ros.imagine_node:ImagineNode", files,
                                  {"checkpoint_dir": checkpoint if checkpoint == "default"
                                   else str(Path(checkpoint).resolve()), "autostart": True,
                                   **sim_model, **kin_over},
                                  # a CPU world model must not starve the sim: lowest priority, one thread
                                  # (SCHED_IDLE was tried: joint_states 207 Hz, but it finished 0-1 previews in
                                  # 45 s instead of 2-3)
                                  nice=19, threads=1))
    return nodes


# ---------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------


def recorded_topics() -> list[tuple[str, type, object]]:
    """(topic, message class, QoS) of everything ``k4d sim --record`` stores."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from k4d_msgs.msg import PointmapSequence
    from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2
    from std_msgs.msg import Float64, String
    from trajectory_msgs.msg import JointTrajectory
    from visualization_msgs.msg import MarkerArray

    from k4d_kinematics.ros.qos import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS

    return [
        ("/joint_states", JointState, SENSOR_QOS),
        ("/camera/color/image_raw", Image, SENSOR_QOS),
        ("/camera/color/camera_info", CameraInfo, SENSOR_QOS),
        ("/camera/depth/image_rect_raw", Image, SENSOR_QOS),
        ("/camera/depth/camera_info", CameraInfo, SENSOR_QOS),
        ("/k4d/robot_pointmap", PointCloud2, SENSOR_QOS),
        ("/k4d/robot_mask", Image, SENSOR_QOS),
        ("/k4d/plan_pointmaps", PointmapSequence, RELIABLE_QOS),
        ("/k4d/plan_ghost", MarkerArray, LATCHED_QOS),
        ("/k4d/planned_trajectory", JointTrajectory, RELIABLE_QOS),
        ("/k4d/planner_status", String, RELIABLE_QOS),
        ("/k4d/goal_pose", PoseStamped, RELIABLE_QOS),
        ("/k4d/demo_status", String, RELIABLE_QOS),
        ("/k4d/sim/object_states", MarkerArray, RELIABLE_QOS),
        ("/arm_controller/joint_trajectory", JointTrajectory, RELIABLE_QOS),
        ("/gripper_controller/command", Float64, RELIABLE_QOS),
        ("/diagnostics", DiagnosticArray, RELIABLE_QOS),
        ("/k4d/imagined/rgb", Image, RELIABLE_QOS),
        ("/k4d/imagined/points", PointCloud2, RELIABLE_QOS),
    ]


def _deeper(qos, depth: int = 50):
    import copy

    q = copy.copy(qos)
    q.depth = max(q.depth, depth) if q.durability.name != "TRANSIENT_LOCAL" else q.depth
    return q


class GraphWatcher:
    """The CLI's own node: waits for the sim's first /joint_states and records topics when asked."""

    def __init__(self, node, record_path: Optional[Path]):
        from sensor_msgs.msg import JointState

        from k4d_bringup.recording import McapRecorder
        from k4d_kinematics.ros.qos import SENSOR_QOS

        self.node = node
        self.first_joint_state = threading.Event()
        self.recorder = None
        if record_path is not None:
            # lz4: a 360x240 graph is ~60 MB/s of images and clouds; zstd costs a third of a core more.
            # Deeper queues than SENSOR_QOS absorb the bursts while a chunk is compressed.
            self.recorder = McapRecorder(record_path, compression="lz4")
            # /joint_states: 250 Hz, so 50 messages are only 0.2 s; 1000 (4 s, 0.3 MB) ride out a busy moment
            self.recorder.subscribe(node, [(t, c, _deeper(q, 1000 if t == "/joint_states" else 50))
                                           for t, c, q in recorded_topics()])
        node.create_subscription(JointState, "/joint_states", lambda _m: self.first_joint_state.set(), SENSOR_QOS,
                                 raw=True)

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()


# ---------------------------------------------------------------------------------------------
# Running the graph
# ---------------------------------------------------------------------------------------------


class ProcessGraph:
    """Each node a ``python -m`` child process (logs in ``logdir``)."""

    def __init__(self, nodes: list[NodeSpec], workdir: Path, logdir: Path):
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        env = dict(os.environ)
        env.setdefault("MUJOCO_GL", "osmesa")
        env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(config_path("k4d_bringup", "fastdds_large_data.xml")))
        env["PYTHONUNBUFFERED"] = "1"
        logdir.mkdir(parents=True, exist_ok=True)
        for spec in nodes:
            files = [str(f) for f in spec.params_files]
            if spec.overrides:
                files.append(str(write_ros_params(workdir / "params" / f"{spec.name}.overrides.yaml", spec.overrides)))
            cmd = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}"]
            for f in files:
                cmd += ["--params-file", f]
            log = logdir / f"{spec.name}.log"
            self.logs[spec.name] = log
            # cwd: a folder without the source tree's package folders (they would shadow the installed packages)
            node_env = dict(env, OMP_NUM_THREADS=str(spec.threads)) if spec.threads else env
            nice = (lambda n=spec.nice: os.nice(n)) if spec.nice else None
            self.procs[spec.name] = subprocess.Popen(cmd, cwd=str(workdir), env=node_env, stdout=open(log, "w"),
                                                     stderr=subprocess.STDOUT, start_new_session=True,
                                                     preexec_fn=nice)

    def failed(self) -> Optional[str]:
        """Name of a node that exited on its own (a crash or a start-up error), else None."""
        return next((n for n, p in self.procs.items() if p.poll() is not None), None)

    def stop(self, timeout: float = 15.0) -> dict[str, int]:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        codes = {}
        for n, p in self.procs.items():
            try:
                codes[n] = p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                codes[n] = p.wait()
        return codes

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_for_sim(watcher: GraphWatcher, graph: Optional[ProcessGraph], timeout: float) -> Optional[str]:
    """Wait until the sim publishes; returns an error message or None."""
    deadline = time.monotonic() + timeout
    while not watcher.first_joint_state.wait(0.2):
        if graph is not None and graph.failed():
            return f"node {graph.failed()} exited during start-up"
        if time.monotonic() > deadline:
            return f"no /joint_states within {timeout:.0f} s of start-up"
    return None


def _fast_executor():
    """The CLI's executor. (rclpy's experimental C++ EventsExecutor has far less overhead per message, but
    shutting it down from another thread hung in Kilted 9.1.2, so the single-threaded one is used.)"""
    from rclpy.executors import SingleThreadedExecutor

    return SingleThreadedExecutor()


def run_processes(args, nodes: list[NodeSpec], workdir: Path, record_path: Optional[Path]) -> dict:
    import rclpy

    graph = ProcessGraph(nodes, workdir, workdir / "logs")
    rclpy.init()
    node = rclpy.create_node("k4d_sim_cli")
    watcher = GraphWatcher(node, record_path)
    executor = _fast_executor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    result = {"mode": "processes", "error": None}
    try:
        err = _wait_for_sim(watcher, graph, args.startup_timeout)
        t_start = time.monotonic()
        if err is None:
            print(f"k4d sim: running ({len(nodes)} node processes)"
                  + (f" for {args.duration:g} s" if args.duration else "; Ctrl-C to stop"), flush=True)
            while args.duration is None or time.monotonic() - t_start < args.duration:
                if graph.failed():
                    err = f"node {graph.failed()} exited early"
                    break
                time.sleep(0.2)
        result["ran_s"] = round(time.monotonic() - t_start, 2)
        result["error"] = err
    except KeyboardInterrupt:
        result["error"] = None
    finally:
        crashed = graph.failed() if result.get("error") else None
        codes = graph.stop()
        executor.shutdown(timeout_sec=2.0)
        spin.join(timeout=5.0)
        watcher.close()
        node.destroy_node()
        rclpy.try_shutdown()
    result["nodes"] = {n: {"exit_code": c, "log": str(graph.logs[n])} for n, c in codes.items()}
    if crashed:
        print(f"k4d sim: {result['error']}; last lines of its log ({graph.logs[crashed]}):\n{graph.tail(crashed)}",
              file=sys.stderr)
    return result


def _import_class(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def run_composed(args, nodes: list[NodeSpec], record_path: Optional[Path]) -> dict:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    rclpy.init()
    executor = MultiThreadedExecutor(num_threads=max(4, len(nodes)))
    made = []
    result = {"mode": "composed", "error": None, "nodes": {}}
    try:
        for spec in nodes:
            made.append(_import_class(spec.cls)(spec.name, parameter_overrides=to_parameters(spec.parameters())))
            result["nodes"][spec.name] = {"exit_code": 0}
        cli = rclpy.create_node("k4d_sim_cli")
        made.append(cli)
        watcher = GraphWatcher(cli, record_path)
        for n in made:
            executor.add_node(n)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        try:
            err = _wait_for_sim(watcher, None, args.startup_timeout)
            t_start = time.monotonic()
            if err is None:
                print(f"k4d sim: running ({len(nodes)} nodes in one process)"
                      + (f" for {args.duration:g} s" if args.duration else "; Ctrl-C to stop"), flush=True)
                while args.duration is None or time.monotonic() - t_start < args.duration:
                    time.sleep(0.2)
            result["ran_s"] = round(time.monotonic() - t_start, 2)
            result["error"] = err
        except KeyboardInterrupt:
            pass
        finally:
            executor.shutdown(timeout_sec=5.0)
            spin.join(timeout=5.0)
            watcher.close()
    finally:
        for n in made:
            n.destroy_node()
        rclpy.try_shutdown()
    return result


# ---------------------------------------------------------------------------------------------
# After the run: summary and video
# ---------------------------------------------------------------------------------------------

RATE_TARGETS = {"/joint_states": 225.0, "/camera/color/image_raw": 27.0, "/camera/color/camera_info": 27.0,
                "/k4d/robot_pointmap": 27.0, "/k4d/robot_mask": 27.0}


def summarize_recording(mcap_path: Path) -> dict:
    """Topic rates, the sim's last lag diagnostics and the demo's episode results from a recording."""
    from k4d_bringup.demo import topic_rates
    from k4d_bringup.recording import deserialize, read_messages

    out: dict = {"topics": topic_rates(mcap_path), "sim": {}, "episodes": []}
    for topic, datatype, _t, data in read_messages(mcap_path, ["/diagnostics", "/k4d/demo_status"]):
        msg = deserialize(datatype, data)
        if topic == "/diagnostics":
            for st in msg.status:
                if st.name.startswith("k4d_sim:"):
                    vals = {kv.key: kv.value for kv in st.values}
                    key = st.name.split(":", 1)[1].strip().split(" ")[0]
                    out["sim"][key] = {"level": int.from_bytes(bytes(st.level), "little") if isinstance(
                        st.level, (bytes, bytearray)) else int(st.level), "message": st.message, **vals}
        else:
            body = json.loads(msg.data)
            if "success" in body:
                out["episodes"].append(body)
    out["targets"] = {t: {"min_hz": hz, "rate_hz": out["topics"].get(t, {}).get("rate_hz", 0.0),
                          "met": out["topics"].get(t, {}).get("rate_hz", 0.0) >= hz} for t, hz in RATE_TARGETS.items()}
    return out


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def cmd_sim(args) -> int:
    if args.duration is not None and args.duration <= 0:
        raise ValueError(f"--duration must be > 0 seconds, got {args.duration}")
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    record_dir = Path(args.record).resolve() if args.record else None
    tmp = None
    if record_dir is None and args.video:
        tmp = tempfile.TemporaryDirectory(prefix="k4d_sim_")
        record_dir = Path(tmp.name)
    workdir = record_dir if record_dir is not None else Path(tempfile.mkdtemp(prefix="k4d_sim_"))
    workdir.mkdir(parents=True, exist_ok=True)
    record_path = record_dir / RECORDING_NAME if record_dir is not None else None
    if record_path is not None and record_path.exists():
        record_path.unlink()
    nodes = build_graph(args, workdir)
    if not args.headless:
        if shutil.which("rviz2"):
            rviz = Path(importlib.import_module("k4d_bringup").__file__).resolve().parents[1] / "rviz" / "k4d.rviz"
            subprocess.Popen(["rviz2", "-d", str(rviz)], start_new_session=True)
        else:
            print("k4d sim: rviz2 is not installed (no ROS distro): running headless; open the recording in "
                  "Foxglove or look at the video", file=sys.stderr)
    t0 = time.time()
    if args.composed:
        result = run_composed(args, nodes, record_path)
    else:
        result = run_processes(args, nodes, workdir, record_path)
    summary = {"command": "k4d sim " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "k4d sim",
               "scenario": args.scenario, "seed": args.seed, "duration_s": args.duration, "wall_s": round(time.time() - t0, 2),
               **result}
    if record_path is not None and record_path.exists():
        summary["recording"] = str(record_path)
        try:
            summary.update(summarize_recording(record_path))
        except Exception as exc:  # noqa: BLE001 - a summary problem must not hide the recording
            summary["summary_error"] = f"{type(exc).__name__}: {exc}"
        video = Path(args.video).resolve() if args.video else record_dir / VIDEO_NAME
        if not args.no_video:
            try:
                from k4d_bringup.demo import video_from_recording

                summary["video"] = video_from_recording(record_path, video)
            except Exception as exc:  # noqa: BLE001
                summary["video_error"] = f"{type(exc).__name__}: {exc}"
                print(f"k4d sim: no video: {summary['video_error']}", file=sys.stderr)
        if record_dir is not None and tmp is None:
            (record_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            print(f"k4d sim: recording {record_path}\nk4d sim: summary   {record_dir / 'summary.json'}")
        if "video" in summary:
            print(f"k4d sim: video     {summary['video']['path']}")
        rates = {t: v["rate_hz"] for t, v in summary.get("topics", {}).items() if t in RATE_TARGETS}
        if rates:
            print("k4d sim: rates (Hz) " + ", ".join(f"{t} {r:.1f}" for t, r in rates.items()))
    if tmp is not None:
        tmp.cleanup()
    if result.get("error"):
        print(f"k4d sim: error: {result['error']}", file=sys.stderr)
        return 1
    bad = {n: v["exit_code"] for n, v in result.get("nodes", {}).items() if v.get("exit_code") not in (0, -2, 130)}
    if bad:  # they ran the whole time (an early exit is an error above); this is how they stopped
        print(f"k4d sim: warning: nodes exited with non-zero codes when stopped: {bad} (see their logs)",
              file=sys.stderr)
    return 0


def cmd_replay(args) -> int:
    import rclpy

    from k4d_bringup.recording import replay

    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"recording not found: {path}")
    rclpy.init()
    node = rclpy.create_node("k4d_replay")
    stop = threading.Event()
    try:
        while True:
            counts = replay(node, path, rate=args.rate, topics=args.topics or None, stop=stop)
            print(f"k4d replay: published {sum(counts.values())} messages on {len(counts)} topics")
            if not args.loop:
                break
    except KeyboardInterrupt:
        stop.set()
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("sim", help="run the simulated YAM workcell with the k4d nodes (no ROS distro needed)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--headless", action="store_true", help="no RViz (it needs a ROS distro anyway)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this long (counted from the sim's first /joint_states) and exit 0")
    p.add_argument("--record", metavar="DIR", help="record DIR/k4d_sim.mcap, then write the video and summary.json")
    p.add_argument("--scenario", choices=SCENARIOS, default="easy", help="distractors: easy (none), medium, hard")
    p.add_argument("--seed", type=int, default=0, help="scene randomisation seed")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--processes", action="store_true", help="each node its own process (default)")
    mode.add_argument("--composed", action="store_true", help="all nodes in one process (MultiThreadedExecutor)")
    p.add_argument("--video", metavar="PATH", help="write the overlay video here (default DIR/k4d_sim.mp4)")
    p.add_argument("--no-video", action="store_true", help="record, but make no video")
    p.add_argument("--checkpoint", metavar="DIR", default="default",
                   help="world model for imagine_node (default: 'default', the model shipped with k4d_worldmodel)")
    p.add_argument("--no-world-model", action="store_true", help="do not start imagine_node")
    p.add_argument("--no-demo", action="store_true", help="no scripted demo: the arm waits for your goals")
    p.add_argument("--camera-size", metavar="WxH", help="camera resolution (default sim_node.yaml: 360x240)")
    p.add_argument("--camera-fy", type=float, help="camera focal length in pixels (fx = fy)")
    p.add_argument("--startup-timeout", type=float, default=90.0, help="seconds to wait for the sim to come up")
    p.set_defaults(func=cmd_sim)

    if "replay" not in sub.choices:
        r = sub.add_parser("replay", help="publish an MCAP recording into the ROS graph")
        r.add_argument("file", metavar="FILE.mcap")
        r.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
        r.add_argument("--topics", nargs="*", help="only these topics")
        r.add_argument("--loop", action="store_true", help="replay again and again until Ctrl-C")
        r.set_defaults(func=cmd_replay)

    # `k4d dataset ...` comes from the sim core's dataset_cli when it is there.
    if "dataset" not in sub.choices:
        if importlib.util.find_spec("k4d_bringup.dataset_cli") is not None:
            importlib.import_module("k4d_bringup.dataset_cli").add_commands(sub)
