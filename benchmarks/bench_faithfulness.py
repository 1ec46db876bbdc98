"""Time the faithfulness measurements of probe-attention (``pipeline.faithfulness``: channel
ablation, and deletion / insertion ranked by the CBAM map, the CAM and random maps) on the
digits test set, for each CBAM position, with the probe's defaults. The model is untrained (the
cost of a forward pass does not depend on the weights). Prints and writes JSON with the
settings, every repeat and the medians; the baseline in the same run is one plain forward pass
of the same images, so the cost reads as "forward passes' worth".

    python benchmarks/bench_faithfulness.py --images 360 --image-size 64 --out docs/benchmarks/faithfulness_digits_64px_cpu.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from pipeline.data import load_dataset, to_model_input
from pipeline.faithfulness import channel_ablation, spatial_deletion
from pipeline.models import ModelConfig, build_model
from benchjson import write_json


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=360)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--positions", default="early,middle,late")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = load_dataset("digits").test
    data = data.subset(torch.arange(min(args.images, len(data))))
    n, size = len(data), args.image_size
    rows = {}
    for position in args.positions.split(","):
        model = build_model(ModelConfig("sigmoid", position, 10)).eval()
        with torch.inference_mode():
            captured = []
            hook = model.cbam.spatial.register_forward_hook(lambda m, i, out: captured.append(out[:, 0]))
            model(to_model_input(data.images[:2], size))
            hook.remove()
        side = captured[0].shape[-1]
        rng = np.random.default_rng(0)
        maps = {"cbam": rng.random((n, side, side)).astype(np.float32),
                "cam": rng.random((n, max(size // 32, 1), max(size // 32, 1))).astype(np.float32)}

        def forward():
            with torch.inference_mode():
                for start in range(0, n, args.batch_size):
                    model(to_model_input(data.images[start:start + args.batch_size], size))

        forward_s = _timed(forward, args.repeats)
        channel_s = _timed(lambda: channel_ablation(model, data, size, draws=args.draws, batch_size=args.batch_size),
                           args.repeats)
        spatial_s = _timed(lambda: spatial_deletion(model, data, size, maps, draws=args.draws,
                                                    batch_size=args.batch_size), args.repeats)
        med = {k: statistics.median(v) for k, v in (("forward", forward_s), ("channel", channel_s),
                                                     ("spatial", spatial_s))}
        rows[position] = {"map_side": side, "forward_s": forward_s, "channel_ablation_s": channel_s,
                          "deletion_insertion_s": spatial_s, "forward_median_s": med["forward"],
                          "channel_ablation_median_s": med["channel"], "deletion_insertion_median_s": med["spatial"],
                          "total_median_s": med["channel"] + med["spatial"],
                          "total_in_forward_passes": (med["channel"] + med["spatial"]) / med["forward"]}
    result = {"dataset": "digits (test split)", "images": n, "image_size": size, "draws": args.draws,
              "deletion_steps": 8, "imputation": "blur", "fill": "mean", "batch_size": args.batch_size,
              "repeats": args.repeats, "threads": torch.get_num_threads(), "positions": rows,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
