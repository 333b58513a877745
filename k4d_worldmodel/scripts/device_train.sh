#!/usr/bin/env bash
# Train the default k4d world model on a GPU machine in one call (<= 9 min wall): generate the simulated episodes
# on the CPU cores, train the small Wan VAE and the K4D transformer under time budgets, evaluate on held-out
# episodes (other dataset seed: other scenes and objects), and pack the checkpoint + metrics into $OUT.
#
#   k4d_worldmodel/scripts/device_train.sh                 # the real run (GPU box; needs the wheels, see below)
#   OUT=/tmp/k4d_dev k4d_worldmodel/scripts/device_train.sh --smoke   # tiny CPU end-to-end check (~1 min)
#
# Options: --smoke | --episodes N (2400, split over the scenarios) | --gen-budget-s S (170: generation stops
#          starting episodes after it) | --scenarios LIST (easy,medium,hard) | --heldout N (96, other seeds)
#          | --vae-budget-s S (90) | --train-budget-s S (400) | --eval-steps N (20)
#          | --total-budget-s S (545: the transformer budget shrinks to fit it) | --eval-episodes N (24)
#          | --resume (a second call on the same, still warm machine: no generation, the VAE and the data of
#            the first call are reused and the transformer continues from its last checkpoint; its clips'
#            encodings too, read back from $WORK/run/encoded/, train's encoded cache: no reading or encoding)
#          | --vae-only (generate and train the VAE only; a later --resume call trains the transformer)
#          | --vae-from DIR (start from the VAE in DIR, e.g. the vae/ a --vae-only call returned, when the machine
#            of that call is gone: new data is generated, the VAE trains only if --vae-budget-s is given)
#          | --init-from DIR (the transformer starts from the K4D pipeline in DIR, e.g. the previous model, instead
#            of from scratch: DIR's transformer and image encoder with this run's VAE, trained as a full
#            fine-tuning; DIR's geometry, encoding and variant must be the config's. A VAE that moved since DIR
#            was trained shifts the latents, which the fine-tuning follows)
#          | --vae-depth-weight W (vae.pointmap_depth_weight: the L1 weight of the pointmap's depth channel)
#          | --vae-lr LR (vae.lr: e.g. lower than the config's when a trained VAE continues with a fresh optimiser)
#          | --vae-raised-weight W (vae.pointmap_raised_weight: the extra L1 weight of the objects' pointmap pixels)
#          | --condition-fill MODE (condition_fill: zeros, the release's, or first_frame, the still first frame in
#            every latent frame of the condition; with --init-from a model trained on the other one switches)
#          | --change-weight W (change_weight: the latent cells where the world itself moves, mostly the
#            manipulated object, weigh 1 + W in the transformer's loss; objective.change_mask)
#          | --lr-decay-steps N (lr_schedule cosine: the transformer's lr falls from the config's to min_lr_ratio of
#            it over the N steps after this call's start, e.g. a last --resume call annealing a model trained at a
#            constant lr; the --condition-fill / --change-weight of earlier calls must be given again with it)
#          | --train-seed S (the training episodes' dataset seeds are S + k for the k-th scenario, default 0;
#            another S gives fresh clips for a model continued with --init-from, e.g. 10. The held-out episodes
#            keep seeds 1000 + k, so validation losses of runs with other S compare)
#          | --lr LR (the transformer's peak lr; e.g. lower than the config's for a model continued with --init-from)
#          | --no-bench (skip the rollout timing, which otherwise runs after the checkpoint is packed)
#          | --config NAME (default: the shipped model's recipe; metric: the v3 recipe, see configs/metric.yaml)
#          | --width W --height H --fy F (episode geometry; default 96 64 80, the models'; configs/metric_hr.yaml
#            wants 192 128 160)
#          | --gpus N (default: every visible GPU; N > 1 trains the VAE and the transformer data-parallel through
#            `accelerate launch --multi_gpu`, each process on its share of the clips with the config's batch size,
#            so the global batch is N times the config's).
# The VAE's budget, like the transformer's, shrinks to fit --total-budget-s (a first v3 call lost its VAE's
# statistics to the call limit: generation, loading and a fixed VAE budget overran 600 s).
# The transformer's validation loss (train's val_data, `k4d train --val-data`) is measured on the held-out
# episodes of $WORK/heldout (the config's val_clips of them, default its batch_size), before, after and every
# log_every steps: val_loss_* in metrics.json's train part and its history, a log line each time; a --resume call
# measures it on the held-out episodes of the first call. The model at the lowest of those measurements (on the
# changing cells, the config's keep_best_val) is kept in $WORK/run/pipeline_best and packed beside pipeline/.
# The VAE is trained by `k4d train-vae` into $WORK/run/vae, resumably: on --resume, --vae-budget-s S > 0 continues
# it for S seconds (and then starts the transformer afresh: its latents would have moved), 0 (the default on
# --resume) keeps it as it is. The transformer then trains with that VAE frozen (vae.pretrained).
# Environment: OUT (output folder, required unless --smoke), PYTHON (default python3), WORK (scratch,
# default /tmp/k4d_device), K4D_WHEELS (folder of wheels to install first; default <repo>/.whl, else
# <repo>/.whl_train, if present; a --resume call without them reuses what an earlier call installed in
# /tmp/k4d_site).
# It does not need the project venv: PYTHONPATH is set to the three repo packages (k4d_kinematics,
# k4d_bringup, k4d_worldmodel). Python packages the GPU image lacks must be carried as wheels (cp312,
# manylinux x86_64): diffusers, mujoco, yourdfpy, trimesh, ruckig, imageio-ffmpeg (+ their missing deps);
# torch, accelerate, peft, transformers, safetensors, numba, scipy, imageio, pyyaml, tqdm are in the image.
# Rendering: MUJOCO_GL=egl (on a GPU machine without libEGL, run as root, the carried <repo>/.gl/*.deb are
# unpacked first), falling back to osmesa when no EGL context can be made (as here on CPU).
#
# $OUT receives at most 8 files (the device tool's limit), each <= 16 MiB (--vae-only: vae/ with the VAE, its
# config and vae_metrics.json, plus log.txt and phases.json):
#   k4d_default.tar.part-aa, -ab, ...   tar of pipeline/ (K4DPipeline.save_pretrained, safetensors shards
#                                       <= 15 MB), eval/ (report.md, report.html, videos/) and, when the run kept
#                                       one, pipeline_best/ (the model at the best validation loss, train's
#                                       keep_best_val, with best_val.json: its step and losses; the files it
#                                       shares with pipeline/ stored once); reassemble with
#                                       cat k4d_default.tar.part-* | tar -x
#   metrics.json  (train + VAE + eval metrics, timings, options)   bench_rollout.json   sample.mp4
#   log.txt (the last 2 MB of the log)   phases.json (seconds at the end of each finished phase)
set -euo pipefail
T0=$SECONDS
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
SMOKE=0; EPISODES=2400; HELDOUT=96; VAE_BUDGET=150; TRAIN_BUDGET=420; EVAL_STEPS=20; TOTAL_BUDGET=545
GEN_BUDGET=170; SCENARIOS=easy,medium,hard; RESUME=0; EVAL_EPISODES=24; VAE_ONLY=0; VAE_BUDGET_SET=0
TRAIN_SEED=0; LR=""; VAE_TRAINED=0; VAE_FROM=""; INIT_FROM=""; DEPTH_WEIGHT=""; VAE_LR=""; RAISED_WEIGHT=""; COND_FILL=""; CHANGE_WEIGHT=""; LR_DECAY=""; BENCH=1; CONFIG=default; GPUS=""; W=96; H=64; FY=80.0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --resume) RESUME=1 ;;
    --vae-only) VAE_ONLY=1 ;;
    --no-bench) BENCH=0 ;;
    --vae-from) VAE_FROM=$2; shift ;;
    --init-from) INIT_FROM=$2; shift ;;
    --train-seed) TRAIN_SEED=$2; shift ;;
    --lr) LR=$2; shift ;;
    --condition-fill) COND_FILL=$2; shift ;;
    --lr-decay-steps) LR_DECAY=$2; shift ;;
    --change-weight) CHANGE_WEIGHT=$2; shift ;;
    --vae-depth-weight) DEPTH_WEIGHT=$2; shift ;;
    --vae-lr) VAE_LR=$2; shift ;;
    --vae-raised-weight) RAISED_WEIGHT=$2; shift ;;
    --eval-episodes) EVAL_EPISODES=$2; shift ;;
    --episodes) EPISODES=$2; shift ;;
    --heldout) HELDOUT=$2; shift ;;
    --vae-budget-s) VAE_BUDGET=$2; VAE_BUDGET_SET=1; shift ;;
    --train-budget-s) TRAIN_BUDGET=$2; shift ;;
    --eval-steps) EVAL_STEPS=$2; shift ;;
    --gen-budget-s) GEN_BUDGET=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --config) CONFIG=$2; shift ;;
    --gpus) GPUS=$2; shift ;;
    --width) W=$2; shift ;;
    --height) H=$2; shift ;;
    --fy) FY=$2; shift ;;
    --total-budget-s) TOTAL_BUDGET=$2; shift ;;
    *) echo "device_train.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
