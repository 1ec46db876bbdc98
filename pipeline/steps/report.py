"""The ``report`` step: tables and figures for a paper, from finished runs.

Sources: an experiment (every FINISHED compute-metrics run in it), a sweep run (its finished
``main`` runs) or a ``main`` run. Writes into a local folder and, as artefacts, into a report
run (or, from ``main`` and ``sweep``, into their own run under ``report/``).

Runs are grouped by everything that defines an experiment (:data:`GROUP_KEYS`): only runs
that differ by nothing but their seed are pooled, and a seed counted once (the newest run of
a configuration and seed stands for it). Written:

- ``summary.md`` and ``summary.tex`` (booktabs): the compact table (gate, seeds, test
  accuracy, gini, entropy, sparsity, focus, focus area), mean ± the half-width of the 95 %
  confidence interval over seeds (Student t); the parameters that do not vary across the
  report are stated once above the table, the ones that vary are columns;
- ``summary.csv``: every group and metric: n seeds, mean, sample std (ddof = 1), CI bounds;
- per figure group (everything but the gate): ``weights_<group>`` (distributions of the
  channel weights), ``metrics_<group>`` (each metric per gate, seeds and CI), ``curves_<group>``,
  ``gradient_flow_<group>``, ``gate_parameters_<group>`` (only where a gate learns a
  parameter), ``spatial_maps_<group>``; each as PDF (vector) and PNG.
"""
from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pipeline import plots
from pipeline.config import ReportConfig
from pipeline.contracts import (
    ATTENTION_META,
    CHANNEL_WEIGHTS,
    COMPUTE_METRICS,
    GATE_NAMES,
    GATE_NORMS,
    GRAD_FLOW,
    LABELS,
    MAIN,
    NO_CBAM,
    NO_CBAM_LABEL,
    NO_GATE,
    POSITIONS,
    PROBE_ATTENTION,
    REPORT,
    REPORT_DIR,
    SPATIAL_MAPS,
    STEP_TAG,
    SWEEP,
    TRAIN,
    UPSTREAM_TAGS,
)
from pipeline.data import load_dataset
from pipeline.errors import PipelineError, one_line
from pipeline.metrics import ci95, class_means, gini, stats_t
from pipeline.tracking import download_artifact, report_folder, step_run

log = logging.getLogger("pipeline")

#: What defines an experiment: runs that differ in any of these are never pooled (the seed is
#: what pools). ``gate_norm`` counts where train runs log it.
GROUP_KEYS = ("dataset", "image_size", "epochs", "weights", "lr", "batch_size", "val_fraction", "num_images",
              "gate_norm", "position", "activation")
KEY_LABELS = {"dataset": "dataset", "image_size": "image size (px)", "epochs": "epochs", "weights": "weights",
              "lr": "lr", "batch_size": "batch size", "val_fraction": "val. fraction", "num_images": "probed images",
              "gate_norm": "gate norm.", "position": "position", "activation": "gate"}
#: The compact table: metric -> (header, scale, decimals); one decimal convention per column.
MAIN_COLUMNS = {
    "test_acc": ("test acc. (%)", 1.0, 1),
    "gini": ("Gini", 1.0, 3),
    "entropy": ("entropy", 1.0, 3),
    "sparsity": ("sparsity (%)", 100.0, 1),
    "near_zero_pct": ("near 0 (%)", 1.0, 1),
    "focus_pct": ("focus (%)", 1.0, 1),
    "focus_area_ratio": ("focus area (%)", 100.0, 1),
}
#: Every metric of the CSV (mean, std, CI bounds, n each).
CSV_METRICS = ("test_acc", "test_top5", "test_map", "gini", "entropy", "sparsity", "focus_pct", "focus_area_ratio",
               "avg_score", "near_zero_pct", "negative_pct")
