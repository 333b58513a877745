"""Time the two ways `k4d train --keep-best-val` writes the model at a new validation low.

    python k4d_worldmodel/benchmarks/bench_best_save.py --checkpoint PIPELINE_DIR [--repeats 3] [--json out.json]

The first save of a run writes the whole pipeline (`training.train.save_pipeline_dir`: transformer, VAE, image
encoder, scheduler, index); every later one writes only the transformer and hard-links the rest from the
previous best (`training.train.save_transformer_into`). Both are timed here on the same pipeline, each including
the CPU float32 copy of the transformer that the trainer makes first (`cpu_float_copy`), into a temporary folder
on the same file system as the checkpoint's parent (so the links can be made). Needs only torch and diffusers.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="a saved K4D pipeline folder")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, help="write the timings here")
    args = p.parse_args(argv)

    import torch

    from k4d_worldmodel.loading import load_saved
    from k4d_worldmodel.training.config import TrainConfig
    from k4d_worldmodel.training.train import cpu_float_copy, save_pipeline_dir, save_transformer_into

    pipe = load_saved(args.checkpoint)
    cfg_file = args.checkpoint / "train_config.yaml"
    cfg = TrainConfig.from_yaml(str(cfg_file)) if cfg_file.is_file() else TrainConfig()
    model = pipe.transformer.float()
    times = {"full": [], "transformer_only": []}
    with tempfile.TemporaryDirectory(dir=args.checkpoint.parent) as tmp:
        tmp = Path(tmp)
        first = tmp / "first"
        save_pipeline_dir(pipe, cpu_float_copy(model), cfg, first)  # untimed: warms the file system and imports
        pipe.transformer = model
        for i in range(args.repeats):  # interleaved, so that a busy machine slows both alike
            dest = tmp / f"full{i}"
            t = time.perf_counter()
            save_pipeline_dir(pipe, cpu_float_copy(model), cfg, dest)
            times["full"].append(time.perf_counter() - t)
            pipe.transformer = model
            dest = tmp / f"next{i}"
            t = time.perf_counter()
            save_transformer_into(cpu_float_copy(model), cfg, dest, first)
            times["transformer_only"].append(time.perf_counter() - t)
        sizes = {k: sum(f.stat().st_size for f in (tmp / d).rglob("*") if f.is_file()) for k, d in
                 (("full", "full0"), ("transformer_only", "next0"))}
    out = {"checkpoint": str(args.checkpoint), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6, "save_dtype": cfg.save_dtype,
           "seconds": times, "median_s": {k: statistics.median(v) for k, v in times.items()},
           "bytes_written_or_linked": sizes}
    print(json.dumps({k: out[k] for k in ("parameters_m", "save_dtype", "median_s")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
