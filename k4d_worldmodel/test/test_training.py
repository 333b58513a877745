"""Training: data loaders, flow-matching objective, full training (loss down, save, resume, load + run), LoRA."""
import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "osmesa")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from k4d_worldmodel.training.synthetic import write_synthetic_episodes

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_episodes(root, episodes=4, num_frames=5, height=32, width=48)
    return root


@pytest.fixture(scope="module")
def smoke_cfg():
    from k4d_worldmodel.training.config import TrainConfig

    return TrainConfig.from_yaml("smoke")


@pytest.fixture(scope="module")
def trained(synth, smoke_cfg, tmp_path_factory):
    from k4d_worldmodel.training.train import train

    out = tmp_path_factory.mktemp("run")
    metrics = train(synth, smoke_cfg, out, progress=False, log=lambda m: None)
    return out, metrics


def test_split_and_resize(synth):
    from k4d_worldmodel.training.data import frame_indices, open_dataset, split_names

    names = [f"{i:06d}" for i in range(10)]
    tr, he = split_names(names, "train", 0.2, 3), split_names(names, "heldout", 0.2, 3)
    assert len(he) == 2 and set(tr) | set(he) == set(names) and not set(tr) & set(he)
    assert split_names(names, "heldout", 0.2, 3) == he and split_names(names, "heldout", 0.2, 4) != he
    assert frame_indices(49, 17).tolist()[:3] == [0, 3, 6] and frame_indices(49, 17)[-1] == 48
    ds = open_dataset(synth, 5, 16, 32, split="all")  # crop 32x48 -> 32x64? no: to aspect 1:2 -> 24x48 -> 16x32
    c = ds[0]
    assert c["rgb"].shape == (5, 16, 32, 3) and c["rgb"].dtype == np.uint8
    assert c["world_xyz"].shape == (5, 16, 32, 3) and c["robot_mask"].shape == (5, 16, 32)
    assert 0 <= c["world01"].min() and c["world01"].max() <= 1
    # nearest-neighbour resize keeps true metric points: every world point is a point of the original episode
    from k4d_bringup.dataset.generate import load_episode

    ep = load_episode(synth / "000000.npz")
    assert np.isin(c["world_xyz"][..., 2], ep["world_xyz"][..., 2]).all()
    assert np.isnan(c["robot_xyz"][~c["robot_mask"]]).all() and np.isfinite(c["robot_xyz"][c["robot_mask"]]).all()


def test_kinema4d_layout_loader(synth, tmp_path):
    from k4d_bringup.dataset.export import export_kinema4d
    from k4d_worldmodel.training.data import Kinema4DDataset, detect_format, open_dataset

    export_kinema4d(synth, tmp_path / "k4", fps=4)
    assert detect_format(tmp_path / "k4") == "kinema4d"
    ds = open_dataset(tmp_path / "k4", 5, 32, 48, split="all")
    assert isinstance(ds, Kinema4DDataset) and len(ds) == 4
    c, ref = ds[0], open_dataset(synth, 5, 32, 48, split="all")[0]
    assert c["rgb"].shape == (5, 32, 48, 3)
    # robot mask recovered from mask_videos, metres recovered from pointmap_minmax.json (lossy video: ~1 cm)
    assert (c["robot_mask"] == ref["robot_mask"]).mean() > 0.97
    both = c["robot_mask"] & ref["robot_mask"]
    assert np.nanmedian(np.abs(c["robot_xyz"][both] - ref["robot_xyz"][both])) < 0.02
    assert np.median(np.abs(c["world_xyz"] - ref["world_xyz"])) < 0.02


def test_generated_episodes_load(tmp_path):
    from k4d_bringup.sim.render import gl_available

    ok, why = gl_available()
    if not ok:
        pytest.skip(why)
    from k4d_bringup.dataset.generate import generate
    from k4d_worldmodel.training.data import open_dataset

    generate(1, 3, tmp_path, num_frames=5, width=48, height=32, fy=40.0, progress=False)
    c = open_dataset(tmp_path, 5, 32, 48, split="all")[0]
    assert c["robot_mask"].any() and np.isfinite(c["world_xyz"]).mean() > 0.9
    assert c["meta"]["task"] in ("pick_place", "push") and c["object_pos"].shape[:2] == (5, 1)


def test_encode_clip_uses_pipeline_conditioning(synth, pmcond_pipe):
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.objective import encode_clip, flow_matching_step, soft_mask, stack_encoded

    pipe = pmcond_pipe
    clip = open_dataset(synth, pipe.num_frames, pipe.height, pipe.width, split="all")[0]
    enc = encode_clip(pipe, clip)
    assert enc["x0"].shape == pipe.transformer.latent_shape
    assert enc["robot_condition"].shape == pipe.transformer.robot_condition_shape
    # identical to what the pipeline computes at inference
    from k4d_worldmodel.pipelines.pipeline_k4d import normalize_robot_pointmap

    xyz01, _, _ = normalize_robot_pointmap(clip["robot_xyz"], clip["robot_mask"])
    ref = pipe.prepare_robot_condition(xyz01, clip["robot_mask"], None)[0]
    torch.testing.assert_close(enc["robot_condition"], ref)
    # soft mask: only ones change, to 0.5, about the requested fraction
    rc = torch.zeros(1, 20, 3, 40, 40)
    rc[:, :4] = 1.0
    soft = soft_mask(rc, 4, 0.1, "pmcond", torch.Generator().manual_seed(0))
    frac = (soft[:, 0] == 0.5).float().mean().item()
    assert 0.07 < frac < 0.13 and torch.equal(soft[:, 0], soft[:, 3]) and set(soft[:, :4].unique().tolist()) == {0.5, 1.0}
    batch = stack_encoded([enc, enc])
    loss = flow_matching_step(pipe.transformer, batch, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_encoded_cache_round_trip_and_invalidation(synth, pmcond_pipe, tmp_path):
    import shutil

    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.objective import encode_clips, encoded_fingerprint, load_encoded, save_encoded

    pipe = pmcond_pipe
    data = tmp_path / "data"
    shutil.copytree(synth, data)
    ds = open_dataset(data, pipe.num_frames, pipe.height, pipe.width, split="all")
    encoded, skipped = encode_clips(pipe, [ds[i] for i in range(len(ds))])
    fp = encoded_fingerprint(ds, pipe)
    path = tmp_path / "encoded" / "process0-of-1.safetensors"
    save_encoded(path, encoded, fp, {"skipped": skipped})
    back, extra = load_encoded(path, fp)
    assert len(back) == len(encoded) == 4 and extra == {"skipped": []}
    for a, b in zip(encoded, back):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # another process's share, another clip file, other frozen weights: a miss, never stale encodings
    assert load_encoded(path, encoded_fingerprint(ds, pipe, (1, 2))) is None
    np.savez(data / "000001.npz", **dict(np.load(data / "000001.npz", allow_pickle=True)), extra=np.zeros(3))
    assert load_encoded(path, encoded_fingerprint(ds, pipe)) is None
    fp = encoded_fingerprint(ds, pipe)
    save_encoded(path, encoded, fp)
    with torch.no_grad():
        next(pipe.vae.parameters()).add_(1e-3)
    try:
        assert load_encoded(path, encoded_fingerprint(ds, pipe)) is None
    finally:
        with torch.no_grad():
            next(pipe.vae.parameters()).sub_(1e-3)
    # a cut-off or corrupt file is a miss too
    assert load_encoded(path, fp) is not None
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert load_encoded(path, fp) is None


def test_encoded_bank_gives_the_stacked_batches_and_frees_the_list(synth, pmcond_pipe):
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.objective import EncodedBank, encode_clips, stack_encoded

    pipe = pmcond_pipe
    ds = open_dataset(synth, pipe.num_frames, pipe.height, pipe.width, split="all")
    encoded, _ = encode_clips(pipe, [ds[i] for i in range(len(ds))])
    idx = [3, 0, 3, 1]  # repeats, out of order: what torch.randint draws
    want = stack_encoded([encoded[i] for i in idx])
    for on in ("device", "host"):
        bank = EncodedBank(list(encoded), "cpu", on)
        got = bank.batch(idx)
        assert len(bank) == 4 and got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) and got[k].device.type == "cpu" for k in want)
    assert bank.nbytes == sum(v.numel() * v.element_size() for item in encoded for v in item.values())
    items = list(encoded)
    EncodedBank(items, "cpu", consume=True)
    assert items == []  # host memory does not hold the encodings twice
    # clips of another geometry or other fields are refused by name, not stacked into garbage
    odd = dict(encoded[1], x0=encoded[1]["x0"][:, :1])
    with pytest.raises(ValueError, match="clip 1: field 'x0'"):
        EncodedBank([encoded[0], odd], "cpu")
    with pytest.raises(ValueError, match="clip 1 has fields"):
        EncodedBank([encoded[0], {k: v for k, v in encoded[1].items() if k != "change_mask"}], "cpu")
    with pytest.raises(ValueError, match="at least one"):
        EncodedBank([], "cpu")


