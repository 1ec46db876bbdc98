"""The report's tables as text: Markdown, LaTeX (booktabs) and CSV, from the statistics of
``pipeline.report.stats``. Pure: DataFrames in, strings out; nothing here computes a
statistic (the Student-t multiplier quoted in a caution aside)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.contracts import NO_CBAM, NO_CBAM_LABEL, NO_GATE
from pipeline.metrics import stats_t
from pipeline.report.schema import BLOCK_KEYS, CONSTANT_TEXT, DESIGN_DEFAULTS, GROUP_KEYS, KEY_LABELS, Family, gate_label
from pipeline.report.stats import varying_keys


def csv_text(table: pd.DataFrame) -> str:
    """A table as ``summary.csv`` / ``comparison.csv`` hold it: every number at full precision."""
    return table.to_csv(index=False)


def _value(key: str, value: str) -> str:
    return "all" if key == "num_images" and str(value) == "-1" else str(value)


def constants_text(table: pd.DataFrame) -> str:
    """The configuration values every row shares, as a phrase: "digits, 64 px, 2 epochs, ..."."""
    vary = varying_keys(table)
    with_block = table[table["position"].astype(str) != NO_CBAM]
    parts = []
    for k in GROUP_KEYS:
        rows = with_block if k in BLOCK_KEYS and len(with_block) else table
        value = str(rows[k].iloc[0])
        if k == "activation" or k in vary or value in ("", DESIGN_DEFAULTS.get(k)):  # the notebook's design: unsaid
            continue
        text = CONSTANT_TEXT.get(k, f"{KEY_LABELS[k]} {{}}").format(_value(k, value))
        parts.append("1 epoch" if text == "1 epochs" else text)
    return ", ".join(parts)


def format_cell(row, col: str, family: Family) -> str:
    """``mean ± half-width`` in the column's scale and decimals; the mean alone for one seed."""
    column = family.columns[col]
    scale, decimals = column.scale, column.decimals
    mean = row[col]
    if not np.isfinite(mean):
        return "n/a"
    half = row[f"{col}_ci95_high"] - mean
    if not np.isfinite(half):
        return f"{mean * scale:.{decimals}f}"
    return f"{mean * scale:.{decimals}f} ± {half * scale:.{decimals}f}"


def _table_cells(table: pd.DataFrame, family: Family) -> tuple[list[str], list[list[str]], int]:
    vary = varying_keys(table)
    header = [KEY_LABELS[k] for k in vary] + ["gate", "seeds"] + [c.header for c in family.columns.values()]
    rows = [[_value(k, row[k]) for k in vary] + [gate_label(row["activation"]), str(row["seeds"])]
            + [format_cell(row, c, family) for c in family.columns] for _, row in table.iterrows()]
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
    baseline = table["activation"] == NO_GATE
    if not baseline.any():
        return ""
    backbones = table.loc[baseline, "backbone"] if "backbone" in table else pd.Series(["resnet18"])
    names = ", ".join(dict.fromkeys(str(b or "resnet18").replace("resnet", "ResNet") for b in backbones))
    net = names if "," not in names else f"backbone ({names}, each its own row)"
    return (f" {NO_CBAM_LABEL}: the same {net} without an attention block (position none), the baseline; "
            "it has no attention weights to measure (n/a).")


def chance_text(table: pd.DataFrame, family: Family) -> str:
    """The family's reference levels as sentences: its ``chance`` maps, then the floor and
    ceiling of its ``bounds`` (each metric's mean over the table's rows, or its range where rows
    differ: another image size, another dataset)."""
    chance = levels_text(table, family, family.chance)
    bounds = levels_text(table, family, family.bounds)
    if bounds and "randomised_test_acc" in family.csv_metrics and "randomised_test_acc" in table:
        accuracy = table["randomised_test_acc"].to_numpy(dtype=float)
        accuracy = accuracy[np.isfinite(accuracy)]
        if accuracy.size:
            low, high = f"{accuracy.min():.1f}", f"{accuracy.max():.1f}"
            bounds += f" (the re-initialised network's test accuracy {low if low == high else f'{low}–{high}'} %)"
    return ((f" Chance on the same images: {chance}." if chance else "")
            + (f" Floor and ceiling of the CBAM map's grid on the same images: {bounds}; normalised: (map − floor) / "
               "(ceiling − floor) on the map's own grid, 0 at the floor, 1 at the ceiling, n/a where the ceiling does "
               "not exceed the floor."
               if bounds else ""))


def levels_text(table: pd.DataFrame, family: Family, maps) -> str:
    """``label: metric value, ...`` for each (label, metric prefix) of ``maps`` the table has."""
    parts = []
    for label, prefix in maps:
        values = []
        for suffix, name, scale, decimals in family.chance_metrics:
            column = f"{prefix}{suffix}"
            v = table[column].to_numpy(dtype=float) * scale if column in table else np.array([])
            v = v[np.isfinite(v)]
            if not v.size:
                continue
            low, high = f"{v.min():.{decimals}f}", f"{v.max():.{decimals}f}"
            values.append(f"{name} {low}" if low == high else f"{name} {low}–{high}")
        if values:
            parts.append(f"{label}: {', '.join(values)}")
    return "; ".join(parts)


def to_markdown(table: pd.DataFrame, title: str, family: Family, first: bool = True) -> str:
    """A family's table; the first family's opens the document (``# Summary: <title>``, the
    number of configurations and what is constant across them), a later one is a section."""
    header, rows, text_columns = _table_cells(table, family)
    few = sorted({int(n) for n in table["seeds"] if 2 <= n < 4})
    caution = "".join(f" With {n} seeds the interval is mean ± {stats_t(n):.1f} · s/√{n}: wide; run more seeds "
                      "for a claim." for n in few)
    if first:
        constant = constants_text(table)
        lines = [f"# {family.title}: {title}", "",
                 f"{len(table)} configurations. Constant across this report: {constant or 'nothing'}.", ""]
    else:
        lines = ["", f"## {family.title}", ""]
    lines += [*markdown_table(header, rows, text_columns), "",
              family.footnote + chance_text(table, family) + caution + baseline_note(table)]
    return "\n".join(lines) + "\n"


