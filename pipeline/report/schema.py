"""What a report is made of: the record of one configuration and seed, the keys that tell
configurations apart, and the metric families its tables and figures iterate over.

Pure: imports neither MLflow nor torch (the tests of stats and tables run without them).

Adding a metric family: declare a ``Family`` in ``FAMILIES`` (its metrics with their
column labels and formats, the metrics of its figure each with its ``Axis``) and make the
compute step log those metrics; the summary table, ``summary.csv``, the paired comparison and
the figure then cover it: a figure metric is declared here and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from pipeline.contracts import (FAITHFULNESS_PREFIX, GRID_SIZE, LOCALISATION_PREFIX, LOCALISED_MAPS,  # noqa: F401
                                NO_ATTENTION, NO_CBAM, gate_label)

#: What defines an experiment: runs that differ in any of these are never pooled (the seed is
#: what pools). ``gate_norm`` counts where train runs log it.
GROUP_KEYS = ("dataset", "image_size", "epochs", "weights", "lr", "lr_schedule", "batch_size", "val_fraction",
              "canvases", "num_images", "gate_norm", "backbone", "attention", "spatial_gate", "position", "activation")
KEY_LABELS = {"dataset": "dataset", "image_size": "image size (px)", "epochs": "epochs", "weights": "weights",
              "lr": "lr", "lr_schedule": "lr schedule", "canvases": "training canvases", "batch_size": "batch size", "val_fraction": "val. fraction", "num_images": "probed images",
              "gate_norm": "gate norm.", "backbone": "backbone", "attention": "design", "spatial_gate": "spatial gate",
              "position": "position", "activation": "gate"}
#: Keys of the attention block: the baseline without one (position none) holds ``none`` in them,
#: which neither makes them vary across a report nor keeps the baseline from joining a group.
BLOCK_KEYS = ("attention", "spatial_gate")
#: The notebook's design: a key at this value is left out of a report's "constant" phrase, and a
#: run made before the key existed had it.
DESIGN_DEFAULTS = {"backbone": "resnet18", "attention": "cbam", "spatial_gate": "sigmoid", "canvases": "fixed",
                   "lr_schedule": "constant"}
#: How a constant key reads above a table ("64 px", "2 epochs"); the others read "<label> <value>".
CONSTANT_TEXT = {"image_size": "{} px", "epochs": "{} epochs", "num_images": "{} test images probed",
                 "batch_size": "batch size {}", "val_fraction": "val. fraction {}", "gate_norm": "gate norm. {}"}
#: The training curves a record carries (per epoch, from the train run), and the gates' learnable values.
CURVES = ("train_loss", "val_loss", "train_acc", "val_acc")
GATE_PARAMETERS = ("gate_scale", "gate_temperature", "gate_alpha")


def with_design_defaults(config: dict[str, str]) -> dict[str, str]:
    """``config`` with the design keys a run made before them lacks ("") set to what it was: the
    notebook's CBAM on a ResNet18, or no block for the baseline."""
    out = dict(config)
    for key, default in DESIGN_DEFAULTS.items():
        if out.get(key, "") == "":
            out[key] = NO_ATTENTION if key in BLOCK_KEYS and out.get("position") == NO_CBAM else default
    return out


@dataclass(frozen=True)
class Column:
    """A metric's column: its header and how its values print (``scale`` × value, ``decimals``);
    the statistics are computed on the logged, unscaled values."""

    header: str
    scale: float = 1.0
    decimals: int = 3


class Axis(NamedTuple):
    """A figure metric's panel: its axis label and whole range (``lower``..``upper`` after
    ``scale``, so panels of different reports compare; ``scale`` turns fractions into percent)."""

    label: str
    lower: float
    upper: float
    scale: float = 1.0


@dataclass(frozen=True)
class Family:
    """A family of metrics declared once: its table columns (also the metrics of the paired
    comparison), every metric of ``summary.csv``, the metrics its figure draws (one panel
    each), the text under its table and its table's title."""

    name: str
    title: str
    columns: dict[str, Column]
    csv_metrics: tuple[str, ...]
    figure_metrics: dict[str, Axis]  # metric -> its panel, in drawing order
    footnote: str
    caption: str
    #: reference levels stated under the table: (label, metric prefix), each read with ``chance_metrics``
    chance: tuple[tuple[str, str], ...] = ()
    chance_metrics: tuple[tuple[str, str, float, int], ...] = ()  # (metric suffix, label, scale, decimals)
    figure_chance: tuple[tuple[str, str], ...] = ()  # (figure metric, the metric of its chance line)
    #: floor and ceiling stated under the table, like ``chance``: (label, metric prefix)
    bounds: tuple[tuple[str, str], ...] = ()
    #: a level every figure metric's chance line sits at (an advantage over random: 0), and its legend
    figure_level: tuple[float, str] | None = None
    #: (figure metric, the metric of its floor, the metric of its ceiling or None): drawn as lines in its panel
    figure_bounds: tuple[tuple[str, str, str | None], ...] = ()
    figure_bounds_label: str = ""  # what the floor (dotted) and ceiling (dash-dot) lines are


