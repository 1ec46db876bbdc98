"""Figures for the report. Each function takes plain arrays / dicts and returns a matplotlib
``Figure`` sized for print (7 in: the width of a two-column page; fonts 7-9 pt at that size),
with a title, axis labels and units; nothing here reads MLflow or writes files except
``save_figure``. A function with nothing to draw returns None rather than an empty figure."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files, never shown

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PAGE_WIDTH_IN = 7.0  # a two-column paper's text width (figure*)
COLUMN_WIDTH_IN = 3.35  # one column of it (figure)
STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
         "legend.fontsize": 7, "figure.titlesize": 9, "axes.spines.top": False, "axes.spines.right": False}
plt.rcParams.update(STYLE)

KDE_MAX_SAMPLES = 20_000
KDE_POINTS = 512

#: gate families, one panel each in the weight distributions: (title, x label)
FAMILIES = {
    "bounded": ("bounded gates: weights in [0, 1]", "channel weight"),
    "sum_to_one": ("sum-to-one gates: weights × C (1 = uniform)", "channel weight × C (log scale)"),
    "unbounded": ("unbounded gates (swish)", "channel weight"),
}
UNBOUNDED_GATES = ("swish",)

def _colours(names):
    """One colour per gate, the same in every figure (the registry's order); the baseline
    without CBAM in grey."""
    from pipeline.contracts import GATE_NAMES, NO_CBAM_LABEL

    cmap = plt.get_cmap("tab10")
    order = list(GATE_NAMES)
    return {name: "0.35" if name == NO_CBAM_LABEL else cmap((order.index(name) if name in order else i) % 10)
            for i, name in enumerate(names)}


def gate_family(name: str) -> str:
    from pipeline.contracts import SUM_TO_ONE_GATES

    if name in UNBOUNDED_GATES:
        return "unbounded"
    return "sum_to_one" if name in SUM_TO_ONE_GATES else "bounded"


def kde_curve(values: np.ndarray, grid: np.ndarray, lower: float | None = None,
              upper: float | None = None) -> np.ndarray | None:
    """Gaussian KDE of ``values`` on ``grid``, reflected at ``lower`` / ``upper`` (the support's
    bounds: no density leaks outside what the gate can output), or None where it is undefined
    (fewer than two distinct values: scipy's gaussian_kde raises on a singular covariance).

    The bandwidth is at least two grid steps: softmax weights cluster within 1e-4 of 1/C, and
    a narrower kernel would fall between grid points and vanish from the plot."""
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
        density = kde(grid)
        if lower is not None:
            density = density + kde(2 * lower - grid)
        if upper is not None:
            density = density + kde(2 * upper - grid)
        return density
    except (np.linalg.LinAlgError, ValueError):
        return None


def _sample(w: np.ndarray, rng) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64).ravel()
    w = w[np.isfinite(w)]
    return rng.choice(w, KDE_MAX_SAMPLES, replace=False) if w.size > KDE_MAX_SAMPLES else w


def plot_weight_distributions(weights_by_gate: dict[str, np.ndarray], title: str = "Channel attention weights",
                              times_c: bool = False) -> Figure:
    """Density of each gate's channel weights, one panel per gate family, each on its own support:
    bounded gates on [0, 1] (KDE reflected at both bounds); sum-to-one gates as weight × C on a
    log axis (1 = the uniform weight 1/C whatever C is; trained ones span decades, from near-zero
    to near-one-hot); swish on a linear axis of its own. Exact zeros are a point mass, not a
    density: their share is given in the legend and the curve is the non-zero weights'.
    ``times_c``: the sum-to-one gates' weights are already × C (``gate_norm=mean_one``), so they
    are drawn as they are rather than multiplied by C again."""
    families = [f for f in FAMILIES if any(gate_family(g) == f for g in weights_by_gate)]
    fig, axes = plt.subplots(1, max(len(families), 1), figsize=(PAGE_WIDTH_IN, 2.5), squeeze=False,
                             constrained_layout=True)
    rng = np.random.default_rng(0)
    colours = _colours(weights_by_gate)
    for ax, family in zip(axes[0], families):
        gates = [g for g in weights_by_gate if gate_family(g) == family]
        samples, zeros = {}, {}
        for gate in gates:
            w = np.asarray(weights_by_gate[gate], dtype=np.float64)
            w = _sample(w * w.shape[-1] if family == "sum_to_one" and w.ndim > 1 and not times_c else w, rng)
            zeros[gate] = float(np.mean(w == 0)) if w.size and family != "unbounded" else 0.0
            if family != "unbounded":
                w = w[w != 0]
            samples[gate] = np.log10(w) if family == "sum_to_one" else w
        if family == "bounded":
            lower, upper = 0.0, 1.0
        else:
            # each gate's own 0.5-99.5 percentile range: a few gates' tails set no one's axis alone,
            # and a gate with few non-zero weights is not drowned by another's many
            ranges = np.array([np.percentile(s, [0.5, 99.5]) for s in samples.values() if s.size] or [[0.0, 1.0]])
            lower, upper = float(ranges[:, 0].min()), float(ranges[:, 1].max())
            pad = 0.05 * (upper - lower) if upper > lower else 0.5
            lower, upper = lower - pad, upper + pad
        grid = np.linspace(lower, upper, KDE_POINTS)
        x = 10.0 ** grid if family == "sum_to_one" else grid
        for gate, w in samples.items():
            share = 100 * zeros[gate]
            label = gate + (f" ({share:.1f} % exactly 0)" if share > 99 else f" ({share:.0f} % exactly 0)" if share else "")
            bounded = family == "bounded"
            density = kde_curve(w, grid, lower=0.0 if bounded else None, upper=1.0 if bounded else None)
            if density is None:
                value = float(x[0] if not w.size else (10.0 ** w[0] if family == "sum_to_one" else w[0]))
                ax.axvline(value, color=colours[gate], linestyle="--", label=f"{label}, constant {value:.3g}")
            else:
                ax.plot(x, density, color=colours[gate], label=label, linewidth=1.2)
                ax.fill_between(x, density, color=colours[gate], alpha=0.12)
        heights = [ln.get_ydata().max() for ln in ax.get_lines() if len(ln.get_ydata()) > 2]
        top = max(heights or [1.0])
        ax.set_yscale("log")
        ax.set_ylim(top * 1e-3, top * 3)
        if family == "sum_to_one":
            ax.set_xscale("log")
            ax.axvline(1.0, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xlim(x[0], x[-1])
        name, xlabel = FAMILIES[family]
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density per decade (log)" if family == "sum_to_one" else "density (log scale)")
        ax.grid(True, linestyle=":", alpha=0.5)
    handles = [h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]]
    labels = [lab for ax in axes[0] for lab in ax.get_legend_handles_labels()[1]]
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), frameon=False)
    fig.suptitle(title)
    return fig


def metric_values(values: dict[str, dict[str, list[float]]], axes) -> tuple[list[str], list[str]]:
    """The metrics of ``axes`` worth a panel (``values``: gate -> metric -> one value per seed),
    and those left out because every gate has the same mean. A metric no gate has (the
    attention metrics of the baseline without CBAM) is in neither list."""
    shown, constant = [], []
    for metric in axes:
        means = [np.nanmean(v[metric]) for v in values.values() if np.isfinite(v.get(metric, [np.nan])).any()]
        if not means:
            continue
        if len(means) > 1 and np.ptp(means) < 1e-9:  # one gate's value alone is no evidence of equality
            constant.append(metric)
        else:
            shown.append(metric)
    return shown, constant


def plot_gate_metrics(values: dict[str, dict[str, list[float]]],
                      intervals: dict[str, dict[str, tuple[float, float] | None]], metric_axes,
                      title: str = "Metrics per gate", reference: str | None = None,
                      chance: dict[str, float] | None = None,
                      chance_label: str = "chance (a uniform map)",
                      bounds: dict[str, tuple[float, float]] | None = None,
                      bounds_label: str = "dotted: floor; dash-dot: ceiling") -> Figure | None:
    """Small multiples, one panel per metric of ``metric_axes`` (metric -> (label, lower, upper,
    scale): the metric's whole range, so panels of different reports compare; ``scale`` turns
    fractions into percent; ``pipeline.report.schema.Family.figure_metrics``):
    each seed as a dot, the mean as a diamond, and the 95 % CI given in ``intervals`` (gate ->
    metric -> (low, high) in the metric's own units, None below two seeds; computed by the
    report's statistics, not here) as a bar; the ``reference`` gate's CI shaded across the
    panel, so a gate's mean outside the band stands out; ``chance`` (metric -> value, e.g. a
    uniform map's score) drawn as a dashed line; ``bounds`` (metric -> (floor, ceiling), NaN where
    a side has none) as a dotted line (floor) and a dash-dot line (ceiling), named by
    ``bounds_label``. Metrics equal for
    every gate are left out and named under the title."""
    shown, constant = metric_values(values, metric_axes)
    if not shown:
        return None
    gates = list(values)
    cols = min(4, len(shown))
    rows = int(np.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_WIDTH_IN, 0.45 + rows * (0.35 + 0.22 * len(gates))),
                             squeeze=False, constrained_layout=True, sharey=True)
    colours = _colours(gates)
    y = np.arange(len(gates))[::-1]
    for ax, metric in zip(axes.ravel(), shown):
        label, lower, upper, scale = metric_axes[metric]
        band = intervals.get(reference, {}).get(metric) if reference in values else None
        if band is not None:
            ax.axvspan(band[0] * scale, band[1] * scale, color=colours[reference], alpha=0.15, zorder=0, linewidth=0)
        if chance and np.isfinite(chance.get(metric, np.nan)):
            ax.axvline(chance[metric] * scale, color="0.35", linestyle="--", linewidth=0.9, zorder=1)
        for level, style in zip((bounds or {}).get(metric, ()), (":", "-.")):
            if np.isfinite(level):
                ax.axvline(level * scale, color="0.15", linestyle=style, linewidth=1.0, zorder=1)
        for yi, gate in zip(y, gates):
            v = np.asarray(values[gate].get(metric, []), dtype=np.float64) * scale
            v = v[np.isfinite(v)]
            if not v.size:
                continue
            ax.scatter(v, np.full(v.size, yi), s=14, color=colours[gate], alpha=0.75, edgecolors="white",
                       linewidths=0.5, zorder=3, clip_on=False)
            mean = v.mean()
            ax.plot([mean], [yi], marker="D", markersize=4, color=colours[gate], zorder=4, clip_on=False)
            ci = intervals.get(gate, {}).get(metric)
            if ci is not None:
                ax.plot([ci[0] * scale, ci[1] * scale], [yi, yi], color=colours[gate], linewidth=1.5)
        margin = 0.03 * (upper - lower)  # the range is fixed; markers at its ends stay whole
        ax.set_xlim(lower - margin, upper + margin)
        ax.set_xlabel(label)
        ax.set_yticks(y)
        ax.set_yticklabels(gates)
        ax.set_ylim(-0.6, len(gates) - 0.4)
        ax.grid(True, axis="x", linestyle=":", alpha=0.5)
    for ax in axes.ravel()[len(shown):]:
        ax.set_visible(False)
    note = "dots: seeds; diamond: mean; bar: 95 % CI (t, n ≥ 2)"
    unmeasured = [g for g in gates if not any(np.isfinite(values[g].get(m, [np.nan])).any() for m in shown)]
    if reference in values and reference not in unmeasured:
        note += f"; shaded: {reference}'s CI"
    if unmeasured:  # a row left empty on purpose: say so rather than let it read as zero
        note += f"; not measured: {', '.join(unmeasured)}"
    if chance and any(m in chance for m in shown):
        note += f"; dashed: {chance_label}"
    if any(np.isfinite((bounds or {}).get(m, (np.nan, np.nan))).any() for m in shown):
        note += f"; {bounds_label}"
    if constant:
        note += f"; equal for every gate, not shown: {', '.join(constant)}"
    import textwrap

    fig.suptitle(f"{title}\n" + textwrap.fill(note, 105))  # the note stays within the page width
    return fig


def plot_curves(histories: dict[str, dict[str, list[float]]], title: str = "Training curves") -> Figure:
    """histories: label -> {"train_loss": [...per epoch], "val_loss", "train_acc", "val_acc"};
    epochs are numbered from 1."""
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH_IN, 2.6), constrained_layout=True)
    colours = _colours(histories)
    for label, h in histories.items():
        for key, style in (("train", "-"), ("val", "--")):
            for ax, metric in zip(axes, ("loss", "acc")):
                values = h.get(f"{key}_{metric}", [])
                if values:
                    ax.plot(np.arange(1, len(values) + 1), values, style, color=colours[label], marker="o",
                            markersize=2.5, linewidth=1.1, label=label if key == "train" else None)
    axes[0].set_ylabel("cross-entropy loss (nats)")
    axes[1].set_ylabel("accuracy (%)")
    for ax, name in zip(axes, ("Loss", "Accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(f"{name} (solid: train, dashed: validation)")
        ax.grid(True, linestyle=":", alpha=0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(frameon=False, ncol=2)
    fig.suptitle(title)
    return fig


#: Per-epoch attention panels: metric -> (label, fixed range or None for the data's range).
EPOCH_PANELS = {
    "gini": ("Gini", (0.0, 1.0)),
    "entropy": ("entropy / log C", (0.0, 1.0)),
    "sparsity": ("share exactly 0", (0.0, 1.0)),
    "focus_pct": ("above mean (%)", (0.0, 100.0)),
    "avg_score": ("mean weight (log)", None),
}


def plot_attention_epochs(series: dict[str, dict[str, list[float]]],
                          title: str = "Channel attention over training") -> Figure | None:
    """series: gate -> {metric: [value per epoch]} (the train runs' ``attention/<metric>``, on a
    fixed set of validation images). One panel per metric, epochs from 1; None without data."""
    metrics = [m for m in EPOCH_PANELS if any(s.get(m) for s in series.values())]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(PAGE_WIDTH_IN, 2.3), squeeze=False, constrained_layout=True)
    colours = _colours(series)
    for ax, metric in zip(axes[0], metrics):
        label, limits = EPOCH_PANELS[metric]
        for gate, s in series.items():
            values = s.get(metric, [])
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=2.5, linewidth=1.1,
                        color=colours[gate], label=gate)
        if limits is not None:
            ax.set_ylim(*limits)
        else:
            ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(True, linestyle=":", alpha=0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(6, len(labels)), frameon=False)
    fig.suptitle(title)
    return fig


def plot_class_attention(matrices: dict[str, np.ndarray], classes: list[str],
                         title: str = "Channel weights per class") -> Figure | None:
    """matrices: gate -> (K, C) mean channel weights per class. One heatmap per gate: a row per
    class, channels ordered by the gate's overall mean weight (largest left), each weight
    relative to that overall mean (1 = average; log colour scale, shared): rows that differ
    mean classes routed through different channels."""
    from matplotlib.colors import LogNorm

    gates = [g for g, m in matrices.items() if np.isfinite(m).any()]
    if not gates:
        return None
    k = len(classes)
    bar_below = 0.5 if len(gates) == 1 else 0.0  # the colour bar's room when it goes under one heatmap
    fig, axes = plt.subplots(len(gates), 1, figsize=(PAGE_WIDTH_IN, 0.55 + bar_below + len(gates) * (0.25 + 0.085 * k)),
                             squeeze=False, constrained_layout=True)
    norm = LogNorm(1e-2, 1e2)
    image = None
    for ax, gate in zip(axes[:, 0], gates):
        m = np.asarray(matrices[gate], dtype=np.float64)
        overall = np.nanmean(np.abs(m), axis=0)
        order = np.argsort(-overall, kind="stable")
        scale = np.nanmean(np.abs(m)) or 1.0
        relative = np.clip(np.abs(m[:, order]) / scale, 1e-2, 1e2)
        image = ax.imshow(relative, aspect="auto", cmap="magma", norm=norm, interpolation="nearest")
        ax.set_yticks(range(k))
        ax.set_yticklabels(classes, fontsize=5.5)
        ax.set_ylabel(gate, rotation=0, ha="right", va="center")
        ax.set_xticks([])
    axes[-1, 0].set_xlabel(f"channels, by the gate's mean weight (largest left; {m.shape[1]} in all)")
    # beside one heatmap the label is longer than the bar: below it, across, instead
    below = dict(location="bottom", shrink=0.4, aspect=40) if len(gates) == 1 else dict(fraction=0.03)
    fig.colorbar(image, ax=axes[:, 0], pad=0.01, label="weight / gate's mean weight", **below)
    fig.suptitle(title)
    return fig


def stage_of(tensor_name: str) -> str:
    """The network stage a weight tensor belongs to: ``layer3.1.conv2.weight`` -> ``layer3``;
    the stem's conv1/bn1 -> ``stem``; the CBAM block -> ``cbam``."""
    head = tensor_name.split(".")[0]
    if head in ("conv1", "bn1"):
        return "stem"
    return "cbam" if "cbam" in tensor_name or head in ("attention", "channel", "spatial") else head


def plot_gradient_flow(flows: dict[str, tuple[list[str], list[float]]], title: str = "Gradient flow (last epoch)") -> Figure | None:
    """flows: label -> (weight tensor names, mean |grad| per tensor). Log scale (the values span
    decades); tensors grouped by stage, each stage named under its span."""
    if not flows:
        return None
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN, 2.6), constrained_layout=True)
    colours = _colours(flows)
    layers: list[str] = []
    for names, _ in flows.values():  # every tensor of every gate, in network order
        for i, name in enumerate(names):
            if name not in layers:
                after = [layers.index(n) for n in names[:i] if n in layers]
                layers.insert(max(after) + 1 if after else 0, name)
    for label, (names, values) in flows.items():  # a gate's own parameters do not shift the others
        v = np.asarray(values, dtype=np.float64)
        ax.plot([layers.index(n) for n in names], np.where(v > 0, v, np.nan), color=colours[label], marker=".",
                markersize=3, linewidth=1.0, label=label)
    stages = [stage_of(n) for n in layers]
    starts = [i for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]]
    ends = starts[1:] + [len(stages)]
    for start, end in zip(starts, ends):
        if start:
            ax.axvline(start - 0.5, color="grey", linewidth=0.6, alpha=0.6)
    ax.set_xticks([(s + e - 1) / 2 for s, e in zip(starts, ends)])
    ax.set_xticklabels([f"{stages[s]}\n({e - s})" for s, e in zip(starts, ends)])
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_yscale("log")
    ax.set_xlabel("weight tensors by stage, input to output (tensors per stage)")
    ax.set_ylabel("mean |gradient|")
    ax.set_title(title)
    ax.grid(True, axis="y", linestyle=":", alpha=0.5)
    ax.legend(frameon=False, ncol=min(4, len(flows)))
    return fig


