"""The report layer: finished runs in, tables and figures for a paper out.

gather (the only reader of MLflow here) -> typed :class:`~pipeline.report.schema.Record`\\ s ->
:mod:`~pipeline.report.stats` (pure: summaries, confidence intervals, paired comparisons, Holm;
computed once) -> :mod:`~pipeline.report.tables` (Markdown, LaTeX, CSV text) and
:mod:`~pipeline.report.figures` (records and stats in, :mod:`~pipeline.report.plots` calls out);
:mod:`~pipeline.report.write` writes the files. What a table shows is declared once per metric
family (:data:`pipeline.report.schema.FAMILIES`). Importing this package imports nothing else.
"""