GRID_IMAGES = 6
FOOTNOTE = ("Mean ± half-width of the 95 % confidence interval over seeds (Student t); one seed: the mean alone. "
            "Gini and entropy (/ log C) of the channel weights' magnitudes; sparsity: channel weights exactly 0 "
            "(for bounded gates: float underflow); near 0: below 10^-3 of the image's largest weight; "
            "focus: channels above the image's mean weight; focus area: spatial-map pixels above half the map's "
            "maximum. Every metric with its std and CI bounds: summary.csv.")


@dataclass
class Result:
    """One configuration and seed: its finished chain of runs."""

    config: dict[str, str]  # GROUP_KEYS -> the value logged
    seed: str
    metrics: dict[str, float]
    train_run_id: str
    probe_run_id: str
    metrics_run_id: str
    start_time: int = 0

    @property
    def activation(self) -> str:
        return self.config["activation"]

    @property
    def position(self) -> str:
        return self.config["position"]

    def key(self, without: tuple[str, ...] = ()) -> tuple[str, ...]:
        return tuple(self.config.get(k, "") for k in GROUP_KEYS if k not in without)


def gather(metrics_run_ids: list[str]) -> list[Result]:
    """The finished compute-metrics runs among these ids, each with the configuration of its
    train and probe runs; one result per configuration and seed (the newest run)."""
    client = mlflow.MlflowClient()
    results = []
    for run_id in metrics_run_ids:
        run = client.get_run(run_id)
        if run.data.tags.get(STEP_TAG) != COMPUTE_METRICS or run.info.status != "FINISHED":
            continue
        p = run.data.params
        train_id, probe_id = run.data.tags[UPSTREAM_TAGS[TRAIN]], run.data.tags[UPSTREAM_TAGS[PROBE_ATTENTION]]
        train = client.get_run(train_id).data.params
        probe = client.get_run(probe_id).data.params
        config = {k: train.get(k, p.get(k, "")) for k in GROUP_KEYS}
        config.update(activation=p["activation"], position=p["position"], num_images=probe.get("num_images", ""))
        results.append(Result(config, p.get("seed", train.get("seed", "")), dict(run.data.metrics), train_id, probe_id,
                              run_id, run.info.start_time or 0))
    return distinct_seeds(results)


def distinct_seeds(results: list[Result]) -> list[Result]:
    """One result per configuration and seed, the newest: a rerun of a seed is the same
    sample measured again, and counting it twice would shrink the confidence interval."""
    newest: dict[tuple, Result] = {}
    for r in results:
        k = (r.key(), r.seed)
        if k not in newest or r.start_time > newest[k].start_time:
            newest[k] = r
    if len(newest) < len(results):
        log.warning("report: %d run(s) repeat a configuration and seed already in the report; each seed counts "
                    "once (its newest run)", len(results) - len(newest))
    return list(newest.values())


def counted(n: int, noun: str) -> str:
    """``1 run``, ``3 runs``: a count for a figure's title."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _sortable(key: str, value: str):
    if key == "position" and value in POSITIONS:
        return (0, list(POSITIONS).index(value), "")
    if key == "activation" and value in GATE_NAMES:
        return (0, GATE_NAMES.index(value), "")
    if key == "activation" and value == NO_GATE:  # the baseline first
        return (0, -1, "")
    if key == "gate_norm" and value in GATE_NORMS:
        return (0, GATE_NORMS.index(value), "")
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _order(results: list[Result]) -> list[Result]:
    return sorted(results, key=lambda r: (*(_sortable(k, r.config.get(k, "")) for k in GROUP_KEYS),
                                          _sortable("seed", r.seed)))


def summary_table(results: list[Result]) -> pd.DataFrame:
    """One row per configuration (every :data:`GROUP_KEYS` value): ``seeds`` (distinct seeds),
    and per metric ``<m>`` (mean), ``<m>_std``, ``<m>_ci95_low``, ``<m>_ci95_high``, ``<m>_n``."""
    groups: dict[tuple, list[Result]] = {}
    for r in _order(results):
        groups.setdefault(r.key(), []).append(r)
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = dict(zip(GROUP_KEYS, key))
        row["seeds"] = len({m.seed for m in members})
        row["seed_list"] = " ".join(m.seed for m in members)
        for col in CSV_METRICS:
            n, mean, std, low, high = ci95([m.metrics.get(col, np.nan) for m in members])
            row.update({col: mean, f"{col}_std": std, f"{col}_ci95_low": low, f"{col}_ci95_high": high, f"{col}_n": n})
        rows.append(row)
    return pd.DataFrame(rows)


def varying_keys(table: pd.DataFrame) -> list[str]:
    """The configuration keys (gate aside) that differ between rows: the table's columns."""
    return [k for k in GROUP_KEYS if k != "activation" and table[k].astype(str).nunique() > 1]


