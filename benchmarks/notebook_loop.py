"""The reference notebook's whole comparison loop, as one process: its model code, its gates
(the ``sparsemax`` package included), its PIL ``Resize`` + ``ToTensor`` + ``Normalize``
``DataLoader`` path, its train/evaluate loop (best epoch picked on the test set, as the
notebook does), its single-image attention read-out and metrics, for each gate in turn.

Only the data source and the size are parameters, so it runs offline on the same data as the
pipeline (``pipeline.data.load_dataset``); with ``--weights none`` the backbone starts from
random weights instead of ImageNet. It is the baseline of ``bench_end_to_end.py``:

    python benchmarks/notebook_loop.py --dataset digits --image-size 64 --epochs 2 --weights none
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader
from torchvision import models, transforms
from tqdm import tqdm

NOTEBOOK_GATES = ("sigmoid", "softmax", "sparsemax", "scaled_tanh", "parametric_sigmoid", "swish")


class ImageList(torch.utils.data.Dataset):
    """uint8 (N, 3, H, W) images as PIL images through a transform, like torchvision's CIFAR10."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=3 if kernel_size == 7 else 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        x = torch.cat([torch.mean(x, dim=1, keepdim=True), torch.max(x, dim=1, keepdim=True)[0]], dim=1)
        return self.sigmoid(self.conv1(x))


