"""The training step eager and graph-captured (``compile`` = false, graphs, inductor), in one run.

For each mode: the same model (ResNet18-CBAM, one gate), the same seeded batches, the step the
train step runs (:func:`pipeline.training.train_one_epoch` with gradient flow, Adam, fused on
CUDA, channels_last and bf16 on CUDA), ``--epochs`` epochs of ``--batches`` batches of 64. The
first epoch includes the capture (TorchDynamo, and TorchInductor's code generation); later
epochs are the steady state. Eager is the baseline, measured in the same run.

    python benchmarks/bench_compile.py --device cpu --image-size 32 --out docs/benchmarks/compile-cpu-32px.json
    python benchmarks/bench_compile.py --device cuda --image-size 224 --out compile-cuda.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from pipeline.data import ImageSet
from pipeline.devices import compiled, configure, resolve_device
from pipeline.models import ModelConfig, build_model
from pipeline.training import GradientFlow, train_one_epoch
from benchjson import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--gate", default="sigmoid")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40, help="batches per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="the first includes the capture")
    parser.add_argument("--modes", default="false,graphs,inductor")
    parser.add_argument("--out", default="compile.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    configure(device)
    cuda = device.type == "cuda"
    n = args.batches * args.batch_size
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.randint(0, 10, (n,), generator=g)).to(device)
    modes = []
    for mode in args.modes.split(","):
        torch.manual_seed(0)
        model = build_model(ModelConfig(args.gate, "late", num_classes=10), "none")
        model = model.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=cuda)
        flow = GradientFlow(model)
        forward = compiled(model, mode, device)
        generator = torch.Generator().manual_seed(0)
        epochs = []
        for _ in range(args.epochs):
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            result = train_one_epoch(model, data, optimizer, batch_size=args.batch_size, image_size=args.image_size,
                                     generator=generator, amp=cuda, channels_last=cuda, grad_flow=flow,
                                     desc=f"{mode}", forward=forward)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            epochs.append({"seconds": round(seconds, 3), "img_per_s": round(n / seconds, 1),
                           "loss": round(result.loss, 6)})
        steady = [e["seconds"] for e in epochs[1:]] or [epochs[0]["seconds"]]
        modes.append({"compile": mode, "epochs": epochs, "steady_img_per_s": round(n * len(steady) / sum(steady), 1),
                      "capture_s": round(epochs[0]["seconds"] - sum(steady) / len(steady), 2)})
        print(json.dumps(modes[-1]), flush=True)
        del model, optimizer, forward
        torch._dynamo.reset()
    base = modes[0]["steady_img_per_s"]
    for m in modes:
        m["vs_eager"] = round(m["steady_img_per_s"] / base, 3)
    result = {"settings": vars(args), "device": str(device), "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "modes": modes}
    write_json(result, args.out)


if __name__ == "__main__":
    main()
