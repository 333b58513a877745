#!/usr/bin/env bash
# The shadow bench with the world model served over DDS, on a GPU machine that has Python 3.12 and torch but
# no ROS: the imagine node (lifecycle node, /k4d/imagine action server) on the GPU, the shadow client beside it
# in another process, Fast DDS between them (k4d_bringup/benchmarks/bench_shadow_dds.py, both ways on the same
# episodes: served, then in process).
#
#   setup: K4D_ROS_WHEELS (default <repo>/.ros312) holds the cp312 ROS 2 Kilted runtime wheels and
#          k4d_msgs_install.tgz (k4d_msgs built by colcon against those wheels with Python 3.12);
#          K4D_WHEELS (default <repo>/.whl_slim) diffusers, peft and the other wheels the image lacks.
#          Installs both sets into a prefix of their own (/tmp/k4d_rosenv), writes its env.sh (PYTHONPATH,
#          LD_LIBRARY_PATH), then checks that rclpy, k4d_msgs, torch and diffusers import and a node publishes.
#   run EPISODES_DIR [MAX_EPISODES]: the bench (K4D_NETNS=RATE: node and client on two hosts made of network
#          namespaces, a link shaped to RATE, e.g. 1gbit; needs root and iproute2); writes $OUT/shadow_dds.json, $OUT/served.jsonl,
#          $OUT/in_process.jsonl, $OUT/imagine_node.log.
#
# The two steps can be separate calls on one warm machine (the environment lives in /tmp), because the ROS
# wheels and the checkpoint do not fit one call's 64 MiB together. How the carried set is built on a machine
# with a Python 3.12: docs/GPU_RUNS.md, "Twentieth session".
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
ENV_DIR=${K4D_ROS_ENV:-/tmp/k4d_rosenv}
MSGS_DIR=$ENV_DIR/k4d_msgs_install
cmd=${1:?usage: device_shadow_dds.sh setup | run EPISODES_DIR [MAX_EPISODES]}
shift

if [ "$cmd" = setup ]; then
  ROS_WHEELS=${K4D_ROS_WHEELS:-$REPO/.ros312}
  WHEELS=${K4D_WHEELS:-$REPO/.whl_slim}
  [ -d "$ROS_WHEELS" ] || { echo "no ROS wheels at $ROS_WHEELS" >&2; exit 2; }
  rm -rf "$ENV_DIR"
  # Into a prefix of its own, with the image's pip: site-packages, and lib/ for the wheels' shared libraries.
  # --ignore-installed: without it pip first uninstalls the image's own copies (pyyaml, peft, ...) from its venv,
  # which broke the next call's imports in the twentieth session.
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --ignore-installed --prefix "$ENV_DIR" \
      "$ROS_WHEELS"/*.whl "$WHEELS"/*.whl
  mkdir -p "$MSGS_DIR"
  tar -C "$MSGS_DIR" -xzf "$ROS_WHEELS/k4d_msgs_install.tgz"
  SITE=$(find "$ENV_DIR" -maxdepth 5 -type d \( -name site-packages -o -name dist-packages \) \
         -not -path "*k4d_msgs_install*" | head -1)
  MSGS_SITE=$(ls -d "$MSGS_DIR"/k4d_msgs/lib/python3*/site-packages)
  # The image's python3 is itself a virtual environment (torch lives there), so the prefix is not made a
  # venv of its own: these variables do what the wheels' .pth bootstrap and scripts/setup.sh do in .venv.
  LIBS=$ENV_DIR/lib:$MSGS_DIR/k4d_msgs/lib
  for d in "$SITE"/*.libs; do [ -d "$d" ] && LIBS=$LIBS:$d; done
  {
    echo "export PYTHONPATH=$SITE:$MSGS_SITE:$REPO/k4d_kinematics:$REPO/k4d_bringup:$REPO/k4d_worldmodel\${PYTHONPATH:+:\$PYTHONPATH}"
    echo "export LD_LIBRARY_PATH=$LIBS\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
    echo "export AMENT_PREFIX_PATH=$ENV_DIR:$MSGS_DIR/k4d_msgs"
    echo "export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1 HF_HUB_OFFLINE=1 ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"
  } > "$ENV_DIR/env.sh"
  # shellcheck disable=SC1091
  . "$ENV_DIR/env.sh"
  cd /tmp
  $PY -c '
import platform
import rclpy, torch, diffusers, peft
from k4d_msgs.action import Imagine
from k4d_msgs.msg import ShadowEvalResult
import k4d_worldmodel.ros.imagine_node
rclpy.init()
node = rclpy.create_node("k4d_env_check")
pub = node.create_publisher(ShadowEvalResult, "/k4d/env_check", 1)
pub.publish(ShadowEvalResult())
print(f"python {platform.python_version()}, rclpy {rclpy.__file__}, torch {torch.__version__} "
      f"cuda {torch.cuda.is_available()}, diffusers {diffusers.__version__}, peft {peft.__version__}; "
      f"node {node.get_fully_qualified_name()}, action {Imagine.__name__}")
node.destroy_node()
rclpy.shutdown()
'
  exit 0
fi

if [ "$cmd" = run ]; then
  : "${OUT:?set OUT}"
  EPISODES=$(realpath "${1:?episodes folder}")  # before the cd below
  MAX=${2:-1000000}
  [ -f "$ENV_DIR/env.sh" ] || { echo "run 'setup' first on this machine ($ENV_DIR/env.sh missing)" >&2; exit 2; }
  # shellcheck disable=SC1091
  . "$ENV_DIR/env.sh"
  export PYTHONUNBUFFERED=1
  # The image has no iproute2: a carried .iproute/ (ip and tc with their libraries, RPATH $ORIGIN/../lib; how it
  # is made: docs/GPU_RUNS.md, "Twenty-first session") serves K4D_NETNS.
  if [ -x "$REPO/.iproute/bin/ip" ]; then export PATH=$REPO/.iproute/bin:$PATH; fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  cd /tmp
  set +e
  $PY "$REPO/k4d_bringup/benchmarks/bench_shadow_dds.py" "$EPISODES" --checkpoint "${CHECKPOINT:-default}" \
      --device cuda --max-episodes "$MAX" --work "$OUT/work" --json "$OUT/shadow_dds.json" \
      ${K4D_NETNS:+--netns "$K4D_NETNS"}
  rc=$?
  set -e
  for f in served.jsonl in_process.jsonl imagine_node.log; do
    if [ -f "$OUT/work/$f" ]; then mv "$OUT/work/$f" "$OUT/$f"; fi
  done
  rm -rf "$OUT/work"
  exit $rc
fi
echo "unknown command: $cmd" >&2
exit 2
