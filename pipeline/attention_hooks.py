"""Read a model's attention with forward hooks on its gates. No MLflow here."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.console import progress
from pipeline.data import ImageSet, iterate_batches, to_model_input
from pipeline.models import CBAMResNet18


@dataclass
class Attention:
    channel_weights: np.ndarray  # (N, C) float32: the channel gate's output
    spatial_maps: np.ndarray  # (N, H, W) float16: the spatial gate's output
    logits: np.ndarray  # (N, K) float32


@torch.inference_mode()
def read_attention(model: CBAMResNet18, data: ImageSet, image_size: int, batch_size: int = 256,
                    desc: str = "probe") -> Attention:
    """Pass ``data`` through ``model`` in batches and collect what its two gates output. A model
    without CBAM (position none, the baseline) has no gates: its channel weights come back with
    shape (N, 0) and its spatial maps (N, 0, 0), beside its logits."""
    channel, spatial, logits = [], [], []
    hooks = [] if model.cbam is None else [
        model.cbam.channel.gate.register_forward_hook(
            lambda m, i, out: channel.append(out.float().flatten(1).cpu())),  # (B, C, 1, 1) -> (B, C)
        model.cbam.spatial.gate.register_forward_hook(
            lambda m, i, out: spatial.append(out[:, 0].to(torch.float16).cpu())),  # (B, 1, H, W) -> (B, H, W)
    ]
    model.eval()
    try:
        steps = (len(data) + batch_size - 1) // batch_size
        for images, _ in progress(iterate_batches(data, batch_size), total=steps, desc=desc, unit="batch"):
            logits.append(model(to_model_input(images, image_size)).float().cpu())
    finally:
        for hook in hooks:
            hook.remove()
    logits = torch.cat(logits).numpy()
    if model.cbam is None:
        n = logits.shape[0]
        return Attention(np.zeros((n, 0), np.float32), np.zeros((n, 0, 0), np.float16), logits)
    return Attention(torch.cat(channel).numpy(), torch.cat(spatial).numpy(), logits)