def test_bench_batch_assembly_times_each_way_on_real_encodings(trained, tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_batch_assembly.py"
    spec = importlib.util.spec_from_file_location("bench_batch_assembly", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out, _ = trained
    report = tmp_path / "bba.json"
    assert bench.main(["--checkpoint", str(out / "pipeline"), "--clips", "6", "--batch", "3", "--repeats", "2",
                       "--device", "cpu", "--train-step", "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["geometry"] == [5, 32, 48] and r["batch_mib"] == pytest.approx(3 * r["clip_mib"])
    assert set(r["ways"]) == {"stack", "bank_host"}  # no separate device memory on a CPU run
    assert all(w["median_ms"] > 0 for w in r["ways"].values()) and r["train_step"]["median_ms"] > 0


def test_encodings_placement_fits_them_on_the_accelerator_or_says_why_not():
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.objective import encodings_placement

    gib = 2**30
    assert encodings_placement("auto", 14 * gib, "cuda:0", free_bytes=70 * gib) == "device"
    assert encodings_placement("auto", 14 * gib, "cuda:0", free_bytes=20 * gib) == "host"  # over half the free
    assert encodings_placement("host", gib, "cuda:0", free_bytes=70 * gib) == "host"
    assert encodings_placement("device", 14 * gib, "cuda:0", free_bytes=20 * gib) == "device"
    with pytest.raises(MemoryError, match=r"14.00 GiB .* 10.00 GiB free"):
        encodings_placement("device", 14 * gib, "cuda:0", free_bytes=10 * gib)
    assert encodings_placement("host", gib, "cpu") == "device"  # one memory on a CPU run
    with pytest.raises(ValueError, match="encodings_on"):
        encodings_placement("gpu", gib, "cuda:0", free_bytes=gib)
    with pytest.raises(ValueError, match="encodings_on must be one of"):
        TrainConfig(encodings_on="gpu")


def test_full_training_reduces_loss_saves_resumes_and_loads(trained, synth, smoke_cfg):
    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.loading import load_pipeline
    from k4d_worldmodel.tiny import tiny_inputs
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.train import train

    out, m = trained
    assert m["steps"] == smoke_cfg.max_steps
    assert m["fixed_batch_loss_after"] < m["fixed_batch_loss_before"]
    assert json.loads((out / "train_metrics.json").read_text())["steps"] == smoke_cfg.max_steps
    assert (out / "vae" / "config.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert all(p.stat().st_size <= 16 * 2**20 for p in (out / "pipeline").rglob("*.safetensors"))
    # the saved pipeline loads with loading.load_pipeline and runs
    pipe = load_pipeline(WorldModelConfig(checkpoint_dir=str(out / "pipeline"), device="cpu"))
    pipe.set_progress_bar_config(disable=True)
    assert (pipe.num_frames, pipe.height, pipe.width) == (5, 32, 48)
    z = smoke_cfg.vae.z_dim  # the transformer denoises the VAE's channels
    assert pipe.vae.config.latents_std != [2.8184] and len(pipe.vae.config.latents_mean) == z
    assert pipe.transformer.config.out_channels == z and pipe.transformer.config.in_channels == 2 * z + 4
    # the smoke config is the default model's recipe: metric ray_depth code, measured first frame as condition
    assert pipe.pointmap_encoding.kind == "ray_depth" and pipe.config.first_xyz_condition
    first = open_dataset(synth, 5, 32, 48, split="all")[0]["world_xyz"][0]
    o = pipe(**tiny_inputs(pipe), num_inference_steps=2, seed=0, first_xyz=first)
    assert o.rgb.shape == (5, 32, 48, 3) and np.isfinite(o.xyz).all()
    # resume: continues from checkpoint-6 with the same VAE and reaches step 8
    m2 = train(synth, smoke_cfg, out, resume=True, max_steps=8, progress=False, log=lambda x: None)
    assert m2["start_step"] == 6 and m2["steps"] == 8
    # ... without reading and encoding the clips again: the first run's encodings, same fingerprint
    assert m["encoded_cache"] == "miss" and m2["encoded_cache"] == "hit"
    assert m["encodings_on"] == m2["encodings_on"] == "device" and m["encodings_gib"] > 0
    assert m2["train_episodes"] == m["train_episodes"] and m2["pointmap_clipped"] == m["pointmap_clipped"]
    assert (out / "checkpoints" / "checkpoint-8").is_dir()



def test_training_survives_an_unwritable_encoded_cache(synth, smoke_cfg, tmp_path):
    from k4d_worldmodel.training.train import train

    (tmp_path / "encoded").write_text("a file where the cache's folder would go")
    msgs = []
    m = train(synth, smoke_cfg, tmp_path, max_steps=2, progress=False, log=msgs.append)
    assert m["steps"] == 2 and (tmp_path / "pipeline" / "model_index.json").is_file()
    assert m["encoded_cache"].startswith("not written") and any("could not be written" in x for x in msgs)
    assert not (tmp_path / "pipeline_best").exists() and "best_val_step" not in m  # no validation data, no best


def test_lora_on_our_checkpoint(trained, synth, val_synth, tmp_path):
    from safetensors.torch import load_file

    from k4d_worldmodel.loading import _LORA_KEY, fuse_lora_, load_saved
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.lora import add_lora, lora_module_names
    from k4d_worldmodel.training.train import train

    out, _ = trained
    base = load_saved(out / "pipeline")
    add_lora(base.transformer, 4, 8.0)
    names = lora_module_names(base.transformer)
    assert len(names) == 2 * 8 and all(n.split(".")[-1] in ("to_q", "to_k", "to_v", "0") for n in names)
    assert not any("add_k_proj" in n or "ffn" in n for n in names)

    cfg = TrainConfig.from_dict(dict(mode="lora", base=dict(checkpoint_dir=str(out / "pipeline")),
                                     lora=dict(rank=4, alpha=8.0), batch_size=2, max_steps=3, lr=5e-3,
                                     warmup_steps=0, checkpoint_every=0, log_every=1))
    m = train(synth, cfg, tmp_path, progress=False, log=lambda x: None, val_data=val_synth)
    assert m["lora_modules"] == 16
    # the best validation model, kept during training with its LoRA fused into a copy (the fused pipeline below
    # shows that the copy's fusing left the training model's adapter alone)
    best = min(m["history"], key=lambda h: h["val_change_loss"])
    assert json.loads((tmp_path / "pipeline_best" / "best_val.json").read_text())["step"] == best["step"]
    assert not any("lora" in k for k in load_saved(tmp_path / "pipeline_best").transformer.state_dict())
    lora = load_file(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"))
    assert len(lora) == 2 * 8 * 2 and all(_LORA_KEY.match(k) and k.startswith("transformer.") for k in lora)
    assert lora["transformer.blocks.0.attn1.to_q.lora_A.weight"].shape == (4, 24)
    # the fused pipeline equals base + (alpha / r) B A + the trained added modules
    added = load_file(str(tmp_path / "lora" / "added_weights.safetensors"))
    ref = load_saved(out / "pipeline").transformer
    ref.load_state_dict(added, strict=False)
    fuse_lora_(ref, {k[len("transformer."):]: v for k, v in lora.items()}, 8.0 / 4)
    fused = load_saved(tmp_path / "pipeline").transformer
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[k], v, atol=1e-5, rtol=1e-5)


def test_full_fine_tuning_continues_a_saved_model(trained, synth, tmp_path):
    """mode full + base.checkpoint_dir: every transformer weight starts from the saved model and trains; its VAE
    and image encoder are carried over unchanged; a released checkpoint is refused by name."""
    from k4d_worldmodel.loading import load_saved
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.train import train

    out, first = trained
    cfg = TrainConfig.from_dict(dict(mode="full", base=dict(checkpoint_dir=str(out / "pipeline")), batch_size=2,
                                     max_steps=3, lr=1e-3, warmup_steps=0, checkpoint_every=0))
    m = train(synth, cfg, tmp_path, progress=False, log=lambda x: None)
    assert m["continued_from"] == str(out / "pipeline")
    base = load_saved(out / "pipeline")
    unused = sum(p.numel() for name in base.transformer.unused_modules
                 for p in base.transformer.get_submodule(name).parameters())
    assert m["params_trainable"] == m["params_total"] - unused  # all but the modules the forward never runs
    # it starts where the saved model ended (a few smoke steps: loss 2.10 -> 1.70), not from scratch
    assert m["fixed_batch_loss_before"] < 0.9 * first["fixed_batch_loss_before"]
    tuned = load_saved(tmp_path / "pipeline")
    changed = [k for k, v in base.transformer.state_dict().items()
               if not torch.equal(v, tuned.transformer.state_dict()[k])]
    assert len(changed) > 0.5 * len(base.transformer.state_dict())
    for part in ("vae", "image_encoder"):
        for k, v in getattr(base, part).state_dict().items():
            assert torch.equal(v, getattr(tuned, part).state_dict()[k]), f"{part}.{k} changed"
    assert tuned.vae.config.latents_mean == base.vae.config.latents_mean
    bad = TrainConfig.from_dict(dict(mode="full", base=dict(checkpoint_dir=str(tmp_path / "nothing_here")),
                                     max_steps=1))
    with pytest.raises(ValueError, match="not one"):
        train(synth, bad, tmp_path / "bad", progress=False, log=lambda x: None)


def test_lora_on_released_layout(synth, tmp_path):
    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.loading import load_pipeline
    from k4d_worldmodel.tiny import build_tiny_pipeline, save_released_layout, tiny_inputs, tiny_transformer_config
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.train import train

    save_released_layout(build_tiny_pipeline("pmcond"), tmp_path / "base", tmp_path / "ckpt", lora_rank=4)
    tc = tiny_transformer_config("pmcond")
    k4d = {k: tc[k] for k in ("num_latent_frames", "latent_height", "latent_width", "arm_patch_size", "arm_dim")}
    cfg = TrainConfig.from_dict(dict(mode="lora", base=dict(checkpoint_dir=str(tmp_path / "ckpt"),
                                     base_model_dir=str(tmp_path / "base"), lora_rank=4, lora_alpha=4.0,
                                     k4d_config=k4d), batch_size=2, max_steps=2, lr=5e-3, warmup_steps=0))
    m = train(synth, cfg, tmp_path / "run", progress=False, log=lambda x: None)
    assert m["lora_modules"] == 16 and not (tmp_path / "run" / "pipeline").exists()
    pipe = load_pipeline(WorldModelConfig(checkpoint_dir=str(tmp_path / "run" / "lora"),
                                          base_model_dir=str(tmp_path / "base"), lora_rank=4, lora_alpha=4.0,
                                          device="cpu"), **k4d)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(**tiny_inputs(pipe), num_inference_steps=1, seed=0).rgb.shape == (9, 32, 48, 3)


def test_config_errors_name_the_field():
    from k4d_worldmodel.training.config import TrainConfig

    with pytest.raises(ValueError, match="num_frames"):
        TrainConfig.from_dict({"num_frames": 8})
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"vae": {"bogus": 1}})
    with pytest.raises(ValueError, match="height"):
        TrainConfig.from_dict({"height": 60})


def test_vae_training_resumes_and_reports_reconstruction(synth, tmp_path):
    """``k4d train-vae``: weights + optimiser state saved, --resume continues the step count, a VAE of another
    architecture is refused by name, and the metrics carry the reconstruction PSNR."""
    import dataclasses

    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.train import train_vae_only
    from k4d_worldmodel.training.vae import STATE_FILE

    cfg = TrainConfig.from_yaml("smoke")
    cfg.vae = dataclasses.replace(cfg.vae, steps=2, short_frames=1, short_fraction=0.5)
    out = tmp_path / "vae"
    m1 = train_vae_only(synth, cfg, out, progress=False)
    assert m1["steps"] == 2 and m1["steps_this_run"] == 2
    assert (out / STATE_FILE).is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["step"] == 2 and state["optimizer"]["state"]  # Adam moments were saved
    rec = m1["recon_train"]
    assert set(rec) == {"rgb", "pointmap"} and all(np.isfinite(r["psnr_db"]) and r["videos"] > 0 for r in rec.values())
    before = {k: v.clone() for k, v in __import__("safetensors.torch").torch.load_file(
        str(out / "diffusion_pytorch_model.safetensors")).items()}
    m2 = train_vae_only(synth, cfg, out, max_steps=4, progress=False, resume=True)
    assert m2["steps"] == 4 and m2["steps_this_run"] == 2 and m2["l1_first"] == m1["l1_first"]
    after = __import__("safetensors.torch").torch.load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained on from the saved weights
    other = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, base_dim=8))
    with pytest.raises(ValueError, match="base_dim"):
        train_vae_only(synth, other, out, max_steps=6, progress=False, resume=True)


def test_load_clips_keeps_only_the_fields_asked_for_even_through_worker_processes(synth):
    """``load_clips(keys=...)``: the VAE's reading keeps each clip's RGB and pointmap code (unchanged), every
    ``full_every``-th clip also its XYZ for the pointmap-code check; a field the clips lack is named."""
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.train import check_pointmap_code, load_clips
    from k4d_worldmodel.training.vae import CLIP_KEYS

    code = TrainConfig.from_yaml("metric_hr").pointmap_encoding
    ds = open_dataset(synth, 5, 32, 48, split="all", pointmap_encoding=code)
    whole = load_clips(ds)
    for workers in (0, 2):  # 2 workers over 4 clips: the DataLoader path (spawned processes)
        some = load_clips(ds, workers, keys=CLIP_KEYS, full_keys=("world_xyz",), full_every=3)
        assert [sorted(c) for c in some] == [sorted(CLIP_KEYS + ("world_xyz",)) if i % 3 == 0 else sorted(CLIP_KEYS)
                                             for i in range(len(ds))]
        for c, w in zip(some, whole):
            assert all(np.array_equal(c[k], w[k]) for k in c)
    # the check reads the clips that kept their XYZ, and finds what it finds on those whole clips
    found = check_pointmap_code(ds, some, lambda m: None)
    assert found and found == check_pointmap_code(ds, whole[::3], lambda m: None)
    with pytest.raises(KeyError, match="depth_png"):
        load_clips(ds, keys=("rgb", "depth_png"))


def test_a_vae_alone_is_measured_in_a_pipeline_of_its_config(synth, tmp_path):
    """``pipeline_around_vae`` (``bench_vae_geometry.py --vae``): the saved VAE's own weights in a pipeline of
    the config's geometry, which runs the ``vae_recon`` path; a folder without a VAE, or a VAE of another latent
    size, is refused by name."""
    import dataclasses

    from k4d_worldmodel import evaluate as E
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.train import pipeline_around_vae
    from k4d_worldmodel.training.vae import build_vae

    cfg = TrainConfig.from_yaml("smoke")
    torch.manual_seed(3)
    vae = build_vae(cfg.vae)
    z = cfg.vae.z_dim  # the latent statistics that training stores with the weights
    vae.register_to_config(latents_mean=[0.1] * z, latents_std=[2.0] * z)
    vae.save_pretrained(str(tmp_path / "vae"), safe_serialization=True)
    pipe = pipeline_around_vae(tmp_path / "vae", cfg)
    assert (pipe.num_frames, pipe.height, pipe.width) == (cfg.num_frames, cfg.height, cfg.width)
    assert pipe.pointmap_encoding.kind == cfg.pointmap_encoding["kind"]
    saved, used = vae.state_dict(), pipe.vae.state_dict()
    assert saved.keys() == used.keys() and all(torch.equal(saved[k], used[k]) for k in saved)
    assert list(pipe.vae.config.latents_std) == [2.0] * z
    ds = open_dataset(synth, pipe.num_frames, pipe.height, pipe.width, split="all",
                      pointmap_encoding=pipe.pointmap_encoding)
    rgb, xyz, _ = E.autoencode(pipe, ds[0], 0)
    assert rgb.shape == (cfg.num_frames, cfg.height, cfg.width, 3) and xyz.shape[:3] == rgb.shape[:3]
    with pytest.raises(FileNotFoundError, match="no saved VAE"):
        pipeline_around_vae(tmp_path / "missing", cfg)
    other = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, z_dim=cfg.vae.z_dim * 2))
    with pytest.raises(ValueError, match="z_dim"):
        pipeline_around_vae(tmp_path / "vae", other)


