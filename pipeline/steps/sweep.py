"""``sweep``: ``main`` for every (position, activation, seed) under one sweep run, through an
executor (:mod:`pipeline.executors`), then one report of every finished configuration.

The MLflow structure: sweep run -> one ``main`` run per configuration (named like
``late/swish/seed0``) -> its step runs. A configuration that fails is marked FAILED and the
sweep goes on, listing the failures at the end.
"""
from __future__ import annotations

import logging

import mlflow

from pipeline.config import SweepConfig
from pipeline.contracts import COMPUTE_METRICS, FAILED_TAG, REPORT_DIR, SWEEP, UPSTREAM_TAGS
from pipeline.errors import PipelineError
from pipeline.executors import Outcome, make_executor
from pipeline.tracking import experiment_of, log_view_hint, report_folder, step_run

log = logging.getLogger("pipeline")


def run_sweep(config: SweepConfig) -> str:
    from pipeline.steps.report import write_report

    configurations = config.configurations()
    n = len(configurations)
    t = config.main.train
    name = (f"sweep · {','.join(config.activations)} · {','.join(config.positions)} · seeds "
            f"{','.join(map(str, config.seeds))} · {t.dataset} {t.image_size}px {t.epochs}ep")[:250]
    with step_run(SWEEP, config.params(), config.to_dict(), run_name=name,
                  experiment=config.main.train.experiment()) as run:
        sweep_id = run.info.run_id
        executor = make_executor(config.executor, config.jobs)
        log.info("sweep %s: %d configurations, executor %s", sweep_id, n, config.executor)
        done: list[Outcome] = []

        def on_done(outcome: Outcome) -> None:
            done.append(outcome)
            detail = f" ({outcome.error})" if outcome.error else ""
            log.info("sweep: %s %s%s [%d/%d]", outcome.label, outcome.status.lower(), detail, len(done), n)

        outcomes = executor.run(configurations, sweep_id, run.info.experiment_id, on_done)
        finished = [o for o in outcomes if o.status == "FINISHED"]
        failed = [o for o in outcomes if o.status != "FINISHED"]
        mlflow.log_metrics({"configurations": len(outcomes), "failed_configurations": len(failed)})
        mlflow.set_tag(FAILED_TAG, ",".join(o.label for o in failed) or "none")
        client = mlflow.MlflowClient()
        metrics_ids = [client.get_run(o.main_run_id).data.tags.get(UPSTREAM_TAGS[COMPUTE_METRICS]) for o in finished]
        metrics_ids = [m for m in metrics_ids if m]
        if metrics_ids:
            out = report_folder(config.main.out, experiment_of(run), name)
            write_report(metrics_ids, out, title=f"sweep run {sweep_id}")
            mlflow.log_artifacts(str(out), REPORT_DIR)
        if failed and not finished:
            raise PipelineError(f"all {len(failed)} configurations of sweep {sweep_id} failed, e.g. "
                                f"{failed[0].label} (run {failed[0].main_run_id}): {failed[0].error}")
        if failed:
            log.warning("sweep %s: %d of %d configurations failed:\n%s", sweep_id, len(failed), len(outcomes),
                        "\n".join(f"  {o.label} (run {o.main_run_id}): {o.error}" for o in failed))
        else:
            log.info("sweep %s: all %d configurations finished", sweep_id, len(finished))
        log_view_hint(run.info.experiment_id)
        return sweep_id