def plot_gate_parameters(params: dict[str, dict[str, list[float]]], title: str = "Learnable gate parameters") -> Figure | None:
    """params: label -> {"gate_scale": [...per epoch], ...}. One panel per parameter; None when
    no gate has a learnable parameter."""
    names = sorted({k for p in params.values() for k, v in p.items() if v})
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(min(PAGE_WIDTH_IN, 2.6 * len(names) + 0.4), 2.3),
                             constrained_layout=True, squeeze=False)
    colours = _colours(params)
    for ax, name in zip(axes[0], names):
        for label, p in params.items():
            if p.get(name):
                ax.plot(np.arange(1, len(p[name]) + 1), p[name], marker="o", markersize=3, color=colours[label],
                        label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{name} (dimensionless)")
        ax.grid(True, linestyle=":", alpha=0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(frameon=False)
    fig.suptitle(title)
    return fig


def plot_spatial_grid(images: np.ndarray, maps_by_label: dict[str, np.ndarray],
                      title: str = "Spatial attention of the same test images") -> Figure:
    """images: (K, 3, h, w) uint8; maps_by_label: label -> (K, H, W) in [0, 1]. A compact grid:
    the first row shows the images, each further row one gate's spatial map (bilinear to the
    image size) over them; one colour scale (0..1, the spatial gate's sigmoid range) and one
    colour bar for every map."""
    from torch import from_numpy
    from torch.nn.functional import interpolate

    labels = list(maps_by_label)
    k = images.shape[0]
    cell = min(0.9, (PAGE_WIDTH_IN - 1.2) / k)
    bar_below = 0.55 if len(labels) == 1 else 0.0  # the colour bar's room when it goes under one row of maps
    fig, axes = plt.subplots(len(labels) + 1, k, figsize=(cell * k + 1.2, cell * (len(labels) + 1) + 0.5 + bar_below),
                             squeeze=False, constrained_layout=True)
    pictures = np.transpose(images, (0, 2, 3, 1))
    gray = pictures.astype(np.float32).mean(axis=3)
    side = pictures.shape[1]
    for i in range(k):
        axes[0, i].imshow(pictures[i], interpolation="nearest")
        axes[0, i].set_title(f"image {i + 1}")
    axes[0, 0].set_ylabel("image", rotation=0, ha="right", va="center")
    for r, label in enumerate(labels, start=1):
        maps = np.asarray(maps_by_label[label], dtype=np.float32)
        for i in range(k):
            upsampled = interpolate(from_numpy(maps[i][None, None]), size=(side, side), mode="bilinear",
                                    align_corners=False)[0, 0].numpy()
            axes[r, i].imshow(gray[i], cmap="gray", interpolation="nearest")  # the map's colours stay true
            axes[r, i].imshow(upsampled, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.65)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    if labels:  # an opaque bar: the overlays' transparency would wash it out
        scale = ScalarMappable(norm=Normalize(0.0, 1.0), cmap="inferno")
        # beside a single row of maps the label is longer than the bar: below it, across, instead
        where = dict(location="bottom", shrink=0.4, aspect=40) if len(labels) == 1 else dict(shrink=0.9, fraction=0.05)
        fig.colorbar(scale, ax=axes[1:, :], pad=0.02, label="spatial attention (0..1)", **where)
    fig.suptitle(title)
    return fig


def plot_localisation_grid(images: np.ndarray, masks: np.ndarray, boxes: np.ndarray,
                           maps_by_label: dict[str, np.ndarray], title: str = "Localisation") -> Figure:
    """images: (K, 3, h, w) uint8; masks: (K, h, w) bool; boxes: (K, 4) half-open x0, y0, x1, y1;
    maps_by_label: row label -> (K, H, W) maps of any size. One column per image, sized for a
    paper column: the first row the image with its ground truth (mask outline and box), each
    further row one map, min-max normalised per image as the localisation metrics see it,
    bilinear to the image, with the mask's outline over it."""
    from torch import from_numpy
    from torch.nn.functional import interpolate

    from pipeline.localisation import normalise_maps

    labels = list(maps_by_label)
    k = images.shape[0]
    label_in = 0.85  # room for the row labels
    cell = min(0.75, (COLUMN_WIDTH_IN - label_in) / k)
    fig, axes = plt.subplots(len(labels) + 1, k, figsize=(COLUMN_WIDTH_IN, cell * (len(labels) + 1) + 0.75),
                             squeeze=False, constrained_layout=True)
    pictures = np.transpose(images, (0, 2, 3, 1))
    gray = pictures.astype(np.float32).mean(axis=3)
    side = pictures.shape[1]

    def outline(ax, i, colour):
        ax.contour(masks[i].astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.6)

    for i in range(k):
        axes[0, i].imshow(pictures[i], interpolation="nearest")
        outline(axes[0, i], i, "#00e5ff")
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        axes[0, i].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="#ffd400",
                                           linewidth=0.7))
        axes[0, i].set_title(f"image {i + 1}", fontsize=7)
    axes[0, 0].set_ylabel("image,\nground truth", rotation=0, ha="right", va="center", fontsize=7)
    for r, label in enumerate(labels, start=1):
        maps = np.asarray(maps_by_label[label], dtype=np.float32)
        for i in range(k):
            upsampled = interpolate(from_numpy(maps[i][None, None].copy()), size=(side, side), mode="bilinear",
                                    align_corners=False)[0, 0].numpy()
            axes[r, i].imshow(gray[i], cmap="gray", interpolation="nearest")
            axes[r, i].imshow(normalise_maps(upsampled[None])[0], cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.7)
            outline(axes[r, i], i, "#00e5ff")
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    if labels:
        fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap="inferno"), ax=axes[1:, :], location="bottom",
                     shrink=0.7, aspect=35, pad=0.01,
                     label="map, min-max per image\ncyan: object mask; yellow: its box")
    import textwrap

    fig.suptitle(textwrap.fill(title, 60), fontsize=7)
    return fig