def _value(key: str, value: str) -> str:
    return "all" if key == "num_images" and str(value) == "-1" else str(value)


CONSTANT_TEXT = {"image_size": "{} px", "epochs": "{} epochs", "num_images": "{} test images probed",
                 "batch_size": "batch size {}", "val_fraction": "val. fraction {}", "gate_norm": "gate norm. {}"}


def constants_text(table: pd.DataFrame) -> str:
    """The configuration values every row shares, as a phrase: "digits, 64 px, 2 epochs, ..."."""
    vary = varying_keys(table)
    parts = []
    for k in GROUP_KEYS:
        value = str(table[k].iloc[0])
        if k == "activation" or k in vary or value == "":
            continue
        text = CONSTANT_TEXT.get(k, f"{KEY_LABELS[k]} {{}}").format(_value(k, value))
        parts.append("1 epoch" if text == "1 epochs" else text)
    return ", ".join(parts)


def format_cell(row, col: str) -> str:
    _, scale, decimals = MAIN_COLUMNS[col]
    mean = row[col]
    if not np.isfinite(mean):
        return "n/a"
    half = row[f"{col}_ci95_high"] - mean
    if not np.isfinite(half):
        return f"{mean * scale:.{decimals}f}"
    return f"{mean * scale:.{decimals}f} ± {half * scale:.{decimals}f}"


def _table_cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]], int]:
    vary = varying_keys(table)
    header = [KEY_LABELS[k] for k in vary] + ["gate", "seeds"] + [h for h, _, _ in MAIN_COLUMNS.values()]
    rows = [[_value(k, row[k]) for k in vary] + [gate_label(row["activation"]), str(row["seeds"])]
            + [format_cell(row, c) for c in MAIN_COLUMNS] for _, row in table.iterrows()]
    return header, rows, len(vary) + 1


