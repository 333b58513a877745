"""Data-parallel training: `k4d train-vae`, `k4d train` and LoRA fine-tuning in two processes (torch.distributed,
gloo on the CPU).

`accelerate launch --multi_gpu` starts the same torch elastic launcher on GPUs; on CPUs accelerate has no
multi-process launcher without MPI, so these tests start `torch.distributed.run` themselves. They check what a
broken data-parallel run would get wrong: both processes finish (a stop decided by one rank alone hangs the other
in the next all-reduce), the replicas end identical (gradients synchronised), every clip is used once, and the
result loads.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from k4d_worldmodel.training.synthetic import write_synthetic_episodes

    root = tmp_path_factory.mktemp("synth_ddp")
    write_synthetic_episodes(root, episodes=5, num_frames=5, height=32, width=48)
    return root


def _launch(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / p) for p in ("k4d_kinematics", "k4d_bringup", "k4d_worldmodel")]
                                        + [env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_vae_and_transformer_train_data_parallel(synth, tmp_path):
    from diffusers import AutoencoderKLWan

    from k4d_worldmodel.pipelines.pipeline_k4d import K4DPipeline

    # 1. k4d train-vae in two processes: 5 clips split 3 + 2, each rank draws 2 per step
    _launch(["-m", "k4d_worldmodel.train_cli", "train-vae", "--data", str(synth), "--config", "smoke",
             "--out", str(tmp_path / "vae"), "--max-steps", "4", "--no-progress"], cwd=tmp_path)
    vm = json.loads((tmp_path / "vae" / "vae_metrics.json").read_text())
    assert vm["num_processes"] == 2 and vm["global_batch"] == 2 * vm["config"]["batch_size"]
    assert vm["steps"] == 4 and vm["replica_spread"] == 0.0
    vae = AutoencoderKLWan.from_pretrained(str(tmp_path / "vae"), use_safetensors=True, local_files_only=True)
    assert len(vae.config.latents_mean) == vae.config.z_dim  # rank 0's statistics were saved

    # 2. k4d train (VAE, then transformer) in two processes, stopped by a time budget: both ranks must stop at
    # the same step, so the run ends instead of hanging; with a validation loss, which each rank computes alike
    from k4d_worldmodel.training.synthetic import write_synthetic_episodes

    write_synthetic_episodes(tmp_path / "val", episodes=3, num_frames=5, height=32, width=48, seed=1)
    run = tmp_path / "run"
    proc = _launch(["-m", "k4d_worldmodel.training.train", "--data", str(synth), "--config", "smoke", "--out",
                    str(run), "--max-steps", "100000", "--time-budget-s", "3", "--no-progress",
                    "--val-data", str(tmp_path / "val")], cwd=tmp_path)
    m = json.loads((run / "train_metrics.json").read_text())
    assert m["val_clips"] == 2 and 0 < m["val_loss_after"] < float("inf")  # every rank read both clips, not a share
    assert m["history"] and all(0 < h["val_loss"] < float("inf") for h in m["history"])
    assert "; validation loss " in proc.stderr
    assert m["num_processes"] == 2 and m["vae"]["num_processes"] == 2
    assert m["stopped"] == "time_budget" and 0 < m["steps"] < 100000
    assert m["replica_spread"] == 0.0
    assert m["train_episodes"] == 5  # every clip, once, over both shards
    assert "3 in process 0 of 2" in proc.stderr  # shards of 3 and 2 clips (every other clip), not copies
    assert m["fixed_batch_loss_after"] < m["fixed_batch_loss_before"]
    pipe = K4DPipeline.from_pretrained(str(run / "pipeline"))
    assert pipe.transformer.config.out_channels == vae.config.z_dim

    # 3. --resume in two processes continues from the saved accelerate state
    _launch(["-m", "k4d_worldmodel.training.train", "--data", str(synth), "--config", "smoke", "--out", str(run),
             "--resume", "--max-steps", str(m["steps"] + 3), "--no-progress"], cwd=tmp_path)
    m2 = json.loads((run / "train_metrics.json").read_text())
    assert m2["start_step"] == m["steps"] and m2["steps"] == m["steps"] + 3 and m2["replica_spread"] == 0.0

    # 4. LoRA fine-tuning (peft) of the result in two processes: only the adapters and added modules train
    _launch(["-m", "k4d_worldmodel.training.train", "--data", str(synth), "--config", "lora", "--base-checkpoint",
             str(run / "pipeline"), "--out", str(tmp_path / "lora"), "--max-steps", "3", "--no-progress"],
            cwd=tmp_path)
    ml = json.loads((tmp_path / "lora" / "train_metrics.json").read_text())
    assert ml["num_processes"] == 2 and ml["steps"] == 3 and ml["replica_spread"] == 0.0
    assert 0 < ml["params_trainable"] < ml["params_total"] and ml["lora_modules"] > 0
    assert (tmp_path / "lora" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_unused_modules_are_frozen_for_data_parallel_training():
    """Data-parallel training refuses parameters that get no gradient: the inherited text embedder is never run."""
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.train import build_full_pipeline
    from k4d_worldmodel.training.vae import build_vae

    cfg = TrainConfig.from_yaml("smoke")
    tr = build_full_pipeline(cfg, build_vae(cfg.vae)).transformer
    assert tr.unused_modules == ("condition_embedder.text_embedder",)
    for name in tr.unused_modules:  # the names exist, so a renamed module cannot silently un-freeze
        assert sum(p.numel() for p in tr.get_submodule(name).parameters()) > 0


def test_vae_nan_loss_names_the_problem_and_keeps_the_last_good_weights(tmp_path):
    import dataclasses

    import numpy as np

    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.vae import STATE_FILE, train_vae

    cfg = TrainConfig.from_yaml("smoke")
    rng = np.random.default_rng(0)
    good = {"rgb": rng.integers(0, 255, (5, 32, 48, 3), dtype=np.uint8),
            "world01": rng.random((5, 32, 48, 3)).astype(np.float32)}
    bad = {"rgb": good["rgb"], "world01": np.full((5, 32, 48, 3), np.nan, np.float32)}
    vcfg = dataclasses.replace(cfg.vae, steps=50, batch_size=1)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step \d+.*vae\.lr.*NaN in the clips") as err:
        train_vae([good, bad], vcfg, tmp_path / "vae", device="cpu", progress=False, log=lambda m: None)
    bad_step = int(str(err.value).split(" at step ")[1].split(";")[0])
    from safetensors.torch import load_file

    # the weights and optimiser of the last finite step were saved, for a --resume with a lower lr
    state = torch.load(tmp_path / "vae" / STATE_FILE, weights_only=True)
    assert state["step"] == bad_step
    weights = load_file(str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
