"""Read a model's attention with forward hooks on its gates. No MLflow here."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.console import progress
from pipeline.data import ImageSet, iterate_batches, to_model_input
from pipeline.models import AttentionResNet


@dataclass
class Attention:
    channel_weights: np.ndarray  # (N, C) float32: the channel gate's output
    spatial_maps: np.ndarray  # (N, H, W) float16: the spatial gate's output
    logits: np.ndarray  # (N, K) float32
    cams: np.ndarray  # (N, h, w) float32: class activation map of the true class


def class_activation_maps(features: torch.Tensor, fc: torch.nn.Linear, labels: torch.Tensor) -> torch.Tensor:
    """CAM (Zhou et al., CVPR 2016, "Learning Deep Features for Discriminative Localization"):
    the last feature map (B, C, h, w), as the global-average-pooled head sees it, weighted by
    the head's weights for each image's class and summed over channels -> (B, h, w). The
    bias is left out: it shifts a map by a constant, which min-max normalisation removes."""
    return torch.einsum("bchw,bc->bhw", features.float(), fc.weight[labels].float())


@torch.inference_mode()
def read_attention(model: AttentionResNet, data: ImageSet, image_size: int, batch_size: int = 256,
                    desc: str = "probe") -> Attention:
    """Pass ``data`` through ``model`` in batches and collect what its two gates output, and the
    CAM of each image's true class (``class_activation_maps``). A model without a block
    (position none, the baseline) has no gates: its channel weights come back with shape (N, 0)
    and its spatial maps (N, 0, 0), beside its logits; an SE or ECA block has no spatial branch:
    its maps come back (N, 0, 0) beside its channel weights."""
    channel, spatial, logits, cams = [], [], [], []
    batch_labels: list[torch.Tensor] = []
    hooks = [model.avgpool.register_forward_hook(  # its input: the final feature map (B, C, h, w)
        lambda m, i, out: cams.append(class_activation_maps(i[0], model.fc, batch_labels[-1]).cpu()))]
    hooks += [] if model.cbam is None else [
        model.cbam.channel.gate.register_forward_hook(
            lambda m, i, out: channel.append(out.float().flatten(1).cpu())),  # (B, C, 1, 1) -> (B, C)
    ]
    hooks += [] if model.cbam is None or model.cbam.spatial is None else [  # SE and ECA have no spatial map
        model.cbam.spatial.gate.register_forward_hook(
            lambda m, i, out: spatial.append(out[:, 0].to(torch.float16).cpu())),  # (B, 1, H, W) -> (B, H, W)
    ]
    model.eval()
    try:
        steps = (len(data) + batch_size - 1) // batch_size
        for images, labels in progress(iterate_batches(data, batch_size), total=steps, desc=desc, unit="batch"):
            batch_labels.append(labels)
            logits.append(model(to_model_input(images, image_size)).float().cpu())
    finally:
        for hook in hooks:
            hook.remove()
    logits, cams = torch.cat(logits).numpy(), torch.cat(cams).numpy()
    if model.cbam is None:
        n = logits.shape[0]
        return Attention(np.zeros((n, 0), np.float32), np.zeros((n, 0, 0), np.float16), logits, cams)
    maps = torch.cat(spatial).numpy() if spatial else np.zeros((logits.shape[0], 0, 0), np.float16)
    return Attention(torch.cat(channel).numpy(), maps, logits, cams)
