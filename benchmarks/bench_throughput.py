"""Throughput benchmark: the notebook's data path against ours, same model, same machine.

(a) notebook: uint8 CIFAR-style images as PIL images, ``Resize(image_size)`` + ``ToTensor`` +
    ``Normalize(0.5, 0.5)`` per image through a ``DataLoader`` without workers, batches moved
    to the device, float32, plain Adam, ``.item()`` after every step;
(b) ours: the dataset resident on the device as uint8, resize + normalise per batch there,
    channels_last and fused Adam on CUDA, optional bf16 autocast (``amp``), no per-step host
    synchronisation, evaluation under inference mode in batches of 512 on CUDA (64 on a CPU).

Both train the same initial CBAM-ResNet18 (CBAM after layer4, sigmoid gate) with Adam at
1e-3 and batch 64 (the notebook's protocol). Each measurement is repeated; the JSON holds
the settings, the device, every repeat, the median and the spread, and the ratios.

    python benchmarks/bench_throughput.py --device cpu --image-size 64 --out result.json
"""
from __future__ import annotations

import copy
import json
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from pipeline.data import ImageSet
from pipeline.devices import resolve_device
from pipeline.models import AttentionResNet, ModelConfig
from pipeline.training import predict, train_one_epoch
from benchjson import write_json


