"""The statistics of a report, computed once: the summary over seeds (mean, sample std, 95 %
Student-t interval), the paired comparison of every gate with a reference gate (mean paired
difference with its t interval, paired t-test, Wilcoxon signed-rank, Holm's step-down
correction), the figure groups and what each figure draws. Pure: records in, numbers and
DataFrames out; the figures draw what this returns and never compute an interval.
"""
from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contracts import (ATTENTIONS, BACKBONES, EPOCH_ATTENTION_PREFIX, GATE_NAMES, GATE_NORMS, NO_CBAM,
                                NO_GATE, POSITIONS, SPATIAL_GATES)
from pipeline.metrics import ci95, stats_t
from pipeline.report.schema import (BLOCK_KEYS, CURVES, FAMILIES, GATE_PARAMETERS, GROUP_KEYS, Family, Record,
                                   csv_metrics, gate_label)

log = logging.getLogger("pipeline")


def distinct_seeds(records: list[Record]) -> list[Record]:
    """One record per configuration and seed, the newest: a rerun of a seed is the same
    sample measured again, and counting it twice would shrink the confidence interval."""
    newest: dict[tuple, Record] = {}
    for r in records:
        k = (r.key(), r.seed)
        if k not in newest or r.start_time > newest[k].start_time:
            newest[k] = r
    if len(newest) < len(records):
        log.warning("report: %d run(s) repeat a configuration and seed already in the report; each seed counts "
                    "once (its newest run)", len(records) - len(newest))
    return list(newest.values())


def _sortable(key: str, value: str):
    if key == "position" and value in POSITIONS:
        return (0, list(POSITIONS).index(value), "")
    if key == "activation" and value in GATE_NAMES:
        return (0, GATE_NAMES.index(value), "")
    if key == "activation" and value == NO_GATE:  # the baseline first
        return (0, -1, "")
    if key == "gate_norm" and value in GATE_NORMS:
        return (0, GATE_NORMS.index(value), "")
    for name, registry in (("attention", ATTENTIONS), ("spatial_gate", SPATIAL_GATES), ("backbone", tuple(BACKBONES))):
        if key == name and value in registry:  # registry order: the notebook's design first
            return (0, registry.index(value), "")
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def ordered(records: list[Record]) -> list[Record]:
    """By every grouping key (registry order for gates, positions and norms), then seed."""
    return sorted(records, key=lambda r: (*(_sortable(k, r.config.get(k, "")) for k in GROUP_KEYS),
                                          _sortable("seed", r.seed)))


def summary_table(records: list[Record], families: tuple[Family, ...] = FAMILIES) -> pd.DataFrame:
    """The summary over seeds, what ``summary.csv`` holds.

    Args:
        records: one per configuration and seed.
        families: the metric families whose metrics are summarised.

    Returns:
        One row per configuration (every ``GROUP_KEYS`` value): ``seeds`` (distinct seeds),
        ``seed_list``, and per metric ``<m>`` (mean), ``<m>_std``, ``<m>_ci95_low``,
        ``<m>_ci95_high`` (Student t) and ``<m>_n``.
    """
    groups: dict[tuple, list[Record]] = {}
    for r in ordered(records):
        groups.setdefault(r.key(), []).append(r)
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = dict(zip(GROUP_KEYS, key))
        row["seeds"] = len({m.seed for m in members})
        row["seed_list"] = " ".join(m.seed for m in members)
        for col in csv_metrics(families):
            n, mean, std, low, high = ci95([m.metrics.get(col, np.nan) for m in members])
            row.update({col: mean, f"{col}_std": std, f"{col}_ci95_low": low, f"{col}_ci95_high": high, f"{col}_n": n})
        rows.append(row)
    return pd.DataFrame(rows)


def runs_table(records: list[Record], families: tuple[Family, ...] = FAMILIES) -> pd.DataFrame:
    """The per-seed values behind the summary, what ``runs.csv`` holds, for statistics of one's own.

    Args:
        records: one per configuration and seed.
        families: the metric families whose metrics are listed.

    Returns:
        One row per record, in the summary's order: the grouping keys, the seed, its runs' ids
        and every metric of ``summary.csv`` as logged (NaN where not).
    """
    rows = []
    for r in ordered(records):
        row: dict[str, Any] = {**{k: r.config.get(k, "") for k in GROUP_KEYS}, "seed": r.seed,
                               "metrics_run_id": r.metrics_run_id, "probe_run_id": r.probe_run_id,
                               "train_run_id": r.train_run_id}
        row.update({col: r.metrics.get(col, np.nan) for col in csv_metrics(families)})
        rows.append(row)
    return pd.DataFrame(rows)