def tex(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def _tabular(caption: str, header: list[str], body: list[str], text_columns: int) -> list[str]:
    return [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}",
            r"\begin{tabular}{" + "l" * text_columns + "r" * (len(header) - text_columns) + "}", r"\toprule",
            " & ".join(tex(h) for h in header) + r" \\", r"\midrule", *body,
            r"\bottomrule", r"\end{tabular}", r"\end{table}"]


def to_latex(table: pd.DataFrame, family: Family, source: str = "") -> str:
    header, rows, text_columns = _table_cells(table, family)
    caption = (f"{family.caption} ({constants_text(table)}). Mean ± half-width of the 95 % "
               "confidence interval over seeds (Student t)." + chance_text(table, family) + baseline_note(table))
    lines = ([f"% {source}"] if source else []) + _tabular(
        tex(caption), header, [" & ".join(tex(c) for c in r) + r" \\" for r in rows], text_columns)
    return "\n".join(lines) + "\n"


def significance(p: float) -> str:
    if not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def _comparison_cells(table: pd.DataFrame, comparisons: pd.DataFrame, reference: str, family: Family):
    vary = varying_keys(table)
    header = [KEY_LABELS[k] for k in vary] + ["gate", "pairs"] + [f"Δ {c.header}" for c in family.columns.values()]
    rows = []
    for _, first in comparisons.drop_duplicates([*vary, "gate"]).iterrows():
        mine = comparisons[(comparisons["gate"] == first["gate"])
                           & np.logical_and.reduce([comparisons[k] == first[k] for k in vary] or [True])]
        cells = [_value(k, first[k]) for k in vary] + [first["gate"], str(int(first["pairs"]))]
        for metric, column in family.columns.items():
            row = mine[mine["metric"] == metric].iloc[0]
            if not np.isfinite(row["mean_diff"]):
                cells.append("n/a")
                continue
            text = f"{row['mean_diff'] * column.scale:+.{column.decimals}f}"
            if np.isfinite(row["ci95_high"]):
                text += f" ± {(row['ci95_high'] - row['mean_diff']) * column.scale:.{column.decimals}f}"
            cells.append(text + significance(row["p_ttest_holm"]))
        rows.append(cells)
    note = (f"Gate minus {reference}, paired over the seeds both have (pairs): mean difference ± half-width of its "
            "95 % CI (Student t; percent columns in percentage points). Marks: paired t-test, Holm-corrected "
            "across the gates of the table: * p < 0.05, ** p < 0.01, *** p < 0.001; no mark: not significant or "
            "fewer than two pairs (one pair: no interval). Wilcoxon signed-rank p-values (from 6 pairs) and every "
            "number: comparison.csv.")
    return header, rows, len(vary) + 1, note


def _heading(reference: str, family: Family, first: bool) -> str:
    return f"## Against {reference}" if first else f"## {family.title} against {reference}"


def comparison_markdown(table: pd.DataFrame, comparisons: pd.DataFrame, reference: str, family: Family,
                        first: bool = True) -> str:
    """The paired differences against the reference, one row per gate (and varying key)."""
    comparisons = comparisons[comparisons["metric"].isin(list(family.columns))] if not comparisons.empty else comparisons
    if comparisons.empty:
        return ""
    header, rows, text_columns, note = _comparison_cells(table, comparisons, reference, family)
    return "\n".join(["", _heading(reference, family, first), "", *markdown_table(header, rows, text_columns), "",
                      note]) + "\n"


def comparison_latex(table: pd.DataFrame, comparisons: pd.DataFrame, reference: str, family: Family) -> str:
    comparisons = comparisons[comparisons["metric"].isin(list(family.columns))] if not comparisons.empty else comparisons
    if comparisons.empty:
        return ""
    header, rows, text_columns, note = _comparison_cells(table, comparisons, reference, family)
    caption = tex(note.split(" Marks:")[0]) + (
        r" Marks: paired $t$-test, Holm-corrected across the gates of the table: $^{*}\,p<0.05$, "
        r"$^{**}\,p<0.01$, $^{***}\,p<0.001$. Wilcoxon signed-rank $p$-values and every number: comparison.csv.")
    body = [" & ".join(tex(c).replace("*", r"$^{*}$") for c in r).replace(r"$^{*}$$^{*}$$^{*}$", r"$^{***}$")
            .replace(r"$^{*}$$^{*}$", r"$^{**}$") + r" \\" for r in rows]
    return "\n" + "\n".join(_tabular(caption, header, body, text_columns)) + "\n"


def class_gini_markdown(per_class: pd.DataFrame) -> str:
    """Per-class Gini (of each class's mean channel-weight vector), mean over seeds, a row per
    gate (and figure group when there are several)."""
    classes = [c for c in per_class.columns if c not in ("group", "gate", "seed")]
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


def failures_markdown(failed: list[tuple[str, str, str]], total: int) -> str:
    """The configurations a sweep could not finish: (label, main run id, error) each."""
    lines = [f"\n## Failed configurations ({len(failed)} of {total}, not in the tables above)\n",
             "| configuration | main run | error |", "|---|---|---|"]
    lines += [f"| {label} | {run_id or '-'} | {error.replace('|', '/')} |" for label, run_id, error in failed]
    return "\n".join(lines) + "\n"
