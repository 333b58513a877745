"""The "emb." ablation: the jointemb variant (joint vector per frame instead of pointmaps), its conversion from a
pointmap model, its training and its evaluation beside the model; and the vae_recon ceiling of k4d eval."""
import numpy as np
import pytest
import torch


def _jointemb_pipe(seed: int = 3):
    from k4d_worldmodel.tiny import build_tiny_pipeline

    return build_tiny_pipeline("jointemb", seed=seed)


def test_transformer_tokens_come_from_the_joint_vector():
    from k4d_worldmodel.models.transformer_k4d import ADDED_PARAMETER_NAMES, K4DTransformer3DModel
    from k4d_worldmodel.tiny import randomize_zero_init, tiny_transformer_config

    torch.manual_seed(0)
    tr = K4DTransformer3DModel(**tiny_transformer_config("jointemb")).eval()
    randomize_zero_init(tr)
    assert tr.num_video_frames == 9 and tr.num_robot_tokens == 9 and tr.robot_condition_shape == (9, 8)
    assert set(tr.added_state_dict()) == set(ADDED_PARAMETER_NAMES["jointemb"])
    assert not hasattr(tr, "arm_cond_proj") and not hasattr(tr, "patch_embedding_arm")
    x = torch.randn(2, 36, *tr.latent_shape[1:])
    q = torch.randn(2, 9, 8)
    kw = dict(hidden_states=x, timestep=torch.tensor([500.0, 500.0]), encoder_hidden_states_image=torch.randn(2, 5, 8))
    a = tr(**kw, robot_condition=q, return_dict=False)[0]
    b = tr(**kw, robot_condition=q + 0.5, return_dict=False)[0]
    assert a.shape == (2, 16, *tr.latent_shape[1:]) and not torch.allclose(a, b)  # the joints matter
    # robot dropped (CFG's unconditional pass): the joints no longer matter
    drop = dict(robot_token_scale=torch.zeros(2), robot_injection_scale=torch.zeros(2), return_dict=False)
    torch.testing.assert_close(tr(**kw, robot_condition=q, **drop)[0], tr(**kw, robot_condition=q + 0.5, **drop)[0])
    with pytest.raises(ValueError, match=r"robot_condition must have shape \[2, 9, 8\] for variant 'jointemb'"):
        tr(**kw, robot_condition=torch.randn(2, 9, 6))
    with pytest.raises(ValueError, match="num_joints"):
        K4DTransformer3DModel(**{**tiny_transformer_config("jointemb"), "num_joints": 0})


def test_pipeline_needs_finite_joints_of_the_right_shape():
    from k4d_worldmodel.tiny import tiny_inputs

    pipe = _jointemb_pipe()
    inp = tiny_inputs(pipe)
    q = np.linspace(0, 1, 9 * 8, dtype=np.float32).reshape(9, 8)
    o1 = pipe(**inp, robot_joints=q, num_inference_steps=2, seed=0, guidance_scale=1.0)
    o2 = pipe(**inp, robot_joints=q * 3, num_inference_steps=2, seed=0, guidance_scale=1.0)
    assert o1.rgb.shape == (9, 32, 48, 3) and np.isfinite(o1.xyz).all()
    assert not np.array_equal(o1.latents.numpy(), o2.latents.numpy())
    with pytest.raises(ValueError, match="pass robot_joints"):
        pipe(**inp, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"robot_joints must be finite floats of shape \(9, 8\)"):
        pipe(**inp, robot_joints=q[:, :6], num_inference_steps=1)
    bad = q.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="robot_joints must be finite"):
        pipe(**inp, robot_joints=bad, num_inference_steps=1)


def test_engine_refuses_the_ablation(tmp_path):
    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.engine import ImagineEngine

    _jointemb_pipe().save_pretrained(tmp_path / "emb")
    eng = ImagineEngine(WorldModelConfig(checkpoint_dir=str(tmp_path / "emb"), variant="jointemb", device="cpu"))
    with pytest.raises(ValueError, match="'jointemb' model"):
        eng.load()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from k4d_worldmodel.training.synthetic import write_synthetic_episodes

    root = tmp_path_factory.mktemp("synth_emb")
    write_synthetic_episodes(root, episodes=4, num_frames=5, height=32, width=48)
    return root