def varying_keys(table: pd.DataFrame) -> list[str]:
    """The configuration keys (gate aside) that differ between rows: the table's columns; a
    block key (design, spatial gate) counts only over the rows that have a block."""
    with_block = table[table["position"].astype(str) != NO_CBAM] if "position" in table else table
    return [k for k in GROUP_KEYS if k != "activation"
            and (with_block if k in BLOCK_KEYS else table)[k].astype(str).nunique() > 1]


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (Holm 1979) of a family of p-values.

    Args:
        p_values: the family's p-values; NaN stays NaN and does not count.

    Returns:
        The adjusted p-values, in the input's order.
    """
    finite = [(p, i) for i, p in enumerate(p_values) if np.isfinite(p)]
    m = len(finite)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(finite)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_difference(a, b) -> dict[str, Any]:
    """The paired difference ``a - b`` over the pairs where both are finite.

    Args:
        a: one value per seed.
        b: the reference's value for the same seeds.

    Returns:
        ``pairs``, ``mean_diff``, ``diff_std`` and ``ci95_low`` / ``ci95_high`` (Student t; two
        pairs or more), ``p_ttest`` (paired t-test; a non-zero spread) and ``p_wilcoxon``
        (signed-rank; six pairs or more, not all differences zero), NaN where undefined.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    d = a - b
    n = int(d.size)
    row: dict[str, Any] = {"pairs": n, "ok": ok, "mean_diff": float(d.mean()) if n else math.nan,
                           "diff_std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan,
                           "p_ttest": math.nan, "p_wilcoxon": math.nan}
    if n >= 2:
        sd = float(d.std(ddof=1))
        half = stats_t(n) * sd / math.sqrt(n)
        row.update(diff_std=sd, ci95_low=row["mean_diff"] - half, ci95_high=row["mean_diff"] + half)
        if sd > 0:
            row["p_ttest"] = float(stats.ttest_rel(a, b).pvalue)
    if n >= 6 and np.any(d != 0):
        row["p_wilcoxon"] = float(stats.wilcoxon(a, b).pvalue)
    return row


def paired_comparisons(records: list[Record], reference: str,
                       families: tuple[Family, ...] = FAMILIES) -> pd.DataFrame:
    """Every gate against ``reference`` in each group of runs that differ only by gate and seed,
    paired over the seeds both have: per metric of the families' tables, the mean difference
    (gate - reference) with its 95 % t CI, the paired t-test p-value, the Wilcoxon signed-rank
    p-value (n >= 6 pairs), and both p-values Holm-corrected across the group's gates.

    Args:
        records: one per configuration and seed.
        reference: the gate every other gate is compared with.
        families: the families whose table columns are compared.

    Returns:
        One row per group, gate and metric, what ``comparison.csv`` holds.
    """
    metrics = [m for family in families for m in family.columns]
    groups: dict[tuple, dict[str, dict[str, Record]]] = {}
    for r in ordered(records):
        groups.setdefault(r.key(without=("activation",)), {}).setdefault(r.activation, {})[r.seed] = r
    keys = [k for k in GROUP_KEYS if k != "activation"]
    rows: list[dict[str, Any]] = []
    for key, gates in groups.items():
        if reference not in gates:
            if len(gates) > 1:
                log.warning("report: no %s runs among %s: no paired comparison there", reference,
                            ", ".join(f"{k}={v}" for k, v in zip(keys, key) if v != ""))
            continue
        ref = gates[reference]
        group_rows = []
        for gate, runs in gates.items():
            if gate == reference:
                continue
            seeds = [s for s in runs if s in ref]
            for metric in metrics:
                diff = paired_difference([runs[s].metrics.get(metric, np.nan) for s in seeds],
                                         [ref[s].metrics.get(metric, np.nan) for s in seeds])
                ok = diff.pop("ok")
                group_rows.append({**dict(zip(keys, key)), "gate": gate, "reference": reference, "metric": metric,
                                   "pairs": diff.pop("pairs"),
                                   "seeds": " ".join(s for s, good in zip(seeds, ok) if good), **diff})
        for metric in metrics:
            these = [r for r in group_rows if r["metric"] == metric]
            for column in ("p_ttest", "p_wilcoxon"):
                for r, adjusted in zip(these, holm([r[column] for r in these])):
                    r[f"{column}_holm"] = adjusted
        rows += group_rows
    return pd.DataFrame(rows)


