"""Time how the trainer assembles a training batch from the encoded clips, per `encodings_on` placement.

    python k4d_worldmodel/benchmarks/bench_batch_assembly.py --checkpoint PIPELINE_DIR [--clips 256]
        [--batch 24] [--repeats 20] [--train-step] [--device cuda] [--json out.json]

The clips are real encodings of the checkpoint's pipeline (`objective.encode_clips` on synthetic episodes written
at its geometry), tiled to ``--clips``. Three ways to get one batch of ``--batch`` random clips onto ``--device``:

- ``stack``: the trainer before `EncodedBank`: the clips stacked in host memory, then copied over;
- ``bank_host``: `EncodedBank` in host memory (``encodings_on: host``): one gather there, then the copy;
- ``bank_device``: `EncodedBank` on the device (``encodings_on: device``, what ``auto`` picks when they fit):
  one gather on the device, nothing crosses the bus (on a CPU run it is the same memory as ``bank_host``).

``--train-step`` also times one forward and backward pass of the transformer on such a batch (bf16 autocast on
CUDA), so the assembly can be read against the step it feeds. Needs only torch and diffusers.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _timed(fn, sync, repeats: int) -> list[float]:
    fn()
    sync()  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="a saved K4D pipeline folder (its geometry and "
                   "frozen encoders give the clips' shapes)")
    p.add_argument("--clips", type=int, default=256, help="encoded clips to draw from (tiles of a few real ones)")
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--train-step", action="store_true", help="also time a forward + backward pass on one batch")
    p.add_argument("--json", type=Path, help="write the timings here")
    args = p.parse_args(argv)

    import torch

    from k4d_worldmodel.loading import load_saved
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.objective import EncodedBank, encode_clips, encoded_nbytes, flow_matching_step, \
        stack_encoded
    from k4d_worldmodel.training.synthetic import write_synthetic_episodes

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    pipe = load_saved(args.checkpoint)
    geom = (pipe.num_frames, pipe.height, pipe.width)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_episodes(tmp, episodes=4, num_frames=geom[0], height=geom[1], width=geom[2])
        ds = open_dataset(tmp, *geom, split="all", pointmap_encoding=pipe.pointmap_encoding)
        real, _ = encode_clips(pipe, [ds[i] for i in range(len(ds))])
    items = [{k: v.clone() for k, v in real[i % len(real)].items()} for i in range(args.clips)]
    clip_bytes = encoded_nbytes(items[:1])
    g = torch.Generator().manual_seed(0)
    draws = [torch.randint(len(items), (args.batch,), generator=g).tolist() for _ in range(args.repeats + 1)]

    def cycling(fn):  # every way gets the same random batches, in the same order
        it = itertools.cycle(draws)
        return lambda: fn(next(it))

    ways = {"stack": cycling(lambda idx: stack_encoded([items[i] for i in idx], device)),
            "bank_host": cycling(EncodedBank(items, device, "host").batch)}
    if device.type != "cpu":
        ways["bank_device"] = cycling(EncodedBank(items, device, "device").batch)
    result = {"checkpoint": str(args.checkpoint), "device": str(device), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "threads": torch.get_num_threads(), "geometry": list(geom), "clips": args.clips, "batch": args.batch,
              "clip_mib": clip_bytes / 2**20, "batch_mib": args.batch * clip_bytes / 2**20, "ways": {}}
    for name, fn in ways.items():
        times = _timed(fn, sync, args.repeats)
        result["ways"][name] = {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}
    if args.train_step:
        model = pipe.transformer.to(device).train()
        batch = stack_encoded(items[: args.batch], device)

        def step():
            model.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = flow_matching_step(model, batch, torch.Generator().manual_seed(1))
            loss.backward()

        times = _timed(step, sync, max(3, args.repeats // 4))
        result["train_step"] = {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}
    print(json.dumps({k: result[k] for k in ("device", "gpu", "batch_mib", "ways") + (("train_step",) if
                                                                                       args.train_step else ())},
                     indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