def test_vae_depth_weight_weighs_only_the_pointmap_depth_channel():
    """``vae.pointmap_depth_weight``: the L1 term becomes the weighted mean of the per-sample, per-channel errors
    (weight only on channel 2 of pointmap samples), equal to the plain L1 at weight 1; the reported l1 stays the
    plain mean, and a negative weight is refused by name."""
    from k4d_worldmodel.training.vae import VAEConfig, build_vae, channel_weights, vae_loss

    torch.manual_seed(0)
    vae = build_vae(VAEConfig(base_dim=8, dim_mult=[1, 2, 2], z_dim=4)).eval()
    x = torch.rand(4, 3, 5, 16, 24) * 2 - 1
    is_pm = torch.tensor([False, True, False, True])
    w = channel_weights(is_pm, 5.0)
    assert w.tolist() == [[1, 1, 1], [1, 1, 5], [1, 1, 1], [1, 1, 5]]

    def run(weights):
        with torch.no_grad():
            return vae_loss(vae, x, 0.0, torch.Generator().manual_seed(1), weights)

    plain, parts = run(None)
    same, _ = run(channel_weights(is_pm, 1.0))
    weighted, parts_w = run(w)
    assert torch.allclose(plain, same) and parts_w["l1"] == pytest.approx(parts["l1"])
    core = vae
    with torch.no_grad():
        post = core.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(1))
        err = (core.decode(z).sample - x).abs().mean(dim=(2, 3, 4))  # [B, 3]
    assert float(weighted) == pytest.approx(float((err * w).sum() / w.sum()), rel=1e-5)
    assert float(weighted) != pytest.approx(float(plain), rel=1e-4)
    with pytest.raises(ValueError, match="pointmap_depth_weight"):
        VAEConfig(pointmap_depth_weight=-1.0)


