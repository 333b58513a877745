"""Time what `k4d train --keep-best-val` spends at each new validation low: the model written to `pipeline_best/`.

    python k4d_worldmodel/benchmarks/bench_best_save.py --checkpoint PIPELINE_DIR [--repeats 5] [--json out.json]

Each repeat is what the trainer does there: the CPU float32 copy of the transformer (`cpu_float_copy`) and the
whole pipeline written by `training.train.save_pipeline_dir` (transformer in the config's save dtype, VAE, image
encoder, scheduler, index) into a fresh folder next to the checkpoint. Needs only torch and diffusers.

The twenty-ninth session used an earlier form of this script to compare that save with a transformer-only one
(the frozen parts hard-linked from the previous best): 0.068 s against 0.058 s on v18's pipeline, idle 2-core VM
(`results/bench_best_save_cpu_v18.json`), too little to keep a second save path, which was removed.
"""
from __future__ import annotations

import argparse
import json
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
    from k4d_worldmodel.training.train import cpu_float_copy, save_pipeline_dir

    pipe = load_saved(args.checkpoint)
    cfg_file = args.checkpoint / "train_config.yaml"
    cfg = TrainConfig.from_yaml(str(cfg_file)) if cfg_file.is_file() else TrainConfig()
    model = pipe.transformer.float()
    times = []
    with tempfile.TemporaryDirectory(dir=args.checkpoint.parent) as tmp:
        save_pipeline_dir(pipe, cpu_float_copy(model), cfg, Path(tmp) / "warm")  # untimed: imports, file system
        for i in range(args.repeats):
            pipe.transformer = model
            t = time.perf_counter()
            save_pipeline_dir(pipe, cpu_float_copy(model), cfg, Path(tmp) / f"best{i}")
            times.append(time.perf_counter() - t)
        size = sum(f.stat().st_size for f in (Path(tmp) / "best0").rglob("*") if f.is_file())
    out = {"checkpoint": str(args.checkpoint), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6, "save_dtype": cfg.save_dtype,
           "seconds": times, "median_s": statistics.median(times), "bytes": size}
    print(json.dumps({k: out[k] for k in ("parameters_m", "save_dtype", "median_s", "bytes")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