def markdown_table(header: list[str], rows: list[list[str]], text_columns: int) -> list[str]:
    """The lines of an aligned Markdown table: the first ``text_columns`` left-aligned, the
    numbers right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i < text_columns else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join(":" + "-" * (w + 1) if i < text_columns else "-" * (w + 1) + ":"
                          for i, w in enumerate(widths)) + "|"
    return [line(header), rule, *(line(r) for r in rows)]


def baseline_note(table: pd.DataFrame) -> str:
    if not (table["activation"] == NO_GATE).any():
        return ""
    return (f" {NO_CBAM_LABEL}: the same ResNet18 without an attention block (position none), the baseline; "
            "it has no attention weights to measure (n/a).")


def to_markdown(table: pd.DataFrame, title: str = "report") -> str:
    header, rows, text_columns = _table_cells(table)
    constant = constants_text(table)
    few = sorted({int(n) for n in table["seeds"] if 2 <= n < 4})
    caution = "".join(f" With {n} seeds the interval is mean ± {stats_t(n):.1f} · s/√{n}: wide; run more seeds "
                      "for a claim." for n in few)
    lines = [f"# Summary: {title}", "", f"{len(table)} configurations. Constant across this report: {constant or 'nothing'}.",
             "", *markdown_table(header, rows, text_columns), "", FOOTNOTE + caution + baseline_note(table)]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def to_latex(table: pd.DataFrame, source: str = "") -> str:
    tex = _tex
    header, rows, text_columns = _table_cells(table)
    caption = (f"Attention metrics by gate ({constants_text(table)}). Mean ± half-width of the 95 % "
               "confidence interval over seeds (Student t)." + baseline_note(table))
    lines = ([f"% {source}"] if source else []) + [
        r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{tex(caption)}}}",
        r"\begin{tabular}{" + "l" * text_columns + "r" * (len(header) - text_columns) + "}", r"\toprule",
        " & ".join(tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (NaN stays NaN and does not count)."""
    finite = [(p, i) for i, p in enumerate(p_values) if np.isfinite(p)]
    m = len(finite)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(finite)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_comparisons(results: list[Result], reference: str) -> pd.DataFrame:
    """Every gate against ``reference`` in each group of runs that differ only by gate and seed,
    paired over the seeds both have: per metric of the compact table, the mean difference
    (gate - reference) with its 95 % t CI, the paired t-test p-value, the Wilcoxon signed-rank
    p-value (n >= 6 pairs), and both t p-values Holm-corrected across the group's gates."""
    from scipy import stats

    groups: dict[tuple, dict[str, dict[str, Result]]] = {}
    for r in _order(results):
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
            for metric in MAIN_COLUMNS:
                a = np.array([runs[s].metrics.get(metric, np.nan) for s in seeds], dtype=np.float64)
                b = np.array([ref[s].metrics.get(metric, np.nan) for s in seeds], dtype=np.float64)
                ok = np.isfinite(a) & np.isfinite(b)
                a, b = a[ok], b[ok]
                d = a - b
                n = int(d.size)
                row: dict[str, Any] = {**dict(zip(keys, key)), "gate": gate, "reference": reference,
                                       "metric": metric, "pairs": n,
                                       "seeds": " ".join(s for s, good in zip(seeds, ok) if good),
                                       "mean_diff": float(d.mean()) if n else math.nan, "diff_std": math.nan,
                                       "ci95_low": math.nan, "ci95_high": math.nan, "p_ttest": math.nan,
                                       "p_wilcoxon": math.nan}
                if n >= 2:
                    sd = float(d.std(ddof=1))
                    half = stats_t(n) * sd / math.sqrt(n)
                    row.update(diff_std=sd, ci95_low=row["mean_diff"] - half, ci95_high=row["mean_diff"] + half)
                    if sd > 0:
                        row["p_ttest"] = float(stats.ttest_rel(a, b).pvalue)
                if n >= 6 and np.any(d != 0):
                    row["p_wilcoxon"] = float(stats.wilcoxon(a, b).pvalue)
                group_rows.append(row)
        for metric in MAIN_COLUMNS:
            these = [r for r in group_rows if r["metric"] == metric]
            for column in ("p_ttest", "p_wilcoxon"):
                for r, adjusted in zip(these, holm([r[column] for r in these])):
                    r[f"{column}_holm"] = adjusted
        rows += group_rows
    return pd.DataFrame(rows)


def significance(p: float) -> str:
    if not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def _comparison_cells(table: pd.DataFrame, comparisons: pd.DataFrame, reference: str):
    vary = varying_keys(table)
    header = [KEY_LABELS[k] for k in vary] + ["gate", "pairs"] + [f"Δ {h}" for h, _, _ in MAIN_COLUMNS.values()]
    rows = []
    for _, first in comparisons.drop_duplicates([*vary, "gate"]).iterrows():
        mine = comparisons[(comparisons["gate"] == first["gate"])
                           & np.logical_and.reduce([comparisons[k] == first[k] for k in vary] or [True])]
        cells = [_value(k, first[k]) for k in vary] + [first["gate"], str(int(first["pairs"]))]
        for metric, (_, scale, decimals) in MAIN_COLUMNS.items():
            row = mine[mine["metric"] == metric].iloc[0]
            if not np.isfinite(row["mean_diff"]):
                cells.append("n/a")
                continue
            text = f"{row['mean_diff'] * scale:+.{decimals}f}"
            if np.isfinite(row["ci95_high"]):
                text += f" ± {(row['ci95_high'] - row['mean_diff']) * scale:.{decimals}f}"
            cells.append(text + significance(row["p_ttest_holm"]))
        rows.append(cells)
    note = (f"Gate minus {reference}, paired over the seeds both have (pairs): mean difference ± half-width of its "
            "95 % CI (Student t; percent columns in percentage points). Marks: paired t-test, Holm-corrected "
            "across the gates of the table: * p < 0.05, ** p < 0.01, *** p < 0.001; no mark: not significant or "
            "fewer than two pairs (one pair: no interval). Wilcoxon signed-rank p-values (from 6 pairs) and every "
            "number: comparison.csv.")
    return header, rows, len(vary) + 1, note


