"""The pieces behind the default model: scenario sub-folders, batched encoding, the x4 VAE, the zone predicate,
the shipped checkpoint."""
import numpy as np
import pytest
import torch


def test_dataset_reads_one_level_of_scenario_subfolders(tmp_path):
    from k4d_worldmodel.training.data import detect_format, open_dataset
    from k4d_worldmodel.training.synthetic import write_synthetic_episodes

    write_synthetic_episodes(tmp_path / "easy", episodes=2, num_frames=5, height=32, width=48)
    write_synthetic_episodes(tmp_path / "hard", episodes=1, num_frames=5, height=32, width=48, seed=1)
    (tmp_path / "easy" / ".000009.tmp.npz").write_bytes(b"unfinished")  # an interrupted write is skipped
    assert detect_format(tmp_path) == "k4d"
    ds = open_dataset(tmp_path, 5, 32, 48, split="all")
    assert ds.names == ["easy/000000", "easy/000001", "hard/000000"]
    assert ds[2]["name"] == "hard/000000" and ds[2]["rgb"].shape == (5, 32, 48, 3)


def test_encode_clips_batched_equals_one_at_a_time(pmcond_pipe, tmp_path):
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.objective import encode_clip, encode_clips
    from k4d_worldmodel.training.synthetic import write_synthetic_episodes

    pipe = pmcond_pipe
    write_synthetic_episodes(tmp_path, episodes=3, num_frames=pipe.num_frames, height=pipe.height, width=pipe.width)
    ds = open_dataset(tmp_path, pipe.num_frames, pipe.height, pipe.width, split="all")
    clips = [ds[i] for i in range(3)]
    clips.append({**clips[0], "name": "no_robot", "robot_mask": np.zeros_like(clips[0]["robot_mask"])})
    batched, skipped = encode_clips(pipe, clips, batch_size=2)
    assert skipped == [("no_robot", "clip 'no_robot' has no robot pixel; cannot build a robot condition")]
    assert len(batched) == 3
    for clip, enc in zip(clips, batched):
        one = encode_clip(pipe, clip)
        for key in ("x0", "condition", "robot_condition", "image_tokens"):
            torch.testing.assert_close(enc[key], one[key], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no robot pixel"):
        encode_clip(pipe, clips[3])


def test_vae_with_spatial_factor_4_sets_the_latent_grid():
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.vae import VAEConfig, build_vae

    cfg = VAEConfig(base_dim=8, dim_mult=[1, 2, 2])
    assert cfg.spatial_factor == 4 and VAEConfig().spatial_factor == 8
    vae = build_vae(cfg).eval()
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 5, 32, 48)).latent_dist.mode()
    assert tuple(z.shape) == (1, 16, 2, 8, 12)
    assert vae.config.scale_factor_spatial == 4
    tc = TrainConfig(num_frames=5, height=32, width=48, vae=cfg)
    kw = tc.transformer_kwargs()
    assert (kw["num_latent_frames"], kw["latent_height"], kw["latent_width"]) == (2, 8, 12)
    with pytest.raises(ValueError, match="dim_mult"):
        VAEConfig(dim_mult=[1, 2])
    with pytest.raises(ValueError, match="train_frames"):
        VAEConfig(train_frames=6)


def test_zone_predicate_on_ground_truth_and_on_a_still_world(tmp_path):
    from k4d_worldmodel.evaluate import object_info, success_zone_4d, zone_counts, zone_occupancy
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.synthetic import write_synthetic_episodes

    write_synthetic_episodes(tmp_path, episodes=2, num_frames=5, height=32, width=48)
    ds = open_dataset(tmp_path, 5, 32, 48, split="all")
    for i in range(2):
        c = ds[i]
        info = object_info(c)
        assert success_zone_4d(c["world_xyz"], c["robot_mask"], info) == c["meta"]["success"]
        still = np.repeat(c["world_xyz"][:1], 5, 0)  # copy-first-frame: nothing ever reaches the zone
        assert not success_zone_4d(still, c["robot_mask"], info)
    occ = zone_occupancy(ds[0]["world_xyz"], ds[0]["robot_mask"], info["T_base_cam"], info["goal"], info["radius"],
                         0.2)
    assert occ[0] == 0 and occ[-1] > 3
    # the threshold: exactly the gain in zone points passes, one more does not
    c = ds[0]
    info = object_info(c)
    gain = int(np.diff(zone_counts(c["world_xyz"], c["robot_mask"], info))[0])
    assert gain > 0
    assert success_zone_4d(c["world_xyz"], c["robot_mask"], info, min_points=gain)
    assert not success_zone_4d(c["world_xyz"], c["robot_mask"], info, min_points=gain + 1)
    # the floor: table points lifted just over it fill the zone; a floor over the lift ignores them again
    up = info["T_base_cam"][2, :3]  # the base frame's z axis, in the camera frame (T maps camera to base)
    lifted = np.repeat(c["world_xyz"][:1].astype(np.float64), 5, 0)  # a still world whose last frame rises 8 mm
    lifted[-1] += 0.008 * up
    before, after = zone_counts(lifted, c["robot_mask"], info)
    assert after > before + 3 and success_zone_4d(lifted, c["robot_mask"], info)  # read as success at 6 mm
    assert zone_counts(lifted, c["robot_mask"], info, floor_m=0.010)[1] < after
    assert not success_zone_4d(lifted, c["robot_mask"], info, floor_m=0.010)