class ChannelAttention(nn.Module):
    def __init__(self, in_planes, ratio=16, activation_type="sigmoid"):
        super().__init__()
        from sparsemax import Sparsemax

        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(in_planes, in_planes // ratio, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(in_planes // ratio, in_planes, 1, bias=False)
        self.activation_type = activation_type
        self.scale = nn.Parameter(torch.ones(1)) if activation_type == "scaled_tanh" else None
        self.temp = nn.Parameter(torch.ones(1)) if activation_type == "parametric_sigmoid" else None
        self.sparsemax = Sparsemax(dim=1) if activation_type == "sparsemax" else None
        self.sigmoid = nn.Sigmoid()
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        out = self.fc2(self.relu(self.fc1(self.avg_pool(x)))) + self.fc2(self.relu(self.fc1(self.max_pool(x))))
        if self.activation_type == "softmax":
            return self.softmax(out.view(out.size(0), -1)).view_as(out)
        if self.activation_type == "sparsemax":
            return self.sparsemax(out.view(out.size(0), -1)).view_as(out)
        if self.activation_type == "scaled_tanh":
            return (torch.tanh(self.scale * out) + 1) / 2
        if self.activation_type == "parametric_sigmoid":
            return self.sigmoid(out / self.temp)
        if self.activation_type == "swish":
            return out * torch.sigmoid(out)
        return self.sigmoid(out)


class CBAM(nn.Module):
    def __init__(self, planes, ratio=16, channel_activation="sigmoid"):
        super().__init__()
        self.ca = ChannelAttention(planes, ratio, channel_activation)
        self.sa = SpatialAttention()

    def forward(self, x):
        x = x * self.ca(x)
        return x * self.sa(x)


class ResNet18CBAMLate(nn.Module):
    """The notebook's ResNet18_CBAM with attention_position="late"."""

    def __init__(self, num_classes=10, channel_activation="sigmoid", weights="none"):
        super().__init__()
        base = models.resnet18(weights="IMAGENET1K_V1" if weights == "imagenet" else None)
        self.stem = nn.Sequential(base.conv1, base.bn1, base.relu, base.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = base.layer1, base.layer2, base.layer3, base.layer4
        self.avgpool = base.avgpool
        self.fc = nn.Linear(512, num_classes)
        self.cbam3 = CBAM(512, channel_activation=channel_activation)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        x = self.cbam3(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


#: Training images and seconds in the notebook's train loops (all gates), for the JSON line;
#: ``--max-batches`` bounds each epoch's train and test batches (a share of the work, for its rate).
TRAINED = {"images": 0, "seconds": 0.0}
MAX_BATCHES = None


def bounded(loader):
    for i, batch in enumerate(loader):
        if MAX_BATCHES is not None and i >= MAX_BATCHES:
            return
        yield batch


def evaluate_model(model, test_loader, criterion, device):
    model.eval()
    running_loss, correct, total, batches = 0.0, 0, 0, 0
    with torch.no_grad():
        for inputs, labels in bounded(test_loader):
            inputs, labels = inputs.to(device), labels.to(device)
            outputs = model(inputs)
            running_loss += criterion(outputs, labels).item()
            correct += outputs.max(1)[1].eq(labels).sum().item()
            total += labels.size(0)
            batches += 1
    return 100.0 * correct / total, running_loss / batches  # the notebook's len(test_loader), when unbounded


def train_model(model, train_loader, test_loader, num_epochs, lr, device):
    model = model.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=lr)
    best_acc, best_model = 0.0, copy.deepcopy(model.state_dict())
    for epoch in range(num_epochs):
        model.train()
        running_loss, correct, total, batches = 0.0, 0, 0, 0
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for inputs, labels in tqdm(bounded(train_loader), desc=f"Epoch {epoch + 1}"):
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            correct += outputs.max(1)[1].eq(labels).sum().item()
            total += labels.size(0)
            batches += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        TRAINED["seconds"] += time.perf_counter() - started
        TRAINED["images"] += total
        test_acc, test_loss = evaluate_model(model, test_loader, criterion, device)
        print(f"Epoch {epoch + 1}: Train Loss: {running_loss / batches:.4f}, "
              f"Train Acc: {100.0 * correct / total:.2f}% | Test Loss: {test_loss:.4f}, Test Acc: {test_acc:.2f}%")
        if test_acc > best_acc:
            best_acc, best_model = test_acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_model)
    return model


def visualize_attention(model, test_loader, device):
    model.eval()
    images, _ = next(iter(test_loader))
    weights = []
    handle = model.cbam3.ca.register_forward_hook(lambda m, i, out: weights.append(out.detach().cpu().squeeze()))
    with torch.no_grad():
        model(images[0].unsqueeze(0).to(device))
    handle.remove()
    return weights[0].numpy()


def gini_coefficient(x):
    x = np.sort(x)
    n = len(x)
    cumx = np.cumsum(x)
    return (n + 1 - 2 * np.sum(cumx) / cumx[-1]) / n


def compute_metrics(att_weights, test_acc):
    return {"avg_score": np.mean(att_weights), "focus_%": 100 * np.mean(att_weights > np.mean(att_weights)),
            "sparsity": np.mean(att_weights == 0), "gini": gini_coefficient(att_weights), "test_acc": test_acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--activations", default=",".join(NOTEBOOK_GATES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="Train and test batches per epoch at most (a bounded share of the work, for its rate).")
    args = parser.parse_args()
    global MAX_BATCHES
    MAX_BATCHES = args.max_batches
    from pipeline.data import load_dataset

    start = time.perf_counter()
    device = torch.device(args.device)
    data = load_dataset(args.dataset, args.data_dir)
    transform = transforms.Compose([transforms.Resize(args.image_size), transforms.ToTensor(),
                                    transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    train_loader = DataLoader(ImageList(data.train.images, data.train.labels, transform), batch_size=64, shuffle=True)
    test_loader = DataLoader(ImageList(data.test.images, data.test.labels, transform), batch_size=64, shuffle=False)
    results = []
    for act in args.activations.split(","):
        print(f"\n{'=' * 40}\nTraining with Channel Activation: {act.upper()}\n{'=' * 40}")
        model = ResNet18CBAMLate(len(data.classes), act, args.weights).to(device)
        trained = train_model(model, train_loader, test_loader, args.epochs, 1e-3, device)
        weights = visualize_attention(trained, test_loader, device)
        test_acc = evaluate_model(trained, test_loader, nn.CrossEntropyLoss(), device)[0]
        results.append({"activation": act, **compute_metrics(weights, test_acc)})
        del model
    for row in results:
        print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"notebook loop: {time.perf_counter() - start:.1f} s")
    import json

    print("NOTEBOOK_JSON " + json.dumps({"wall_s": round(time.perf_counter() - start, 2), "train_images": TRAINED["images"],
                                         "train_s": round(TRAINED["seconds"], 3),
                                         "train_img_per_s": round(TRAINED["images"] / max(TRAINED["seconds"], 1e-9), 1),
                                         "max_batches": args.max_batches, "image_size": args.image_size,
                                         "epochs": args.epochs, "activations": args.activations.split(","),
                                         "device": str(device), "dataset": args.dataset}))


if __name__ == "__main__":
    main()
