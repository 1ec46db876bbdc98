"""The report layer: finished runs in, tables and figures for a paper out.

gather (the only reader of MLflow here) -> typed ``Record``\\ s ->
``stats`` (pure: summaries, confidence intervals, paired comparisons, Holm;
computed once) -> ``tables`` (Markdown, LaTeX, CSV text) and
``figures`` (records and stats in, ``plots`` calls out);
``write`` writes the files. What a table shows is declared once per metric
family (``pipeline.report.schema.FAMILIES``). Importing this package imports nothing else.
"""
