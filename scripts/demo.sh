#!/usr/bin/env bash
# The k4d main demo: the simulated YAM workcell with the k4d nodes, headless, recorded, then rendered to a video.
#   scripts/demo.sh [SECONDS] [extra k4d sim arguments, e.g. --scenario medium --seed 3]
# Sets the machine up first when needed (scripts/setup.sh), runs
#   .venv/bin/k4d sim --headless --duration SECONDS --record out/demo
# and prints where the recording (MCAP, opens in Foxglove), the video and the summary went.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${1:-45}"
shift || true
"$ROOT/scripts/setup.sh"
cd "$ROOT"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export MUJOCO_GL="${MUJOCO_GL:-osmesa}"
OUT="$ROOT/out/demo"
rm -rf "$OUT"
"$ROOT/.venv/bin/k4d" sim --headless --duration "$DURATION" --record "$OUT" "$@"
echo
echo "k4d demo done:"
echo "  video      $OUT/k4d_sim.mp4   (camera + live robot pointmap mask + plan ghost)"
echo "  recording  $OUT/k4d_sim.mcap  (open in Foxglove; replay: .venv/bin/k4d replay $OUT/k4d_sim.mcap)"
echo "  summary    $OUT/summary.json  (topic rates, sim lag, demo episodes)"
