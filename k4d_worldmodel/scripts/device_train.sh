#!/usr/bin/env bash
# Train the default k4d world model on a GPU machine in one call (<= 9 min wall): generate the simulated episodes
# on the CPU cores, train the small Wan VAE and the K4D transformer under time budgets, evaluate on held-out
# episodes (other dataset seed: other scenes and objects), and pack the checkpoint + metrics into $OUT.
#
#   k4d_worldmodel/scripts/device_train.sh                 # the real run (GPU box; needs the wheels, see below)
#   OUT=/tmp/k4d_dev k4d_worldmodel/scripts/device_train.sh --smoke   # tiny CPU end-to-end check (~1 min)
#
# Options: --smoke | --episodes N (400) | --heldout N (48) | --vae-budget-s S (90) | --train-budget-s S (200)
#          | --eval-steps N (20) | --total-budget-s S (510: the transformer budget shrinks to fit it).
# Environment: OUT (output folder, required unless --smoke), PYTHON (default python3), WORK (scratch,
# default /tmp/k4d_device), K4D_WHEELS (folder of wheels to install first; default <repo>/.whl if present).
# It does not need the project venv: PYTHONPATH is set to the three repo packages (k4d_kinematics,
# k4d_bringup, k4d_worldmodel). Python packages the GPU image lacks must be carried as wheels (cp312,
# manylinux x86_64): diffusers, mujoco, yourdfpy, trimesh, ruckig, imageio-ffmpeg (+ their missing deps);
# torch, accelerate, peft, transformers, safetensors, numba, scipy, imageio, pyyaml, tqdm are in the image.
# Rendering: MUJOCO_GL=egl, falling back to osmesa when no EGL context can be made (as here on CPU).
#
# $OUT receives at most 8 files (the device tool's limit), each <= 16 MiB:
#   k4d_default.tar.part-aa, -ab, ...   tar of pipeline/ (K4DPipeline.save_pretrained, safetensors shards
#                                       <= 15 MB) and eval/ (report.md, report.html, videos/); reassemble with
#                                       cat k4d_default.tar.part-* | tar -x
#   metrics.json  (train + VAE + eval metrics, timings, options)   report.md   sample.mp4
#   log.txt (the last 2 MB of the log)   phases.json (seconds at the end of each finished phase)
set -euo pipefail
T0=$SECONDS
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
SMOKE=0; EPISODES=400; HELDOUT=48; VAE_BUDGET=90; TRAIN_BUDGET=200; EVAL_STEPS=20; TOTAL_BUDGET=510
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --episodes) EPISODES=$2; shift ;;
    --heldout) HELDOUT=$2; shift ;;
    --vae-budget-s) VAE_BUDGET=$2; shift ;;
    --train-budget-s) TRAIN_BUDGET=$2; shift ;;
    --eval-steps) EVAL_STEPS=$2; shift ;;
    --total-budget-s) TOTAL_BUDGET=$2; shift ;;
    *) echo "device_train.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
CONFIG=default; W=96; H=64; FY=80.0; FRAMES=17; WORKERS=$(nproc)
if [ "$SMOKE" = 1 ]; then
  CONFIG=smoke; W=48; H=32; FY=40.0; FRAMES=5; EPISODES=3; HELDOUT=2; VAE_BUDGET=5; TRAIN_BUDGET=10; EVAL_STEPS=2
  WORKERS=1; OUT=${OUT:-/tmp/k4d_device_smoke_out}
fi
: "${OUT:?set OUT to the output folder}"
WORK=${WORK:-/tmp/k4d_device}
rm -rf "$WORK"; mkdir -p "$WORK" "$OUT"
# The full log stays in $WORK (a first GPU run produced a log over the 16 MiB a returned file may have, and
# got nothing back when the call hit its time limit): $OUT/log.txt gets its last 2 MB and $OUT/phases.json
# the time of every finished phase, written as each phase ends and again on exit, whatever happens.
FULL_LOG="$WORK/full.log"; : > "$FULL_LOG"
exec > >(tee -a "$FULL_LOG") 2>&1
PHASES="{}"
finish() { tail -c 2000000 "$FULL_LOG" > "$OUT/log.txt" 2>/dev/null || true; echo "$PHASES" > "$OUT/phases.json"; }
phase_done() { PHASES=$("$PY" -c "import json,sys; d=json.loads(sys.argv[1]); d[sys.argv[2]]=int(sys.argv[3]); print(json.dumps(d))" "$PHASES" "$1" "$((SECONDS - T0))"); finish; }
trap finish EXIT