ATTENTION = Family(
    name="attention",
    title="Summary",
    columns={
        "test_acc": Column("test acc. (%)", 1.0, 1),
        "gini": Column("Gini", 1.0, 3),
        "entropy": Column("entropy", 1.0, 3),
        "sparsity": Column("sparsity (%)", 100.0, 1),
        "near_zero_pct": Column("near 0 (%)", 1.0, 1),
        "focus_pct": Column("focus (%)", 1.0, 1),
        "focus_area_ratio": Column("focus area (%)", 100.0, 1),
    },
    csv_metrics=("test_acc", "test_top5", "test_map", "gini", "entropy", "sparsity", "focus_pct",
                 "focus_area_ratio", "avg_score", "near_zero_pct", "negative_pct"),
    figure_metrics={
        "test_acc": Axis("test accuracy (%)", 0.0, 100.0),
        "test_map": Axis("test mAP", 0.0, 1.0),
        "gini": Axis("Gini of |w|", 0.0, 1.0),
        "entropy": Axis("entropy of |w| / log C", 0.0, 1.0),
        "sparsity": Axis("weights exactly 0 (%)", 0.0, 100.0, 100.0),
        "focus_pct": Axis("channels above mean (%)", 0.0, 100.0),
        "focus_area_ratio": Axis("focus area (%)", 0.0, 100.0, 100.0),
    },
    footnote=("Mean ± half-width of the 95 % confidence interval over seeds (Student t); one seed: the mean alone. "
              "Gini and entropy (/ log C) of the channel weights' magnitudes; sparsity: channel weights exactly 0 "
              "(for bounded gates: float underflow); near 0: below 10^-3 of the image's largest weight; "
              "focus: channels above the image's mean weight; focus area: spatial-map pixels above half the map's "
              "maximum. Every metric with its std and CI bounds: summary.csv."),
    caption="Attention metrics by gate",
)

def _loc(kind: str, metric: str) -> str:
    return f"{LOCALISATION_PREFIX}{kind}_{metric}"


LOCALISATION_METRICS = ("pxap", "maxboxacc", "boxacc_iou30", "boxacc_iou50", "boxacc_iou70", "pointing_mask",
                        "pointing_box", "energy_box")
LOCALISATION = Family(
    name="localisation",
    title="Localisation",
    columns={
        _loc("cbam", "pxap"): Column("CBAM PxAP", 1.0, 1),
        _loc("cbam", "maxboxacc"): Column("CBAM MaxBoxAccV2", 1.0, 1),
        _loc("cbam", "pointing_mask"): Column("CBAM pointing", 1.0, 3),
        _loc("cbam", "energy_box"): Column("CBAM energy in box", 1.0, 3),
        _loc("cam", "pxap"): Column("CAM PxAP", 1.0, 1),
        _loc("cam", "maxboxacc"): Column("CAM MaxBoxAccV2", 1.0, 1),
        _loc("cam", "pointing_mask"): Column("CAM pointing", 1.0, 3),
        _loc("cam", "energy_box"): Column("CAM energy in box", 1.0, 3),
        _loc("cbam", "pxap_normalised"): Column("CBAM PxAP, normalised", 1.0, 2),
        _loc("cbam", "pointing_mask_normalised"): Column("CBAM pointing, normalised", 1.0, 2),
        _loc("cam", "pxap_normalised"): Column("CAM PxAP, normalised", 1.0, 2),
    },
    csv_metrics=(*(_loc(kind, m) for kind in LOCALISED_MAPS for m in LOCALISATION_METRICS),
                 *(_loc(kind, f"{m}_normalised") for kind in ("cbam", "cam") for m in LOCALISATION_METRICS),
                 "randomised_test_acc"),  # the accuracy of the re-initialised network whose maps are a floor
    figure_metrics={
        _loc("cbam", "pxap"): Axis("CBAM map PxAP", 0.0, 100.0),
        _loc("cam", "pxap"): Axis("CAM PxAP", 0.0, 100.0),
        _loc("cbam", "pointing_mask"): Axis("CBAM map pointing game", 0.0, 1.0),
        _loc("cam", "pointing_mask"): Axis("CAM pointing game", 0.0, 1.0),
    },
    footnote=("Mean ± half-width of the 95 % confidence interval over seeds. Each gate's CBAM spatial map and the "
              "same network's CAM (class activation map of the true class, Zhou et al. 2016), upsampled to the "
              "input, against the target's mask and box: PxAP (pixel average precision, pixels pooled over the "
              "probed images) and MaxBoxAccV2 (mean over IoU 0.3/0.5/0.7 of the best-threshold box accuracy), "
              "Choe et al. 2020, in %; pointing: the map's maximum on the mask; energy in box: the share of the "
              "min-max-normalised map's mass in the box. Definitions: docs/metrics.md; MaxBoxAcc per IoU, pointing "
              "in the box and the chance maps' values: summary.csv."),
    caption="Localisation of the CBAM spatial map and of CAM by gate",
    chance=(("uniform map", _loc("uniform", "")), ("centre prior", _loc("centre", ""))),
    bounds=(("floor (random maps of the grid)", _loc("random", "")),
            ("ceiling (the mask pooled to the grid)", _loc("ceiling", "")),
            ("the CAM's grid: floor", _loc("cam_random", "")),
            ("ceiling", _loc("cam_ceiling", "")),
            ("the same network re-initialised, its CBAM map", _loc("cbam_randomised", "")),
            ("and its CAM", _loc("cam_randomised", ""))),
    figure_chance=((_loc("cbam", "pxap"), _loc("uniform", "pxap")), (_loc("cam", "pxap"), _loc("uniform", "pxap")),
                   (_loc("cbam", "pointing_mask"), _loc("uniform", "pointing_mask")),
                   (_loc("cam", "pointing_mask"), _loc("uniform", "pointing_mask"))),
    figure_bounds=tuple((_loc(kind, m), _loc(floor, m), _loc(ceiling, m)) for m in ("pxap", "pointing_mask")
                        for kind, floor, ceiling in (("cbam", "random", "ceiling"), ("cam", "cam_random", "cam_ceiling"))),
    figure_bounds_label="dotted: floor (random maps of the map's grid); dash-dot: ceiling (the mask pooled to the grid)",
    chance_metrics=(("pxap", "PxAP", 1.0, 1), ("maxboxacc", "MaxBoxAccV2", 1.0, 1),
                    ("pointing_mask", "pointing", 1.0, 3), ("energy_box", "energy in box", 1.0, 3)),
)

