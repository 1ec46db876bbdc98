"""The report's figures: records and their statistics in, ``pipeline.report.plots`` calls out.

Nothing here computes a statistic: intervals, means over seeds and pooled weights come from
``pipeline.report.stats.group_stats``; the images of the spatial-map grid are those the
probe stored."""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.contracts import NO_CBAM
from pipeline.report import plots
from pipeline.report.schema import FAMILIES, GRID_SIZE, Family, Record
from pipeline.report.stats import GroupStats

log = logging.getLogger("pipeline")


def counted(n: int, noun: str) -> str:
    """``1 run``, ``3 runs``: a count for a figure's title."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


DESIGN_TITLES = {"cbam": "CBAM", "se": "SE", "eca": "ECA"}


def describe(r: Record) -> str:
    """``CBAM late, digits 64 px, 2 epochs``; ``SE late, ResNet50, ...``; ``CBAM (spatial
    softmax) late, ...``; ``no CBAM, ...`` for the baseline."""
    c = r.config
    design = c.get("attention", "cbam") or "cbam"
    spatial = c.get("spatial_gate", "sigmoid") or "sigmoid"
    block = DESIGN_TITLES.get(design, design) + ("" if spatial in ("sigmoid", "none") else f" (spatial {spatial})")
    where = "no CBAM" if c["position"] == NO_CBAM else f"{block} {c['position']}"
    backbone = c.get("backbone", "resnet18") or "resnet18"
    net = "" if backbone == "resnet18" else f", {backbone.replace('resnet', 'ResNet')}"
    epochs = f"{c['epochs']} epoch" + ("" if str(c["epochs"]) == "1" else "s")
    return f"{where}{net}, {c['dataset']} {c['image_size']} px, {epochs}"


def family_figure(g: GroupStats, family: Family, title: str, reference: str):
    """A family's panels: each of its figure metrics per gate, seeds and CI, the reference shaded."""
    values = {gate: {m: v[m] for m in family.figure_metrics} for gate, v in g.values.items()}
    intervals = {gate: {m: v[m] for m in family.figure_metrics} for gate, v in g.intervals.items()}
    chance = {m: g.chance[m] for m in family.figure_metrics if m in g.chance}
    bounds = {m: g.bounds[m] for m in family.figure_metrics if m in g.bounds} or None
    if family.figure_level is not None:
        level, label = family.figure_level
        return plots.plot_gate_metrics(values, intervals, family.figure_metrics, title, reference=reference,
                                       chance={m: level for m in family.figure_metrics}, chance_label=label,
                                       bounds=bounds, bounds_label=family.figure_bounds_label)
    return plots.plot_gate_metrics(values, intervals, family.figure_metrics, title, reference=reference,
                                   chance=chance or None, bounds=bounds, bounds_label=family.figure_bounds_label)


def spatial_grid(g: GroupStats):
    """Spatial maps of the first probed test images, the same images for every gate."""
    firsts = {gate: runs[0] for gate, runs in g.gates.items() if gate in g.weights}
    firsts = {gate: r for gate, r in firsts.items() if r.grid_maps is not None and r.grid_maps.shape[1] > 0}
    if not firsts:
        return None
    example = next(iter(firsts.values()))
    if example.grid_images is None:
        log.warning("report: no spatial-map grid for %s (its probe run stored no images; run probe-attention again)",
                    g.name)
        return None
    k = min(GRID_SIZE, *(r.grid_maps.shape[0] for r in firsts.values()))
    indices = [r.grid_indices[:k] for r in firsts.values()]
    if any(ix != indices[0] for ix in indices):
        log.warning("report: the probes looked at different test images; no spatial-map grid")
        return None
    h, w = example.grid_maps.shape[1:]
    return plots.plot_spatial_grid(example.grid_images[:k], {gate: r.grid_maps[:k] for gate, r in firsts.items()},
                                   f"Spatial attention ({h}×{w} map, bilinear to the image), {describe(g.members[0])}")