def comparison_markdown(table: pd.DataFrame, comparisons: pd.DataFrame, reference: str) -> str:
    """The paired differences against the reference, one row per gate (and varying key)."""
    if comparisons.empty:
        return ""
    header, rows, text_columns, note = _comparison_cells(table, comparisons, reference)
    return "\n".join(["", f"## Against {reference}", "", *markdown_table(header, rows, text_columns), "", note]) + "\n"


def comparison_latex(table: pd.DataFrame, comparisons: pd.DataFrame, reference: str) -> str:
    if comparisons.empty:
        return ""
    header, rows, text_columns, note = _comparison_cells(table, comparisons, reference)
    caption = _tex(note.split(" Marks:")[0]) + (
        r" Marks: paired $t$-test, Holm-corrected across the gates of the table: $^{*}\,p<0.05$, "
        r"$^{**}\,p<0.01$, $^{***}\,p<0.001$. Wilcoxon signed-rank $p$-values and every number: comparison.csv.")
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}",
             r"\begin{tabular}{" + "l" * text_columns + "r" * (len(header) - text_columns) + "}", r"\toprule",
             " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c).replace("*", r"$^{*}$") for c in r).replace(r"$^{*}$$^{*}$$^{*}$", r"$^{***}$")
              .replace(r"$^{*}$$^{*}$", r"$^{**}$") + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n" + "\n".join(lines) + "\n"


def class_gini_markdown(per_class: pd.DataFrame, classes: list[str]) -> str:
    """Per-class Gini (of each class's mean channel-weight vector), mean over seeds, a row per
    gate (and figure group when there are several)."""
    several = per_class["group"].nunique() > 1
    means = per_class.groupby(["group", "gate"], sort=False)[classes].mean().reset_index()
    header = (["group"] if several else []) + ["gate", *classes]
    rows = [([r["group"]] if several else []) + [r["gate"], *(f"{r[c]:.3f}" if np.isfinite(r[c]) else ""
                                                               for c in classes)]
            for _, r in means.iterrows()]
    lines = ["", "## Per-class Gini", "", *markdown_table(header, rows, len(header) - len(classes)), "",
             "Gini of each test class's mean channel-weight vector (mean over seeds): near the overall Gini when "
             "classes share channels; per seed in class_gini.csv, the class × channel weights in each "
             "compute-metrics run's metrics/class_channel_weights.npy, drawn in class_attention_*."]
    return "\n".join(lines) + "\n"