def test_zone_predicate_asks_a_pick_place_cylinder_to_stand(tmp_path):
    """Label rule 3 on the pointmaps: a cylinder (radius 1.5 cm, half height 3 cm) standing in the zone succeeds; the
    same cylinder lying there (its top at 3 cm, under the 4.5 cm slab) fills the zone as well but fails pick-place,
    and still succeeds push; a cube, or a cylinder about as tall as wide, is not asked to stand."""
    from k4d_worldmodel.evaluate import object_info, success_zone_4d, upright_min_points, upright_zone_counts
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.synthetic import ZONE, write_synthetic_episodes

    write_synthetic_episodes(tmp_path, episodes=1, num_frames=3, height=64, width=96, fy=160.0)
    c = open_dataset(tmp_path, 3, 64, 96, split="all")[0]
    T = np.asarray(c["T_base_cam"], np.float64)
    mask = np.zeros_like(c["robot_mask"])
    table = c["world_xyz"][0].astype(np.float64) @ T[:3, :3].T + T[:3, 3]  # frame 0 in the base frame
    dx, dy = table[..., 0] - ZONE[0], table[..., 1] - ZONE[1]

    def scene(top):
        """A still table whose last frame has the object at the zone centre: base heights ``top`` (H, W)."""
        base = table.copy()
        base[..., 2] = np.where(np.isfinite(top), top, base[..., 2])
        last = (base - T[:3, 3]) @ T[:3, :3]  # back to the camera frame
        return np.stack([c["world_xyz"][0], c["world_xyz"][0], last]).astype(np.float32)

    r, h = 0.015, 0.03
    standing = scene(np.where(np.hypot(dx, dy) <= r, 2 * h, np.nan))
    lying = scene(np.where((np.abs(dx) <= h) & (np.abs(dy) <= r), 2 * r, np.nan))

    def info(task="pick_place", kind="cylinder", size=(r, h, 0.0)):
        return object_info({**c, "meta": dict(c["meta"], task=task, objects=[{"kind": kind, "size": list(size)}])})

    assert success_zone_4d(standing, mask, info())
    assert upright_zone_counts(standing, mask, info())[1] >= upright_min_points(64, 96)
    assert upright_zone_counts(lying, mask, info()).tolist() == [0, 0]
    assert not success_zone_4d(lying, mask, info())
    assert success_zone_4d(lying, mask, info(), upright=False)  # the zone is filled: the rule before the check
    assert success_zone_4d(lying, mask, info(task="push"))  # push: toppled in the zone counts
    assert upright_zone_counts(lying, mask, info(task="push")) is None
    assert success_zone_4d(lying, mask, info(kind="cube", size=(r, r, r)))  # a cube stands on any face
    assert upright_zone_counts(lying, mask, info(size=(r, r + 0.002, 0.0))) is None  # lying or standing: same top
    # k4d eval asks an imagined output to stand only when told (imagined_upright; the models flatten objects)
    from k4d_worldmodel.evaluate import clip_metrics

    truth = {**c, "world_xyz": standing}
    asked = clip_metrics(c["rgb"], lying, truth, info(), 0.01, 512, upright=True)
    unasked = clip_metrics(c["rgb"], lying, truth, info(), 0.01, 512)
    assert not asked["success_4d"] and unasked["success_4d"]


def test_point_thresholds_scale_with_the_image_area():
    from k4d_bringup.shadow.predicate import min_points_for

    assert min_points_for(64, 96) == 3          # the resolution the threshold was calibrated at
    assert min_points_for(128, 192) == 12       # four times the pixels per object
    assert min_points_for(32, 48) == 1          # never below one point
    assert min_points_for(128, 192, at_reference=20) == 80
    with pytest.raises(ValueError, match="positive"):
        min_points_for(0, 96)


def test_default_checkpoint_name_resolves_and_loads():
    from pathlib import Path

    from k4d_worldmodel.config import WorldModelConfig, default_checkpoint_dir

    cfg = WorldModelConfig(checkpoint_dir="default", device="cpu")
    assert cfg.checkpoint_dir == default_checkpoint_dir()
    ckpt = Path(default_checkpoint_dir())
    assert (ckpt / "model_index.json").is_file(), "the default model ships with the package"
    assert (ckpt / "README.md").is_file(), "and with its model card"
    total = sum(p.stat().st_size for p in ckpt.rglob("*.safetensors"))
    assert total <= 50 * 1024 * 1024
    assert not list(ckpt.rglob("*.bin")) and not list(ckpt.rglob("*.pt"))  # safetensors only

    from k4d_worldmodel.loading import load_pipeline
    from k4d_worldmodel.tiny import tiny_inputs

    pipe = load_pipeline(cfg)
    assert (pipe.num_frames, pipe.height, pipe.width) == (17, 64, 96)
    out = pipe(**tiny_inputs(pipe), num_inference_steps=2, guidance_scale=1.0, seed=0)
    assert out.rgb.shape == (17, 64, 96, 3) and out.xyz.shape == (17, 64, 96, 3)
    assert np.isfinite(out.xyz).all()
