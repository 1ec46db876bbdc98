"""docs/results.md against what it was made from: every number of its tables recomputed with
scipy from the per-seed values of the sweep (docs/results/runs.csv, the report's runs.csv), and
the commands it documents parsed by the CLI they name."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.report.schema import FAMILIES, KEY_LABELS

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGE = DOCS / "results.md"
RUNS = DOCS / "results" / "runs.csv"
LABEL_KEYS = {label: key for key, label in KEY_LABELS.items()}


def tables(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Each Markdown table of ``text`` under its nearest ``##`` heading: (header, rows of cells)."""
    found, heading, lines = {}, "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[:\- |]+\|$", lines[i + 1]):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            found[heading] = (header, rows)
            continue
        i += 1
    return found


def expected_cell(values: np.ndarray, scale: float, decimals: int) -> str:
    """Mean ± half-width of the Student-t 95 % interval (scipy), as the report formats it."""
    values = values[np.isfinite(values)]
    if not values.size:
        return "n/a"
    mean = values.mean()
    if values.size < 2:
        return f"{mean * scale:.{decimals}f}"
    sem = stats.sem(values)
    if sem == 0:  # every seed the same: the interval t · s / √n is 0 wide (scipy returns NaN bounds)
        return f"{mean * scale:.{decimals}f} ± {0.0:.{decimals}f}"
    low, high = stats.t.interval(0.95, values.size - 1, loc=mean, scale=sem)
    return f"{mean * scale:.{decimals}f} ± {(high - mean) * scale:.{decimals}f}"


def check_tables(text: str, runs: pd.DataFrame) -> int:
    """Every cell of the page's family tables (Summary, Localisation, Faithfulness) recomputed
    from ``runs``; returns how many cells were checked."""
    found, checked = tables(text), 0
    runs = runs.astype({"gate_norm": str, "activation": str, "seed": str})
    for family in FAMILIES:
        if family.title not in found:
            continue
        header, rows = found[family.title]
        by_header = {c.header: (key, c) for key, c in family.columns.items()}
        gate = header.index("gate")
        keys = [LABEL_KEYS[h] for h in header[:gate]]  # the configuration keys that vary
        for row in rows:
            name = row[gate].split(" · ")
            match = runs["activation"] == name[0]
            if len(name) > 1:
                match &= runs["gate_norm"] == name[1]
            for k, value in zip(keys, row[:gate]):
                match &= runs[k].astype(str) == value
            members = runs[match]
            assert len(members) == int(row[gate + 1]), f"{family.title}: {row[:gate + 1]} has {len(members)} runs"
            for h, cell in zip(header[gate + 2:], row[gate + 2:]):
                key, column = by_header[h]
                assert cell == expected_cell(members[key].to_numpy(dtype=float), column.scale, column.decimals), \
                    f"{family.title} / {row[gate]} / {h}"
                checked += 1
    return checked


def test_the_checker_recomputes_a_table_it_is_given():
    runs = pd.DataFrame({"activation": ["sigmoid"] * 3 + ["softmax"] * 2, "gate_norm": ["none"] * 3 + ["mean_one"] * 2,
                         "seed": [0, 1, 2, 0, 1], "test_acc": [90.0, 91.0, 92.5, 88.0, np.nan],
                         "gini": [0.3, 0.31, 0.35, 0.5, 0.52], "sparsity": [0.0] * 5})
    def half(values):  # closed form: t(0.975, n - 1) s / sqrt(n)
        return stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))

    page = ("## Summary\n\n| gate | seeds | test acc. (%) | Gini | sparsity (%) |\n|:--|--:|--:|--:|--:|\n"
            f"| sigmoid | 3 | 91.2 ± {half([90.0, 91.0, 92.5]):.1f} | 0.320 ± {half([0.3, 0.31, 0.35]):.3f} | 0.0 ± 0.0 |\n"
            "| softmax · mean_one | 2 | 88.0 | 0.510 ± 0.127 | 0.0 ± 0.0 |\n")
    assert check_tables(page, runs) == 6
    with pytest.raises(AssertionError, match="Summary / sigmoid / test acc"):
        check_tables(page.replace("91.2 ±", "91.3 ±"), runs)


def page_text() -> str:
    return PAGE.read_text()


@pytest.mark.skipif(not PAGE.exists(), reason="docs/results.md not written yet")
def test_every_number_of_the_results_tables_is_the_sweeps():
    assert check_tables(page_text(), pd.read_csv(RUNS)) >= 7 * 20  # seven configurations, three families


@pytest.mark.skipif(not PAGE.exists(), reason="docs/results.md not written yet")
def test_the_documented_commands_parse():
    from pipeline.cli import cli

    text = page_text()
    single = [line for line in text.splitlines() if line.startswith("python -m pipeline main")]
    sweep = [line for line in text.splitlines() if line.startswith("python -m pipeline sweep")]
    assert len(single) == 1 and len(sweep) == 1
    for line in (*single, *sweep):
        args = shlex.split(line)[3:]
        ctx = cli.make_context("pipeline", list(args), resilient_parsing=False)
        sub = cli.get_command(ctx, args[0])
        sub.make_context(args[0], args[1:])  # every option exists and parses
    assert "--seed 0" in single[0] and "--activation sigmoid" in single[0]
    for figure in re.findall(r"\]\((figures/results/[^)]+\.png)\)", text):
        assert (DOCS / figure).is_file(), figure