def figure_groups(records: list[Record]) -> dict[str, list[Record]]:
    """Records by figure: everything but the gate and the seed the same. Named by the values
    that vary across the report, the position always last (``late``, ``digits_64px_late``).
    The baseline without CBAM joins every group it shares all else with (its curves and
    accuracy beside the gates'); it has a group of its own only where it joins none."""
    table_keys = [k for k in GROUP_KEYS if k not in ("activation", "position")]
    vary = [k for k in table_keys if len({r.config.get(k, "") for r in records
                                          if k not in BLOCK_KEYS or not r.is_baseline}) > 1]
    groups: dict[str, list[Record]] = {}
    for r in ordered(records):
        parts = [{"image_size": f"{r.config[k]}px", "epochs": f"{r.config[k]}ep",
                  "spatial_gate": f"spatial-{r.config[k]}"}.get(
            k, r.config[k] if k in ("dataset", "weights", "gate_norm", "backbone", "attention") else f"{k}{r.config[k]}")
            for k in vary]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join([*parts, r.position]))
        groups.setdefault(name, []).append(r)

    def rest(r: Record) -> tuple[str, ...]:  # the block keys aside: the baseline has no block
        return tuple(r.config.get(k, "") for k in table_keys if k not in BLOCK_KEYS)

    for name, baseline in [(n, m) for n, m in groups.items() if m[0].is_baseline]:
        partners = [m for m in groups.values() if not m[0].is_baseline and rest(m[0]) == rest(baseline[0])]
        for members in partners:
            members.extend(baseline)
        if partners:
            del groups[name]
    return groups


def by_gate(members: list[Record]) -> dict[str, list[Record]]:
    """A figure group's records by gate label, in their order."""
    gates: dict[str, list[Record]] = {}
    for r in members:
        gates.setdefault(gate_label(r.activation), []).append(r)
    return gates


def mean_lists(lists: list[list[float]]) -> list[float]:
    """The element-wise mean of the non-empty lists, over their common length."""
    lists = [x for x in lists if x]
    if not lists:
        return []
    n = min(len(x) for x in lists)
    return np.mean([x[:n] for x in lists], axis=0).tolist()


def interval(values) -> tuple[float, float] | None:
    """The 95 % Student-t confidence interval of the mean.

    Args:
        values: one value per seed; NaN and infinities are left out.

    Returns:
        (low, high), or None below two finite values.
    """
    n, _, _, low, high = ci95(values)
    return (low, high) if n >= 2 else None


@dataclass
class GroupStats:
    """What the figures of one group draw, per gate label: the seeds' values and their CIs per
    metric of the families' figures, the mean curves over seeds, the mean last-epoch gradient
    flow, the pooled channel weights and the mean class × channel weights."""

    name: str
    members: list[Record]
    gates: dict[str, list[Record]]
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    intervals: dict[str, dict[str, tuple[float, float] | None]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    gate_parameters: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    attention_epochs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    gradient_flow: dict[str, tuple[list[str], list[float]]] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    class_weights: dict[str, np.ndarray] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)  # figure metric -> its chance level, mean over runs
    #: figure metric -> (floor, ceiling), each the mean over runs (NaN where not measured)
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: curve family (channel, deletion, insertion) -> gate -> ``faithfulness_curves``' arrays
    faithfulness: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)

    @property
    def seeds(self) -> int:
        return len({r.seed for r in self.members})

    @property
    def runs_with_attention(self) -> int:
        return sum(len(self.gates[g]) for g in self.weights)


#: The order of each curve family that follows the attention: channels the gate weights highest
#: first, pixels the CBAM spatial map ranks highest first.
ATTENTION_ORDER = {"channel": "most", "deletion": "cbam", "insertion": "cbam"}