def test_raised_mask_is_the_objects_above_the_table_off_the_robot(synth):
    """``vae.raised_mask``: on the synthetic scene (table at 1 m depth, an 8 cm cube at 0.92 m, the robot bar at
    0.9 m) it is the cube's pixels, less those next to the robot; NaN is never raised; a clip without its camera
    pose (Kinema4D layout) is refused by name."""
    from scipy import ndimage

    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.vae import raised_mask

    clip = open_dataset(synth, 5, 32, 48, split="all")[0]
    depth = clip["world_xyz"][..., 2]
    cross = np.zeros((1, 3, 3), bool)
    cross[0, 1, :] = cross[0, :, 1] = True  # one pixel of 4-neighbour margin, as the success predicate's
    near_robot = ndimage.binary_dilation(clip["robot_mask"], structure=cross)
    cube = np.isclose(depth, 0.92) & ~near_robot
    got = raised_mask(clip)
    assert got.shape == depth.shape and got.dtype == bool and cube.any()
    assert np.array_equal(got, cube)
    assert not raised_mask(clip, min_height_m=0.09).any()  # the cube's top stands 8 cm high
    holed = dict(clip, world_xyz=np.where(cube[..., None], np.nan, clip["world_xyz"]).astype(np.float32))
    assert not raised_mask(holed).any()
    with pytest.raises(ValueError, match="T_base_cam"):
        raised_mask({k: v for k, v in clip.items() if k != "T_base_cam"})