def _history(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _mean_lists(lists: list[list[float]]) -> list[float]:
    lists = [x for x in lists if x]
    if not lists:
        return []
    n = min(len(x) for x in lists)
    return np.mean([x[:n] for x in lists], axis=0).tolist()


def gate_label(activation: str) -> str:
    """A gate as tables and figures name it (the baseline without CBAM: ``no CBAM``)."""
    return NO_CBAM_LABEL if activation == NO_GATE else activation


def figure_groups(results: list[Result]) -> dict[str, list[Result]]:
    """Results by figure: everything but the gate and the seed the same. Named by the values
    that vary across the report, the position always last (``late``, ``digits_64px_late``).
    The baseline without CBAM joins every group it shares all else with (its curves and
    accuracy beside the gates'); it has a group of its own only where it joins none."""
    table_keys = [k for k in GROUP_KEYS if k not in ("activation", "position")]
    vary = [k for k in table_keys if len({r.config.get(k, "") for r in results}) > 1]
    groups: dict[str, list[Result]] = {}
    for r in _order(results):
        parts = [{"image_size": f"{r.config[k]}px", "epochs": f"{r.config[k]}ep"}.get(
            k, r.config[k] if k in ("dataset", "weights", "gate_norm") else f"{k}{r.config[k]}") for k in vary]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join([*parts, r.position]))
        groups.setdefault(name, []).append(r)

    def rest(r: Result) -> tuple[str, ...]:
        return tuple(r.config.get(k, "") for k in table_keys)

    for name, baseline in [(n, m) for n, m in groups.items() if m[0].position == NO_CBAM]:
        partners = [m for m in groups.values() if m[0].position != NO_CBAM and rest(m[0]) == rest(baseline[0])]
        for members in partners:
            members.extend(baseline)
        if partners:
            del groups[name]
    return groups


def describe(r: Result) -> str:
    c = r.config
    where = "no CBAM" if c["position"] == NO_CBAM else f"CBAM {c['position']}"
    epochs = f"{c['epochs']} epoch" + ("" if str(c["epochs"]) == "1" else "s")
    return f"{where}, {c['dataset']} {c['image_size']} px, {epochs}"


