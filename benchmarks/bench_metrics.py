"""Time the attention metrics on CIFAR-10-sized input: all 10,000 test images at C = 512,
spatial maps 7x7 (224 px, CBAM after layer4). Prints and writes JSON with settings and numbers.

    python benchmarks/bench_metrics.py --out metrics_speed.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from pipeline.metrics import per_image_metrics, summarise
from benchjson import write_json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--side", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    weights = rng.random((args.images, args.channels), dtype=np.float32)
    weights[weights < 0.3] = 0
    maps = rng.random((args.images, args.side, args.side)).astype(np.float16).astype(np.float32)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        summarise(per_image_metrics(weights, maps))
        times.append(time.perf_counter() - start)
    result = {"images": args.images, "channels": args.channels, "map_side": args.side, "repeats": args.repeats,
              "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
              "machine": platform.processor() or platform.machine(), "numpy": np.__version__}
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(result, args.out)


if __name__ == "__main__":
    main()