def test_vae_raised_weight_weighs_the_objects_pixels_of_the_pointmap_videos(synth, tmp_path):
    """``vae.pointmap_raised_weight``: the per-pixel L1 weights give the weighted mean (equal to the plain L1 at
    weight 1, and to the per-channel formula with uniform pixels); ``k4d train-vae`` computes the objects'
    mask where each clip is read (``load_clips(derive=...)``, also through worker processes) and reports its
    share of the pixels."""
    import dataclasses
    import functools

    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.train import load_clips, train_vae_only
    from k4d_worldmodel.training.vae import (CLIP_KEYS, RAISED_KEY, VAEConfig, build_vae, channel_weights,
                                             raised_mask, vae_loss)

    torch.manual_seed(0)
    vae = build_vae(VAEConfig(base_dim=8, dim_mult=[1, 2, 2], z_dim=4)).eval()
    x = torch.rand(2, 3, 5, 16, 24) * 2 - 1
    cw = channel_weights(torch.tensor([False, True]), 3.0)
    pix = torch.ones(2, 1, 5, 16, 24)
    pix[1, 0, :, 4:8, 6:10] = 21.0

    def run(weights, pixel_weights):
        with torch.no_grad():
            return vae_loss(vae, x, 0.0, torch.Generator().manual_seed(1), weights, pixel_weights)[0]

    with torch.no_grad():
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(1))
        err = (vae.decode(z).sample - x).abs()
    assert float(run(None, torch.ones_like(pix))) == pytest.approx(float(err.mean()), rel=1e-5)
    assert float(run(cw, torch.ones_like(pix))) == pytest.approx(float(run(cw, None)), rel=1e-5)
    full = (pix * cw[:, :, None, None, None]).expand_as(err)
    assert float(run(cw, pix)) == pytest.approx(float((err * full).sum() / full.sum()), rel=1e-5)
    assert float(run(cw, pix)) != pytest.approx(float(run(cw, None)), rel=1e-4)
    with pytest.raises(ValueError, match="pointmap_raised_weight"):
        VAEConfig(pointmap_raised_weight=float("nan"))

    cfg = TrainConfig.from_yaml("smoke")
    ds = open_dataset(synth, cfg.num_frames, cfg.height, cfg.width, split="all")
    derive = {RAISED_KEY: functools.partial(raised_mask, min_height_m=0.005)}
    for workers in (0, 2):
        clips = load_clips(ds, workers, keys=CLIP_KEYS, derive=derive)
        assert all(sorted(c) == sorted(CLIP_KEYS + (RAISED_KEY,)) for c in clips)
        assert all(np.array_equal(c[RAISED_KEY], raised_mask(ds[i])) for i, c in enumerate(clips))
    share = float(np.mean([c[RAISED_KEY].mean() for c in clips]))
    cfg.vae = dataclasses.replace(cfg.vae, steps=2, pointmap_raised_weight=20.0)
    metrics = train_vae_only(synth, cfg, tmp_path / "vae", progress=False)
    assert metrics["steps"] == 2 and np.isfinite(metrics["l1_last"])
    assert metrics["raised_fraction"] == pytest.approx(share) and 0 < share < 0.5
    assert metrics["config"]["pointmap_raised_weight"] == 20.0


def test_vae_window_options_are_validated():
    from k4d_worldmodel.training.vae import VAEConfig

    with pytest.raises(ValueError, match="short_frames"):
        VAEConfig(short_frames=4)
    with pytest.raises(ValueError, match="short_fraction"):
        VAEConfig(short_frames=5, short_fraction=1.5)
    with pytest.raises(ValueError, match="short_frames"):
        VAEConfig(short_fraction=0.5)


def test_builtin_full_configs_tile_their_latent_grid():
    """Every built-in from-scratch config (default, metric, metric_hr, smoke): its frames divide into VAE cells,
    and its latent grid into transformer patches and robot-token patches, so `k4d train --config NAME` builds."""
    from k4d_worldmodel.training.config import CONFIG_DIR, TrainConfig

    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"default", "metric", "metric_hr", "smoke"} <= set(names)
    for name in names:
        cfg = TrainConfig.from_yaml(name)
        if cfg.mode != "full":
            continue
        f = cfg.vae.spatial_factor
        assert cfg.height % f == 0 and cfg.width % f == 0, name
        kw = cfg.transformer_kwargs()
        lat = (kw["num_latent_frames"], kw["latent_height"], kw["latent_width"])
        for key in ("patch_size", "arm_patch_size"):
            assert all(n % p == 0 for n, p in zip(lat, kw[key])), (name, key, lat, kw[key])
    hr = TrainConfig.from_yaml("metric_hr")
    assert (hr.height, hr.width) == (128, 192) and hr.pointmap_encoding == TrainConfig.from_yaml("metric").pointmap_encoding


def test_metric_hr_wide_reaches_every_output_direction_and_fits_the_checkpoint_target():
    """configs/metric_hr_wide.yaml is metric_hr's recipe (geometry, VAE, pointmap code) with a transformer whose
    hidden state is as wide as a token's output (8 x 64 = 32 x 4 x 4), so it has no unreachable directions where
    metric_hr's 256-wide model has 256 of 512; it saves in bfloat16, so its transformer stays under 50 MB."""
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.train import build_transformer

    hr, wide = TrainConfig.from_yaml("metric_hr"), TrainConfig.from_yaml("metric_hr_wide")
    for key in ("height", "width", "num_frames", "pointmap_encoding", "first_xyz_condition", "variant"):
        assert getattr(wide, key) == getattr(hr, key), key
    assert wide.vae.z_dim == hr.vae.z_dim == 32 and wide.save_dtype == "bfloat16"
    narrow = build_transformer(hr).reachable_basis()
    assert narrow is not None and narrow.shape == (512, 256)
    t = build_transformer(wide)
    assert t.reachable_basis() is None
    n = sum(p.numel() for p in t.parameters())
    assert 15e6 < n and 2 * n < 50e6, n


