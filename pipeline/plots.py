"""Figures for the report. Each function takes plain arrays / dicts and returns a matplotlib
``Figure`` with a title, axis labels and units; nothing here reads MLflow or writes files."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files, never shown

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

KDE_MAX_SAMPLES = 20_000
KDE_POINTS = 512

#: radar axes: metric -> (label, lower, upper). Values are mapped linearly to [0, 1] and clipped.
RADAR_AXES = {
    "avg_score": ("avg_score [0, 1]", 0.0, 1.0),
    "focus_pct": ("focus_pct [0, 100] %", 0.0, 100.0),
    "sparsity": ("sparsity [0, 1]", 0.0, 1.0),
    "gini": ("gini [0, 1]", 0.0, 1.0),
    "entropy": ("entropy [0, 1]", 0.0, 1.0),
    "focus_area_ratio": ("focus_area_ratio [0, 1]", 0.0, 1.0),
    "test_acc": ("test_acc [0, 100] %", 0.0, 100.0),
    "test_map": ("test_map [0, 1]", 0.0, 1.0),
}


def _colours(names):
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def kde_curve(values: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """Gaussian KDE of ``values`` on ``grid``, or None where it is undefined (fewer than two
    distinct values: scipy's gaussian_kde raises on a singular covariance).

    The bandwidth is at least two grid steps: softmax weights cluster within 1e-4 of 1/C,
    and a narrower kernel would fall between grid points and vanish from the plot."""
    from scipy.stats import gaussian_kde

    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size < 2 or np.ptp(values) == 0:
        return None
    try:
        kde = gaussian_kde(values)
        min_bandwidth = 2.0 * (grid[1] - grid[0])
        if np.sqrt(kde.covariance[0, 0]) < min_bandwidth:
            kde.set_bandwidth(min_bandwidth / values.std(ddof=1))
        return kde(grid)
    except (np.linalg.LinAlgError, ValueError):
        return None


def plot_kde(weights_by_label: dict[str, np.ndarray], title: str = "Channel attention weight distributions") -> Figure:
    """One density line per label on one axis. A constant set of weights (no KDE) is drawn as
    a vertical line at its value, marked 'constant' in the legend."""
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    rng = np.random.default_rng(0)
    samples = {}
    for label, w in weights_by_label.items():
        w = np.asarray(w, dtype=np.float64).ravel()
        w = w[np.isfinite(w)]
        if w.size > KDE_MAX_SAMPLES:
            w = rng.choice(w, KDE_MAX_SAMPLES, replace=False)
        samples[label] = w
    everything = np.concatenate([w for w in samples.values() if w.size]) if samples else np.zeros(1)
    # 0.1..99.9 percentiles: a few huge swish weights would otherwise squeeze every other gate
    lo, hi = (float(v) for v in np.percentile(everything, [0.1, 99.9]))
    pad = 0.05 * (hi - lo) if hi > lo else 0.05
    grid = np.linspace(lo - pad, hi + pad, KDE_POINTS)
    colours = _colours(samples)
    for label, w in samples.items():
        density = kde_curve(w, grid)
        if density is None:
            value = float(w[0]) if w.size else float("nan")
            ax.axvline(value, color=colours[label], linestyle="--", label=f"{label} (constant {value:.3g})")
        else:
            ax.plot(grid, density, color=colours[label], label=label)
            ax.fill_between(grid, density, color=colours[label], alpha=0.1)
    ax.set_yscale("log")
    top = max([ln.get_ydata().max() for ln in ax.get_lines() if len(ln.get_ydata()) > 2] or [1.0])
    ax.set_ylim(top * 1e-4, top * 2)  # log density: sum-to-one gates spike near 1/C, sigmoid ones spread
    ax.set_xlim(grid[0], grid[-1])
    ax.set_title(title)
    ax.set_xlabel("channel attention weight (gate output, dimensionless)")
    ax.set_ylabel("density (1 / weight unit, log scale)")
    ax.grid(True, linestyle="--", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def radar_axes(rows: dict[str, dict[str, float]]) -> dict[str, tuple[str, float, float]]:
    """:data:`RADAR_AXES`, with the avg_score range widened to the largest mean weight (swish
    weights are unbounded), so no value is clipped; every range is stated in its label."""
    axes = dict(RADAR_AXES)
    peak = max([r.get("avg_score", 0.0) for r in rows.values() if np.isfinite(r.get("avg_score", np.nan))] or [0.0])
    if peak > 1.0:
        upper = float(np.ceil(peak * 10) / 10)
        axes["avg_score"] = (f"avg_score [0, {upper:g}]", 0.0, upper)
    return axes


def radar_values(row: dict[str, float], axes: dict[str, tuple[str, float, float]] | None = None) -> np.ndarray:
    """The row's radar values, mapped to [0, 1] with ``axes`` (default :data:`RADAR_AXES`),
    clipped to [0, 1]; NaN -> 0."""
    vals = []
    for key, (_, lower, upper) in (axes or RADAR_AXES).items():
        v = row.get(key, np.nan)
        v = 0.0 if v is None or not np.isfinite(v) else (v - lower) / (upper - lower)
        vals.append(min(max(v, 0.0), 1.0))
    return np.asarray(vals)


def plot_radar(rows: dict[str, dict[str, float]], title: str = "Gate comparison (axes normalised to stated ranges)") -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 7), subplot_kw={"polar": True}, constrained_layout=True)
    axes = radar_axes(rows)
    n = len(axes)
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    closed = np.concatenate([angles, angles[:1]])
    colours = _colours(rows)
    for label, row in rows.items():
        values = radar_values(row, axes)
        ax.plot(closed, np.concatenate([values, values[:1]]), color=colours[label], label=label)
        ax.fill(closed, np.concatenate([values, values[:1]]), color=colours[label], alpha=0.08)
    ax.set_xticks(angles)
    ax.set_xticklabels([label for label, _, _ in axes.values()], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels(["0.25", "0.5", "0.75", "1"], fontsize=7, color="grey")
    ax.set_rlabel_position(90 + 180 / n)
    ax.set_title(title, pad=24)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize=8)
    return fig


def plot_curves(histories: dict[str, dict[str, list[float]]], title: str = "Training curves") -> Figure:
    """histories: label -> {"train_loss": [...per epoch], "val_loss", "train_acc", "val_acc"}."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    colours = _colours(histories)
    for label, h in histories.items():
        for key, style in (("train", "-"), ("val", "--")):
            for ax, metric in zip(axes, ("loss", "acc")):
                values = h.get(f"{key}_{metric}", [])
                if values:
                    ax.plot(np.arange(1, len(values) + 1), values, style, color=colours[label], marker="o",
                            markersize=3, label=f"{label} ({key})")
    axes[0].set_ylabel("cross-entropy loss (nats)")
    axes[1].set_ylabel("accuracy (%)")
    for ax, name in zip(axes, ("Loss", "Accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(f"{name} per epoch (solid: train, dashed: validation)")
        ax.grid(True, linestyle="--", alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    return fig


def plot_gradient_flow(flows: dict[str, tuple[list[str], list[float]]], title: str = "Gradient flow (last epoch)") -> Figure:
    """flows: label -> (layer names, mean |grad| per layer). Log scale: the values span decades."""
    fig, ax = plt.subplots(figsize=(11, 4.5), constrained_layout=True)
    colours = _colours(flows)
    layers: list[str] = []
    for label, (names, values) in flows.items():
        layers = names if len(names) > len(layers) else layers
        v = np.asarray(values, dtype=np.float64)
        ax.plot(np.arange(len(v)), np.where(v > 0, v, np.nan), color=colours[label], marker=".", label=label)
    step = max(1, len(layers) // 20)
    ax.set_xticks(np.arange(0, len(layers), step))
    ax.set_xticklabels([layers[i] for i in range(0, len(layers), step)], rotation=60, ha="right", fontsize=6)
    ax.set_yscale("log")
    ax.set_xlabel("weight tensor (input to output)")
    ax.set_ylabel("mean |gradient| (loss units per weight unit)")
    ax.set_title(title)
    ax.grid(True, linestyle="--", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_gate_parameters(params: dict[str, dict[str, list[float]]], title: str = "Learnable gate parameters") -> Figure:
    """params: label -> {"gate_scale": [...per epoch], ...}. One panel per parameter."""
    names = sorted({k for p in params.values() for k in p})
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.5 * max(len(names), 1), 3.8),
                             constrained_layout=True, squeeze=False)
    colours = _colours(params)
    if not names:
        axes[0, 0].text(0.5, 0.5, "no learnable gate parameters in these runs", ha="center", va="center")
        axes[0, 0].set_xlabel("epoch")
        axes[0, 0].set_ylabel("value (dimensionless)")
    for ax, name in zip(axes[0], names):
        for label, p in params.items():
            if p.get(name):
                ax.plot(np.arange(1, len(p[name]) + 1), p[name], marker="o", color=colours[label], label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{name} (dimensionless)")
        ax.grid(True, linestyle="--", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def plot_spatial_grid(images: np.ndarray, maps_by_label: dict[str, np.ndarray],
                      title: str = "Spatial attention of the same test images") -> Figure:
    """images: (K, 3, h, w) uint8; maps_by_label: label -> (K, H, W) in [0, 1]. Rows: labels;
    per image three columns: the image, the raw map, the map over the image. One colour
    scale (0..1, the spatial gate's sigmoid range) for every map."""
    from torch import from_numpy
    from torch.nn.functional import interpolate

    labels = list(maps_by_label)
    k = images.shape[0]
    fig, axes = plt.subplots(len(labels), 3 * k, figsize=(2.0 * 3 * k, 2.1 * len(labels) + 0.6),
                             squeeze=False, constrained_layout=True)
    pictures = np.transpose(images, (0, 2, 3, 1))
    mappable = None
    for r, label in enumerate(labels):
        maps = np.asarray(maps_by_label[label], dtype=np.float32)
        for i in range(k):
            side = pictures.shape[1]
            upsampled = interpolate(from_numpy(maps[i][None, None]), size=(side, side), mode="bilinear",
                                    align_corners=False)[0, 0].numpy()
            ax_img, ax_map, ax_over = axes[r, 3 * i: 3 * i + 3]
            ax_img.imshow(pictures[i], interpolation="nearest")
            mappable = ax_map.imshow(maps[i], cmap="inferno", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax_over.imshow(pictures[i], interpolation="nearest")
            ax_over.imshow(upsampled, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.55)
            if r == 0:
                ax_img.set_title(f"image {i}", fontsize=8)
                ax_map.set_title(f"map {maps.shape[1]}x{maps.shape[2]}", fontsize=8)
                ax_over.set_title("overlay", fontsize=8)
            for ax in (ax_img, ax_map, ax_over):
                ax.set_xticks([])
                ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes, shrink=0.6, fraction=0.02, pad=0.01,
                     label="spatial attention (sigmoid output, 0..1)")
    fig.suptitle(title)
    return fig


def save_figure(fig: Figure, stem) -> list[str]:
    """Write ``stem``.pdf (vector) and ``stem``.png (200 dpi); returns the two paths."""
    paths = [f"{stem}.pdf", f"{stem}.png"]
    fig.savefig(paths[0])
    fig.savefig(paths[1], dpi=200)
    plt.close(fig)
    return paths
