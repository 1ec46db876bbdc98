"""The ``report`` step: tables and figures for a paper, from finished runs.

Sources: an experiment (every FINISHED compute-metrics run in it), a sweep run (its finished
``main`` runs) or a ``main`` run. Writes into a local folder and, as artefacts, into a report
run (from ``main`` and ``sweep``, into their own run under ``report/``). What the report holds
and how it is made: ``pipeline.report``.
"""
from __future__ import annotations

import logging

import mlflow

from pipeline.config import ReportConfig, check_writable_folder
from pipeline.contracts import REPORT, REPORT_DIR
from pipeline.errors import PipelineError
from pipeline.report.gather import metrics_runs_of
from pipeline.report.write import write_report
from pipeline.results import StepResult
from pipeline.tracking import config_digest, report_folder, step_run

log = logging.getLogger("pipeline")


def run_report(config: ReportConfig) -> StepResult:
    check_writable_folder("out", config.out)
    source = metrics_runs_of(config)
    if not source.metrics_run_ids:
        raise PipelineError(f"{source.title} has no finished compute-metrics runs to report on")
    with step_run(REPORT, config.params(), run_name=source.name, experiment=source.experiment) as run:
        owner = config_digest({"source": source.title, "reference": config.reference})
        out = report_folder(config.out, source.experiment, source.name, owner, run.info.run_id)
        write_report(source.metrics_run_ids, out, source.title, config.reference, failed=source.failed,
                     configurations=source.configurations)
        mlflow.log_artifacts(str(out), REPORT_DIR)
        log.info("report written to %s", out)
        return StepResult(run.info.run_id)
