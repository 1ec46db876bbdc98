"""The notebook's comparison table, timed through our training loop on one device.

The notebook's table is six gates x 5 epochs of CIFAR-10 at 224 px, batch 64: for each gate,
train on 45,000 images, evaluate on 5,000 validation images after every epoch and on the
10,000 test images at the end. This script runs exactly that work (same model, optimiser,
batch size, image size, number of images and epochs) through ``pipeline.training`` with the
data resident on the device, and records seconds per gate and for the whole table.

The images are CIFAR-10-shaped uint8 tensors (3 x 32 x 32, random): the cost of a step does
not depend on the pixels, and a machine without the dataset or a tracking server (a lent GPU
host) can run it. What it leaves out of a real ``sweep``: reading CIFAR-10 from disk (once per
sweep), MLflow calls, checkpoints, the probe, metrics and report (a few seconds per
configuration on the CPU machine, see docs/performance.md).

    python benchmarks/bench_table.py --device cuda --amp true --epochs 1 --out table.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from pipeline.data import ImageSet
from pipeline.devices import configure, resolve_device
from pipeline.models import AttentionResNet, ModelConfig
from pipeline.training import evaluate, train_one_epoch

from pipeline.contracts import NOTEBOOK_GATES  # noqa: E402
from benchjson import write_json


def synthetic(n: int, seed: int, device: torch.device) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.randint(0, 10, (n,), generator=g)).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args) -> dict:
    device = resolve_device(args.device)
    configure(device)
    channels_last = device.type == "cuda"
    train = synthetic(args.train_images, 0, device)
    val = synthetic(args.val_images, 1, device)
    test = synthetic(args.test_images, 2, device)
    common = dict(image_size=args.image_size, amp=args.amp, channels_last=channels_last)
    gates = []
    table_start = time.perf_counter()
    for gate in args.gates.split(","):
        torch.manual_seed(0)
        model = AttentionResNet(ModelConfig(gate, args.position, num_classes=10))
        model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type == "cuda")
        generator = torch.Generator().manual_seed(0)
        epochs = []
        sync(device)
        start = time.perf_counter()
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            result = train_one_epoch(model, train, optimizer, batch_size=args.batch_size, generator=generator,
                                     desc=f"{gate} train", **common)
            sync(device)
            t1 = time.perf_counter()
            val_eval = evaluate(model, val, **common)
            sync(device)
            t2 = time.perf_counter()
            epochs.append({"train_s": t1 - t0, "val_s": t2 - t1, "train_ips": len(train) / (t1 - t0),
                           "loss": result.loss, "val_acc": val_eval.acc})
        t3 = time.perf_counter()
        evaluate(model, test, **common)
        sync(device)
        total = time.perf_counter() - start
        gates.append({"gate": gate, "seconds": total, "test_s": time.perf_counter() - t3, "epochs": epochs})
        print(json.dumps({"gate": gate, "seconds": round(total, 1),
                          "train_ips": [round(e["train_ips"]) for e in epochs]}), flush=True)
        del model, optimizer
    table_s = time.perf_counter() - table_start
    later = [e["train_s"] + e["val_s"] for g in gates for e in g["epochs"][1:]]
    first = [g["epochs"][0]["train_s"] + g["epochs"][0]["val_s"] for g in gates]
    # Projection to the notebook's 5 epochs from the epochs measured here (the first epoch of a
    # gate includes cudnn's autotuning, so later epochs are used where there are any).
    per_epoch = (sum(later) / len(later)) if later else (sum(first) / len(first))
    projected = sum(g["seconds"] - sum(e["train_s"] + e["val_s"] for e in g["epochs"][1:]) for g in gates) \
        + len(gates) * (args.notebook_epochs - 1) * per_epoch
    return {
        "settings": vars(args),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "peak_device_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "gates": gates,
        "measured_seconds": table_s,
        "seconds_per_later_epoch": per_epoch,
        "projected_table_seconds": projected,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The notebook's gate table timed through our training loop.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--gates", default=",".join(NOTEBOOK_GATES))
    parser.add_argument("--position", default="late")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1, help="epochs measured per gate")
    parser.add_argument("--notebook-epochs", type=int, default=5, help="epochs of the table projected to")
    parser.add_argument("--train-images", type=int, default=45_000)
    parser.add_argument("--val-images", type=int, default=5_000)
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--amp", default="true", choices=("true", "false"))
    parser.add_argument("--out", default="table.json")
    args = parser.parse_args(argv)
    args.amp = args.amp == "true"
    result = run(args)
    write_json(result, args.out)
    print(json.dumps({k: result[k] for k in ("device_name", "measured_seconds", "seconds_per_later_epoch",
                                             "projected_table_seconds", "peak_device_memory_mb")}, indent=1))


if __name__ == "__main__":
    main()