FRAMES=17; WORKERS=$(nproc)
if [ "$SMOKE" = 1 ]; then
  CONFIG=smoke; W=48; H=32; FY=40.0; FRAMES=5; EPISODES=3; HELDOUT=2; VAE_BUDGET=5; TRAIN_BUDGET=10; EVAL_STEPS=2
  SCENARIOS=easy,hard; GEN_BUDGET=60; EVAL_EPISODES=2
  WORKERS=1; OUT=${OUT:-/tmp/k4d_device_smoke_out}
fi
: "${OUT:?set OUT to the output folder}"
WORK=${WORK:-/tmp/k4d_device}
if [ "$RESUME" = 1 ]; then
  [ -d "$WORK/train" ] && [ -d "$WORK/run/vae" ] || { echo "device_train.sh: --resume needs $WORK/train and $WORK/run/vae" >&2; exit 3; }
  mkdir -p "$OUT"
else
  rm -rf "$WORK"; mkdir -p "$WORK" "$OUT"
fi
# The full log stays in $WORK (a first GPU run produced a log over the 16 MiB a returned file may have, and
# got nothing back when the call hit its time limit): $OUT/log.txt gets its last 2 MB and $OUT/phases.json
# the time of every finished phase, written as each phase ends and again on exit, whatever happens.
FULL_LOG="$WORK/full.log"; : > "$FULL_LOG"
exec > >(tee -a "$FULL_LOG") 2>&1
PHASES="{}"
finish() { tail -c 2000000 "$FULL_LOG" > "$OUT/log.txt" 2>/dev/null || true; echo "$PHASES" > "$OUT/phases.json"; }
phase_done() { PHASES=$("$PY" -c "import json,sys; d=json.loads(sys.argv[1]); d[sys.argv[2]]=int(sys.argv[3]); print(json.dumps(d))" "$PHASES" "$1" "$((SECONDS - T0))"); finish; }
trap finish EXIT