def write_figures(results: list[Result], out: Path, tmp: Path, reference: str = "sigmoid",
                  class_gini: dict | None = None) -> list[str]:
    """The figures of every group into ``out``; ``class_gini`` collects (group, gate, seed) ->
    the Gini of each class's mean weight vector."""
    client = mlflow.MlflowClient()
    written: list[str] = []
    class_gini = {} if class_gini is None else class_gini
    for name, members in figure_groups(results).items():
        by_gate: dict[str, list[Result]] = {}
        for r in members:
            by_gate.setdefault(gate_label(r.activation), []).append(r)
        weights, maps, histories, flows, gate_params, meta, values, attention = {}, {}, {}, {}, {}, {}, {}, {}
        class_weights: dict[str, np.ndarray] = {}
        for gate, runs in by_gate.items():
            arrays = [np.load(download_artifact(r.probe_run_id, CHANNEL_WEIGHTS, tmp / r.probe_run_id)) for r in runs]
            if all(a.shape[1] > 0 for a in arrays):  # the baseline without CBAM has no attention to draw
                weights[gate] = np.concatenate(arrays)
                metas = {r.probe_run_id: json.loads(download_artifact(r.probe_run_id, ATTENTION_META,
                                                                      tmp / r.probe_run_id).read_text()) for r in runs}
                classes = {run_id: [str(c) for c in m["classes"]] for run_id, m in metas.items()}
                per_class = [class_means(a, np.load(download_artifact(r.probe_run_id, LABELS, tmp / r.probe_run_id)),
                                         len(classes[r.probe_run_id]))[0] for a, r in zip(arrays, runs)]
                with warnings.catch_warnings():  # a class no probed image belongs to stays NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    class_weights[gate] = np.nanmean(per_class, axis=0)
                class_gini.update({(name, gate, r.seed): dict(zip(classes[r.probe_run_id], gini(m).tolist()))
                                   for r, m in zip(runs, per_class)})
                first = runs[0]
                maps[gate] = np.load(download_artifact(first.probe_run_id, SPATIAL_MAPS, tmp / first.probe_run_id))
                meta[gate] = metas[first.probe_run_id]
            histories[gate] = {k: _mean_lists([_history(client, r.train_run_id, k) for r in runs])
                               for k in ("train_loss", "val_loss", "train_acc", "val_acc")}
            gp = {k: _mean_lists([_history(client, r.train_run_id, k) for r in runs])
                  for k in ("gate_scale", "gate_temperature", "gate_alpha")}
            gate_params[gate] = {k: v for k, v in gp.items() if v}
            attention[gate] = {m: _mean_lists([_history(client, r.train_run_id, f"attention/{m}") for r in runs])
                               for m in plots.EPOCH_PANELS}
            values[gate] = {m: [r.metrics.get(m, np.nan) for r in runs] for m in plots.METRIC_AXES}
            last_layers, last_values = [], []
            for r in runs:
                try:
                    flow = json.loads(download_artifact(r.train_run_id, GRAD_FLOW, tmp / r.train_run_id).read_text())
                except Exception:  # an older train run without the artefact: leave it out
                    continue
                last_layers, grads = flow["layers"], flow["mean_abs_grad"][-1]
                last_values.append(grads)
            if last_values:
                flows[gate] = (last_layers, np.mean(last_values, axis=0).tolist())
        what = describe(members[0])
        seeds = len({r.seed for r in members})
        with_attention = sum(len(by_gate[g]) for g in weights)
        over_seeds = f"(mean over {seeds} seeds)" if seeds > 1 else "(1 seed)"  # not "mean over" one
        up_to = f"(up to {seeds} seeds)" if seeds > 1 else "(1 seed)"
        figures = {
            f"weights_{name}": plots.plot_weight_distributions(
                weights, f"Channel attention weights, {what} ({counted(with_attention, 'run')})") if weights else None,
            f"metrics_{name}": plots.plot_gate_metrics(values, f"Metrics per gate, {what} {up_to}",
                                                          reference=reference),
            f"curves_{name}": plots.plot_curves(histories, f"Training curves, {what} {over_seeds}"),
            f"attention_epochs_{name}": plots.plot_attention_epochs(
                attention, f"Channel attention on validation images over training, {what} {over_seeds}"),
            f"class_attention_{name}": plots.plot_class_attention(
                class_weights, [str(c) for c in next(iter(meta.values()))["classes"]],
                f"Channel weights per test class, {what} {over_seeds}") if class_weights else None,
            f"gradient_flow_{name}": plots.plot_gradient_flow(flows, f"Gradient flow in the last epoch, {what}"),
            f"gate_parameters_{name}": plots.plot_gate_parameters(gate_params, f"Learnable gate parameters, {what}"),
            f"spatial_maps_{name}": spatial_grid(members[0], maps, meta) if maps else None,
        }
        for stem, fig in figures.items():
            if fig is not None:
                written += plots.save_figure(fig, out / stem)
    return written


def spatial_grid(example: Result, maps: dict[str, np.ndarray], meta: dict[str, dict]):
    """Spatial maps of the first probed test images, the same images for every gate."""
    client = mlflow.MlflowClient()
    params = client.get_run(example.train_run_id).data.params
    try:
        test = load_dataset(params["dataset"], params.get("data_dir", "data")).test
    except PipelineError as exc:
        log.warning("report: no spatial-map grid (%s)", one_line(exc))
        return None
    k = min(GRID_IMAGES, *(m.shape[0] for m in maps.values()))
    indices = [meta[a]["indices"][:k] for a in maps]
    if any(ix != indices[0] for ix in indices):
        log.warning("report: the probes looked at different test images; no spatial-map grid")
        return None
    images = test.images[indices[0]].numpy()
    h, w = next(iter(maps.values())).shape[1:]
    return plots.plot_spatial_grid(images, {a: m[:k] for a, m in maps.items()},
                                   f"Spatial attention ({h}×{w} map, bilinear to the image), {describe(example)}")


