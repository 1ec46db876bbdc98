"""Does the attention matter? Channel ablation at the CBAM block's output, ordered by the gate's
own channel weights. No MLflow here.

For each probed image, the k channels of the CBAM block's output with the highest channel
weight (``most``: most relevant first), the k lowest (``least``) or k drawn at random
(``random``, several seeded draws, each its own permutation per image) are replaced, and the
rest of the network is run on the result; top-1 accuracy and the mean probability of the true
class are recorded for every k of a grid from 0 to C. This is the attention-faithfulness
protocol of Serrano & Smith (ACL 2019, "Is Attention Interpretable?") and Jain & Wallace
(NAACL 2019, "Attention is not Explanation"), applied to channel attention.

Replacement (``fill``): ``mean`` puts each channel's mean over the probed images (per
position: a (C, H, W) mean map), so an ablated channel carries no information about the
image yet stays in distribution; ``zero`` puts 0, which is in distribution for a sparse gate
(sparsemax zeroes most channels) and out of it for a sigmoid gate.

Summaries: the normalised area under each curve (trapezoid over k / C in [0, 1]; accuracy in
percent), and the *attention advantage*: the random draws' mean area minus the most-relevant-
first area (positive: ablating what the gate weights highest hurts more than ablating at
random), with the spread (standard deviation) of the random draws' areas.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.data import ImageSet, iterate_batches, to_model_input

FILLS = ("mean", "zero")


def ablation_grid(channels: int, points: int = 10) -> list[int]:
    """k = 0, then a geometric grid from 1 to ``channels`` (about ``points`` distinct integers,
    always ending at ``channels``)."""
    if channels < 1:
        raise ValueError(f"need at least one channel, got {channels}")
    ks = np.unique(np.rint(np.geomspace(1, channels, num=max(points, 2))).astype(int))
    return [0, *ks.tolist()]


def channel_orders(weights: np.ndarray, draws: int, seed: int, first_index: int = 0) -> dict[str, np.ndarray]:
    """Per image, the channels in ablation order: ``most`` (highest weight first; ties by lower
    index), ``least`` (lowest first) and ``random`` (``draws`` permutations per image, image i's
    draw d seeded by (seed, d, first_index + i), so a draw does not depend on the batching).
    Shapes: (N, C) -> ``most``/``least`` (N, C), ``random`` (draws, N, C). Weights are compared
    by magnitude (a swish gate's negative weights scale a channel as much as positive ones)."""
    w = np.abs(np.asarray(weights, dtype=np.float64))
    n, c = w.shape
    most = np.argsort(-w, axis=1, kind="stable")
    least = np.argsort(w, axis=1, kind="stable")
    random = np.array([[np.random.default_rng([seed, d, first_index + i]).permutation(c) for i in range(n)]
                       for d in range(draws)], dtype=np.int64).reshape(draws, n, c)
    return {"most": most, "least": least, "random": random}


def area(ks: list[int], values: np.ndarray, channels: int) -> float:
    """Trapezoid area under ``values`` against k / C over [0, 1]."""
    x = np.asarray(ks, dtype=np.float64) / channels
    y = np.asarray(values, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


@dataclass
class AblationCurves:
    """Accuracy (percent) and mean true-class probability at each k, per order; ``random``
    holds one row per draw."""

    ks: list[int]
    channels: int
    accuracy: dict[str, np.ndarray] = field(default_factory=dict)  # order -> (K,), random -> (draws, K)
    probability: dict[str, np.ndarray] = field(default_factory=dict)

    def summaries(self) -> dict[str, float]:
        """``<order>_acc_area`` and ``<order>_prob_area`` (random: the draws' mean, with
        ``random_*_area_std``), ``advantage_acc`` / ``advantage_prob`` (random minus most) and
        their spread ``advantage_*_std`` (the random draws' std)."""
        out: dict[str, float] = {}
        for metric, curves in (("acc", self.accuracy), ("prob", self.probability)):
            for order in ("most", "least"):
                out[f"{order}_{metric}_area"] = area(self.ks, curves[order], self.channels)
            draws = [area(self.ks, row, self.channels) for row in curves["random"]]
            out[f"random_{metric}_area"] = float(np.mean(draws)) if draws else float("nan")
            out[f"random_{metric}_area_std"] = float(np.std(draws, ddof=1)) if len(draws) > 1 else float("nan")
            out[f"advantage_{metric}"] = out[f"random_{metric}_area"] - out[f"most_{metric}_area"]
            out[f"advantage_{metric}_std"] = out[f"random_{metric}_area_std"]
        return out


def _ablated(features: torch.Tensor, order: torch.Tensor, k: int, fill: torch.Tensor) -> torch.Tensor:
    """features (B, C, H, W) with the first k channels of each image's ``order`` (B, C) replaced
    by ``fill`` (C, H, W), or a scalar."""
    if k == 0:
        return features
    drop = torch.zeros(order.shape, dtype=torch.bool, device=features.device)
    drop.scatter_(1, order[:, :k], True)  # (B, C)
    return torch.where(drop[:, :, None, None], fill.to(features.device, features.dtype)[None], features)


@torch.inference_mode()
def channel_ablation(model, data: ImageSet, image_size: int, ks: list[int] | None = None, draws: int = 5,
                     seed: int = 0, fill: str = "mean", batch_size: int = 128) -> AblationCurves:
    """The curves of ablating the CBAM block's output channels of ``model`` on ``data``, ordered
    by the channel weights its gate gives each image (:func:`channel_orders`). For
    ``fill="mean"`` a first pass takes the channel means over the images; then every order and
    k, batch by batch, through the rest of the network (:meth:`CBAMResNet18.from_attended`);
    memory: one batch of features at a time."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; valid: {', '.join(FILLS)}")
    model.eval()
    channels = model.cbam.channel.mlp[-1].out_channels
    ks = list(ks) if ks is not None else ablation_grid(channels)
    if any(k < 0 or k > channels for k in ks):
        raise ValueError(f"ablation sizes must lie in 0..{channels}, got {ks}")
    fill_map = torch.zeros(())
    if fill == "mean":
        total, count = None, 0
        for images, _ in iterate_batches(data, batch_size):  # pass 1: each channel's mean map
            f = model.attended(to_model_input(images, image_size)).float()
            total = f.sum(0) if total is None else total + f.sum(0)
            count += f.shape[0]
        fill_map = total / count  # (C, H, W)
    variants = [("most", None), ("least", None), *(("random", d) for d in range(draws))]
    hits = {v: np.zeros(len(ks)) for v in variants}
    mass = {v: np.zeros(len(ks)) for v in variants}
    captured: list[torch.Tensor] = []
    hook = model.cbam.channel.gate.register_forward_hook(lambda m, i, out: captured.append(out.float().flatten(1)))
    start = 0
    try:
        for images, y in iterate_batches(data, batch_size):  # pass 2: every order and k, batch by batch
            captured.clear()
            f = model.attended(to_model_input(images, image_size))
            orders = channel_orders(captured[-1].cpu().numpy(), draws, seed, first_index=start)
            for order, draw in variants:
                chosen = orders[order] if draw is None else orders[order][draw]
                order_t = torch.from_numpy(np.ascontiguousarray(chosen)).to(f.device)
                for j, k in enumerate(ks):
                    p = torch.softmax(model.from_attended(_ablated(f, order_t, k, fill_map)).float(), dim=1)
                    hits[(order, draw)][j] += (p.argmax(1) == y).sum().item()
                    mass[(order, draw)][j] += p.gather(1, y[:, None]).sum().item()
            start += f.shape[0]
    finally:
        hook.remove()
    curves = AblationCurves(ks, channels)
    for order in ("most", "least"):
        curves.accuracy[order] = 100.0 * hits[(order, None)] / start
        curves.probability[order] = mass[(order, None)] / start
    curves.accuracy["random"] = np.array([100.0 * hits[("random", d)] / start for d in range(draws)]).reshape(
        draws, len(ks))
    curves.probability["random"] = np.array([mass[("random", d)] / start for d in range(draws)]).reshape(
        draws, len(ks))
    return curves
