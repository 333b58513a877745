"""`k4d_worldmodel/scripts/device_train.sh`, the one script every GPU run goes through, in its tiny CPU mode
(`--smoke`: a few episodes rendered with MuJoCo, a few VAE and transformer steps).

A GPU call costs device time that cannot be had back, so the options a run depends on are checked here first:
- `--vae-depth-weight W`, `--vae-lr LR` and `--vae-raised-weight R` train the VAE with
  `vae.pointmap_depth_weight = W`, `vae.lr = LR` and `vae.pointmap_raised_weight = R`
  (the derived config is the one used, and the VAE's metrics record it);
- `--resume --init-from DIR` starts the transformer from DIR's weights with this run's VAE, as a full fine-tuning,
  and the packed pipeline carries this run's VAE, not DIR's;
- `--change-weight W` trains the transformer with `change_weight = W` (the saved pipeline's config records it,
  and the metrics report the loss on the changing cells);
- the transformer reports a validation loss on the held-out episodes, a --resume call on the first call's;
- a DIR that holds no pipeline is refused by name before anything runs.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "k4d_worldmodel" / "scripts" / "device_train.sh"


def _run(args: list[str], work: Path, out: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(out), WORK=str(work), PYTHON=sys.executable, OMP_NUM_THREADS="2",
               K4D_WHEELS=str(work.parent / "no_wheels"))
    return subprocess.run(["bash", str(SCRIPT), "--smoke", "--no-bench", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _vae_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_depth_weight_and_init_from_in_the_device_script(tmp_path):
    work = tmp_path / "work"
    first = _run(["--vae-depth-weight", "3", "--vae-lr", "0.0003", "--vae-raised-weight", "10", "--train-seed", "7",
                  "--lr", "0.0021"], work, tmp_path / "out1")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "vae.pointmap_depth_weight 3 vae.lr 0.0003 vae.pointmap_raised_weight 10" in first.stdout
    vae_metrics = json.loads((work / "run" / "vae" / "vae_metrics.json").read_text())
    assert vae_metrics["config"]["pointmap_depth_weight"] == 3.0 and vae_metrics["steps"] > 0
    assert vae_metrics["config"]["lr"] == 3e-4 and vae_metrics["config"]["pointmap_raised_weight"] == 10.0
    assert 0 < vae_metrics["raised_fraction"] < 0.5  # the rendered objects were found and weighed
    assert sorted(p.name for p in (tmp_path / "out1").glob("k4d_default.tar.part-*"))
    assert f"validation loss on {work / 'heldout'}" in first.stdout
    packed_train = json.loads((tmp_path / "out1" / "metrics.json").read_text())["train"]
    assert json.loads((tmp_path / "out1" / "metrics.json").read_text())["options"]["train_seed"] == 7
    import yaml

    assert "lr 0.0021" in first.stdout and yaml.safe_load((work / "run" / "config.yaml").read_text())["lr"] == 0.0021
    # the training episodes are those of seeds 7 + k, the held-out ones keep 1000 + k
    from k4d_bringup.dataset.generate import GenerateOptions, episode_spec

    meta = json.loads(next((work / "train" / "easy").glob("*.json")).read_text())
    spec = episode_spec(meta["index"], 7, GenerateOptions(num_frames=5, width=48, height=32, fy=40.0))
    assert meta["scene_seed"] == spec["scene_seed"]
    assert packed_train["val_data"] == str(work / "heldout") and packed_train["val_loss_after"] > 0  # NaN fails too

    # a later call starts the transformer from a saved pipeline whose VAE differs from this run's
    init = tmp_path / "init"
    shutil.copytree(work / "run" / "pipeline", init)
    theirs = _vae_weights(init / "vae")
    changed = {k: v + 0.01 if v.is_floating_point() else v for k, v in theirs.items()}
    from safetensors.torch import save_file

    save_file(changed, str(init / "vae" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    second = _run(["--resume", "--init-from", str(init), "--change-weight", "5"], work, tmp_path / "out2")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "change_weight 5" in second.stdout
    assert yaml.safe_load((work / "run" / "pipeline" / "train_config.yaml").read_text())["change_weight"] == 5.0
    assert f"the transformer starts from {init}, with this run's VAE" in second.stdout
    metrics = json.loads((work / "run" / "train_metrics.json").read_text())
    assert metrics["continued_from"] == str(work / "run" / "base")
    # the first call's encodings serve it (the frozen encoders are this run's VAE and the config's image encoder)
    assert "the encodings of the earlier call are reused" in second.stdout and metrics["encoded_cache"] == "hit"
    assert all(metrics[f"fixed_batch_change_loss_{w}"] >= 0 for w in ("before", "after"))  # NaN fails too
    ours, packed = _vae_weights(work / "run" / "vae"), _vae_weights(work / "run" / "pipeline" / "vae")
    assert all(torch.equal(ours[k], packed[k]) for k in ours)  # this run's VAE, not the init folder's
    assert any(not torch.equal(changed[k], packed[k]) for k in changed)
    start = load_file(str(next((init / "transformer").glob("*.safetensors"))))
    base = load_file(str(next((work / "run" / "base" / "transformer").glob("*.safetensors"))))
    assert all(torch.equal(start[k], base[k]) for k in start)  # the transformer it started from is init's

    # a plain --resume call reads the clips' encodings back instead of reading and encoding the clips
    third = _run(["--resume"], work, tmp_path / "out4")
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "the encodings of the earlier call are reused" in third.stdout
    metrics3 = json.loads((work / "run" / "train_metrics.json").read_text())
    assert metrics3["encoded_cache"] == "hit" and metrics3["start_step"] > 0
    assert metrics3["train_episodes"] == metrics["train_episodes"]
    assert metrics3["val_data"] == str(work / "heldout") and metrics3["val_loss_before"] > 0

    bad = _run(["--resume", "--init-from", str(tmp_path / "nothing")], work, tmp_path / "out3", timeout=60)
    assert bad.returncode == 3 and "holds no K4D pipeline" in bad.stdout + bad.stderr  # the log takes both
