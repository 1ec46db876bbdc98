"""Attention metrics: pure, vectorised numpy over a batch of images.

Channel metrics take ``weights`` of shape (N, C) (one row of channel weights per image) and
return shape (N,). Spatial metrics take ``maps`` of shape (N, H, W). Full definitions and
conventions: ``docs/metrics.md``.

Conventions shared by all:

- Gates like swish give negative weights. Gini and entropy are defined for non-negative
  mass, so they use magnitudes |w|; the share of negative weights is reported on its own
  (``negative_pct``). For non-negative weights this changes nothing.
- A row whose magnitudes are all zero has no distribution: Gini, entropy and
  ``near_zero_pct`` are NaN for it, never a number.
- Aggregates over images (``summarise``) ignore NaN rows and count them.

References: Hurley & Rickard (2009), "Comparing Measures of Sparsity", IEEE Trans. Inf.
Theory 55(10) for the Gini index; Shannon entropy with 0 log 0 = 0 (``scipy.special.xlogy``).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import xlogy

NEAR_ZERO_RELATIVE = 1e-3
FOCUS_AREA_FRACTION = 0.5
#: focus_pct counts channels above the mean by more than this share of the row's largest
#: magnitude: a constant row's mean can round a hair below its entries (100 copies of 0.1)
FOCUS_TOLERANCE = 1e-9


def _undefined(w: np.ndarray) -> np.ndarray:
    """Rows holding a NaN or an infinity: every metric of such a row is NaN."""
    return ~np.isfinite(w).all(axis=1)


def _as_2d(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2 or w.shape[1] == 0:
        raise ValueError(f"expected channel weights of shape (N, C) with C >= 1, got {w.shape}")
    return w


def gini(weights) -> np.ndarray:
    """Gini index of each row's magnitudes (Hurley & Rickard 2009).

    With c_(1) <= ... <= c_(n) the sorted magnitudes |w| of a row:
    ``G = 1 - 2 * sum_k (c_(k) / ||c||_1) * (n - k + 1/2) / n``. 0 for a uniform row,
    (n - 1)/n for a one-hot row (the maximum), 1 - k/n for k equal non-zeros among n,
    (n - 1)/(3n) for 1..n; unchanged by scaling. Equals the notebook's
    ``(n + 1 - 2 * sum(cumsum(c)) / sum(c)) / n`` for non-negative rows.

    Args:
        weights: channel weights, shape (N, C) or (C,).

    Returns:
        The Gini index of each row, shape (N,); NaN for an all-zero row or one holding a NaN.
    """
    c = np.sort(np.abs(_as_2d(weights)), axis=1)
    n = c.shape[1]
    total = c.sum(axis=1)
    k = np.arange(1, n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = 1.0 - 2.0 * (c * (n - k + 0.5)).sum(axis=1) / (total * n)
    return np.where((total > 0) & ~_undefined(_as_2d(weights)), g, np.nan)


def entropy(weights) -> np.ndarray:
    """Normalised Shannon entropy of each row's magnitudes.

    ``p = |w| / sum|w|``; ``H = -sum_c p_c log p_c / log C`` with 0 log 0 = 0. 0 when all mass
    is on one channel, 1 for a uniform row; C = 1 gives 0 (one channel holds all the mass).
    Equals ``scipy.stats.entropy(p) / log C``.

    Args:
        weights: channel weights, shape (N, C) or (C,).

    Returns:
        The entropy of each row in [0, 1], shape (N,); NaN for an all-zero row.
    """
    a = np.abs(_as_2d(weights))
    n = a.shape[1]
    total = a.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = a / total
        h = -xlogy(p, p).sum(axis=1)
    h = h / np.log(n) if n > 1 else np.zeros_like(h)
    return np.where((total[:, 0] > 0) & ~_undefined(a), h, np.nan)


def avg_score(weights) -> np.ndarray:
    """Mean channel weight of each row (signed); a sum-to-one gate gives exactly 1/C.

    Args:
        weights: channel weights, shape (N, C).

    Returns:
        The mean of each row, shape (N,); NaN for a row holding a NaN.
    """
    w = _as_2d(weights)
    return np.where(_undefined(w), np.nan, w.mean(axis=1))


def focus_pct(weights) -> np.ndarray:
    """Percent of channels whose weight is strictly above the row's mean weight (the
    notebook's ``focus_%``), by more than ``FOCUS_TOLERANCE`` of the row's largest magnitude.

    A one-hot row of length n gives 100/n; a constant row 0.

    Args:
        weights: channel weights, shape (N, C).

    Returns:
        The percentage of each row, shape (N,); NaN for a row holding a NaN.
    """
    w = _as_2d(weights)
    margin = FOCUS_TOLERANCE * np.abs(w).max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        pct = 100.0 * (w > w.mean(axis=1, keepdims=True) + margin).mean(axis=1)
    return np.where(_undefined(w), np.nan, pct)


def sparsity(weights) -> np.ndarray:
    """Fraction of channel weights exactly equal to zero (the notebook's ``sparsity``).

    Args:
        weights: channel weights, shape (N, C).

    Returns:
        The fraction (0..1) of each row, shape (N,); NaN for a row holding a NaN.
    """
    w = _as_2d(weights)
    return np.where(_undefined(w), np.nan, (w == 0).mean(axis=1))


def near_zero_pct(weights, relative: float = NEAR_ZERO_RELATIVE) -> np.ndarray:
    """Percent of channels with |w| below ``relative`` times the row's largest |w|: the
    almost-zero weights of softmax that ``sparsity`` misses.

    Args:
        weights: channel weights, shape (N, C).
        relative: the threshold as a share of the row's largest magnitude.

    Returns:
        The percentage of each row, shape (N,); NaN for an all-zero row.
    """
    w = _as_2d(weights)
    a = np.abs(w)
    peak = a.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        pct = 100.0 * (a < relative * peak).mean(axis=1)
    return np.where((peak[:, 0] > 0) & ~_undefined(w), pct, np.nan)


def negative_pct(weights) -> np.ndarray:
    """Percent of negative channel weights (swish can be negative).

    Args:
        weights: channel weights, shape (N, C).

    Returns:
        The percentage of each row, shape (N,); NaN for a row holding a NaN.
    """
    w = _as_2d(weights)
    with np.errstate(invalid="ignore"):
        return np.where(_undefined(w), np.nan, 100.0 * (w < 0).mean(axis=1))


def focus_area_ratio(maps, fraction: float = FOCUS_AREA_FRACTION) -> np.ndarray:
    """Fraction of each spatial map's pixels strictly above ``fraction`` of that map's
    maximum: the notebook's text definition of the focus area. A constant positive map gives 1.

    Args:
        maps: spatial maps, shape (N, H, W) or (H, W).
        fraction: the share of the map's maximum a pixel must exceed.

    Returns:
        The fraction (0..1) of each map, shape (N,); NaN for a map whose maximum is not positive.
    """
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim == 2:
        m = m[None]
    flat = m.reshape(m.shape[0], -1)
    peak = flat.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        ratio = (flat > fraction * peak).mean(axis=1)
    return np.where((peak[:, 0] > 0) & ~_undefined(flat), ratio, np.nan)


def notebook_gini(vector) -> float:
    """The notebook's ``gini_coefficient``, verbatim in effect: raw (signed) weights, no NaN
    guard. Kept only to reproduce the notebook's table (``first_image/notebook_gini``).

    Args:
        vector: one image's channel weights, shape (C,).

    Returns:
        The notebook's value (not a Gini index for signed weights: [-1, 2] gives 1.5).
    """
    x = np.sort(np.asarray(vector, dtype=np.float64))
    n = len(x)
    cumx = np.cumsum(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float((n + 1 - 2 * np.sum(cumx) / cumx[-1]) / n)


CHANNEL_METRICS = {
    "gini": gini,
    "entropy": entropy,
    "avg_score": avg_score,
    "focus_pct": focus_pct,
    "sparsity": sparsity,
    "near_zero_pct": near_zero_pct,
    "negative_pct": negative_pct,
}
SPATIAL_METRICS = {"focus_area_ratio": focus_area_ratio}
METRIC_NAMES = (*CHANNEL_METRICS, *SPATIAL_METRICS)


def per_image_metrics(weights, maps=None) -> dict[str, np.ndarray]:
    """Every metric per image.

    Args:
        weights: channel weights, shape (N, C).
        maps: spatial maps, shape (N, H, W), or None (no spatial metrics).

    Returns:
        Metric name -> its values, shape (N,).
    """
    out = {name: fn(weights) for name, fn in CHANNEL_METRICS.items()}
    if maps is not None:
        out.update({name: fn(maps) for name, fn in SPATIAL_METRICS.items()})
    return out


def class_means(weights, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class's mean channel-weight vector.

    Args:
        weights: channel weights, shape (N, C).
        labels: each image's class, shape (N,).
        num_classes: K.

    Returns:
        The means, shape (K, C) (a class without images is a row of NaN), and the number of
        images of each class, shape (K,).
    """
    w = _as_2d(weights)
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    sums = np.zeros((num_classes, w.shape[1]))
    np.add.at(sums, labels, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    return np.where(counts[:, None] > 0, means, np.nan), counts


def summarise(values: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean and (population) standard deviation over images of each metric, NaN rows left out.

    Args:
        values: metric name -> its per-image values.

    Returns:
        Metric name -> ``{"mean", "std", "n_defined"}``; mean and std NaN where no row is defined.
    """
    summary = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        defined = v[~np.isnan(v)]
        mean = float(defined.mean()) if defined.size else float("nan")
        std = float(defined.std()) if defined.size else float("nan")
        summary[name] = {"mean": mean, "std": std, "n_defined": int(defined.size)}
    return summary


def mean_average_precision(labels, scores, num_classes: int | None = None) -> float:
    """Macro-averaged one-vs-rest average precision (scikit-learn's ``average_precision_score``)
    over the classes present in ``labels``; classes with no positive image have no AP and are
    left out.

    Undefined when fewer than two classes are present: a class's AP needs negatives to rank
    below its positives, and with one class every image is a positive, so its AP is 1 whatever
    the scores (one probed image, misclassified, would score mAP 1.0).

    Args:
        labels: each image's class, shape (N,).
        scores: logits or probabilities, shape (N, K).
        num_classes: K, if ``scores`` has more columns than classes.

    Returns:
        The mAP in [0, 1], or NaN below two classes.
    """
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    k = num_classes or scores.shape[1]
    present = np.unique(labels)
    if present.size < 2:
        return float("nan")
    onehot = (labels[:, None] == np.arange(k)[None, :]).astype(int)
    return float(average_precision_score(onehot[:, present], scores[:, present], average="macro"))


# Statistics over seeds (the report's tables and figures)

def stats_t(n: int) -> float:
    """Student t's 97.5 % quantile with n - 1 degrees of freedom (the 95 % CI's multiplier).

    Args:
        n: the number of values.

    Returns:
        ``scipy.stats.t.ppf(0.975, n - 1)``.
    """
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def ci95(values) -> tuple[int, float, float, float, float]:
    """The 95 % Student-t confidence interval of the mean of the finite values.

    Args:
        values: one value per seed (NaN and infinities are left out).

    Returns:
        n, mean, sample std (ddof = 1), and the interval's low and high bounds; std and bounds
        are NaN below two values.
    """
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return 0, math.nan, math.nan, math.nan, math.nan
    mean = float(v.mean())
    if n < 2:
        return 1, mean, math.nan, math.nan, math.nan
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return n, mean, std, mean - half, mean + half
