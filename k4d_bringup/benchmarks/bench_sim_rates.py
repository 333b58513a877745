"""Topic rates of a ``k4d sim`` run, measured over real DDS from a separate subscriber process.

    .venv/bin/python k4d_bringup/benchmarks/bench_sim_rates.py [--duration 20] [--record] [--composed]

Starts ``k4d sim --headless`` as a child process (all its nodes are processes of their own), subscribes
from this process (raw CDR, counting only: no deserialisation) to every topic of the graph, and after a
warm-up measures each topic's rate over ``--window`` seconds, the sim's lag behind real time (from its
/diagnostics) and the age of the joint states on arrival. Prints a table with the targets for a
2-core machine (joint_states >= 225 Hz, camera >= 27 Hz, robot pointmap >= 27 Hz), the device and the
commit. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TARGETS = {"/joint_states": 225.0, "/camera/color/image_raw": 27.0, "/camera/color/camera_info": 27.0,
           "/camera/depth/image_rect_raw": 27.0, "/k4d/robot_pointmap": 27.0, "/k4d/robot_mask": 27.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=25.0, help="k4d sim --duration (s)")
    ap.add_argument("--warmup", type=float, default=6.0, help="seconds after the first joint state before measuring")
    ap.add_argument("--window", type=float, default=12.0, help="measurement window (s)")
    ap.add_argument("--record", action="store_true", help="also record (k4d sim --record, no video)")
    ap.add_argument("--composed", action="store_true", help="k4d sim --composed")
    ap.add_argument("--sim-args", default="", help="extra k4d sim arguments, e.g. '--camera-size 720x480 --camera-fy 600'")
    args = ap.parse_args()

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import JointState

    from k4d_bringup.sim_cli import recorded_topics

    tmp = tempfile.mkdtemp(prefix="k4d_bench_")
    cmd = [str(Path(sys.executable).with_name("k4d")), "sim", "--headless", "--duration", str(args.duration)]
    if args.record:
        cmd += ["--record", tmp, "--no-video"]
    if args.composed:
        cmd += ["--composed"]
    cmd += args.sim_args.split()
    sim = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    rclpy.init()
    node = rclpy.create_node("k4d_bench_rates")
    arrivals: dict[str, list[float]] = {t: [] for t, _c, _q in recorded_topics()}
    js_age: list[float] = []
    lag: dict[str, str] = {}

    def counter(topic):
        def cb(data):
            now = time.monotonic()
            arrivals[topic].append(now)
            if topic == "/joint_states" and len(arrivals[topic]) % 25 == 0:
                m = deserialize_message(data, JointState)
                js_age.append(time.time() - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9))
            if topic == "/diagnostics":
                for st in deserialize_message(data, DiagnosticArray).status:
                    if st.name.startswith("k4d_sim: joint_states"):
                        lag.update({kv.key: kv.value for kv in st.values})
        return cb

    for topic, cls, qos in recorded_topics():
        node.create_subscription(cls, topic, counter(topic), qos, raw=True)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    deadline = time.monotonic() + 120
    while not arrivals["/joint_states"] and time.monotonic() < deadline and sim.poll() is None:
        time.sleep(0.1)
    t_start = time.monotonic() + args.warmup
    t_end = t_start + args.window
    while time.monotonic() < t_end and sim.poll() is None:
        time.sleep(0.1)
    out, _ = sim.communicate(timeout=180)
    executor.shutdown(timeout_sec=2.0)
    spin.join(timeout=2.0)
    node.destroy_node()
    rclpy.try_shutdown()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                           cwd=Path(__file__).parent).stdout.strip()
    load = os.getloadavg()
    print(f"\nk4d sim rates | device: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{load[0]:.1f} | commit {commit}{'+dirty' if dirty else ''} | mode "
          f"{'composed' if args.composed else 'processes'}{' + record' if args.record else ''} {args.sim_args}")
    print(f"{'topic':36s} {'rate Hz':>9s} {'target':>7s}  ok")
    ok_all = True
    for topic, ts in arrivals.items():
        w = [t for t in ts if t_start <= t <= t_end]
        rate = (len(w) - 1) / (w[-1] - w[0]) if len(w) > 2 else 0.0
        target = TARGETS.get(topic)
        ok = target is None or rate >= target
        ok_all &= ok
        if w or target:
            print(f"{topic:36s} {rate:9.1f} {target or '':>7}  {'' if target is None else ('yes' if ok else 'NO')}")
    if js_age:
        js_age.sort()
        print(f"joint_states age on arrival: median {1e3 * js_age[len(js_age) // 2]:.2f} ms, "
              f"max {1e3 * js_age[-1]:.2f} ms")
    print(f"sim lag behind real time (sim_node diagnostics): median {lag.get('sim_lag_ms', '?')} ms, max "
          f"{lag.get('sim_lag_max_ms', '?')} ms, lag resets {lag.get('lag_resets', '?')}")
    print(f"k4d sim exit code: {sim.returncode}")
    if sim.returncode != 0:
        print(out[-3000:])
    return 0 if (ok_all and sim.returncode == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
