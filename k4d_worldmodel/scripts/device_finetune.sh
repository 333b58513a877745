#!/usr/bin/env bash
# Continue training a saved k4d model on fresh simulated episodes on a lent GPU machine, in calls that each fit
# the 64 MiB carry limit and the 10-minute call limit:
#
#   device_finetune.sh gen   [--episodes N] [--gen-budget-s S]    # carry the simulator wheels + .gl; the model is
#                                                                 # not needed (move the checkpoint out of the tree)
#   device_finetune.sh train [--budget-s S] [--resume] [--convert-variant V]
#                                                                 # the same, still warm machine; carry .whl_slim
#
# gen writes N episodes per scenario (easy, medium, hard; 17 frames of 96 x 64; seeds 5000 + k, apart from every
# set the project evaluates on) to $WORK/train. train runs `k4d train` in mode full from CHECKPOINT (default: the
# shipped model; `--base-checkpoint`: every transformer weight continues, VAE and image encoder frozen) with the
# default config at half its learning rate (--convert-variant jointemb: rebuilt as the joint-vector "emb." ablation
# first, shared weights kept; see TrainConfig.convert_variant), and packs $WORK/run/pipeline into $OUT/k4d_ft.tar.part-* (<= 15 MB
# each; `cat k4d_ft.tar.part-* | tar -x`) plus $OUT/train_metrics.json. --resume continues $WORK/run.
# Environment: OUT (required), PYTHON (python3), WORK (/tmp/k4d_ft), K4D_WHEELS (wheels to install first),
# CHECKPOINT.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
: "${OUT:?set OUT}"
WORK=${WORK:-/tmp/k4d_ft}
PHASE=${1:?gen or train}; shift
EPISODES=800; GEN_BUDGET=50; BUDGET=420; RESUME=(); CONVERT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --episodes) EPISODES=$2; shift ;;
    --gen-budget-s) GEN_BUDGET=$2; shift ;;
    --budget-s) BUDGET=$2; shift ;;
    --resume) RESUME=(--resume) ;;
    --convert-variant) CONVERT=$2; shift ;;
    *) echo "device_finetune.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$WORK" "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
if [ -n "${K4D_WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/k4d_ft_site \
      "$K4D_WHEELS"/*.whl
  export PYTHONPATH=/tmp/k4d_ft_site
fi
export PYTHONPATH="$REPO/k4d_kinematics:$REPO/k4d_bringup:$REPO/k4d_worldmodel${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$WORK"  # never the repo root: its package folders would shadow the Python packages

if [ "$PHASE" = gen ]; then
  export MUJOCO_GL=egl
  cat > "$WORK/gen.py" <<PYEOF
import os
import time

from k4d_bringup.dataset.generate import generate

if __name__ == "__main__":  # generate() runs a spawn pool, whose workers re-import this file
    t0 = time.perf_counter()
    for k, sc in enumerate(("easy", "medium", "hard")):
        metas = generate($EPISODES, 5000 + k, "$WORK/train/" + sc, workers=os.cpu_count(), num_frames=17,
                         width=96, height=64, fy=80.0, scenario=sc, progress=False, time_budget_s=$GEN_BUDGET)
        print(f"{sc}: {len(metas)} episodes, {time.perf_counter() - t0:.0f} s", flush=True)
PYEOF
  $PY "$WORK/gen.py"
elif [ "$PHASE" = train ]; then
  CKPT=${CHECKPOINT:-$REPO/k4d_worldmodel/k4d_worldmodel/checkpoints/k4d-yam-sim}
  $PY - "$WORK/continue.yaml" "$CONVERT" <<'PYEOF'
import sys

import yaml

from k4d_worldmodel.training.config import TrainConfig

cfg = TrainConfig.from_yaml("default").to_dict()
# clips read by 16 workers: one process needs minutes for 2,400 episodes (a first call ran out of time there)
cfg.update(lr=cfg["lr"] / 2, warmup_steps=50, checkpoint_every=300, load_workers=16, convert_variant=sys.argv[2])
open(sys.argv[1], "w").write(yaml.safe_dump(cfg, sort_keys=False))
PYEOF
  $PY -m k4d_worldmodel.training.train --data "$WORK/train" --config "$WORK/continue.yaml" \
      --base-checkpoint "$CKPT" --out "$WORK/run" --time-budget-s "$BUDGET" --no-progress "${RESUME[@]}"
  cp "$WORK/run/train_metrics.json" "$OUT/"
  (cd "$WORK/run" && tar -cf - pipeline | split -b 15000000 - "$OUT/k4d_ft.tar.part-")
  ls -la "$OUT"
else
  echo "device_finetune.sh: phase must be gen or train, got $PHASE" >&2; exit 2
fi