def faithfulness_curves(curves: list, family: str, metric: str = "accuracy") -> dict[str, np.ndarray] | None:
    """One gate's curves of ``family`` over its seeds (each a probe's curve table, see
    ``pipeline.faithfulness.curve_rows``): ``x``, ``attention`` (the attention order's curve,
    mean over seeds), ``random`` (mean over every random draw of every seed) and ``random_std``
    (their standard deviation at each x, ddof 1; 0 for a single draw). None without curves, or
    where the seeds' grids differ."""
    tables = [t[t["family"] == family] for t in curves if t is not None]
    tables = [t for t in tables if len(t)]
    if not tables:
        return None
    xs = [np.sort(t.loc[t["order"] == ATTENTION_ORDER[family], "x"].to_numpy()) for t in tables]
    if any(len(x) != len(xs[0]) or not np.allclose(x, xs[0]) for x in xs):
        return None
    attention = np.mean([t[t["order"] == ATTENTION_ORDER[family]].sort_values("x")[metric].to_numpy()
                         for t in tables], axis=0)
    draws = [d.sort_values("x")[metric].to_numpy() for t in tables
             for _, d in t[t["order"] == "random"].groupby(["draw"])]
    random = np.asarray(draws)
    return {"x": xs[0], "attention": attention, "random": random.mean(axis=0),
            "random_std": random.std(axis=0, ddof=1) if len(draws) > 1 else np.zeros(len(xs[0]))}


def mean_logged(members: list[Record], key: str | None) -> float:
    """The mean of metric ``key`` over the runs that logged a finite value; NaN where none did
    (or ``key`` is None: a level the family does not have)."""
    found = [r.metrics[key] for r in members if key is not None and np.isfinite(r.metrics.get(key, np.nan))]
    return float(np.mean(found)) if found else float("nan")


def group_stats(name: str, members: list[Record], epoch_metrics, families: tuple[Family, ...] = FAMILIES) -> GroupStats:
    """The ``GroupStats`` of a figure group; ``epoch_metrics``: the per-epoch attention
    metrics drawn (``attention/<m>`` of the train runs)."""
    metrics = list(dict.fromkeys(m for family in families for m in family.figure_metrics))
    g = GroupStats(name, members, by_gate(members))
    for family in families:
        for metric, reference in family.figure_chance:
            if np.isfinite(level := mean_logged(members, reference)):
                g.chance[metric] = level
        for metric, floor, ceiling in family.figure_bounds:
            levels = (mean_logged(members, floor), mean_logged(members, ceiling))
            if np.isfinite(levels).any():
                g.bounds[metric] = levels
    for gate, runs in g.gates.items():
        g.values[gate] = {m: [r.metrics.get(m, np.nan) for r in runs] for m in metrics}
        g.intervals[gate] = {m: interval(v) for m, v in g.values[gate].items()}
        g.curves[gate] = {k: mean_lists([r.histories.get(k, []) for r in runs]) for k in CURVES}
        params = {k: mean_lists([r.histories.get(k, []) for r in runs]) for k in GATE_PARAMETERS}
        g.gate_parameters[gate] = {k: v for k, v in params.items() if v}
        g.attention_epochs[gate] = {m: mean_lists([r.histories.get(f"{EPOCH_ATTENTION_PREFIX}{m}", []) for r in runs])
                                    for m in epoch_metrics}
        flows = [r.grad_flow for r in runs if r.grad_flow is not None]
        if flows:
            g.gradient_flow[gate] = (flows[-1][0], np.mean([f[1] for f in flows], axis=0).tolist())
        for family in ATTENTION_ORDER:
            curves = faithfulness_curves([r.faithfulness_curves for r in runs], family)
            if curves is not None:
                g.faithfulness.setdefault(family, {})[gate] = curves
        if all(r.has_attention for r in runs):  # the baseline without CBAM has no attention to draw
            g.weights[gate] = np.concatenate([r.channel_weights for r in runs])
            with warnings.catch_warnings():  # a class no probed image belongs to stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                g.class_weights[gate] = np.nanmean([r.class_weights for r in runs], axis=0)
    return g


def class_gini_table(groups: list[GroupStats]) -> pd.DataFrame:
    """One row per (figure group, gate, seed) with attention: the Gini of each test class's
    mean channel-weight vector, as compute-metrics logged it (columns: group, gate, seed, the
    classes)."""
    rows = [{"group": g.name, "gate": gate, "seed": r.seed, **r.class_gini}
            for g in groups for gate in g.weights for r in g.gates[gate]]
    return pd.DataFrame(rows)