def localisation_grid(g: GroupStats):
    """The first probed images with their ground truth, each gate's CBAM map and its network's
    CAM below them; None where the dataset has no ground truth."""
    firsts = {gate: runs[0] for gate, runs in g.gates.items()}
    firsts = {gate: r for gate, r in firsts.items() if r.grid_masks is not None and r.grid_images is not None}
    if not firsts:
        return None
    k = min(4, *(r.grid_masks.shape[0] for r in firsts.values()))
    indices = [r.grid_indices[:k] for r in firsts.values() if r.grid_indices]
    if any(ix != indices[0] for ix in indices):
        log.warning("report: the probes looked at different test images; no localisation grid")
        return None
    example = next(iter(firsts.values()))
    rows = {}
    for gate, r in firsts.items():
        if r.grid_maps is not None and r.grid_maps.shape[1] > 0:
            rows[f"{gate}\nCBAM map"] = r.grid_maps[:k]
        if r.grid_cams is not None:
            rows[f"{gate}\nCAM"] = r.grid_cams[:k]
    if not rows:
        return None
    return plots.plot_localisation_grid(example.grid_images[:k], example.grid_masks[:k], example.grid_boxes[:k],
                                        rows, f"Localisation: CBAM spatial maps and CAMs, {describe(g.members[0])}")


def group_figures(g: GroupStats, reference: str, families: tuple[Family, ...] = FAMILIES) -> dict[str, object]:
    """The figures of one group: stem -> Figure (None where there is nothing to draw)."""
    what = describe(g.members[0])
    seeds = g.seeds
    over_seeds = f"(mean over {seeds} seeds)" if seeds > 1 else "(1 seed)"  # not "mean over" one
    up_to = f"(up to {seeds} seeds)" if seeds > 1 else "(1 seed)"
    name = g.name
    classes = next((r.classes for gate in g.class_weights for r in g.gates[gate]), [])
    figures = {
        f"weights_{name}": plots.plot_weight_distributions(
            g.weights, f"Channel attention weights, {what} ({counted(g.runs_with_attention, 'run')})",
            times_c=all(r.config.get("gate_norm") == "mean_one" for r in g.members))  # weights already × C
        if g.weights else None,
    }
    for i, family in enumerate(families):  # the first family's figure keeps the name metrics_<group>
        stem = "metrics" if i == 0 else f"{family.name}"
        figures[f"{stem}_{name}"] = family_figure(g, family, f"Metrics per gate, {what} {up_to}" if i == 0 else
                                                  f"{family.title} per gate, {what} {up_to}", reference)
    figures.update({
        f"curves_{name}": plots.plot_curves(g.curves, f"Training curves, {what} {over_seeds}"),
        f"attention_epochs_{name}": plots.plot_attention_epochs(
            g.attention_epochs, f"Channel attention on validation images over training, {what} {over_seeds}"),
        f"class_attention_{name}": plots.plot_class_attention(
            g.class_weights, classes, f"Channel weights per test class, {what} {over_seeds}")
        if g.class_weights else None,
        f"gradient_flow_{name}": plots.plot_gradient_flow(g.gradient_flow, f"Gradient flow in the last epoch, {what}"),
        f"gate_parameters_{name}": plots.plot_gate_parameters(g.gate_parameters, f"Learnable gate parameters, {what}"),
        f"spatial_maps_{name}": spatial_grid(g) if g.weights else None,
        f"localisation_maps_{name}": localisation_grid(g),
        f"faithfulness_curves_{name}": plots.plot_faithfulness_curves(
            g.faithfulness, f"Faithfulness curves, {what} {over_seeds}") if g.faithfulness else None,
    })
    return figures


def write_figures(groups: list[GroupStats], out: Path, reference: str,
                  families: tuple[Family, ...] = FAMILIES) -> list[str]:
    """Every group's figures into ``out`` as PDF and PNG; the paths written."""
    written: list[str] = []
    for g in groups:
        for stem, fig in group_figures(g, reference, families).items():
            if fig is not None:
                written += plots.save_figure(fig, out / stem)
    return written
