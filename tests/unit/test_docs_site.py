"""The documentation site builds offline with ``mkdocs build --strict`` (a broken link, a page
missing from the navigation or a docstring mkdocstrings cannot render fails it), and its
metric pages name every metric the report logs."""
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline.report.schema import ATTENTION, FAITHFULNESS, LOCALISATION_METRICS

ROOT = Path(__file__).resolve().parents[2]


def test_the_site_builds_strictly_with_every_page_and_the_api_reference(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"
    for page in ("getting-started", "concepts", "how-to-sweep", "metrics-shape", "metrics-localisation",
                 "metrics-faithfulness", "metrics-statistics", "results", "performance", "api/metrics", "api/config"):
        assert (site / page / "index.html").is_file(), page
    api = (site / "api" / "metrics" / "index.html").read_text()
    assert "pipeline.metrics.gini" in api and "Hurley" in (site / "metrics-shape" / "index.html").read_text()
    localisation = (site / "metrics-localisation" / "index.html").read_text()
    # formulas typeset as MathML at build time (docs_hooks/mathml.py): no TeX left for a script
    assert localisation.count("<math") >= 5 and 'class="arithmatex"' not in localisation and "\\frac" not in localisation


def test_every_reported_metric_is_defined_on_its_family_page():
    docs = ROOT / "docs"
    shape = (docs / "metrics-shape.md").read_text()
    for metric in ATTENTION.csv_metrics:
        if not metric.startswith("test_"):
            assert f"`{metric}`" in shape, metric
    localisation = (docs / "metrics-localisation.md").read_text()
    for metric in LOCALISATION_METRICS:
        assert f"`{metric}" in localisation or metric.startswith("boxacc_iou"), metric
    assert "normalised" in localisation and "randomised_test_acc" in localisation
    faithfulness = (docs / "metrics-faithfulness.md").read_text()
    for name in ("channel_randomised_advantage", "insertion}_normalised_{acc,prob}", "ceiling_*_area", "advantage"):
        assert name in faithfulness, name
    # every column of the report's faithfulness table is named on the page (brace patterns expanded)
    named = set()
    for pattern in re.findall(r"`(faith/[^`]+)`", faithfulness):
        parts = [p[1:-1].split(",") if p.startswith("{") else [p] for p in re.split(r"(\{[^}]*\})", pattern)]
        named |= {"".join(choice) for choice in itertools.product(*parts)}
    assert set(FAITHFULNESS.columns) <= named, sorted(set(FAITHFULNESS.columns) - named)
    assert "Holm" in (docs / "metrics-statistics.md").read_text()