def write_report(metrics_run_ids: list[str], out: str | Path, title: str = "report",
                 reference: str = "sigmoid") -> dict[str, Any]:
    """Write the tables and figures of these compute-metrics runs into ``out``; every gate is
    compared with ``reference``."""
    results = gather(metrics_run_ids)
    if not results:
        raise PipelineError("no finished compute-metrics runs to report on")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = summary_table(results)
    table.to_csv(out / "summary.csv", index=False)
    comparisons = paired_comparisons(results, reference)
    comparisons.to_csv(out / "comparison.csv", index=False)
    (out / "summary.md").write_text(to_markdown(table, title) + comparison_markdown(table, comparisons, reference))
    (out / "summary.tex").write_text(to_latex(table, f"source: {title}") + comparison_latex(table, comparisons, reference))
    with tempfile.TemporaryDirectory() as tmp:
        class_gini: dict = {}
        figures = write_figures(results, out, Path(tmp), reference, class_gini)
    if class_gini:
        per_class = pd.DataFrame([{"group": g, "gate": gate, "seed": seed, **values}
                                  for (g, gate, seed), values in class_gini.items()])
        classes = [c for c in per_class.columns if c not in ("group", "gate", "seed")]
        per_class.to_csv(out / "class_gini.csv", index=False)
        with (out / "summary.md").open("a") as md:
            md.write(class_gini_markdown(per_class, classes))
    vary = varying_keys(table)
    log.info("report: %d runs, %d rows%s, %d figure files in %s", len(results), len(table),
             f" (apart by {', '.join(vary)})" if vary else "", len(figures), out)
    return {"table": table, "figures": figures, "results": results}


@dataclass
class Source:
    """What a report covers: its compute-metrics runs, a title, and where its run goes."""

    metrics_run_ids: list[str]
    title: str
    experiment: str  # name
    name: str  # of the report run and its folder


def metrics_runs_of(config: ReportConfig) -> Source:
    client = mlflow.MlflowClient()
    if config.experiment_name:
        exp = client.get_experiment_by_name(config.experiment_name)
        if exp is None:
            raise PipelineError(f"experiment {config.experiment_name!r} does not exist")
        runs = client.search_runs([exp.experiment_id], f"tags.`{STEP_TAG}` = '{COMPUTE_METRICS}' and "
                                  "attributes.status = 'FINISHED'")
        return Source([r.info.run_id for r in runs], f"experiment {config.experiment_name}", exp.name,
                      "report · experiment")
    run_id = config.sweep_run_id or config.main_run_id
    step = SWEEP if config.sweep_run_id else MAIN
    try:
        run = client.get_run(run_id)
    except Exception:
        raise PipelineError(f"run {run_id!r} does not exist in the tracking store {mlflow.get_tracking_uri()!r}") from None
    if run.data.tags.get(STEP_TAG) != step:
        raise PipelineError(f"run {run_id!r} is not a {step} run")
    experiment = client.get_experiment(run.info.experiment_id).name
    name = f"report · {run.info.run_name or run_id}"
    if step == MAIN:
        metrics_id = run.data.tags.get(UPSTREAM_TAGS[COMPUTE_METRICS])
        if not metrics_id or run.info.status != "FINISHED":
            raise PipelineError(f"main run {run_id!r} is {run.info.status} and has no compute-metrics run to "
                                "report on; run it again (python -m pipeline main ...) or report another run")
        return Source([metrics_id], f"main run {run_id}", experiment, name)
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}' and "
                                  "attributes.status = 'FINISHED'")
    key = UPSTREAM_TAGS[COMPUTE_METRICS]
    ids = [c.data.tags[key] for c in children if key in c.data.tags]
    return Source(ids, f"sweep run {run_id}", experiment, name)


def run_report(config: ReportConfig) -> str:
    from pipeline.config import check_writable_folder

    check_writable_folder("out", config.out)
    source = metrics_runs_of(config)
    if not source.metrics_run_ids:
        raise PipelineError(f"{source.title} has no finished compute-metrics runs to report on")
    with step_run(REPORT, config.params(), run_name=source.name, experiment=source.experiment) as run:
        out = report_folder(config.out, source.experiment, source.name)
        write_report(source.metrics_run_ids, out, source.title, config.reference)
        mlflow.log_artifacts(str(out), REPORT_DIR)
        log.info("report written to %s", out)
        return run.info.run_id