def _faith(name: str) -> str:
    return f"{FAITHFULNESS_PREFIX}{name}"


FAITHFULNESS_SUMMARIES = tuple(
    [f"channel_{order}_{m}_area" for m in ("acc", "prob") for order in ("most", "least", "random")]
    + [f"channel_random_{m}_area_std" for m in ("acc", "prob")]
    + [f"channel_advantage_{m}{s}" for m in ("acc", "prob") for s in ("", "_std")]
    + [f"{fam}_{order}_{m}_area" for fam in ("deletion", "insertion") for m in ("acc", "prob")
       for order in ("cbam", "cam", "random")]
    + [f"{fam}_random_{m}_area_std" for fam in ("deletion", "insertion") for m in ("acc", "prob")]
    + [f"{fam}_advantage_{m}{s}" for fam in ("deletion", "insertion") for m in ("acc", "prob") for s in ("", "_std")])
#: where a dataset has masks: the deletion and insertion areas of the ceiling map and the normalised scores
FAITHFULNESS_CEILING = tuple([f"{fam}_ceiling_{m}_area" for fam in ("deletion", "insertion") for m in ("acc", "prob")]
                             + [f"{fam}_normalised_{m}" for fam in ("deletion", "insertion") for m in ("acc", "prob")])
#: the floor of channel ablation: the same protocol on the network re-initialised (Adebayo et al. 2018)
FAITHFULNESS_FLOOR = tuple(f"channel_randomised_advantage_{m}{s}" for m in ("acc", "prob") for s in ("", "_std"))
FAITHFULNESS = Family(
    name="faithfulness",
    title="Faithfulness",
    columns={
        _faith("channel_most_acc_area"): Column("ablation: top first", 1.0, 1),
        _faith("channel_random_acc_area"): Column("ablation: random", 1.0, 1),
        _faith("channel_advantage_acc"): Column("ablation advantage", 1.0, 1),
        _faith("channel_randomised_advantage_acc"): Column("ablation advantage, re-initialised", 1.0, 1),
        _faith("deletion_cbam_acc_area"): Column("deletion: CBAM", 1.0, 1),
        _faith("deletion_cam_acc_area"): Column("deletion: CAM", 1.0, 1),
        _faith("deletion_advantage_acc"): Column("deletion advantage", 1.0, 1),
        _faith("deletion_normalised_acc"): Column("deletion, normalised", 1.0, 2),
        _faith("insertion_cbam_acc_area"): Column("insertion: CBAM", 1.0, 1),
        _faith("insertion_advantage_acc"): Column("insertion advantage", 1.0, 1),
        _faith("insertion_normalised_acc"): Column("insertion, normalised", 1.0, 2),
    },
    csv_metrics=tuple(_faith(s) for s in (*FAITHFULNESS_SUMMARIES, *FAITHFULNESS_CEILING, *FAITHFULNESS_FLOOR)),
    figure_metrics={
        _faith("channel_advantage_acc"): Axis("channel ablation advantage (pp)", -100.0, 100.0),
        _faith("deletion_advantage_acc"): Axis("deletion advantage (pp)", -100.0, 100.0),
        _faith("insertion_advantage_acc"): Axis("insertion advantage (pp)", -100.0, 100.0),
    },
    footnote=("Mean ± half-width of the 95 % confidence interval over seeds. Areas under accuracy curves (%, "
              "normalised to [0, 1] on x): ablation replaces the k block output channels the gate weights highest "
              "(top first) or k random ones by their mean over the probed images, k from 0 to C; deletion "
              "replaces the input pixels the map ranks highest by the mean colour (insertion restores them into a "
              "blank image), "
              "fraction 0 to 1 (Petsiuk et al. 2018). Advantage: how much more the attention's order matters "
              "than a random one (random − top first; random − CBAM for deletion; CBAM − random for insertion); "
              "above 0: the attention picks what the decision depends on. Floors and ceilings: the ablation "
              "advantage of the same network re-initialised (Adebayo et al. 2018; near 0: a network that knows "
              "nothing depends on no channel more than another); deletion and insertion normalised between the "
              "random maps of the CBAM map's grid (0) and the ceiling map, the mask pooled to that grid (1), n/a "
              "without masks. The random draws' spread, the "
              "probability areas and least-first ablation: summary.csv; definitions: docs/metrics.md."),
    caption="Faithfulness of channel weights and spatial maps by gate",
    figure_level=(0.0, "0: no better than a random order"),
    figure_bounds=((_faith("channel_advantage_acc"), _faith("channel_randomised_advantage_acc"), None),),
    figure_bounds_label="dotted: floor (the same network re-initialised)",
)
#: The metric families of a report, in the order of its tables; the first is the summary table.
FAMILIES: tuple[Family, ...] = (ATTENTION, LOCALISATION, FAITHFULNESS)