def test_convert_train_and_evaluate_the_emb_ablation(synth, tmp_path):
    """A saved pointmap model converts to jointemb keeping every shared weight, trains on the clips' joint
    positions, saves, loads, and is scored as method ``emb`` beside the model in one k4d eval run."""
    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.evaluate import evaluate
    from k4d_worldmodel.loading import load_pipeline, load_saved
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.train import convert_transformer_variant, train

    base = load_saved(_smoke_model(synth, tmp_path))
    before = {k: v.clone() for k, v in base.transformer.state_dict().items()}
    kept = convert_transformer_variant(base, "jointemb")
    after = base.transformer.state_dict()
    same = [k for k in before if k in after and before[k].shape == after[k].shape]
    assert base.variant == "jointemb" and kept == len(same) and "arm_pos_emb" not in same  # other shape
    assert all(torch.equal(before[k], after[k]) for k in before if k in after and not k.startswith("arm_"))
    assert "joint_embed.weight" in after and "patch_embedding_arm.weight" not in after

    cfg = TrainConfig.from_dict(dict(mode="full", convert_variant="jointemb",
                                     base=dict(checkpoint_dir=str(tmp_path / "smoke" / "pipeline")), batch_size=2,
                                     max_steps=3, lr=1e-3, warmup_steps=0, checkpoint_every=0))
    with pytest.raises(ValueError, match="convert_variant='jointemb' rebuilds a saved model"):
        train(synth, TrainConfig.from_dict(dict(mode="full", convert_variant="jointemb", max_steps=1)),
              tmp_path / "bad", progress=False, log=lambda x: None)
    m = train(synth, cfg, tmp_path / "emb", progress=False, log=lambda x: None)
    assert m["converted_to"] == "jointemb" and m["steps"] == 3
    emb = load_pipeline(WorldModelConfig(checkpoint_dir=str(tmp_path / "emb" / "pipeline"), variant="jointemb",
                                         device="cpu"))
    assert emb.variant == "jointemb"
    with pytest.raises(ValueError, match="variant is 'pmcond'"):
        load_pipeline(WorldModelConfig(checkpoint_dir=str(tmp_path / "emb" / "pipeline"), device="cpu"))

    model = load_saved(tmp_path / "smoke" / "pipeline")
    r = evaluate("smoke", synth, tmp_path / "ev", split="all", steps=2, pipe=model, emb_pipe=emb, videos=0,
                 progress=False, methods=("k4d", "copy_first", "vae_recon"))
    s = r["summary"]
    assert set(s["methods"]) == {"k4d", "copy_first", "vae_recon", "emb"}
    assert r["header"]["emb_checkpoint"] == "(given pipeline)"
    for name in ("emb", "vae_recon"):
        assert np.isfinite(s["methods"][name]["psnr"]) and np.isfinite(s["methods"][name]["chamfer_l1"])
        assert "agreement_with_sim" in s["success"][name]
    assert s["methods"]["emb"]["psnr"] != s["methods"]["k4d"]["psnr"]
    with pytest.raises(ValueError, match="needs a 'jointemb' checkpoint"):
        evaluate("smoke", synth, tmp_path / "ev2", split="all", steps=1, pipe=model, emb_pipe=model, videos=0,
                 progress=False)
    with pytest.raises(ValueError, match="needs emb_checkpoint"):
        evaluate("smoke", synth, tmp_path / "ev3", split="all", steps=1, pipe=model, videos=0, progress=False,
                 methods=("k4d", "emb"))


def _smoke_model(synth, tmp_path):
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.train import train

    train(synth, TrainConfig.from_yaml("smoke"), tmp_path / "smoke", progress=False, log=lambda m: None)
    return tmp_path / "smoke" / "pipeline"


def test_vae_recon_is_the_decoded_training_target(synth, pmcond_pipe):
    """The ceiling decodes exactly the latents training regresses to (objective.encode_clip's x0)."""
    from k4d_worldmodel.evaluate import autoencode
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.objective import encode_clip

    ds = open_dataset(synth, pmcond_pipe.num_frames, pmcond_pipe.height, pmcond_pipe.width, split="all")
    clip = ds[0]
    rgb, xyz_m, info = autoencode(pmcond_pipe, clip, seed=0)
    x0 = encode_clip(pmcond_pipe, clip)["x0"][None]
    with torch.no_grad():
        video = pmcond_pipe.decode_latents(x0)[0].permute(1, 2, 3, 0).numpy()
    np.testing.assert_array_equal(rgb, np.round(video[:, :, : pmcond_pipe.width] * 255).astype(np.uint8))
    assert xyz_m.shape == clip["world_xyz"].shape and info["lift"] in ("metric", "anchored", "oracle_bounds")


def test_training_clip_without_joint_positions_is_named(synth):
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.objective import encode_clip

    pipe = _jointemb_pipe()
    clip = open_dataset(synth, pipe.num_frames, pipe.height, pipe.width, split="all")[0]
    assert clip["q"].shape == (pipe.num_frames, 8)
    assert encode_clip(pipe, clip)["robot_condition"].shape == (pipe.num_frames, 8)
    del clip["q"]
    with pytest.raises(ValueError, match=r"clip '000000' \(its joint positions 'q'\): this model is the joint"):
        encode_clip(pipe, clip)
