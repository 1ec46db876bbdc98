"""What a report is made of: the record of one configuration and seed, the keys that tell
configurations apart, and the metric families its tables and figures iterate over.

Pure: imports neither MLflow nor torch (the tests of stats and tables run without them).

Adding a metric family: declare a :class:`Family` in :data:`FAMILIES` (its metrics with their
column labels and formats, the metrics of its figure) and make the compute step log those
metrics; the summary table, ``summary.csv``, the paired comparison and the figure then cover it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.contracts import GRID_SIZE, NO_CBAM, gate_label  # noqa: F401 - re-exported

#: What defines an experiment: runs that differ in any of these are never pooled (the seed is
#: what pools). ``gate_norm`` counts where train runs log it.
GROUP_KEYS = ("dataset", "image_size", "epochs", "weights", "lr", "batch_size", "val_fraction", "num_images",
              "gate_norm", "position", "activation")
KEY_LABELS = {"dataset": "dataset", "image_size": "image size (px)", "epochs": "epochs", "weights": "weights",
              "lr": "lr", "batch_size": "batch size", "val_fraction": "val. fraction", "num_images": "probed images",
              "gate_norm": "gate norm.", "position": "position", "activation": "gate"}
#: How a constant key reads above a table ("64 px", "2 epochs"); the others read "<label> <value>".
CONSTANT_TEXT = {"image_size": "{} px", "epochs": "{} epochs", "num_images": "{} test images probed",
                 "batch_size": "batch size {}", "val_fraction": "val. fraction {}", "gate_norm": "gate norm. {}"}
#: The training curves a record carries (per epoch, from the train run), and the gates' learnable values.
CURVES = ("train_loss", "val_loss", "train_acc", "val_acc")
GATE_PARAMETERS = ("gate_scale", "gate_temperature", "gate_alpha")


@dataclass(frozen=True)
class Column:
    """A metric's column: its header and how its values print (``scale`` × value, ``decimals``);
    the statistics are computed on the logged, unscaled values."""

    header: str
    scale: float = 1.0
    decimals: int = 3


@dataclass(frozen=True)
class Family:
    """A family of metrics declared once: its table columns (also the metrics of the paired
    comparison), every metric of ``summary.csv``, the metrics its figure draws (one panel
    each), the text under its table and its table's title."""

    name: str
    title: str
    columns: dict[str, Column]
    csv_metrics: tuple[str, ...]
    figure_metrics: tuple[str, ...]
    footnote: str
    caption: str


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
    figure_metrics=("test_acc", "test_map", "gini", "entropy", "sparsity", "focus_pct", "focus_area_ratio"),
    footnote=("Mean ± half-width of the 95 % confidence interval over seeds (Student t); one seed: the mean alone. "
              "Gini and entropy (/ log C) of the channel weights' magnitudes; sparsity: channel weights exactly 0 "
              "(for bounded gates: float underflow); near 0: below 10^-3 of the image's largest weight; "
              "focus: channels above the image's mean weight; focus area: spatial-map pixels above half the map's "
              "maximum. Every metric with its std and CI bounds: summary.csv."),
    caption="Attention metrics by gate",
)
#: The metric families of a report, in the order of its tables; the first is the summary table.
FAMILIES: tuple[Family, ...] = (ATTENTION,)


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