def test_condition_fill_first_frame_repeats_the_scene_and_is_kept_through_training(trained, synth, tmp_path):
    """condition_fill "first_frame": every latent frame of the condition holds the still first frame (the release's
    "zeros" holds it in latent frame 0 only); the mask is unchanged; a full fine-tuning may switch a model to it,
    and the saved model keeps it; bad values are refused by name."""
    from k4d_worldmodel.loading import load_saved
    from k4d_worldmodel.pipelines.pipeline_k4d import uniform_pointmap
    from k4d_worldmodel.tiny import build_tiny_pipeline
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.train import train

    zeros, filled = build_tiny_pipeline(seed=3), build_tiny_pipeline(seed=3, condition_fill="first_frame")
    g = torch.Generator().manual_seed(0)
    image01 = torch.rand(3, zeros.height, zeros.width, generator=g)
    cz, cf = zeros.prepare_condition(image01), filled.prepare_condition(image01)
    mc = zeros.transformer.config.mask_channels
    assert torch.equal(cz[:, :mc], cf[:, :mc])  # the mask marks frame 0 alone as given, either way
    assert torch.allclose(cz[:, mc:, 0], cf[:, mc:, 0], atol=1e-5)  # (causal VAE: frame 0 does not see the rest)
    assert not torch.allclose(cz[:, mc:, 1:], cf[:, mc:, 1:], atol=1e-4)  # the later frames hold something else
    # a still video of the first frame, encoded alone, is exactly the filled condition
    dummy = torch.from_numpy(uniform_pointmap(zeros.height, zeros.width)).permute(2, 0, 1)
    video = torch.cat([image01, dummy], -1)[None, :, None].expand(-1, -1, zeros.num_frames, -1, -1)
    with torch.no_grad():
        assert torch.allclose(cf[:, mc:], filled.encode_video(video), atol=1e-5)
        release = torch.cat([video[:, :, :1], torch.full_like(video[:, :, 1:], 0.5)], 2)  # 0 in [-1, 1]
        assert torch.allclose(cz[:, mc:], zeros.encode_video(release), atol=1e-5)

    out, _ = trained
    cfg = TrainConfig.from_dict(dict(mode="full", base=dict(checkpoint_dir=str(out / "pipeline")), batch_size=2,
                                     max_steps=2, lr=1e-3, warmup_steps=0, checkpoint_every=0,
                                     condition_fill="first_frame"))
    m = train(synth, cfg, tmp_path, progress=False, log=lambda x: None)
    assert m["condition_fill_changed_to"] == "first_frame"
    assert load_saved(out / "pipeline").config.get("condition_fill", "zeros") == "zeros"
    tuned = load_saved(tmp_path / "pipeline")
    assert tuned.config.condition_fill == "first_frame"
    with torch.no_grad():
        c = tuned.prepare_condition(torch.rand(3, tuned.height, tuned.width, generator=g))
    assert (c[:, mc:, 1:] - c[:, mc:, :1]).abs().max() > 0  # a real condition video, not a copied latent
    with pytest.raises(ValueError, match="condition_fill"):
        TrainConfig.from_dict({"condition_fill": "noise"})
    with pytest.raises(ValueError, match="condition_fill"):
        TrainConfig.from_dict({"mode": "lora", "condition_fill": "first_frame"})
    with pytest.raises(ValueError, match="condition_fill"):
        build_tiny_pipeline(condition_fill="ones")


def test_change_mask_marks_the_moved_object_not_the_robot_or_its_shadow():
    """change_mask: the latent cells where world points move off the robot (an object leaving and arriving),
    not the robot's own pixels, not an RGB-only change (a shadow), pooled like the pipeline's robot mask."""
    from k4d_worldmodel.training.objective import change_mask

    t, h, w = 9, 32, 48
    rgb = np.full((t, h, w, 3), 100, np.uint8)
    xyz = np.zeros((t, h, w, 3), np.float32)
    xyz[..., 2] = 1.0
    robot = np.zeros((t, h, w), bool)
    robot[:, 0:8, 0:8] = True                     # the robot, moving nowhere: never a change
    xyz[5:, 0:8, 0:8, 2] = 0.5
    rgb[3:, 20:30, 30:46] = 30                    # a shadow: colour only
    xyz[:, 12:14, 20:22, 2] = 0.97                # the object at its start ...
    xyz[6:, 12:14, 20:22, 2] = 1.0                # ... gone from frame 6 on
    xyz[6:, 24:26, 4:6, 2] = 0.97                 # ... and arrived here
    clip = {"rgb": rgb, "world_xyz": xyz, "robot_mask": robot}
    m = change_mask(clip, 8, 12, 4)
    assert m.shape == (3, 8, 12) and m.dtype == np.float32
    assert not m[0].any() and not m[1].any()      # frame 0 never; frames 1..4 saw no move
    expected = np.zeros((8, 12), np.float32)
    expected[3, 5] = 1.0                          # rows 12-13 / 4 = 3, cols 20-21 / 4 = 5: where it left
    expected[6, 1] = 1.0                          # rows 24-25 -> 6, cols 4-5 -> 1: where it arrived
    assert np.array_equal(m[2], expected)
    # without world points the colour decides, and then the shadow counts
    m_rgb = change_mask({"rgb": rgb, "robot_mask": robot}, 8, 12, 4)
    assert m_rgb[1, 5:8, 7:12].all() and not m_rgb[1, 3, 5]
    with pytest.raises(ValueError, match="latent grid"):
        change_mask(clip, 7, 12, 4)


def test_change_weight_weighs_the_changing_cells_and_is_reported(synth, pmcond_pipe):
    """flow_matching_step(change_weight=w): the weighted mean of the squared error, changing cells weighing 1 + w
    (computed here by hand from the same prediction); region='change' is the plain error over those cells alone;
    a batch without a change_mask is refused by name; TrainConfig validates the weight."""
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.objective import encode_clip, flow_matching_step, stack_encoded

    pipe = pmcond_pipe
    tr = pipe.transformer
    enc = encode_clip(pipe, open_dataset(synth, pipe.num_frames, pipe.height, pipe.width, split="all")[0])
    c, f, h, w2 = enc["x0"].shape
    assert enc["change_mask"].shape == (1, f, h, w2)
    batch = stack_encoded([enc])
    cm = torch.zeros(1, 1, f, h, w2)
    cm[..., 1:, 1:3, 2:4] = 1.0
    batch["change_mask"] = cm
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(batch["x0"].shape, generator=g)
    kw = dict(soft_mask_fraction=0.0, cond_dropout=0.0, sigmas=torch.tensor([0.4]), noise=noise)
    with torch.no_grad():
        plain = flow_matching_step(tr, batch, **kw)
        weighted = flow_matching_step(tr, batch, change_weight=9.0, **kw)
        only = flow_matching_step(tr, batch, region="change", **kw)
        s = torch.tensor([0.4]).view(-1, 1, 1, 1, 1)
        pred = tr(hidden_states=torch.cat([(1 - s) * batch["x0"] + s * noise, batch["condition"]], 1),
                  timestep=torch.tensor([400.0]), encoder_hidden_states_image=batch["image_tokens"],
                  robot_condition=batch["robot_condition"], robot_token_scale=torch.ones(1),
                  robot_injection_scale=torch.ones(1), return_dict=False)[0]
    err = (pred - (noise - batch["x0"])).square()
    wts = (1 + 9.0 * cm).expand_as(err)
    torch.testing.assert_close(plain, err.mean())
    torch.testing.assert_close(weighted, (err * wts).sum() / wts.sum())
    torch.testing.assert_close(only, err[cm.expand_as(err) > 0].mean())
    assert not torch.isclose(weighted, plain)
    with pytest.raises(ValueError, match="change_mask"):
        flow_matching_step(tr, {k: v for k, v in batch.items() if k != "change_mask"}, change_weight=1.0, **kw)
    with pytest.raises(ValueError, match="change_weight"):
        TrainConfig.from_dict({"change_weight": -1})