@dataclass(frozen=True)
class BenchmarkConfig:
    device: str = "auto"
    image_size: int = 64
    batch_size: int = 64
    train_steps: int = 8
    eval_images: int = 512
    repeats: int = 3
    warmup_steps: int = 1
    amp: bool = False
    seed: int = 0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_rss_mb() -> float:
    """Resident memory now (Linux /proc), or the peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return peak_rss_mb()


def synthetic_images(n: int, seed: int) -> ImageSet:
    """CIFAR-10-shaped uint8 images (n, 3, 32, 32) and labels: the data's format, not its content,
    sets the cost of both paths."""
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.randint(0, 10, (n,), generator=g))


class PILDataset(torch.utils.data.Dataset):
    """The notebook's CIFAR10 + transform: a PIL image per item, transformed on the host."""

    def __init__(self, data: ImageSet, image_size: int):
        from torchvision import transforms

        self.images = data.images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3) as CIFAR10.data
        self.labels = data.labels.tolist()
        self.transform = transforms.Compose([
            transforms.Resize(image_size),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def notebook_train(model, loader, device) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    running_loss, correct = 0.0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = F.cross_entropy(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        correct += outputs.max(1)[1].eq(labels).sum().item()


@torch.no_grad()
def notebook_eval(model, loader, device) -> None:
    model.eval()
    correct = 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        outputs = model(inputs)
        F.cross_entropy(outputs, labels).item()
        correct += outputs.max(1)[1].eq(labels).sum().item()


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "repeats": values}


def run_benchmark(config: BenchmarkConfig) -> dict:
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    initial = AttentionResNet(ModelConfig("sigmoid", "late", num_classes=10))
    n_train = config.batch_size * config.train_steps
    n_warm = config.batch_size * config.warmup_steps
    train_data = synthetic_images(n_train, config.seed)
    warm_data = synthetic_images(max(n_warm, 1), config.seed + 1)
    eval_data = synthetic_images(config.eval_images, config.seed + 2)
    rss_before = peak_rss_mb()

    # (a) the notebook's path
    def loader(data, shuffle):
        return torch.utils.data.DataLoader(PILDataset(data, config.image_size), batch_size=config.batch_size,
                                           shuffle=shuffle, num_workers=0)

    nb_model = copy.deepcopy(initial).to(device)
    notebook_train(nb_model, loader(warm_data, True), device)
    nb_train = [n_train / timed(lambda: notebook_train(nb_model, loader(train_data, True), device), device)
                for _ in range(config.repeats)]
    nb_eval = [config.eval_images / timed(lambda: notebook_eval(nb_model, loader(eval_data, False), device), device)
               for _ in range(config.repeats)]
    del nb_model

    # (b) ours: data resident on the device as uint8
    channels_last = device.type == "cuda"
    ours = copy.deepcopy(initial).to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = torch.optim.Adam(ours.parameters(), lr=1e-3, fused=device.type == "cuda")
    generator = torch.Generator().manual_seed(config.seed)
    common = dict(image_size=config.image_size, amp=config.amp, channels_last=channels_last)
    train_dev, warm_dev, eval_dev = train_data.to(device), warm_data.to(device), eval_data.to(device)

    def ours_train(data):
        train_one_epoch(ours, data, optimizer, batch_size=config.batch_size, generator=generator,
                        desc="benchmark", **common)

    ours_train(warm_dev)
    predict(ours, eval_dev, **common)
    our_train = [n_train / timed(lambda: ours_train(train_dev), device) for _ in range(config.repeats)]
    our_eval = [config.eval_images / timed(lambda: predict(ours, eval_dev, **common), device)
                for _ in range(config.repeats)]

    result = {
        "settings": asdict(config),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "notebook_train": summarise(nb_train),
        "ours_train": summarise(our_train),
        "notebook_eval": summarise(nb_eval),
        "ours_eval": summarise(our_eval),
        "notebook_train_ips": statistics.median(nb_train),
        "ours_train_ips": statistics.median(our_train),
        "notebook_eval_ips": statistics.median(nb_eval),
        "ours_eval_ips": statistics.median(our_eval),
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_benchmark_mb": rss_before,
        "peak_device_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
    result["train_ratio"] = result["ours_train_ips"] / result["notebook_train_ips"]
    result["eval_ratio"] = result["ours_eval_ips"] / result["notebook_eval_ips"]
    return result


def data_preparation_memory(n_images: int = 50_000, image_size: int = 224, batch_size: int = 64) -> dict:
    """Peak host RSS while holding ``n_images`` CIFAR-sized uint8 images and making one
    training batch at ``image_size``: what preparing CIFAR-10 for 224-px training costs."""
    before = current_rss_mb()
    data = synthetic_images(n_images, 0)
    batch = next(iter(torch.utils.data.DataLoader(range(n_images), batch_size=batch_size)))
    from pipeline.data import to_model_input

    x = to_model_input(data.images[batch], image_size)
    uint8_mb = data.images.numel() / 2**20
    return {"images": n_images, "image_size": image_size, "uint8_dataset_mb": uint8_mb,
            "batch_float_mb": x.numel() * 4 / 2**20,
            "resized_float_copy_would_be_mb": n_images * 3 * image_size**2 * 4 / 2**20,
            "rss_before_mb": before, "rss_holding_data_and_batch_mb": current_rss_mb(),
            "rss_growth_mb": current_rss_mb() - before}


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Images/s of the notebook's data path and ours, same model.")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=8, help="training steps per repeat")
    parser.add_argument("--eval-images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", default="false", choices=("true", "false"), help="bf16 autocast on our path")
    parser.add_argument("--no-data-memory", dest="data_memory", action="store_false",
                        help="skip measuring 50,000 CIFAR-sized images held for 224-px training")
    parser.add_argument("--out", default="benchmark.json", help="JSON file for the results")
    args = parser.parse_args(argv)
    for name in ("image_size", "batch_size", "train_steps", "eval_images", "repeats"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"Error: {name} must be positive, got {getattr(args, name)}")
    from pipeline.devices import check_device
    from pipeline.errors import PipelineError

    try:
        check_device(args.device)
    except PipelineError as exc:
        raise SystemExit(f"Error: {exc}") from None
    config = BenchmarkConfig(device=args.device, image_size=args.image_size, batch_size=args.batch_size,
                             train_steps=args.train_steps, eval_images=args.eval_images, repeats=args.repeats,
                             amp=args.amp == "true")
    result = run_benchmark(config)
    if args.data_memory:
        result["data_preparation"] = data_preparation_memory()
    write_json(result, args.out)
    keys = ("device", "notebook_train_ips", "ours_train_ips", "train_ratio", "notebook_eval_ips",
            "ours_eval_ips", "eval_ratio", "peak_rss_mb")
    print(json.dumps({k: result[k] for k in keys}, indent=1))


if __name__ == "__main__":
    main()
