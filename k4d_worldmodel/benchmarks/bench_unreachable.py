# Copyright 2026 k4d developers. Apache-2.0.
"""How much of a rollout's latent is noise the transformer could not remove, with and without the completion.

    .venv/bin/python k4d_worldmodel/benchmarks/bench_unreachable.py --checkpoint RUN/pipeline --data DIR \\
        --clips 2 --json out.json

A transformer whose tokens carry more output values than its hidden size cannot produce every direction of a
token's latent patch (``K4DTransformer3DModel.reachable_basis``). For each of ``--clips`` clips this samples the
same initial noise twice, with ``complete_unreachable`` off and on, and reports per latent element:
- ``latent_mse``: the rollout's latent against the clip's training target (``objective.target_latents``);
- ``unreachable_energy``: the rollout's energy outside the reachable span (the truth's is ``target_unreachable``);
- ``noise_correlation``: correlation of that part with the initial noise's (1.0: the sampler left the noise there);
- ``reachable_mse``: the error inside the span (what the model itself got wrong).
Not collected by pytest; a model without unreachable directions (v2) is reported as such and not sampled.
"""
from __future__ import annotations

import argparse
import json
import platform

import torch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a save_pretrained K4D pipeline folder")
    p.add_argument("--data", required=True, help="episodes (k4d dataset generate) of the model's geometry")
    p.add_argument("--clips", type=int, default=2)
    p.add_argument("--stride", type=int, default=7, help="take every N-th clip")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)

    from k4d_worldmodel.pipelines.pipeline_k4d import K4DPipeline
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.objective import target_latents

    pipe = K4DPipeline.from_pretrained(args.checkpoint)
    pipe.set_progress_bar_config(disable=True)
    tr = pipe.transformer
    basis = tr.reachable_basis()
    result = {"checkpoint": args.checkpoint, "data": args.data, "steps": args.steps, "seed": args.seed,
              "machine": platform.node(), "torch": torch.__version__,
              "proj_out": list(tr.proj_out.weight.shape), "unreachable_dims": 0, "clips": []}
    if basis is None:
        print("this model can produce every output direction: nothing to complete")
        return result
    result["unreachable_dims"] = tr.proj_out.weight.shape[0] - basis.shape[1]
    ds = open_dataset(args.data, pipe.num_frames, pipe.height, pipe.width, split="all",
                      pointmap_encoding=pipe.pointmap_encoding)
    for k in range(min(args.clips, (len(ds) + args.stride - 1) // args.stride)):
        clip = ds[k * args.stride]
        x0 = target_latents(pipe, [clip["rgb"]], [clip["world01"]]).float()
        noise = torch.randn((1, *tr.latent_shape), generator=torch.Generator().manual_seed(args.seed))
        noise_out = tr.unreachable_part(noise, basis)
        row = {"clip": clip["name"], "target_unreachable": float(tr.unreachable_part(x0, basis).square().mean())}
        for on in (False, True):
            x = pipe(image=clip["rgb"][0], robot_xyz=clip["robot_xyz"], robot_link=clip.get("robot_link"),
                     num_inference_steps=args.steps, seed=args.seed, latents=noise, output_type="latent",
                     first_xyz=clip["world_xyz"][0] if pipe.config.first_xyz_condition else None,
                     complete_unreachable=on).latents.float()
            out = tr.unreachable_part(x, basis)
            err = x - x0
            corr = float((out * noise_out).sum() / (out.norm() * noise_out.norm()).clamp_min(1e-12))
            row["completed" if on else "as_before"] = {
                "latent_mse": float(err.square().mean()), "unreachable_energy": float(out.square().mean()),
                "noise_correlation": corr,
                "reachable_mse": float((err - tr.unreachable_part(err, basis)).square().mean())}
        result["clips"].append(row)
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