def test_lr_factor_warms_up_then_holds_or_anneals_from_the_runs_start():
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.train import lr_factor

    const = TrainConfig.from_dict({"warmup_steps": 4})
    assert [lr_factor(s, const) for s in (0, 1, 3, 500)] == [0.25, 0.5, 1.0, 1.0]
    cos = TrainConfig.from_dict({"warmup_steps": 0, "lr_schedule": "cosine", "lr_decay_steps": 100,
                                 "min_lr_ratio": 0.1})
    # counted from the step the run starts at (a resumed call at 1000 anneals over 1000..1100)
    assert lr_factor(1000, cos, 1000) == pytest.approx(1.0)
    assert lr_factor(1050, cos, 1000) == pytest.approx(0.55)
    assert lr_factor(1100, cos, 1000) == pytest.approx(0.1) == lr_factor(5000, cos, 1000)
    # 0 decay steps: up to max_steps
    assert lr_factor(500, TrainConfig.from_dict({"warmup_steps": 0, "lr_schedule": "cosine", "max_steps": 1000,
                                                 "min_lr_ratio": 0.0})) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig.from_dict({"lr_schedule": "linear_warmup_cosine"})
    with pytest.raises(ValueError, match="min_lr_ratio"):
        TrainConfig.from_dict({"min_lr_ratio": 1.5})
    with pytest.raises(ValueError, match="lr_decay_steps"):
        TrainConfig.from_dict({"lr_decay_steps": -3})


def test_a_resumed_run_anneals_the_lr_a_constant_run_trained(trained, synth, smoke_cfg, tmp_path):
    import shutil
    from dataclasses import replace

    from k4d_worldmodel.training.train import train

    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    shutil.rmtree(out / "checkpoints" / "checkpoint-8", ignore_errors=True)  # the resume test's, if it ran first
    cfg = replace(smoke_cfg, lr_schedule="cosine", lr_decay_steps=4, min_lr_ratio=0.1, log_every=1)
    m = train(synth, cfg, out, resume=True, max_steps=12, progress=False, log=lambda x: None)
    assert m["start_step"] == 6 and m["steps"] == 12
    lrs = [h["lr"] for h in m["history"] if h["step"] > 6]
    assert len(lrs) == 6 and all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert cfg.lr * 0.1 < lrs[0] < cfg.lr and lrs[-1] == pytest.approx(cfg.lr * 0.1)


@pytest.fixture(scope="module")
def val_synth(tmp_path_factory):
    """Validation episodes: other scenes (another seed) than the training clips'."""
    from k4d_worldmodel.training.synthetic import write_synthetic_episodes

    root = tmp_path_factory.mktemp("val_synth")
    write_synthetic_episodes(root, episodes=3, num_frames=5, height=32, width=48, seed=1)
    return root


def test_validation_loss_is_the_fixed_batch_loss_on_the_val_episodes(trained, synth, val_synth, smoke_cfg, tmp_path):
    import math
    import shutil

    from k4d_worldmodel.models.transformer_k4d import K4DTransformer3DModel
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.objective import encode_clips, stack_encoded
    from k4d_worldmodel.training.train import _fixed_batch_loss, pipeline_around_vae, train

    out = tmp_path / "run"  # a resumed copy of the smoke run: its VAE and encodings are reused, seconds on a CPU
    shutil.copytree(trained[0], out)
    shutil.rmtree(out / "checkpoints" / "checkpoint-8", ignore_errors=True)  # the resume test's, if it ran first
    msgs = []
    m = train(synth, smoke_cfg, out, resume=True, max_steps=10, progress=False, log=msgs.append, val_data=val_synth)
    assert m["start_step"] == 6 and m["steps"] == 10
    # a batch of the config's batch_size (2) of the 3 episodes, first and last
    assert m["val_clips"] == 2 and m["val_episodes"] == 3 and m["val_data"] == str(val_synth)
    names = ("val_loss_before", "val_loss_after", "val_change_loss_before", "val_change_loss_after")
    assert all(math.isfinite(m[k]) and m[k] > 0 for k in names)
    saved = json.loads((out / "train_metrics.json").read_text())
    assert all(saved[k] == m[k] for k in names)
    # every log_every (2) steps of this call, in the history and (no bar) as a log line
    new = [h for h in m["history"] if h["step"] > 6]
    assert [h["step"] for h in new] == [8, 10]
    assert all(math.isfinite(h["val_loss"]) and math.isfinite(h["val_change_loss"]) for h in new)
    assert all("val_loss" not in h for h in m["history"] if h["step"] <= 6)  # the first call had none
    assert sum(x.startswith("train: step ") and "validation loss" in x for x in msgs) == 2
    assert new[-1]["val_loss"] == pytest.approx(m["val_loss_after"])  # the same weights, batch and noise
    final = [x for x in msgs if x.startswith("train: 10 steps")]
    assert len(final) == 1 and f"validation loss {m['val_loss_before']:.4f} -> {m['val_loss_after']:.4f}" in final[0]
    # it is the fixed-batch loss of the saved model on those episodes, not on training clips (encoded as in
    # training: the config's frozen encoders around the run's VAE, without load_pipeline's runtime VAE settings)
    pipe = pipeline_around_vae(out / "vae", smoke_cfg)
    pipe.transformer = K4DTransformer3DModel.from_pretrained(str(out / "pipeline" / "transformer"))
    ds = open_dataset(val_synth, 5, 32, 48, split="all", pointmap_encoding=pipe.pointmap_encoding)
    items, _ = encode_clips(pipe, [ds[0], ds[2]])
    batch = stack_encoded(items)
    assert _fixed_batch_loss(pipe.transformer, batch, smoke_cfg.seed + 99) == pytest.approx(m["val_loss_after"],
                                                                                             rel=1e-4)
    assert _fixed_batch_loss(pipe.transformer, batch, smoke_cfg.seed + 99, "change") == pytest.approx(
        m["val_change_loss_after"], rel=1e-4)
    assert m["val_loss_after"] != pytest.approx(m["fixed_batch_loss_after"])