WHEELS=${K4D_WHEELS:-$REPO/.whl}
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/k4d_site \
      "$WHEELS"/*.whl; then
    export PYTHONPATH=/tmp/k4d_site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "device_train.sh: could not install the wheels in $WHEELS (other Python?); using the installed packages"
  fi
fi
export PYTHONPATH="$REPO/k4d_kinematics:$REPO/k4d_bringup:$REPO/k4d_worldmodel${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
cd "$WORK"   # never the repo root: its package folders would shadow the Python packages

export MUJOCO_GL=egl
if ! "$PY" -c "import sys; from k4d_bringup.sim.render import gl_available; ok, why = gl_available(); print('MUJOCO_GL=egl:', ok, why); sys.exit(0 if ok else 1)"; then
  export MUJOCO_GL=osmesa
  echo "falling back to MUJOCO_GL=osmesa"
fi
"$PY" -c "import torch, diffusers, mujoco; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'mujoco', mujoco.__version__)"

echo "== 1. generate $EPISODES train + $HELDOUT held-out episodes ($FRAMES x ${H}x${W}, $WORKERS workers)"
# A file with a __main__ guard, not a here-document on stdin: generate() runs a spawn process pool, whose
# workers re-import the main module (from "<stdin>" they cannot, and each one fails and is replaced).
cat > "$WORK/generate_episodes.py" <<PYEOF
from k4d_bringup.dataset.generate import generate

if __name__ == "__main__":
    kw = dict(num_frames=$FRAMES, width=$W, height=$H, fy=$FY, workers=$WORKERS, progress=False)
    m = generate($EPISODES, 0, "$WORK/train", **kw)
    h = generate($HELDOUT, 1000, "$WORK/heldout", **kw)
    print("labels train", {l: sum(x["label"] == l for x in m) for l in ("success", "near_miss", "failure")},
          "heldout", {l: sum(x["label"] == l for x in h) for l in ("success", "near_miss", "failure")})
PYEOF
"$PY" "$WORK/generate_episodes.py"
GEN_S=$((SECONDS - T0))
echo "generation took ${GEN_S} s"
phase_done generate

# the transformer gets what is left of the total budget after generation, the VAE, encoding and evaluation
EVAL_EST=$(( SMOKE == 1 ? 20 : 100 )); ENC_EST=$(( SMOKE == 1 ? 5 : 40 ))
LEFT=$(( TOTAL_BUDGET - GEN_S - VAE_BUDGET - EVAL_EST - ENC_EST - 20 ))
if [ "$LEFT" -lt "$TRAIN_BUDGET" ]; then TRAIN_BUDGET=$(( LEFT > 10 ? LEFT : 10 )); fi
echo "== 2. train ($CONFIG): VAE budget ${VAE_BUDGET} s, transformer budget ${TRAIN_BUDGET} s"
"$PY" - <<PYEOF
from k4d_worldmodel.training.config import TrainConfig
from k4d_worldmodel.training.train import train
cfg = TrainConfig.from_yaml("$CONFIG")
cfg.vae.time_budget_s = float($VAE_BUDGET)
train("$WORK/train", cfg, "$WORK/run", time_budget_s=float($TRAIN_BUDGET), progress=False)
PYEOF
phase_done train

echo "== 3. evaluate on the held-out episodes ($EVAL_STEPS steps)"
"$PY" -m k4d_worldmodel.train_cli eval --checkpoint "$WORK/run/pipeline" --data "$WORK/heldout" --split all \
  --out "$WORK/run/eval" --steps "$EVAL_STEPS" --videos 4 --no-progress
phase_done eval

echo "== 4. pack"
"$PY" - <<PYEOF
import json, pathlib, time
run = pathlib.Path("$WORK/run")
ev = json.loads((run / "eval" / "metrics.json").read_text())
out = {"train": json.loads((run / "train_metrics.json").read_text()),
       "eval": {"header": ev["header"], "summary": ev["summary"], "wall_s": ev["wall_s"]},
       "options": {"config": "$CONFIG", "episodes": $EPISODES, "heldout": $HELDOUT, "frames": $FRAMES,
                   "height": $H, "width": $W, "fy": $FY, "mujoco_gl": "$MUJOCO_GL", "generation_s": $GEN_S}}
pathlib.Path("$OUT/metrics.json").write_text(json.dumps(out, indent=1))
PYEOF
cp "$WORK/run/eval/report.md" "$OUT/report.md"
first_video=$(ls "$WORK/run/eval/videos"/*.mp4 2>/dev/null | head -n 1 || true)
[ -n "$first_video" ] && cp "$first_video" "$OUT/sample.mp4"
cp "$WORK/run/config.yaml" "$WORK/run/pipeline/train_config.yaml"
tar -C "$WORK/run" -cf - pipeline eval | split -b 15m - "$OUT/k4d_default.tar.part-"
phase_done pack
ls -l "$OUT"
echo "device_train.sh: done in $((SECONDS - T0)) s"
