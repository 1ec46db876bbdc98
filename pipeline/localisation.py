"""Localisation metrics: does a map fall on the object? Pure numpy and scipy over a batch of
maps (N, H, W) already at the image's size, against ground-truth masks (N, H, W) bool and
boxes (N, 4) int (half-open x0, y0, x1, y1). Definitions, sources and edge cases:
``docs/metrics.md``.

- **PxAP** (Choe et al., CVPR 2020, "Evaluating Weakly Supervised Object Localization
  Methods Right"; clovaai/wsolevaluation ``MaskEvaluator``): every map min-max normalised per
  image, the pixels of *all* images pooled, precision and recall of "score >= τ" against the
  masks for τ = 0, 0.001, ..., 0.999; PxAP = Σ_l P(τ_l) (R(τ_l) − R(τ_{l+1})) × 100.
- **MaxBoxAccV2** (same paper, ``BoxEvaluator`` with ``multi_contour_eval``): for each IoU
  threshold δ ∈ {0.3, 0.5, 0.7}, the best over τ = 0, 0.01, ..., 0.99 of BoxAcc(τ, δ), the
  share of images where the box of *some* connected region of "score >= τ" has IoU >= δ with
  the ground-truth box; then the mean over δ (percent).
- **Pointing game** (Zhang et al., ECCV 2016, "Top-down Neural Attention by Excitation
  Backprop"; Quantus ``PointingGame``): is the map's maximum on the object? Ties count as the
  share of the maximal pixels that lie on it, so a constant map scores the object's pixel
  share (chance), not 1.
- **Energy in box** (Wang et al., CVPR-W 2020, "Score-CAM", energy-based pointing game;
  Quantus ``RelevanceMassAccuracy`` with a box): the share of the min-max-normalised map's
  mass inside the box; a constant map spreads its mass evenly (the box's area share).

A constant map (every pixel equal, or any NaN) normalises to zeros, as in wsolevaluation.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from pipeline.placement import resize_nearest

#: wsolevaluation's default curve intervals: 0.001 for PxAP, 0.01 for boxes (``cam_curve_interval``).
PXAP_THRESHOLDS = np.arange(1000) / 1000.0
BOX_THRESHOLDS = np.arange(100) / 100.0
IOU_THRESHOLDS = (0.3, 0.5, 0.7)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def normalise_maps(maps) -> np.ndarray:
    """Min-max normalise each map to [0, 1]: (m − min) / (max − min). A constant map, or one
    holding a NaN or infinity, becomes all zeros (wsolevaluation ``normalize_scoremap``).

    Args:
        maps: shape (N, H, W).

    Returns:
        The normalised maps, shape (N, H, W) float64.
    """
    m = np.asarray(maps, dtype=np.float64)
    low = m.min(axis=(1, 2), keepdims=True)
    span = m.max(axis=(1, 2), keepdims=True) - low
    ok = np.isfinite(m).all(axis=(1, 2), keepdims=True) & (span > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(ok, (m - low) / np.where(span > 0, span, 1.0), 0.0)
    return out


def upsample_maps(maps, size: int) -> np.ndarray:
    """Upsample maps bilinearly, as the images are resized to the model's input
    (``align_corners=False``); an empty set of maps stays empty.

    Args:
        maps: shape (N, h, w).
        size: the model's input size in pixels.

    Returns:
        The maps, shape (N, size, size) float32.
    """
    import torch
    from torch.nn import functional as F

    m = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    if m.shape[0] == 0 or tuple(m.shape[1:]) == (size, size):
        return m.numpy()
    return F.interpolate(m[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def resize_masks(masks, size: int) -> np.ndarray:
    """Resize masks by nearest neighbour (pixel i takes source pixel floor(i·h/size), torch's
    ``nearest``): the ground truth resized as the images are.

    Args:
        masks: shape (N, h, w) bool.
        size: the model's input size in pixels.

    Returns:
        The masks, shape (N, size, size) bool.
    """
    return resize_nearest(np.asarray(masks, dtype=bool), size)


def resize_boxes(boxes, native: int, size: int) -> np.ndarray:
    """Scale half-open boxes as their masks are resized: the bounds of the nearest-neighbour
    resized box mask (exact for integer scale factors).

    Args:
        boxes: x0, y0, x1, y1 on a ``native``-px image, shape (N, 4).
        native: the images' native size in pixels.
        size: the model's input size in pixels.

    Returns:
        The boxes on a ``size``-px image, shape (N, 4) int64.
    """
    b = np.asarray(boxes, dtype=np.int64)
    # output pixel i lies in the box iff floor(i * native / size) in [b0, b1): i in [ceil(b0 * size / native), ...)
    return -((-b * size) // native)


def centre_prior(size: int) -> np.ndarray:
    """The centre prior: a Gaussian centred on the image, σ = size / 4, the chance reference
    that knows only that objects tend to sit near the middle.

    Args:
        size: the model's input size in pixels.

    Returns:
        The map, shape (size, size).
    """
    c = (np.arange(size) + 0.5) - size / 2
    sigma = size / 4
    return np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * sigma ** 2))


def pixel_histograms(scores, masks, thresholds: np.ndarray = PXAP_THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """Counts of normalised scores per threshold bin, on and off the masks: what PxAP pools over
    images (bins ``thresholds`` ∪ {1, 2, 3}: the last bins hold scores of exactly 1).

    Args:
        scores: normalised maps, shape (N, H, W).
        masks: shape (N, H, W) bool.
        thresholds: the bins' lower edges.

    Returns:
        The counts on the masks and off them.
    """
    truth = np.asarray(masks, dtype=bool)
    if scores.shape != truth.shape:
        raise ValueError(f"maps {scores.shape} and masks {truth.shape} differ in shape")
    edges = np.append(thresholds, [1.0, 2.0, 3.0])
    return np.histogram(scores[truth], bins=edges)[0], np.histogram(scores[~truth], bins=edges)[0]


def pxap_from_histograms(on: np.ndarray, off: np.ndarray) -> float:
    """PxAP from pooled ``pixel_histograms`` (wsolevaluation ``MaskEvaluator.compute``).

    Args:
        on: counts on the masks per bin, summed over images.
        off: counts off the masks per bin.

    Returns:
        PxAP in percent; NaN without a mask pixel.
    """
    positives = on.sum()
    if positives == 0:
        return float("nan")
    tp, fp = on[::-1].cumsum(), off[::-1].cumsum()  # counts of score >= each edge, highest edge first
    predicted = tp + fp
    precision = np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1), 0.0)
    recall = tp / positives
    return float((precision[1:] * np.diff(recall))[predicted[1:] > 0].sum() * 100.0)


def pxap(maps, masks, thresholds: np.ndarray = PXAP_THRESHOLDS) -> float:
    """Pixel average precision (percent) of the maps against the masks, pixels pooled over all
    images (a dataset-level score, not a mean of per-image APs). NaN if no mask has a pixel.

    With tp(τ), fp(τ) the pooled pixel counts of "normalised score >= τ" on and off the
    masks, P = tp / (tp + fp), R = tp / #mask pixels, thresholds in decreasing order:
    PxAP = Σ_l P(τ_l) (R(τ_l) − R(τ_{l-1})) × 100, over thresholds with tp + fp > 0
    (wsolevaluation ``MaskEvaluator.compute``). A map equal to its mask gives 100; a
    constant map gives the masks' pixel share × 100.

    Args:
        maps: maps at the masks' size, shape (N, H, W); each is min-max normalised here.
        masks: the objects' pixels, shape (N, H, W) bool.
        thresholds: the thresholds τ (wsolevaluation's 0, 0.001, ..., 0.999 by default).

    Returns:
        PxAP in percent; NaN if no mask has a pixel.
    """
    return pxap_from_histograms(*pixel_histograms(normalise_maps(maps), masks, thresholds))


def _iou(box: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """IoU of one half-open box (4,) with each of (M, 4)."""
    w = np.clip(np.minimum(box[2], candidates[:, 2]) - np.maximum(box[0], candidates[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], candidates[:, 3]) - np.maximum(box[1], candidates[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (candidates[:, 2] - candidates[:, 0]) * (candidates[:, 3] - candidates[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _regions_per_threshold(score: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For one normalised map (H, W): the threshold index (M,) and half-open box (M, 4) of every
    8-connected region of "score >= τ" over all τ. The T binary maps are labelled in one call,
    as a stack whose planes do not connect."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = _EIGHT_CONNECTED
    labelled, _ = ndimage.label(score[None] >= thresholds[:, None, None], structure=structure)  # (T, H, W)
    slices = ndimage.find_objects(labelled)
    planes = np.array([z[0].start for z in slices], dtype=np.int64)
    regions = np.array([[z[2].start, z[1].start, z[2].stop, z[1].stop] for z in slices], dtype=np.int64)
    return planes, regions.reshape(-1, 4)


def _best_per_threshold(planes: np.ndarray, regions: np.ndarray, box: np.ndarray, count: int) -> np.ndarray:
    out = np.zeros(count)
    if len(regions):
        np.maximum.at(out, planes, _iou(box, regions))
    return out


def best_ious(maps, boxes, thresholds: np.ndarray = BOX_THRESHOLDS, threads: int | None = None) -> np.ndarray:
    """(N, T): for each image and threshold τ, the largest IoU with the image's box of any
    region of "normalised score >= τ" (0 where no region exists). Images are labelled in
    ``threads`` threads (default: the CPUs; scipy's labelling releases the GIL); a map that is
    the same for every image (a chance prior) is labelled once.

    Args:
        maps: shape (N, H, W).
        boxes: half-open boxes, shape (N, 4).
        thresholds: the τ.
        threads: labelling threads.

    Returns:
        The best IoU of each image at each τ, shape (N, T).
    """
    scores = normalise_maps(maps)
    boxes = np.asarray(boxes, dtype=np.int64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    n, count = scores.shape[0], len(thresholds)
    if n == 0:
        return np.zeros((0, count))
    if (scores == scores[:1]).all():
        planes, regions = _regions_per_threshold(scores[0], thresholds)
        return np.stack([_best_per_threshold(planes, regions, box, count) for box in boxes])

    def one(i: int) -> np.ndarray:
        return _best_per_threshold(*_regions_per_threshold(scores[i], thresholds), boxes[i], count)

    workers = max(1, min(threads or os.cpu_count() or 1, n))
    if workers == 1:
        return np.stack([one(i) for i in range(n)])
    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(one, range(n))))


def max_box_acc(maps, boxes, iou_thresholds=IOU_THRESHOLDS,
                thresholds: np.ndarray = BOX_THRESHOLDS) -> dict[float, float]:
    """MaxBoxAcc at each IoU threshold δ (Choe et al. 2020): the best over τ of the share of
    images whose best box (of the 8-connected regions of "normalised score >= τ") has IoU >= δ.
    A map equal to its box (1 inside, 0 outside) scores 100 at every δ.

    Args:
        maps: maps at the boxes' scale, shape (N, H, W).
        boxes: half-open boxes x0, y0, x1, y1, shape (N, 4).
        iou_thresholds: the δ (0.3, 0.5, 0.7 by default).
        thresholds: the τ (0, 0.01, ..., 0.99 by default).

    Returns:
        δ -> MaxBoxAcc in percent, and ``"mean"`` -> MaxBoxAccV2, their mean.
    """
    return max_box_acc_from_ious(best_ious(maps, boxes, thresholds), iou_thresholds)


def max_box_acc_from_ious(ious: np.ndarray, iou_thresholds=IOU_THRESHOLDS) -> dict:
    """MaxBoxAcc per δ and their mean from the best IoUs of all images.

    Args:
        ious: ``best_ious`` of all images, shape (N, T).
        iou_thresholds: the δ.

    Returns:
        δ -> MaxBoxAcc in percent, and ``"mean"`` -> MaxBoxAccV2.
    """
    out: dict = {delta: float((ious >= delta).mean(axis=0).max() * 100.0) for delta in iou_thresholds}
    out["mean"] = float(np.mean([out[d] for d in iou_thresholds]))
    return out


def pointing_game(maps, masks) -> np.ndarray:
    """The pointing game (Zhang et al. 2016): is each map's maximum on the object? Ties count
    as the share of the maximal pixels that lie in the mask, so a constant map scores the mask's
    pixel share (chance), not 1; a map equal to its mask scores 1.

    Args:
        maps: shape (N, H, W).
        masks: shape (N, H, W) bool.

    Returns:
        Each image's score in [0, 1], shape (N,); NaN for an empty mask or a map holding a NaN.
    """
    m = np.asarray(maps, dtype=np.float64)
    truth = np.asarray(masks, dtype=bool)
    finite = np.isfinite(m).all(axis=(1, 2))
    top = m == np.where(finite, m.max(axis=(1, 2)), np.nan)[:, None, None]
    hits = (top & truth).sum(axis=(1, 2)) / np.maximum(top.sum(axis=(1, 2)), 1)
    return np.where(truth.any(axis=(1, 2)) & finite, hits, np.nan)


def box_masks(boxes, size: int) -> np.ndarray:
    """The pixels of half-open boxes as masks.

    Args:
        boxes: x0, y0, x1, y1, shape (N, 4).
        size: the image size in pixels.

    Returns:
        The masks, shape (N, size, size) bool.
    """
    b = np.asarray(boxes, dtype=np.int64)
    idx = np.arange(size)
    cols = (idx[None, :] >= b[:, 0:1]) & (idx[None, :] < b[:, 2:3])  # (N, W)
    rows = (idx[None, :] >= b[:, 1:2]) & (idx[None, :] < b[:, 3:4])  # (N, H)
    return rows[:, :, None] & cols[:, None, :]


def energy_in_box(maps, boxes) -> np.ndarray:
    """Energy in box (Wang et al. 2020): Σ_box s / Σ s with s the min-max-normalised map; a
    constant map counts as uniform mass (the box's area share).

    Args:
        maps: shape (N, H, W).
        boxes: half-open boxes x0, y0, x1, y1, shape (N, 4).

    Returns:
        Each image's share in [0, 1], shape (N,); NaN for an empty box.
    """
    m = np.asarray(maps, dtype=np.float64)
    s = normalise_maps(m)
    constant = s.sum(axis=(1, 2)) == 0
    s = np.where(constant[:, None, None], 1.0, s)
    inside = box_masks(boxes, m.shape[-1])
    share = (s * inside).sum(axis=(1, 2)) / s.sum(axis=(1, 2))
    return np.where(inside.any(axis=(1, 2)), share, np.nan)


class MapScores:
    """The localisation metrics of one kind of map, accumulated over chunks of images (each
    image's contribution depends on that image alone; PxAP pools the pixel histograms)."""

    def __init__(self) -> None:
        self.on = self.off = 0
        self.ious: list[np.ndarray] = []
        self.pointing_mask: list[np.ndarray] = []
        self.pointing_box: list[np.ndarray] = []
        self.energy: list[np.ndarray] = []

    def add(self, maps: np.ndarray, masks: np.ndarray, boxes: np.ndarray) -> None:
        """Maps, masks (N, S, S) and boxes (N, 4), all at the same size S."""
        size = maps.shape[-1]
        on, off = pixel_histograms(normalise_maps(maps), masks)
        self.on, self.off = self.on + on, self.off + off
        self.ious.append(best_ious(maps, boxes))
        self.pointing_mask.append(pointing_game(maps, masks))
        self.pointing_box.append(pointing_game(maps, box_masks(boxes, size)))
        self.energy.append(energy_in_box(maps, boxes))

    def result(self) -> dict[str, float]:
        """``pxap``, ``maxboxacc`` (V2), ``boxacc_iou30/50/70``, ``pointing_mask``,
        ``pointing_box`` and ``energy_box`` (per-image means, NaN ignored)."""
        box = max_box_acc_from_ious(np.concatenate(self.ious))
        with warnings.catch_warnings():  # a mean over no defined image is NaN, silently
            warnings.simplefilter("ignore", RuntimeWarning)
            means = {name: float(np.nanmean(np.concatenate(parts))) for name, parts in
                     (("pointing_mask", self.pointing_mask), ("pointing_box", self.pointing_box),
                      ("energy_box", self.energy))}
        return {"pxap": pxap_from_histograms(self.on, self.off), "maxboxacc": box["mean"],
                **{f"boxacc_iou{round(d * 100)}": box[d] for d in IOU_THRESHOLDS}, **means}


def localisation_metrics(maps, masks, boxes) -> dict[str, float]:
    """Every localisation metric of one kind of map over a set of images.

    Args:
        maps: shape (N, H, W), at the masks' size.
        masks: shape (N, H, W) bool.
        boxes: shape (N, 4), on the same pixels.

    Returns:
        Metric name -> value (see ``MapScores.result``).
    """
    scores = MapScores()
    scores.add(np.asarray(maps, dtype=np.float64), np.asarray(masks, dtype=bool), np.asarray(boxes, dtype=np.int64))
    return scores.result()


#: Images judged at a time: bounds memory (one chunk of 224-px float64 maps is ~100 MB).
CHUNK_IMAGES = 256


def ceiling_maps(masks, grid: tuple[int, int], size: int) -> np.ndarray:
    """The best map a grid of ``grid`` cells can hold: each image's ground-truth mask, resized to
    the model's input as the masks are scored (nearest neighbour, ``size`` px), average-pooled to
    the grid (each cell: the share of its pixels on the object). Upsampled like every map, it
    scores what a perfect map of that resolution scores: a 2 x 2 map cannot outline a 20-pixel
    digit, whatever its gate.

    Args:
        masks: the objects' pixels at native size, shape (N, H, W) bool.
        grid: the map's grid (h, w).
        size: the model's input size in pixels.

    Returns:
        The ceiling maps, shape (N, h, w) float32.
    """
    import torch
    from torch.nn import functional as F

    truth = torch.as_tensor(resize_masks(masks, size), dtype=torch.float32)
    return F.adaptive_avg_pool2d(truth[:, None], tuple(grid))[:, 0].numpy()


def random_grid_maps(n: int, grid: tuple[int, int], seed: int = 0) -> np.ndarray:
    """The floor of a grid: maps of uniform random values on it, what a map of that resolution
    scores by chance.

    Args:
        n: how many maps (one per image).
        grid: the map's grid (h, w).
        seed: image i's map is drawn from ``default_rng([seed, 2000, i])``.

    Returns:
        The maps, shape (n, h, w) float32.
    """
    return np.stack([np.random.default_rng([seed, 2000, i]).random(grid) for i in range(n)]).astype(np.float32) \
        if n else np.zeros((0, *grid), np.float32)


def judge_maps(spatial_maps, cams, masks, boxes, native: int, size: int, chunk: int = CHUNK_IMAGES,
               progress=lambda chunks, total: chunks, seed: int = 0,
               more: dict | None = None) -> dict[str, dict[str, float]]:
    """The localisation metrics of each map a probe recorded, and of the references, at the
    model's input size: ``cbam`` (the spatial maps, when the model has CBAM), ``cam`` (when
    recorded), ``uniform`` (a constant map) and ``centre`` (``centre_prior``), on the CBAM
    map's grid its ceiling (``ceiling``: ``ceiling_maps``) and floor (``random``:
    ``random_grid_maps``, seeded by ``seed``), and on the CAM's grid the CAM's own
    (``cam_ceiling``, ``cam_random``). Maps are upsampled bilinearly, masks by
    nearest neighbour and boxes to match (from ``native`` px to ``size`` px), ``chunk`` images at
    a time; ``progress`` wraps the chunks' iterator. ``more``: further maps by name (the same
    network's maps with its weights re-initialised), scored last.

    Args:
        spatial_maps: the CBAM maps (N, h, w), or None / empty for a block without one.
        cams: the CAMs (N, h', w'), or None.
        masks: shape (N, native, native) bool.
        boxes: shape (N, 4) at native size.
        native: the images' native size in pixels.
        size: the model's input size in pixels.

    Returns:
        Map name -> metric name -> value (see ``MapScores.result``).
    """
    n = np.asarray(masks).shape[0]
    sources, bounds = {}, {}
    if spatial_maps is not None and np.asarray(spatial_maps).size:
        sources["cbam"] = spatial_maps
        grid = tuple(np.asarray(spatial_maps).shape[1:])
        bounds = {"ceiling": ceiling_maps(masks, grid, size), "random": random_grid_maps(n, grid, seed)}
    if cams is not None and np.asarray(cams).size:
        sources["cam"] = cams
        # the CAM's own grid (layer4's: 2 x 2 at 64 px) has its own ceiling and floor
        cam_grid = tuple(np.asarray(cams).shape[1:])
        bounds.update({"cam_ceiling": ceiling_maps(masks, cam_grid, size),
                       "cam_random": random_grid_maps(n, cam_grid, seed)})
    prior = centre_prior(size)
    more = {k: v for k, v in (more or {}).items() if v is not None and np.asarray(v).size}
    scores = {name: MapScores() for name in (*sources, "uniform", "centre", *bounds, *more)}
    sources.update(bounds)
    sources.update(more)
    starts = range(0, n, chunk)
    for start in progress(starts, len(starts)):
        end = min(start + chunk, n)
        truth = resize_masks(masks[start:end], size)
        bounds = resize_boxes(boxes[start:end], native, size)
        for name, source in sources.items():
            scores[name].add(upsample_maps(source[start:end], size).astype(np.float64), truth, bounds)
        scores["uniform"].add(np.ones(truth.shape), truth, bounds)
        scores["centre"].add(np.broadcast_to(prior, truth.shape), truth, bounds)
    return {name: s.result() for name, s in scores.items()}


#: each normalised map with its floor and ceiling (the maps of its own grid)
NORMALISED_BOUNDS = {"cbam": ("random", "ceiling"), "cam": ("cam_random", "cam_ceiling")}


def normalised_scores(scores: dict[str, dict[str, float]], of: str = "cbam") -> dict[str, float]:
    """Each metric of the map ``of`` read between its floor and its ceiling on the same grid:
    (score − random) / (ceiling − random), 0 at chance, 1 for the best map the grid can hold.
    NaN where the ceiling does not exceed the floor (a grid too coarse to localise anything:
    nothing separates a good map from a bad one there) or where ``of`` was not scored.

    Args:
        scores: what ``judge_maps`` returned.
        of: the map to normalise, ``cbam`` or ``cam`` (each against the floor and ceiling of its
            own grid, ``NORMALISED_BOUNDS``).

    Returns:
        Metric name -> normalised score; empty without a floor and a ceiling.
    """
    low, high = NORMALISED_BOUNDS[of]
    if not {of, low, high} <= set(scores):
        return {}
    out = {}
    for metric, value in scores[of].items():
        floor, ceiling = scores[low][metric], scores[high][metric]
        span = ceiling - floor
        out[metric] = (value - floor) / span if np.isfinite(span) and span > 1e-9 * max(1.0, abs(ceiling)) else float("nan")
    return out

