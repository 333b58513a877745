#!/usr/bin/env bash
# Time the shipped world model on a GPU machine in one call: the 17- and 49-frame rollout with and without
# CUDA graphs and the bfloat16 VAE (bench_rollout.py; the first combination is the baseline, measured in the
# same process), then shadow-mode throughput (`python -m k4d_bringup.shadow.simbench`) on carried episodes.
#
#   OUT=/tmp/k4d_bench k4d_worldmodel/scripts/device_bench.sh [EPISODES_DIR]     # default <repo>/.shadowdata
#
# Environment: OUT (required), PYTHON (python3), K4D_WHEELS (wheels the image lacks; default <repo>/.whl_slim:
# diffusers, peft, safetensors, yourdfpy, trimesh and their small deps), CHECKPOINT (default: the shipped one),
# FRAMES (17,49), SHADOW_MAX (episodes for the shadow bench, default all), SKIP_ROLLOUT=1 (shadow bench only),
# SHADOW_GRAPHS ("on off": the CUDA-graph settings the shadow bench runs with). Writes $OUT/bench_rollout.json,
# $OUT/shadow_graphs_{on,off}.json{,l} and $OUT/log.txt.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
: "${OUT:?set OUT}"
EPISODES=${1:-$REPO/.shadowdata}
WHEELS=${K4D_WHEELS:-$REPO/.whl_slim}
CKPT=${CHECKPOINT:-$REPO/k4d_worldmodel/k4d_worldmodel/checkpoints/k4d-yam-sim}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
SITE=/tmp/k4d_bench_site
if [ -d "$WHEELS" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
fi
export PYTHONPATH=$SITE:$REPO/k4d_kinematics:$REPO/k4d_bringup:$REPO/k4d_worldmodel HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [ "${SKIP_ROLLOUT:-0}" != 1 ]; then
  $PY "$REPO/k4d_worldmodel/benchmarks/bench_rollout.py" --checkpoint "$CKPT" --device cuda \
      --frames "${FRAMES:-17,49}" --repeats 5 --vae-autocast off,bfloat16 --cuda-graphs off,on \
      --json "$OUT/bench_rollout.json"
fi
if [ -d "$EPISODES" ]; then
  MAX=()
  [ -n "${SHADOW_MAX:-}" ] && MAX=(--max-episodes "$SHADOW_MAX")
  for g in ${SHADOW_GRAPHS:-on off}; do  # the same episodes with and without CUDA graphs (throughput baseline)
    (cd /tmp && $PY -m k4d_bringup.shadow.simbench "$EPISODES" --checkpoint "$CKPT" --device cuda "${MAX[@]}" \
        --cuda-graphs $g --log "$OUT/shadow_graphs_$g.jsonl" --json "$OUT/shadow_graphs_$g.json")
  done
fi