def present_families(records, families=FAMILIES) -> tuple[Family, ...]:
    """The first family, and each other one some record has a metric of (a report of a dataset
    without localisation ground truth has no localisation table)."""
    return tuple(f for i, f in enumerate(families)
                 if i == 0 or any(m in r.metrics for r in records for m in f.columns))


def csv_metrics(families=FAMILIES) -> tuple[str, ...]:
    """Every metric of ``summary.csv``, each once, in the families' order."""
    seen: dict[str, None] = {}
    for family in families:
        seen.update(dict.fromkeys(family.csv_metrics))
    return tuple(seen)


@dataclass
class Record:
    """One configuration and seed: its finished chain of runs, and what the report draws of it,
    as logged (nothing here is recomputed from the probe's raw arrays)."""

    config: dict[str, str]  # GROUP_KEYS -> the value as logged
    seed: str
    metrics: dict[str, float]  # the compute-metrics run's metrics
    train_run_id: str = ""
    probe_run_id: str = ""
    metrics_run_id: str = ""
    start_time: int = 0
    histories: dict[str, list[float]] = field(default_factory=dict)  # train metric -> its values per epoch
    grad_flow: tuple[list[str], list[float]] | None = None  # weight tensors, mean |grad| in the last epoch
    channel_weights: np.ndarray | None = None  # (N, C); C = 0 for the baseline without CBAM
    classes: list[str] = field(default_factory=list)
    class_weights: np.ndarray | None = None  # (K, C): each test class's mean channel weights
    class_gini: dict[str, float] = field(default_factory=dict)  # class -> Gini of its mean weights
    grid_maps: np.ndarray | None = None  # (k, H, W): the spatial maps of the grid's images
    grid_images: np.ndarray | None = None  # (k, 3, h, w) uint8
    grid_indices: list[int] = field(default_factory=list)  # their test-set indices
    grid_cams: np.ndarray | None = None  # (k, h, w): their CAMs of the true class
    grid_masks: np.ndarray | None = None  # (k, h, w) bool at the images' native size: their ground-truth masks
    grid_boxes: np.ndarray | None = None  # (k, 4) half-open x0, y0, x1, y1 on those images
    faithfulness_curves: object = None  # the probe's tables/faithfulness_curves.csv as a DataFrame, or None

    @property
    def activation(self) -> str:
        return self.config["activation"]

    @property
    def position(self) -> str:
        return self.config["position"]

    @property
    def has_attention(self) -> bool:
        return self.channel_weights is not None and self.channel_weights.shape[1] > 0

    @property
    def is_baseline(self) -> bool:
        return self.position == NO_CBAM

    def key(self, without: tuple[str, ...] = ()) -> tuple[str, ...]:
        return tuple(self.config.get(k, "") for k in GROUP_KEYS if k not in without)