def test_bad_validation_data_is_refused_by_name(synth, smoke_cfg, pmcond_pipe, tmp_path):
    from k4d_worldmodel.train_cli import main
    from k4d_worldmodel.training.objective import encode_clips
    from k4d_worldmodel.training.synthetic import write_synthetic_episodes
    from k4d_worldmodel.training.train import load_val_encodings, train

    # a missing or empty folder stops the call before anything is trained or written
    with pytest.raises(FileNotFoundError, match=r"--val-data.*no_such_folder: no such folder"):
        train(synth, smoke_cfg, tmp_path / "out", progress=False, log=lambda m: None,
              val_data=tmp_path / "no_such_folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"--val-data.*empty holds neither k4d episodes"):
        train(synth, smoke_cfg, tmp_path / "out", progress=False, log=lambda m: None, val_data=tmp_path / "empty")
    assert not (tmp_path / "out").exists()
    # clips of fewer frames than the model's (5 against the tiny pipeline's 9) would be scored on repeated frames
    pipe = pmcond_pipe
    geom = (pipe.num_frames, pipe.height, pipe.width)
    with pytest.raises(ValueError, match=r"validation clip 0+ of .* has 5 frames, fewer than the model's 9"):
        load_val_encodings(pipe, synth, geom, pipe.pointmap_encoding, 2, {})
    # clips that encode to other fields or shapes than the training clips' cannot be scored by the model
    write_synthetic_episodes(tmp_path / "val9", episodes=2, num_frames=9, height=32, width=48)
    from k4d_worldmodel.training.data import open_dataset

    reference = encode_clips(pipe, [open_dataset(tmp_path / "val9", *geom, split="all")[0]])[0][0]
    items, info = load_val_encodings(pipe, tmp_path / "val9", geom, pipe.pointmap_encoding, 8, reference)
    assert len(items) == info["val_clips"] == 2 and info["val_skipped"] == []
    wrong = dict(reference, x0=reference["x0"][:, :1])
    with pytest.raises(ValueError, match=r"encodes to x0 .*the training clips to .*cannot be scored"):
        load_val_encodings(pipe, tmp_path / "val9", geom, pipe.pointmap_encoding, 2, wrong)
    # k4d train-vae has no validation loss: it does not take the option
    with pytest.raises(SystemExit):
        main(["train-vae", "--data", str(synth), "--config", "smoke", "--out", str(tmp_path / "vae"),
              "--val-data", str(synth)])


def _best_run_cfg(smoke_cfg, trained_run, **changes):
    """The smoke config starting from the smoke run's VAE (no VAE training: a second or so on a CPU)."""
    from dataclasses import replace

    vae = replace(smoke_cfg.vae, pretrained=str(trained_run / "vae"), train=False)
    return replace(smoke_cfg, vae=vae, **changes)


def test_the_best_validation_model_is_kept_and_a_resumed_run_goes_on_from_it(trained, synth, val_synth, smoke_cfg,
                                                                               tmp_path):
    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.loading import load_pipeline
    from k4d_worldmodel.models.transformer_k4d import K4DTransformer3DModel
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.objective import encode_clips, stack_encoded
    from k4d_worldmodel.training.train import _fixed_batch_loss, pipeline_around_vae, train

    # an lr far too high: the held-out loss is lowest after the first step and worse after, while training goes on
    cfg = _best_run_cfg(smoke_cfg, trained[0], lr=0.2, log_every=1, max_steps=4)
    out = tmp_path / "run"
    (out / "pipeline_best").mkdir(parents=True)
    (out / "pipeline_best" / "stale.txt").write_text("another run's best")
    msgs = []
    m = train(synth, cfg, out, progress=False, log=msgs.append, val_data=val_synth)
    best_dir = out / "pipeline_best"
    assert not (best_dir / "stale.txt").exists()  # a run from step 0 drops what an earlier run kept
    history = m["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    best = min(history, key=lambda h: h["val_change_loss"])
    saved = json.loads((best_dir / "best_val.json").read_text())
    assert saved["step"] == best["step"] == m["best_val_step"] < m["steps"]  # the model did get worse
    assert saved["key"] == m["best_val_key"] == "val_change_loss"
    assert saved["val_change_loss"] == m["best_val_change_loss"] == best["val_change_loss"]
    assert saved["val_loss"] == m["best_val_loss"] == best["val_loss"]
    # one log line per new best (each measurement strictly lower than all before it)
    lows = [h["step"] for i, h in enumerate(history)
            if all(h["val_change_loss"] < e["val_change_loss"] for e in history[:i])]
    kept = [x for x in msgs if "best validation so far" in x]
    assert [int(x.split()[2].rstrip(":")) for x in kept] == lows
    assert m["best_saves"] == len(lows) and m["best_save_s"] > 0 and 0 < m["val_s"] < m["train_s"]
    # written as OUT/pipeline is: it loads with the same loader, with other weights than the last step's
    pipe = load_pipeline(WorldModelConfig(checkpoint_dir=str(best_dir), device="cpu"))
    last = load_pipeline(WorldModelConfig(checkpoint_dir=str(out / "pipeline"), device="cpu"))
    assert sorted(p.name for p in best_dir.iterdir()) == sorted(
        [p.name for p in (out / "pipeline").iterdir()] + ["best_val.json"])
    same = ["model_index.json", "transformer/config.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    assert all((best_dir / f).read_bytes() == (out / "pipeline" / f).read_bytes() for f in same)
    assert any(not torch.equal(v, last.transformer.state_dict()[k]) for k, v in pipe.transformer.state_dict().items())
    # ... and they are the weights of the best step: their validation loss is the one recorded for it
    scorer = pipeline_around_vae(trained[0] / "vae", cfg)
    ds = open_dataset(val_synth, 5, 32, 48, split="all", pointmap_encoding=scorer.pointmap_encoding)
    batch = stack_encoded(encode_clips(scorer, [ds[0], ds[2]])[0])
    kept_model = K4DTransformer3DModel.from_pretrained(str(best_dir / "transformer"))
    assert _fixed_batch_loss(kept_model, batch, cfg.seed + 99, "change") == pytest.approx(saved["val_change_loss"],
                                                                                          rel=1e-4)

    # a resumed run goes on from the recorded best: a lower one than it will reach stays ...
    low = dict(saved, val_change_loss=1e-6)
    (best_dir / "best_val.json").write_text(json.dumps(low))
    weights = (best_dir / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    m2 = train(synth, cfg, out, resume=True, max_steps=6, progress=False, log=lambda x: None, val_data=val_synth)
    assert m2["start_step"] == 4 and [h["step"] for h in m2["history"]][-2:] == [5, 6]
    assert json.loads((best_dir / "best_val.json").read_text()) == low
    assert (best_dir / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    assert m2["best_val_step"] == saved["step"] and m2["best_val_change_loss"] == 1e-6
    # ... and a higher one is replaced by the resumed run's first measurement
    (best_dir / "best_val.json").write_text(json.dumps(dict(saved, val_change_loss=1e9)))
    m3 = train(synth, cfg, out, resume=True, max_steps=7, progress=False, log=lambda x: None, val_data=val_synth)
    assert m3["best_val_step"] == 7 and json.loads((best_dir / "best_val.json").read_text())["step"] == 7


def test_keep_best_val_selects_on_the_overall_loss_or_keeps_nothing(trained, synth, val_synth, smoke_cfg,
                                                                      tmp_path):
    from k4d_worldmodel.training.train import train

    m = train(synth, _best_run_cfg(smoke_cfg, trained[0], lr=0.2, log_every=1, max_steps=3, keep_best_val="all"),
              tmp_path / "all", progress=False, log=lambda x: None, val_data=val_synth)
    best = min(m["history"], key=lambda h: h["val_loss"])
    saved = json.loads((tmp_path / "all" / "pipeline_best" / "best_val.json").read_text())
    assert saved["key"] == m["best_val_key"] == "val_loss" and saved["step"] == m["best_val_step"] == best["step"]
    # off: validated as before, no model kept
    m = train(synth, _best_run_cfg(smoke_cfg, trained[0], max_steps=1, keep_best_val="off"), tmp_path / "off",
              progress=False, log=lambda x: None, val_data=val_synth)
    assert m["val_loss_after"] > 0 and not (tmp_path / "off" / "pipeline_best").exists()
    assert not any(k.startswith("best_val") for k in m)


def test_keep_best_val_is_validated_and_set_by_the_cli():
    import argparse

    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.train import add_train_arguments, config_from_args

    assert TrainConfig().keep_best_val == "change"
    with pytest.raises(ValueError, match=r"keep_best_val must be one of \('off', 'change', 'all'\), got 'best'"):
        TrainConfig.from_dict({"keep_best_val": "best"})
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    base = ["--data", "d", "--config", "smoke", "--out", "o"]
    assert config_from_args(p.parse_args(base + ["--keep-best-val", "all"])).keep_best_val == "all"
    assert config_from_args(p.parse_args(base)).keep_best_val == TrainConfig.from_yaml("smoke").keep_best_val
    with pytest.raises(SystemExit):
        p.parse_args(base + ["--keep-best-val", "best"])
