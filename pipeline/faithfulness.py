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

Spatial deletion and insertion (Petsiuk et al., BMVC 2018, "RISE"): the input pixels are ranked
by a map upsampled bilinearly to the model's input size (the CBAM spatial map, the CAM of the
true class, or a random map drawn on the CBAM map's grid and upsampled the same way, so that a
random order removes regions of the same shape); *deletion* replaces the top fraction f of the
pixels by a baseline image, *insertion* starts from the baseline and puts back the top fraction f
of the original. The baseline (``imputation``): ``mean`` (the default) is the dataset-mean
colour (0 after normalisation: RISE's deletion substrate), so a fully deleted image carries
nothing of the object; ``blur`` is the image under a Gaussian blur of sigma = image size / 16
(RISE's insertion substrate: in distribution, but a shape survives it: on digits at 64 px the
fully blurred test images are still classified at 87 %). Curves at f = 0, 1/steps, ..., 1; areas
by the trapezoid rule over f. A faithful map has a low deletion area and a high insertion area:
the advantages are random minus map for deletion and map minus random for insertion.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.contracts import ABLATION_FILLS, DELETION_IMPUTATIONS
from pipeline.data import ImageSet, iterate_batches, to_model_input

FILLS = ABLATION_FILLS
IMPUTATIONS = DELETION_IMPUTATIONS
#: the maps that rank pixels (and "random", drawn on the CBAM map's grid); ``ceiling``, the ground-truth
#: mask pooled to that grid (``pipeline.localisation.ceiling_maps``), where a dataset has masks
RANKED_MAPS = ("cbam", "cam", "ceiling")


def ablation_grid(channels: int, points: int = 10) -> list[int]:
    """The ablation sizes k: 0, then a geometric grid from 1 to ``channels``.

    Args:
        channels: C, the block's output channels.
        points: about how many distinct sizes after 0.

    Returns:
        The sizes, rising, ending at ``channels``.
    """
    if channels < 1:
        raise ValueError(f"need at least one channel, got {channels}")
    ks = np.unique(np.rint(np.geomspace(1, channels, num=max(points, 2))).astype(int))
    return [0, *ks.tolist()]


def channel_orders(weights: np.ndarray, draws: int, seed: int, first_index: int = 0) -> dict[str, np.ndarray]:
    """Per image, the channels in ablation order: ``most`` (highest weight first; ties by lower
    index), ``least`` (lowest first) and ``random`` (``draws`` permutations per image, image i's
    draw d seeded by (seed, d, first_index + i), so a draw does not depend on the batching).
    Weights are compared by magnitude (a swish gate's negative weights scale a channel as much
    as positive ones).

    Args:
        weights: channel weights, shape (N, C).
        draws: random permutations per image.
        seed: the run's seed.
        first_index: the index of the first row among all probed images.

    Returns:
        ``most`` and ``least``, shape (N, C), and ``random``, shape (draws, N, C).
    """
    w = np.abs(np.asarray(weights, dtype=np.float64))
    n, c = w.shape
    most = np.argsort(-w, axis=1, kind="stable")
    least = np.argsort(w, axis=1, kind="stable")
    random = np.array([[np.random.default_rng([seed, d, first_index + i]).permutation(c) for i in range(n)]
                       for d in range(draws)], dtype=np.int64).reshape(draws, n, c)
    return {"most": most, "least": least, "random": random}


def area(ks: list[int], values: np.ndarray, channels: int) -> float:
    """Trapezoid area under a curve against k / C over [0, 1].

    Args:
        ks: the ablation sizes.
        values: the curve's value at each size.
        channels: C.

    Returns:
        The area (in the curve's units: percent for accuracy).
    """
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


def _correct_and_mass(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, float]:
    """How many of the batch's top-1 predictions are right, and the summed probability of the
    true class."""
    p = torch.softmax(logits.float(), dim=1)
    return int((p.argmax(1) == y).sum().item()), float(p.gather(1, y[:, None]).sum().item())


@torch.inference_mode()
def channel_ablation(model, data: ImageSet, image_size: int, ks: list[int] | None = None, draws: int = 5,
                     seed: int = 0, fill: str = "mean", batch_size: int = 128,
                     progress=lambda batches, total: batches) -> AblationCurves:
    """The curves of ablating the CBAM block's output channels of ``model`` on ``data``, ordered
    by the channel weights its gate gives each image (``channel_orders``). For
    ``fill="mean"`` a first pass takes the channel means over the images; then every order and
    k, batch by batch, through the rest of the network (``AttentionResNet.from_attended``);
    memory: one batch of features at a time.

    Args:
        model: an ``AttentionResNet`` with an attention block.
        data: the probed images and labels.
        image_size: the model's input size in pixels.
        ks: the ablation sizes (default ``ablation_grid``).
        draws: random orders per image.
        seed: the run's seed (seeds the random orders).
        fill: ``mean`` (each channel's mean map over the images) or ``zero``.
        batch_size: images per forward pass.
        progress: wraps the iterator of the steps (one per batch and order), e.g. a progress bar.

    Returns:
        The accuracy and true-class probability at each k, per order.
    """
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; valid: {', '.join(FILLS)}")
    model.eval()
    channels = model.cbam.channels
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
        def each_curve():  # pass 2: every order and k; one step per batch and order (what progress counts)
            nonlocal start
            for images, y in iterate_batches(data, batch_size):
                captured.clear()
                f = model.attended(to_model_input(images, image_size))
                orders = channel_orders(captured[-1].cpu().numpy(), draws, seed, first_index=start)
                for order, draw in variants:
                    chosen = orders[order] if draw is None else orders[order][draw]
                    order_t = torch.from_numpy(np.ascontiguousarray(chosen)).to(f.device)
                    for j, k in enumerate(ks):
                        right, probability = _correct_and_mass(model.from_attended(_ablated(f, order_t, k, fill_map)),
                                                               y)
                        hits[(order, draw)][j] += right
                        mass[(order, draw)][j] += probability
                    yield
                start += f.shape[0]

        for _ in progress(each_curve(), -(-len(data) // batch_size) * len(variants)):
            pass
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


def deletion_fractions(steps: int = 8) -> list[float]:
    """The deleted (inserted) fractions of the curves.

    Args:
        steps: intervals between 0 and 1.

    Returns:
        f = 0, 1/steps, ..., 1.
    """
    if steps < 1:
        raise ValueError(f"need at least one deletion step, got {steps}")
    return [i / steps for i in range(steps + 1)]


def blur_sigma(image_size: int) -> float:
    """The blur baseline's Gaussian σ in pixels: image size / 16."""
    return image_size / 16


def baseline_of(x: torch.Tensor, imputation: str) -> torch.Tensor:
    """The image every pixel is deleted to.

    Args:
        x: normalised model inputs, shape (B, 3, S, S).
        imputation: ``mean`` (0, the mean colour after normalising) or ``blur`` (σ = S / 16).

    Returns:
        The baseline images, shape (B, 3, S, S).
    """
    if imputation == "mean":
        return torch.zeros_like(x)
    if imputation != "blur":
        raise ValueError(f"unknown imputation {imputation!r}; valid: {', '.join(IMPUTATIONS)}")
    from torchvision.transforms.functional import gaussian_blur

    size = x.shape[-1]
    sigma = blur_sigma(size)
    kernel = min(2 * int(np.ceil(3 * sigma)) + 1, 2 * ((size - 1) // 2) + 1)  # reflect padding needs pad < size
    return gaussian_blur(x, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def constant_maps(maps) -> np.ndarray:
    """The maps whose values are all equal on their own grid (a 1 x 1 map, or a gate that gave
    every position the same weight): such a map orders no pixel.

    Args:
        maps: shape (N, h, w).

    Returns:
        One flag per map, shape (N,) bool.
    """
    m = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    return m.max(axis=1) == m.min(axis=1) if m.shape[1] else np.ones(len(m), dtype=bool)


def pixel_ranks(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(B, h, w) maps -> (B, size * size) rank of each input pixel (0: the highest value of the
    bilinearly upsampled map; ties broken by the lower flat index). A map constant on its grid
    stays exactly constant (bilinear upsampling of a constant is not, to float rounding: the
    rounding noise would otherwise order the pixels), so its ranks are the flat index order.

    Args:
        maps: shape (B, h, w).
        size: the model's input size in pixels.

    Returns:
        Each input pixel's rank, shape (B, size * size).
    """
    up = torch.nn.functional.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear",
                                         align_corners=False)[:, 0].flatten(1)
    flat = maps.flatten(1)
    up = torch.where((flat.amax(1) == flat.amin(1))[:, None], torch.zeros_like(up), up)
    order = torch.argsort(-up, dim=1, stable=True)
    return torch.argsort(order, dim=1)


def random_maps(shape: tuple[int, int], count: int, draw: int, seed: int, first_index: int = 0) -> np.ndarray:
    """Uniform random maps, the chance baseline of deletion and insertion.

    Image i's map of draw d is seeded by (seed, 1000 + d, first_index + i): independent of the
    batching and of the channel draws.

    Args:
        shape: the grid (h, w).
        count: how many maps.
        draw: which draw.
        seed: the run's seed.
        first_index: the index of the first map's image among all probed images.

    Returns:
        The maps, shape (count, h, w) float32.
    """
    return np.stack([np.random.default_rng([seed, 1_000 + draw, first_index + i]).random(shape)
                     for i in range(count)]).astype(np.float32)


@dataclass
class DeletionCurves:
    """Accuracy (percent) and mean true-class probability at each deleted (inserted) fraction,
    per curve family (``deletion``, ``insertion``) and map (``cbam``, ``cam``, ``random``: one
    row per draw)."""

    fractions: list[float]
    accuracy: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (family, map) -> (K,) / (draws, K)
    probability: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def summaries(self) -> dict[str, float]:
        """``<family>_<map>_<acc|prob>_area`` (random: the draws' mean, with ``_std``) and
        ``<family>_advantage_<acc|prob>``: random minus CBAM for deletion, CBAM minus random for
        insertion (positive: the CBAM map ranks pixels better than chance), spread ``_std``; with a
        ``ceiling`` map, ``<family>_normalised_<acc|prob>`` = (CBAM − random) / (ceiling − random):
        0 at the floor, 1 at the ceiling (NaN where the two coincide)."""
        x = np.asarray(self.fractions)
        out: dict[str, float] = {}
        for metric, curves in (("acc", self.accuracy), ("prob", self.probability)):
            for family in ("deletion", "insertion"):
                for name in RANKED_MAPS:
                    if (family, name) in curves:
                        out[f"{family}_{name}_{metric}_area"] = area(x, curves[(family, name)], 1)
                draws = [area(x, row, 1) for row in curves[(family, "random")]]
                random_area = float(np.mean(draws))
                spread = float(np.std(draws, ddof=1)) if len(draws) > 1 else float("nan")
                out[f"{family}_random_{metric}_area"] = random_area
                out[f"{family}_random_{metric}_area_std"] = spread
                cbam = out.get(f"{family}_cbam_{metric}_area", float("nan"))  # NaN: the CBAM map orders nothing
                out[f"{family}_advantage_{metric}"] = random_area - cbam if family == "deletion" else cbam - random_area
                out[f"{family}_advantage_{metric}_std"] = spread
                if f"{family}_ceiling_{metric}_area" in out:  # between the floor (random) and the ceiling
                    span = out[f"{family}_ceiling_{metric}_area"] - random_area
                    out[f"{family}_normalised_{metric}"] = (cbam - random_area) / span if abs(span) > 1e-9 \
                        else float("nan")
        return out


@torch.inference_mode()
def spatial_deletion(model, data: ImageSet, image_size: int, maps: dict[str, np.ndarray],
                     fractions: list[float] | None = None, draws: int = 3, seed: int = 0,
                     imputation: str = "mean", batch_size: int = 128,
                     progress=lambda batches, total: batches, grid: tuple[int, int] | None = None) -> DeletionCurves:
    """Deletion and insertion curves of ``model`` on ``data`` for each of ``maps`` (name ->
    (N, h, w), row i for image i) and ``draws`` random maps drawn on ``grid`` (default: the
    ``cbam`` map's grid, which is then required). Each batch is run once unperturbed and once
    fully imputed (the shared end points), then at every interior fraction for every map and
    family.

    Args:
        model: an ``AttentionResNet``.
        data: the images and labels.
        image_size: the model's input size in pixels.
        maps: map name -> maps, shape (N, h, w).
        fractions: the deleted (inserted) fractions, rising from 0 to 1 (default 0, 1/8, ..., 1).
        draws: random maps per image.
        seed: the run's seed (seeds the random maps).
        imputation: the baseline, ``mean`` (the mean colour) or ``blur``.
        batch_size: images per forward pass.
        progress: wraps the iterator of the steps (one per batch and map).
        grid: the random maps' grid (default: the ``cbam`` map's).

    Returns:
        Accuracy and true-class probability at each fraction, per map and family.
    """
    if grid is None and "cbam" not in maps:
        raise ValueError("spatial deletion needs the CBAM spatial maps (its grid is the random maps' grid)")
    if imputation not in IMPUTATIONS:
        raise ValueError(f"unknown imputation {imputation!r}; valid: {', '.join(IMPUTATIONS)}")
    fractions = list(fractions) if fractions is not None else deletion_fractions()
    if fractions[0] != 0 or fractions[-1] != 1 or any(b <= a for a, b in zip(fractions, fractions[1:])):
        raise ValueError(f"fractions must rise from 0 to 1, got {fractions}")
    model.eval()
    pixels = image_size * image_size
    counts = [int(round(f * pixels)) for f in fractions]
    variants = [(name, None) for name in maps] + [("random", d) for d in range(draws)]
    hits = {(fam, v): np.zeros(len(fractions)) for fam in ("deletion", "insertion") for v in variants}
    mass = {key: np.zeros(len(fractions)) for key in hits}
    grid = tuple(grid) if grid is not None else maps["cbam"].shape[1:]
    start = 0

    def each_map():  # one step per batch and map (what progress counts)
        nonlocal start
        for images, y in iterate_batches(data, batch_size):
            b = images.shape[0]
            x = to_model_input(images, image_size)
            base = baseline_of(x, imputation)
            flat_x, flat_base = x.flatten(2), base.flatten(2)  # (B, 3, S*S)
            unperturbed, imputed = _correct_and_mass(model(x), y), _correct_and_mass(model(base), y)
            for name, draw in variants:
                m = maps[name][start:start + b] if draw is None else random_maps(grid, b, draw, seed, start)
                ranks = pixel_ranks(torch.as_tensor(np.asarray(m, dtype=np.float32)).to(x.device), image_size)
                for family in ("deletion", "insertion"):
                    key = (family, (name, draw))
                    scored = {0: unperturbed, len(fractions) - 1: imputed} if family == "deletion" else \
                        {0: imputed, len(fractions) - 1: unperturbed}
                    for j in range(1, len(fractions) - 1):
                        top = (ranks < counts[j])[:, None]  # (B, 1, S*S): the map's top fraction
                        if family == "deletion":
                            perturbed = torch.where(top, flat_base, flat_x)
                        else:
                            perturbed = torch.where(top, flat_x, flat_base)
                        scored[j] = _correct_and_mass(model(perturbed.view_as(x)), y)
                    for j, (right, probability) in scored.items():
                        hits[key][j] += right
                        mass[key][j] += probability
                yield
            start += b

    for _ in progress(each_map(), -(-len(data) // batch_size) * len(variants)):
        pass
    curves = DeletionCurves(fractions)
    for family in ("deletion", "insertion"):
        for name in maps:
            curves.accuracy[(family, name)] = 100.0 * hits[(family, (name, None))] / start
            curves.probability[(family, name)] = mass[(family, (name, None))] / start
        curves.accuracy[(family, "random")] = np.array(
            [100.0 * hits[(family, ("random", d))] / start for d in range(draws)]).reshape(draws, len(fractions))
        curves.probability[(family, "random")] = np.array(
            [mass[(family, ("random", d))] / start for d in range(draws)]).reshape(draws, len(fractions))
    return curves


def curve_rows(channel: AblationCurves, spatial: DeletionCurves | None) -> list[dict]:
    """Every point of every curve, one row each: family (channel, deletion, insertion), order
    (most / least / random for channels; cbam / cam / random for pixels), draw (random only,
    else -1), x (k / C or the fraction), k (channels; -1 for pixels), accuracy, probability.

    Args:
        channel: the ablation curves.
        spatial: the deletion and insertion curves, or None.

    Returns:
        The rows of ``tables/faithfulness_curves.csv``.
    """
    rows = []

    def add(family, order, xs, ks, accuracy, probability):
        acc, prob = np.atleast_2d(accuracy), np.atleast_2d(probability)
        for d in range(acc.shape[0]):
            draw = d if order == "random" else -1
            rows.extend({"family": family, "order": order, "draw": draw, "x": float(x), "k": int(k),
                         "accuracy": float(a), "probability": float(p)}
                        for x, k, a, p in zip(xs, ks, acc[d], prob[d]))

    channel_x = np.asarray(channel.ks) / channel.channels
    for order in ("most", "least", "random"):
        add("channel", order, channel_x, channel.ks, channel.accuracy[order], channel.probability[order])
    for (family, order), accuracy in (spatial.accuracy.items() if spatial is not None else ()):
        add(family, order, spatial.fractions, [-1] * len(spatial.fractions), accuracy,
            spatial.probability[(family, order)])
    return rows


@dataclass
class Faithfulness:
    """What ``judge_faithfulness`` measured: the summaries (an undefined measure is NaN), the
    curves' rows, and each undefined measure family with the reason (``deletion/insertion of the
    cbam map`` -> why)."""

    summaries: dict[str, float]
    rows: list[dict]
    undefined: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # caveats of what is defined


def forward_passes(images: int, channels: int, draws: int, maps: int, steps: int = 8,
                   randomised: bool = False) -> dict[str, int]:
    """Image passes the protocol costs (what ``faithfulness_draws`` multiplies): ``partial``, the
    rest of the network after the block (two passes to read the features and their channel
    means, then every order and k of the ablation grid; twice with ``randomised``, the
    re-initialised network's ablation), and ``full``, the whole network (the two shared end
    points of deletion and insertion, then every interior fraction of both, per ranked map and
    random draw; ``maps`` = 0: no pixel ranking).

    Args:
        images: probed images.
        channels: C.
        draws: random draws.
        maps: ranked maps (0: none).
        steps: the deletion grid's intervals.
        randomised: whether the re-initialised network's ablation runs too.

    Returns:
        ``{"partial": ..., "full": ...}`` image passes.
    """
    partial = images * (2 + (2 + draws) * len(ablation_grid(channels))) * (2 if randomised else 1)
    full = images * (2 + (maps + draws) * 2 * (steps - 1)) if maps else 0
    return {"partial": partial, "full": full}


def split_informative(maps: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, int]]:
    """The maps that order pixels, the undefined ones with why (every image's map constant on its
    grid, a 1 x 1 map among them: its deletion and insertion curves would measure the tie-break
    order, and bilinear upsampling's rounding noise before that), and the count of constant maps
    among the kept ones (scored in flat index order, which the caller reports).

    Args:
        maps: map name -> maps, shape (N, h, w).

    Returns:
        The kept maps, the undefined measures with why, and map name -> constant maps kept.
    """
    kept, undefined, some = {}, {}, {}
    for name, m in maps.items():
        constant = constant_maps(m)
        if constant.all():
            undefined[f"deletion/insertion of the {name} map"] = (
                f"every probed image's {name} map is constant on its {m.shape[1]} x {m.shape[2]} grid, so it orders "
                "no pixel")
        else:
            kept[name] = m
            if constant.any():
                some[name] = int(constant.sum())
    return kept, undefined, some


def judge_faithfulness(model, data: ImageSet, image_size: int, maps: dict[str, np.ndarray], draws: int = 3,
                       seed: int = 0, fill: str = "mean", imputation: str = "mean", batch_size: int = 128,
                       progress=lambda batches, total, desc: batches, randomised=None) -> Faithfulness:
    """Channel ablation and spatial deletion / insertion on ``data``: the summaries, keyed
    ``channel_<summary>`` (``AblationCurves.summaries``) and ``deletion_*`` / ``insertion_*``
    (``DeletionCurves.summaries``; only where ``maps`` has the block's own ``cbam`` map), and
    the curves' rows (``curve_rows``).

    ``randomised``, the same architecture re-initialised (``pipeline.models.initial_model``),
    gives channel ablation its floor: the same protocol on it, its own gate ordering its own
    channels, as ``channel_randomised_advantage_{acc,prob}`` (and their ``_std``). A network
    whose weights carry nothing has no channel its decision depends on more than another, so
    its advantage sits near 0 (within its random draws' spread). Channel ablation has no
    ceiling here: the best order of C channels is a search over C! orders, not computed.

    Args:
        model: an ``AttentionResNet`` with an attention block.
        data: the images and labels.
        image_size: the model's input size in pixels.
        maps: map name (``cbam``, ``cam``, ``ceiling``) -> maps, shape (N, h, w).
        draws: random orders and random maps per image.
        seed: the run's seed.
        fill: the ablation's fill, ``mean`` or ``zero``.
        imputation: the deletion baseline, ``mean`` or ``blur``.
        batch_size: images per forward pass.
        progress: ``progress(steps, total, description)`` wraps each loop's iterator.
        randomised: the same architecture re-initialised, or None.

    Returns:
        The summaries, the curves' rows, the undefined measures with why, and notes.

    A map that orders no pixel (constant for every image: a 1 x 1 map after layer4 at 32 px, the
    CAM there too) gets no deletion or insertion curve: its areas and the advantages that need it
    are NaN, with the reason in ``Faithfulness.undefined``. Random maps on a 1 x 1 grid are
    constant too, so there the whole pixel protocol is undefined."""
    channel = channel_ablation(model, data, image_size, draws=draws, seed=seed, fill=fill, batch_size=batch_size,
                               progress=lambda b, total: progress(b, total, "channel ablation"))
    summaries = {f"channel_{k}": v for k, v in channel.summaries().items()}
    if randomised is not None:
        floor = channel_ablation(randomised, data, image_size, draws=draws, seed=seed, fill=fill,
                                 batch_size=batch_size,
                                 progress=lambda b, total: progress(b, total, "channel ablation, re-initialised"))
        summaries.update({f"channel_randomised_{k}": v for k, v in floor.summaries().items()
                          if k.startswith("advantage_")})
    if "cbam" not in maps:  # a block without a spatial map (SE, ECA): no pixel ranking of its own
        return Faithfulness(summaries, curve_rows(channel, None))
    grid = tuple(maps["cbam"].shape[1:])
    kept, undefined, some = split_informative(maps)
    if grid[0] * grid[1] < 2:
        undefined["deletion/insertion of the random maps"] = (
            f"random maps drawn on the CBAM map's {grid[0]} x {grid[1]} grid are constant: no chance baseline")
        kept = {}
    notes = [f"{count} of {len(maps[name])} {name} maps are constant on their grid: their pixels are deleted in flat "
             "index order (top rows first), not by the map" for name, count in some.items() if name in kept]
    undefined_areas = {f"{family}_{name}_{metric}_area": float("nan") for family in ("deletion", "insertion")
                       for metric in ("acc", "prob") for name in (*RANKED_MAPS, "random") if name not in kept}
    if not kept:
        advantages = {f"{family}_advantage_{metric}": float("nan") for family in ("deletion", "insertion")
                      for metric in ("acc", "prob")}
        summaries.update({**undefined_areas, **advantages})
        return Faithfulness(summaries, curve_rows(channel, None), undefined, notes)
    spatial = spatial_deletion(model, data, image_size, kept, draws=draws, seed=seed, imputation=imputation,
                               batch_size=batch_size, grid=grid,
                               progress=lambda b, total: progress(b, total, "deletion and insertion"))
    summaries.update({**undefined_areas, **spatial.summaries()})
    return Faithfulness(summaries, curve_rows(channel, spatial), undefined, notes)
