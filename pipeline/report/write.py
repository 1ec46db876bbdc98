"""Writes a report: gather the runs, compute the statistics once, then the tables and figures
into a folder. The one function of the report layer that writes files."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.report import figures, stats, tables
from pipeline.report.plots import EPOCH_PANELS
from pipeline.report.gather import gather
from pipeline.report.schema import FAMILIES, Record, present_families

log = logging.getLogger("pipeline")


def write_records(records: list[Record], out: str | Path, title: str = "report", reference: str = "sigmoid",
                  families=FAMILIES, failed: list[tuple[str, str, str]] = (), configurations: int = 0) -> dict[str, Any]:
    """The tables and figures of these records into ``out``; every gate is compared with
    ``reference``. ``failed``: a sweep's configurations that did not finish, (label, main run id,
    error) each, listed below the tables (of ``configurations`` in all)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    families = present_families(records, families)
    table = stats.summary_table(records, families)
    comparisons = stats.paired_comparisons(records, reference, families)
    groups = [stats.group_stats(name, members, EPOCH_PANELS, families)
              for name, members in stats.figure_groups(records).items()]
    per_class = stats.class_gini_table(groups)

    (out / "summary.csv").write_text(tables.csv_text(table))
    (out / "comparison.csv").write_text(tables.csv_text(comparisons))
    (out / "runs.csv").write_text(tables.csv_text(stats.runs_table(records, families)))
    markdown = "".join(tables.to_markdown(table, title, f, first=i == 0) for i, f in enumerate(families))
    markdown += "".join(tables.comparison_markdown(table, comparisons, reference, f, first=i == 0)
                        for i, f in enumerate(families))
    latex = "".join(tables.to_latex(table, f, f"source: {title}" if i == 0 else "") for i, f in enumerate(families))
    latex += "".join(tables.comparison_latex(table, comparisons, reference, f) for f in families)
    if not per_class.empty:
        (out / "class_gini.csv").write_text(tables.csv_text(per_class))
        markdown += tables.class_gini_markdown(per_class)
    if failed:  # the tables cover the finished configurations only: say which are missing
        markdown += tables.failures_markdown(list(failed), configurations or len(records) + len(failed))
    (out / "summary.md").write_text(markdown)
    (out / "summary.tex").write_text(latex)
    written = figures.write_figures(groups, out, reference, families)
    vary = stats.varying_keys(table)
    log.info("report: %d runs, %d rows%s, %d figure files in %s", len(records), len(table),
             f" (apart by {', '.join(vary)})" if vary else "", len(written), out)
    return {"table": table, "comparisons": comparisons, "figures": written, "records": records}


def write_report(metrics_run_ids: list[str], out: str | Path, title: str = "report",
                 reference: str = "sigmoid", failed: list[tuple[str, str, str]] = (),
                 configurations: int = 0) -> dict[str, Any]:
    """Write the tables and figures of these compute-metrics runs into ``out`` (``failed``,
    ``configurations``: see ``write_records``)."""
    records = gather(metrics_run_ids)
    if not records:
        raise PipelineError("no finished compute-metrics runs to report on")
    return write_records(records, out, title, reference, failed=failed, configurations=configurations)
