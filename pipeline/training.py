"""Training and evaluation loops over device-resident uint8 data. No MLflow here.

Per-step losses and counts accumulate on the device; nothing calls ``.item()`` inside a
loop, so the host never waits for the device between steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.console import progress
from pipeline.data import ImageSet, batch_bounds, iterate_batches, to_model_input
from pipeline.devices import autocast, eval_batch_size

STAGE_ORDER = ("stem", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")


def forward_rank(model: nn.Module, name: str) -> float:
    """Where the parameter ``name`` sits on the forward path (CBAM right after its stage);
    a stable sort keeps the order within a module."""
    top = name.split(".")[0]
    if top == "cbam":
        top, offset = getattr(model, "cbam_after", None) or "layer4", 0.5
    else:
        offset = 0.0
    return (STAGE_ORDER.index(top) if top in STAGE_ORDER else len(STAGE_ORDER)) + offset


class GradientFlow:
    """Mean absolute gradient of each weight tensor (biases left out), averaged over steps."""

    def __init__(self, model: nn.Module):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias")]
        named.sort(key=lambda item: forward_rank(model, item[0]))  # input to output
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.sizes = torch.tensor([max(p.numel(), 1) for p in self.params], dtype=torch.float32,
                                  device=self.params[0].device if self.params else "cpu")
        self.reset()

    def reset(self) -> None:
        self.total: torch.Tensor | None = None
        self.steps = 0

    def accumulate(self) -> None:
        # one multi-tensor kernel for every weight's L1 norm (not two small kernels per weight:
        # on a GPU at batch 64 a step is bound by its kernel launches)
        grads = [p.grad if p.grad is not None else p.new_zeros(()) for p in self.params]
        step = torch.stack(torch._foreach_norm(grads, 1)).float() / self.sizes
        self.total = step if self.total is None else self.total + step
        self.steps += 1

    def epoch_means(self) -> list[float]:
        return (self.total / max(self.steps, 1)).tolist() if self.total is not None else []


@dataclass
class EpochResult:
    loss: float
    acc: float  # percent


def train_one_epoch(
    model: nn.Module,
    data: ImageSet,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    image_size: int,
    generator: torch.Generator,
    amp: bool = False,
    channels_last: bool = False,
    grad_flow: GradientFlow | None = None,
    desc: str = "train",
    forward=None,
    scheduler=None,
) -> EpochResult:
    """One epoch in seeded batch order. ``forward``: what the batch goes through, ``model`` itself
    unless given (the graph-captured model of ``pipeline.devices.compiled``); ``scheduler``:
    a learning-rate schedule stepped after every optimizer step."""
    model.train()
    forward = model if forward is None else forward
    device = data.labels.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    steps = len(batch_bounds(len(data), batch_size, no_single=True))
    batches = iterate_batches(data, batch_size, shuffle=True, generator=generator, no_single=True)
    for images, labels in progress(batches, total=steps, desc=desc, unit="batch"):
        inputs = to_model_input(images, image_size, channels_last)
        with autocast(device, amp):
            logits = forward(inputs)
            loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_flow is not None:
            grad_flow.accumulate()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * labels.shape[0]
        correct += (logits.argmax(dim=1) == labels).sum()
    n = len(data)
    return EpochResult(loss=float(loss_sum) / n, acc=100.0 * float(correct) / n)


@torch.inference_mode()
def predict(
    model: nn.Module,
    data: ImageSet,
    *,
    image_size: int,
    batch_size: int | None = None,
    amp: bool = False,
    channels_last: bool = False,
    desc: str | None = None,
) -> torch.Tensor:
    """Logits (N, num_classes) in float32, in the order of ``data``; ``batch_size`` defaults to
    ``EVAL_BATCH_SIZE`` of the data's device."""
    model.eval()
    device = data.labels.device
    batch_size = batch_size or eval_batch_size(device)
    outputs = []
    batches = iterate_batches(data, batch_size)
    if desc:
        batches = progress(batches, total=(len(data) + batch_size - 1) // batch_size, desc=desc)
    for images, _ in batches:
        with autocast(device, amp):
            outputs.append(model(to_model_input(images, image_size, channels_last)).float())
    return torch.cat(outputs)


@dataclass
class Evaluation:
    loss: float
    acc: float  # top-1, percent
    top5: float  # percent (top-k with k = min(5, num_classes))


def score_logits(logits: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    k = min(5, logits.shape[1])
    loss = F.cross_entropy(logits, labels).item()
    acc = 100.0 * (logits.argmax(dim=1) == labels).sum().item() / labels.shape[0]
    top5 = 100.0 * (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum().item() / labels.shape[0]
    return Evaluation(loss=loss, acc=acc, top5=top5)


def evaluate(model: nn.Module, data: ImageSet, *, image_size: int, **kwargs) -> Evaluation:
    return score_logits(predict(model, data, image_size=image_size, **kwargs), data.labels)
