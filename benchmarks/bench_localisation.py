"""Time the localisation metrics (``pipeline.localisation.judge_maps``: PxAP, MaxBoxAccV2,
pointing game, energy in box for the CBAM map, the CAM and two chance maps) on probe-sized
input, and the placement of a cluttered dataset. Prints and writes JSON with the settings,
every repeat and the summary.

    python benchmarks/bench_localisation.py --images 360 --image-size 128 --map-side 4 --native 64
    python benchmarks/bench_localisation.py --images 1024 --image-size 224 --map-side 7 --native 96
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from pipeline.localisation import judge_maps
from pipeline.placement import Placement, place_on_canvas
from benchjson import write_json


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=360)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--map-side", type=int, default=4)
    parser.add_argument("--native", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, size=(args.images, 3, 8, 8), dtype=np.uint8)
    placement = Placement(canvas=args.native, object_sizes=(args.native // 4, args.native * 3 // 8),
                          fragment=args.native // 8)
    start = time.perf_counter()
    placed = place_on_canvas(pool, placement, seed=0)
    place_s = time.perf_counter() - start
    spatial = rng.random((args.images, args.map_side, args.map_side)).astype(np.float16)
    cams = rng.normal(size=(args.images, args.map_side, args.map_side)).astype(np.float16)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        judge_maps(spatial, cams, placed.masks, placed.boxes, args.native, args.image_size)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {"images": args.images, "image_size": args.image_size, "map_side": args.map_side,
              "native": args.native, "repeats": args.repeats, "judge_s": times, "judge_median_s": median,
              "judge_ms_per_image": 1000 * median / args.images, "place_s": place_s,
              "place_ms_per_image": 1000 * place_s / args.images,
              "machine": platform.processor() or platform.machine(), "numpy": np.__version__}
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