# the wheels: K4D_WHEELS, else the repo's .whl/ or .whl_train/ (the folder docs/GPU_RUNS.md makes), if carried
WHEELS=${K4D_WHEELS:-$REPO/.whl}
[ -z "${K4D_WHEELS:-}" ] && ! compgen -G "$WHEELS/*.whl" >/dev/null && WHEELS=$REPO/.whl_train
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/k4d_site \
      "$WHEELS"/*.whl; then
    export PYTHONPATH=/tmp/k4d_site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "device_train.sh: could not install the wheels in $WHEELS (other Python?); using the installed packages"
  fi
elif [ -z "${K4D_WHEELS:-}" ] && [ -d /tmp/k4d_site ]; then
  # a later call on the same warm machine: the wheels an earlier call installed are still there, so the call
  # need not carry them again (36 MiB of the 64 MiB a call may carry; room for a checkpoint to --init-from: a
  # first call may carry the wheels alone and only install them, as docs/GPU_RUNS.md shows)
  export PYTHONPATH=/tmp/k4d_site${PYTHONPATH:+:$PYTHONPATH}
  echo "device_train.sh: using the wheels an earlier call installed in /tmp/k4d_site"
fi
if [ -d /tmp/k4d_site/huggingface_hub ] && ! "$PY" -c "import transformers" >/dev/null 2>&1 \
    && PYTHONPATH= "$PY" -c "import transformers" >/dev/null 2>&1; then
  # the image's transformers pins huggingface_hub (5.17: >=1.5,<2) and refuses a newer carried one, which then
  # breaks diffusers' peft import and every training step; the image's own hub serves diffusers as well
  echo "device_train.sh: the carried huggingface_hub breaks the image's transformers; removed it from /tmp/k4d_site"
  rm -rf /tmp/k4d_site/huggingface_hub /tmp/k4d_site/huggingface_hub-*.dist-info
fi
export PYTHONPATH="$REPO/k4d_kinematics:$REPO/k4d_bringup:$REPO/k4d_worldmodel${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
cd "$WORK"   # never the repo root: its package folders would shadow the Python packages

export MUJOCO_GL=egl
egl_ok() { "$PY" -c "import sys; from k4d_bringup.sim.render import gl_available; ok, why = gl_available(); print('MUJOCO_GL=egl:', ok, why); sys.exit(0 if ok else 1)"; }
if ! egl_ok; then
  # the GPU image has no libEGL: the carried .gl/ packages (docs/GPU_RUNS.md) are unpacked here, as root on a
  # machine with a GPU only (never on a workstation running --smoke); two sessions lost calls without them
  if [ "$SMOKE" = 0 ] && [ "$(id -u)" = 0 ] && command -v dpkg >/dev/null && compgen -G "$REPO/.gl/*.deb" >/dev/null \
      && "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "device_train.sh: unpacking the GL packages of $REPO/.gl (EGL for headless rendering)"
    for f in "$REPO"/.gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  if ! egl_ok; then
    export MUJOCO_GL=osmesa
    echo "falling back to MUJOCO_GL=osmesa"
  fi
fi
"$PY" -c "import torch, diffusers, mujoco; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'mujoco', mujoco.__version__)"
# Several GPUs: one process per GPU through accelerate's launcher (torch elastic underneath, NCCL). NVLink
# multicast stays off, as the lent machines require of every program started with its own environment.
[ -n "$GPUS" ] || GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# generation: the workers' EGL contexts round-robin over every GPU (k4d_bringup.dataset.generate._worker_init)
# (only the devices on which a context can really be made: a wrong MUJOCO_EGL_DEVICE_ID fails every worker)
if [ "$MUJOCO_GL" = egl ] && [ "$GPUS" -gt 1 ] && [ "$RESUME" = 0 ]; then
  EGL_OK=()
  for d in $(seq 0 $((GPUS - 1))); do
    MUJOCO_EGL_DEVICE_ID=$d egl_ok >/dev/null 2>&1 && EGL_OK+=("$d")
  done
  if [ "${#EGL_OK[@]}" -gt 0 ]; then
    export K4D_EGL_DEVICES=$(IFS=,; echo "${EGL_OK[*]}")
  fi
  echo "generation renders on EGL devices ${K4D_EGL_DEVICES:-(the default one)}"
fi
if [ "$GPUS" -gt 1 ]; then
  LAUNCH=("$PY" -m accelerate.commands.launch --multi_gpu --num_processes "$GPUS" --num_machines 1
          --mixed_precision no --dynamo_backend no)
  echo "data-parallel training on $GPUS GPUs"
else
  LAUNCH=("$PY")
fi

if [ -n "$DEPTH_WEIGHT$VAE_LR$RAISED_WEIGHT$COND_FILL$CHANGE_WEIGHT$LR_DECAY$LR" ]; then  # the config with these fields changed, saved beside the run
  "$PY" - <<PYEOF
import yaml
from k4d_worldmodel.training.config import TrainConfig
cfg = TrainConfig.from_yaml("$CONFIG")
if "$DEPTH_WEIGHT":
    cfg.vae.pointmap_depth_weight = float("$DEPTH_WEIGHT")
if "$VAE_LR":
    cfg.vae.lr = float("$VAE_LR")
if "$RAISED_WEIGHT":
    cfg.vae.pointmap_raised_weight = float("$RAISED_WEIGHT")
if "$COND_FILL":
    cfg.condition_fill = "$COND_FILL"
if "$CHANGE_WEIGHT":
    cfg.change_weight = float("$CHANGE_WEIGHT")
if "$LR_DECAY":
    cfg.lr_schedule, cfg.lr_decay_steps = "cosine", int("$LR_DECAY")
if "$LR":
    cfg.lr = float("$LR")
cfg = TrainConfig.from_dict(cfg.to_dict())  # validated: a bad value stops here, by name
open("$WORK/config.yaml.new", "w").write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
PYEOF
  mv "$WORK/config.yaml.new" "$WORK/config.yaml"
  CONFIG="$WORK/config.yaml"
  echo "config: $CONFIG (${DEPTH_WEIGHT:+vae.pointmap_depth_weight $DEPTH_WEIGHT }${VAE_LR:+vae.lr $VAE_LR }${RAISED_WEIGHT:+vae.pointmap_raised_weight $RAISED_WEIGHT }${COND_FILL:+condition_fill $COND_FILL }${CHANGE_WEIGHT:+change_weight $CHANGE_WEIGHT }${LR_DECAY:+lr_schedule cosine over $LR_DECAY steps }${LR:+lr $LR})"
elif [ "$RESUME" = 1 ] && [ -f "$WORK/config.yaml" ]; then
  # a --resume call that changes no field keeps the earlier call's config (a transformer continued on another
  # condition_fill, or a VAE on another depth weight, would be silently trained on a different objective)
  CONFIG="$WORK/config.yaml"
  echo "config: $CONFIG (the earlier call's)"
fi
if [ -n "$INIT_FROM" ]; then
  [ -f "$INIT_FROM/model_index.json" ] || { echo "device_train.sh: --init-from $INIT_FROM holds no K4D pipeline (model_index.json)" >&2; exit 3; }
fi

GEN_S=0
if [ "$RESUME" = 0 ]; then
echo "== 1. generate up to $EPISODES train episodes (scenarios $SCENARIOS, ${GEN_BUDGET} s) + $HELDOUT held-out ($FRAMES x ${H}x${W}, $WORKERS workers)"
# A file with a __main__ guard, not a here-document on stdin: generate() runs a spawn process pool, whose
# workers re-import the main module (from "<stdin>" they cannot, and each one fails and is replaced).
# One sub-folder per scenario (train/easy/000000.npz ...): the training and evaluation loaders read one level.
cat > "$WORK/generate_episodes.py" <<PYEOF
import multiprocessing as mp
import time

from k4d_bringup.dataset.generate import GenerateOptions, _worker, _worker_init

if __name__ == "__main__":
    # One process pool for every set (each new pool pays the workers' imports and JIT compilation again).
    # Held-out first (other seeds: other scenes and objects), then the training episodes interleaved over the
    # scenarios, until the generation budget is spent.
    scenarios = "$SCENARIOS".split(",")
    opts = {sc: GenerateOptions(num_frames=$FRAMES, width=$W, height=$H, fy=$FY, scenario=sc) for sc in scenarios}
    jobs = [(i, 1000 + k, "$WORK/heldout/" + sc, opts[sc], 1)
            for k, sc in enumerate(scenarios) for i in range(max(1, $HELDOUT // len(scenarios)))]
    n_held = len(jobs)
    per = max(1, $EPISODES // len(scenarios))
    jobs += [(i, $TRAIN_SEED + k, "$WORK/train/" + sc, opts[sc], 1) for i in range(per) for k, sc in enumerate(scenarios)]
    t0, metas = time.perf_counter(), []
    with mp.get_context("spawn").Pool($WORKERS, initializer=_worker_init) as pool:
        for meta in pool.imap(_worker, jobs, chunksize=1):
            metas.append(meta)
            if len(metas) > n_held and time.perf_counter() - t0 > $GEN_BUDGET:
                pool.terminate()  # unfinished episodes leave only hidden .tmp files, which the loaders skip
                break
            if len(metas) % 200 == 0:
                print(f"{len(metas)} episodes in {time.perf_counter() - t0:.0f} s", flush=True)
    for part, ms in (("heldout", metas[:n_held]), ("train", metas[n_held:])):
        for sc in scenarios:
            m = [x for x in ms if x["scenario"] == sc]
            print(part, sc, len(m), {l: sum(x["label"] == l for x in m) for l in ("success", "near_miss", "failure")})
PYEOF
"$PY" "$WORK/generate_episodes.py"
GEN_S=$((SECONDS - T0))
echo "generation took ${GEN_S} s"
phase_done generate
fi

# the transformer gets what is left of the total budget after generation, the VAE, encoding and evaluation
# reading and encoding the clips are shared by the processes (one GPU: about 75 + 40 s for 2,400 clips; four:
# 12 + 10 s for 1,081, at 96 x 64). Encoding grows with the pixels: 96 s for 1,441 clips of 192 x 128 on two
# GPUs, where an estimate made for 96 x 64 (27 s) let the ninth session's transformer call overrun 600 s
NP=$(( GPUS > 1 ? GPUS : 1 ))
EVAL_EST=$(( EVAL_EPISODES > 0 ? (SMOKE == 1 ? 20 : 90) : 0 ))
# reading the clips and the VAE's end (latent statistics, save) grow with the pixels too: at 192 x 128 on one GPU
# 2,131 clips took 111-120 s to read and the end about 70 s, where 80 and 30 had been reserved (a thirteenth-
# session call overran 600 s that way). PXF: 1 up to 128 x 96 pixels (the reserves as before), 2 at 192 x 128
PXF=$(( W * H > 12288 ? W * H / 12288 : 1 ))
# The transformer reads whole clips (about 0.05 s a clip of 192 x 128 on 16 cores, most of it passing 19 MB
# pickles from the reading processes); the VAE reads only the RGB and pointmap code of each (6 MB), counted at
# 0.013 s a clip at PXF 1 and twice that at PXF 2 (on one GPU; shared by the processes of several)
N_CLIPS=$(find "$WORK/train" -name '*.npz' ! -name '.*' 2>/dev/null | wc -l)
# Both the transformer's reading and the encoding scale with the clips (sized for 2,000; floor 600 clips):
# 1,775 clips of 192 x 128 were read in 77 s and encoded in 155 s on one H100, so a call that generated fewer
# clips than that gets the time back for training instead of reserving it for clips that do not exist
N_EST=$(( N_CLIPS > 600 ? N_CLIPS : 600 ))
ENC_EST=$(( SMOKE == 1 ? 5 : (10 + 35 / NP) * W * H * N_EST / (6144 * 2000) + 10 ))
BENCH_EST=$(( BENCH == 1 ? (SMOKE == 1 ? 5 : 60) : 0 )); LOAD_EST=$(( SMOKE == 1 ? 2 : 20 + 60 * PXF * N_EST / (NP * 2000) ))
VAE_LOAD_EST=$(( SMOKE == 1 ? 2 : 15 + N_CLIPS * PXF * 13 / (1000 * NP) ))
VAE_TAIL=$(( 30 + 45 * (PXF - 1) ))
if [ -n "$VAE_FROM" ]; then
  [ -f "$VAE_FROM/config.json" ] || { echo "device_train.sh: --vae-from $VAE_FROM holds no VAE (config.json)" >&2; exit 3; }
  mkdir -p "$WORK/run"; rm -rf "$WORK/run/vae"; cp -r "$VAE_FROM" "$WORK/run/vae"
  [ "$VAE_BUDGET_SET" = 0 ] && VAE_BUDGET=0
fi
[ "$RESUME" = 1 ] && [ "$VAE_BUDGET_SET" = 0 ] && VAE_BUDGET=0  # the VAE of the first call is reused as it is
if [ "$VAE_BUDGET" -gt 0 ]; then
  # reading the clips (VAE_LOAD_EST), the latent statistics and the save (VAE_TAIL) must fit in the call too
  VAE_LEFT=$(( TOTAL_BUDGET - $((SECONDS - T0)) - VAE_LOAD_EST - VAE_TAIL ))
  [ "$VAE_ONLY" = 0 ] && VAE_LEFT=$(( VAE_LEFT - LOAD_EST - EVAL_EST - ENC_EST - BENCH_EST - 60 ))
  if [ "$VAE_LEFT" -lt "$VAE_BUDGET" ]; then VAE_BUDGET=$(( VAE_LEFT > 10 ? VAE_LEFT : 10 )); fi
  VAE_RESUME=""; [ -f "$WORK/run/vae/config.json" ] && VAE_RESUME=--resume
  echo "== 2a. train the VAE ($CONFIG, ${VAE_BUDGET} s${VAE_RESUME:+, continuing}; $N_CLIPS clips, their reading counted ${VAE_LOAD_EST} s)"
  "${LAUNCH[@]}" -m k4d_worldmodel.train_cli train-vae --data "$WORK/train" --config "$CONFIG" --out "$WORK/run/vae" \
    --time-budget-s "$VAE_BUDGET" --no-progress --load-workers $(( WORKERS > 1 ? WORKERS : 0 )) $VAE_RESUME
  # a transformer trained on the old latents cannot continue on the new ones
  [ -d "$WORK/run/checkpoints" ] && { echo "the VAE moved: the transformer starts afresh"; rm -rf "$WORK/run/checkpoints"; }
  VAE_TRAINED=1
  phase_done vae
fi
if [ "$VAE_ONLY" = 1 ]; then
  mkdir -p "$OUT/vae"
  cp "$WORK/run/vae/config.json" "$WORK/run/vae/vae_metrics.json" "$WORK/run/vae/"*.safetensors "$OUT/vae/"
  echo "device_train.sh: --vae-only done in $((SECONDS - T0)) s"; exit 0
fi
# a transformer continuing on the clips and the VAE of an earlier call reads that call's encodings (train's
# encoded cache, run/encoded/: seconds for what took 98 + 188 s for 2,450 clips of 192 x 128) instead of reading
# and encoding the clips again; the VAE trained in this call would have removed the checkpoints
# (also for --init-from, whose frozen encoders are this run's VAE and the image encoder every run of the config
# builds from its seed: a call that generated and encoded the clips from scratch, carrying the wheels, and a
# --resume --init-from call carrying the checkpoint; train() re-encodes on a fingerprint miss)
if [ "$RESUME" = 1 ] && [ "$VAE_TRAINED" = 0 ] && compgen -G "$WORK/run/encoded/*.json" >/dev/null; then
  LOAD_EST=$(( SMOKE == 1 ? 2 : 30 )); ENC_EST=0
  echo "the encodings of the earlier call are reused ($(du -sh "$WORK/run/encoded" | cut -f1))"
fi
# the validation clips (held-out episodes, a batch of them at most) are read and encoded by every call, each
# process reading all of them: counted 10 s at PXF 1 (96 clips of 96 x 64), 20 at PXF 2 (24 of 192 x 128)
VAL_DATA=""; VAL_EST=0
if [ -n "$(find "$WORK/heldout" -name '*.npz' ! -name '.*' 2>/dev/null | head -n 1)" ]; then
  VAL_DATA="$WORK/heldout"; VAL_EST=$(( SMOKE == 1 ? 1 : 10 * PXF ))
fi
LEFT=$(( TOTAL_BUDGET - $((SECONDS - T0)) - EVAL_EST - LOAD_EST - ENC_EST - BENCH_EST - VAL_EST - 25 ))
if [ "$LEFT" -lt "$TRAIN_BUDGET" ]; then TRAIN_BUDGET=$(( LEFT > 10 ? LEFT : 10 )); fi
echo "== 2b. train the transformer ($CONFIG, VAE frozen): budget ${TRAIN_BUDGET} s${VAL_DATA:+, validation loss on $VAL_DATA}"
if [ -n "$INIT_FROM" ] && [ -d "$WORK/run/checkpoints" ]; then
  # --init-from says where the transformer starts; an earlier call's checkpoint would otherwise win silently
  echo "--init-from: the transformer checkpoints of an earlier call are dropped"; rm -rf "$WORK/run/checkpoints"
fi
TR_RESUME=0; [ -d "$WORK/run/checkpoints" ] && TR_RESUME=1
if [ -n "$INIT_FROM" ]; then
  # the start: INIT_FROM's pipeline with this run's VAE (weights, config and latent statistics) in it
  rm -rf "$WORK/run/base"; mkdir -p "$WORK/run/base"
  (cd "$INIT_FROM" && tar -cf - --exclude=./vae .) | tar -C "$WORK/run/base" -xf -
  mkdir -p "$WORK/run/base/vae"; cp "$WORK/run/vae/config.json" "$WORK/run/vae/"*.safetensors "$WORK/run/base/vae/"
  echo "the transformer starts from $INIT_FROM, with this run's VAE"
fi
# a file with a __main__ guard again: the clips are read by spawned DataLoader workers
cat > "$WORK/train_model.py" <<PYEOF
from k4d_worldmodel.training.config import TrainConfig
from k4d_worldmodel.training.train import train

if __name__ == "__main__":
    cfg = TrainConfig.from_yaml("$CONFIG")
    cfg.vae.pretrained = "$WORK/run/vae"
    cfg.vae.train = False
    cfg.load_workers = $WORKERS if $WORKERS > 1 else 0
    if "$INIT_FROM":
        cfg.base.checkpoint_dir = "$WORK/run/base"
    train("$WORK/train", cfg, "$WORK/run", resume=bool($TR_RESUME), time_budget_s=float($TRAIN_BUDGET), progress=False,
          val_data="$VAL_DATA" or None)
PYEOF
"${LAUNCH[@]}" "$WORK/train_model.py"
phase_done train

if [ "$EVAL_EPISODES" -gt 0 ]; then
  echo "== 3. evaluate on the held-out episodes ($EVAL_STEPS steps)"
  "$PY" -m k4d_worldmodel.train_cli eval --checkpoint "$WORK/run/pipeline" --data "$WORK/heldout" --split all \
    --out "$WORK/run/eval" --steps "$EVAL_STEPS" --videos 4 --no-progress --max-episodes "$EVAL_EPISODES"
  phase_done eval
fi
echo "== 4. pack"
"$PY" - <<PYEOF
import json, pathlib, time
run = pathlib.Path("$WORK/run")
ev_file = run / "eval" / "metrics.json"
ev = json.loads(ev_file.read_text()) if ev_file.is_file() else {"header": {}, "summary": {}, "wall_s": 0.0}
vae_file = run / "vae" / "vae_metrics.json"
out = {"train": json.loads((run / "train_metrics.json").read_text()),
       "vae": json.loads(vae_file.read_text()) if vae_file.is_file() else {},
       "eval": {"header": ev["header"], "summary": ev["summary"], "wall_s": ev["wall_s"]},
       "options": {"config": "$CONFIG", "gpus": $GPUS, "episodes": $EPISODES, "heldout": $HELDOUT, "frames": $FRAMES,
                   "height": $H, "width": $W, "fy": $FY, "mujoco_gl": "$MUJOCO_GL", "generation_s": $GEN_S,
                   "train_seed": $TRAIN_SEED}}
pathlib.Path("$OUT/metrics.json").write_text(json.dumps(out, indent=1))
PYEOF
first_video=$(ls "$WORK/run/eval/videos"/*.mp4 2>/dev/null | head -n 1 || true)
mkdir -p "$WORK/run/eval"
[ -n "$first_video" ] && cp "$first_video" "$OUT/sample.mp4"
cp "$WORK/run/config.yaml" "$WORK/run/pipeline/train_config.yaml"
# the model at the best validation loss (train's keep_best_val) goes in the same tar when the run kept one; its
# files equal to pipeline/'s (the frozen VAE and image encoder, everything when the best was the last step) are
# hard links there, so the tar holds their bytes once (tar -x makes them hard links again)
PACK_DIRS=(pipeline eval); PACK_ROOT="$WORK/run"
if [ -d "$WORK/run/pipeline_best" ]; then
  cp "$WORK/run/config.yaml" "$WORK/run/pipeline_best/train_config.yaml"
  PACK_ROOT="$WORK/pack"; rm -rf "$PACK_ROOT"; mkdir -p "$PACK_ROOT"
  cp -al "$WORK/run/pipeline" "$WORK/run/eval" "$WORK/run/pipeline_best" "$PACK_ROOT/"
  (cd "$PACK_ROOT/pipeline_best" && find . -type f | while read -r f; do
     if cmp -s "$f" "../pipeline/$f"; then ln -f "../pipeline/$f" "$f"; fi
   done)
  PACK_DIRS+=(pipeline_best)
  echo "packing pipeline_best/ too: $(tr -d '\n ' < "$WORK/run/pipeline_best/best_val.json")"
fi
tar -C "$PACK_ROOT" -cf - "${PACK_DIRS[@]}" | split -b 15m - "$OUT/k4d_default.tar.part-"
[ "$PACK_ROOT" = "$WORK/run" ] || rm -rf "$PACK_ROOT"
PARTS=$(find "$OUT" -maxdepth 1 -name 'k4d_default.tar.part-*' | wc -l)
OTHER=$((4 + BENCH))  # metrics.json, sample.mp4, log.txt, phases.json (+ bench_rollout.json)
if [ $((PARTS + OTHER)) -gt 8 ]; then
  echo "device_train.sh: warning: $PARTS tar parts ($(du -cm "$OUT"/k4d_default.tar.part-* | tail -n 1 | cut -f1) MB) and $OTHER other files are more than the 8 files (64 MiB) a device call returns"
fi
phase_done pack
if [ "$BENCH" = 1 ]; then
echo "== 5. rollout wall time on this device (17 and 49 frames)"
"$PY" "$REPO/k4d_worldmodel/benchmarks/bench_rollout.py" --checkpoint "$WORK/run/pipeline" --repeats 3 --frames 17,49 --vae-autocast off \
  --json "$OUT/bench_rollout.json" || echo "bench_rollout failed (the checkpoint is still packed)"
phase_done bench

fi
ls -l "$OUT"
echo "device_train.sh: done in $((SECONDS - T0)) s"