FAITHFULNESS_PANELS = {  # curve family -> (panel title, x label)
    "channel": ("Channel ablation, top-weighted first", "channels ablated, k / C"),
    "deletion": ("Deletion, top-ranked pixels first", "pixels deleted, fraction"),
    "insertion": ("Insertion, top-ranked pixels first", "pixels restored, fraction"),
}


def plot_faithfulness_curves(curves: dict[str, dict[str, dict[str, np.ndarray]]],
                             title: str = "Faithfulness") -> Figure | None:
    """curves: family (channel, deletion, insertion) -> gate -> ``x``, ``attention`` (the curve
    in the attention's order), ``random`` and ``random_std`` (the random orders' mean and spread),
    accuracy in percent. One panel per family, stacked for a paper column: each gate's
    attention-ordered curve as a line, its random orders' mean ± 1 std as a band of its colour."""
    families = [f for f in FAITHFULNESS_PANELS if curves.get(f)]
    if not families:
        return None
    gates = list(dict.fromkeys(g for f in families for g in curves[f]))
    colours = _colours(gates)
    fig, axes = plt.subplots(len(families), 1, figsize=(COLUMN_WIDTH_IN, 0.9 + 1.55 * len(families)),
                             squeeze=False, constrained_layout=True)
    for ax, family in zip(axes[:, 0], families):
        for gate, c in curves[family].items():
            x = np.asarray(c["x"], dtype=np.float64)
            low, high = c["random"] - c["random_std"], c["random"] + c["random_std"]
            ax.fill_between(x, low, high, color=colours[gate], alpha=0.18, linewidth=0)
            ax.plot(x, c["random"], color=colours[gate], linewidth=0.7, linestyle=":")
            ax.plot(x, c["attention"], color=colours[gate], linewidth=1.3, marker=".", markersize=3, label=gate)
        panel, xlabel = FAITHFULNESS_PANELS[family]
        ax.set_title(panel, fontsize=7.5)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel("accuracy (%)", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 100)
        ax.tick_params(labelsize=6.5)
        ax.grid(True, linestyle=":", alpha=0.5)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=6.5, frameon=False,
               title="line: the attention's order; dotted, band: random orders (mean ± 1 std)", title_fontsize=6.5)
    import textwrap

    fig.suptitle(textwrap.fill(title, 55), fontsize=7.5)
    return fig


def save_figure(fig: Figure, stem) -> list[str]:
    """Write ``stem``.pdf (vector) and ``stem``.png (300 dpi at print size); returns the paths."""
    paths = [f"{stem}.pdf", f"{stem}.png"]
    fig.savefig(paths[0])
    fig.savefig(paths[1], dpi=300)  # laid out again: a layout from the PDF's save clips labels at 300 dpi
    plt.close(fig)
    return paths
