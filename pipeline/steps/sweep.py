"""``sweep``: ``main`` for every (position, activation, gate norm, seed) under one sweep run,
through an executor (``pipeline.executors``, handed ``run_main``),
then one report of every finished configuration.

The MLflow structure: sweep run -> one ``main`` run per configuration (named like
``swish · late · digits 64px 2ep · seed0``) -> its step runs (``swish · train · seed0``). A configuration that fails is marked FAILED and the
sweep goes on, listing the failures at the end.
"""
from __future__ import annotations

import logging
import sys
import time

import mlflow

from pipeline.config import SweepConfig
from pipeline.contracts import COMPUTE_METRICS, FAILED_TAG, REPORT_DIR, SWEEP, UPSTREAM_TAGS
from pipeline.errors import PipelineError
from pipeline.executors import Outcome, make_executor
from pipeline.tracking import child_runs, experiment_of, get_run, log_view_hint, report_folder, run_metrics, step_run, tracking_uri

log = logging.getLogger("pipeline")


class SweepProgress:
    """What the sweep's driver shows: one log line per configuration as it lands (its status and
    test accuracy, with done / running / failed counts) and, on a terminal, one bar over the
    configurations. "Running" counts the sweep's main runs that are RUNNING in MLflow (wherever
    they run), looked up at most every few seconds."""

    LOOK_EVERY_S = 5.0

    def __init__(self, total: int, parent_run_id: str, experiment_id: str):
        from pipeline.console import bars_on

        self.total, self.parent_run_id, self.experiment_id = total, parent_run_id, experiment_id
        self.finished = self.failed = self.running = 0
        self.looked = 0.0
        self.bar = None
        if bars_on():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="sweep", unit="config", dynamic_ncols=True)

    def look(self) -> None:
        self.looked = time.monotonic()
        try:
            self.running = len(child_runs(self.parent_run_id, self.experiment_id, status="RUNNING"))
        except Exception:  # a count for the eye only: never stop a sweep over it
            return
        if self.bar is not None:
            self.bar.set_postfix_str(self.counts(), refresh=True)

    def counts(self) -> str:
        return f"{self.finished + self.failed}/{self.total} done, {self.running} running, {self.failed} failed"

    def tick(self) -> None:
        if time.monotonic() - self.looked >= self.LOOK_EVERY_S:
            self.look()

    def done(self, outcome: Outcome) -> None:
        if outcome.status == "FINISHED":
            self.finished += 1
            if outcome.test_acc is None and outcome.main_run_id:
                outcome.test_acc = run_metrics(outcome.main_run_id).get("test_acc")
        else:
            self.failed += 1
        self.look()
        if outcome.status == "FINISHED":
            acc = "" if outcome.test_acc is None else f", test_acc {outcome.test_acc:.2f}%"
            detail = f"finished{acc}"
        else:
            detail = f"{outcome.status.lower()} ({outcome.error})" if outcome.error else outcome.status.lower()
        line = f"sweep: {outcome.label} {detail} [{self.counts()}]"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.write(f"[pipeline] {line}", file=sys.stderr)
        else:
            log.info("%s", line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(config: SweepConfig) -> str:
    from pipeline.config import check_writable_folder
    from pipeline.executors import InlineExecutor
    from pipeline.report.write import write_report
    from pipeline.steps.main import check_up_front, run_main

    check_writable_folder("out", config.main.out)
    configurations = config.configurations()
    workers = gpus = 0
    if config.executor == "ray":  # before the sweep run starts: nothing left RUNNING
        from pipeline.executors import check_ray, ray_address
        from pipeline.sharing import check_ray_sharing

        check_ray(ray_address(config.ray_address), tracking_uri())
        check_ray_sharing(config, configurations)
    elif config.executor == "process":  # where configurations share a GPU: do they fit?
        from pipeline.sharing import plan_process_workers

        workers, gpus = plan_process_workers(config, configurations)
    # weights against every backbone, and the data, before the sweep run starts (inline: loaded once, kept)
    checked = check_up_front(configurations[0].train, config.backbones, configurations[0].forced_steps(), None)
    n = len(configurations)
    name = config.label()
    with step_run(SWEEP, config.params(), config.to_dict(), run_name=name,
                  experiment=config.main.train.experiment()) as run:
        sweep_id = run.info.run_id
        executor = make_executor(config, run_main, workers, gpus)
        if isinstance(executor, InlineExecutor):  # the data it loaded serves every configuration
            executor.datasets = checked
        checked = None  # workers of other executors load their own: the driver keeps no copy
        log.info("sweep %s: %d configurations, executor %s", sweep_id, n, config.executor)
        progress = SweepProgress(n, sweep_id, run.info.experiment_id)
        try:
            outcomes = executor.run(configurations, sweep_id, run.info.experiment_id, progress)
        finally:
            progress.close()
        finished = [o for o in outcomes if o.status == "FINISHED"]
        failed = [o for o in outcomes if o.status != "FINISHED"]
        mlflow.log_metrics({"configurations": len(outcomes), "failed_configurations": len(failed)})
        mlflow.set_tag(FAILED_TAG, ",".join(o.label for o in failed) or "none")
        metrics_ids = [get_run(o.main_run_id).data.tags.get(UPSTREAM_TAGS[COMPUTE_METRICS]) for o in finished]
        metrics_ids = [m for m in metrics_ids if m]
        if metrics_ids:
            out = report_folder(config.main.out, experiment_of(run), name, sweep_id, sweep_id)
            write_report(metrics_ids, out, title=f"sweep run {sweep_id}",
                         failed=[(o.label, o.main_run_id, o.error) for o in failed], configurations=len(outcomes))
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
    if failed:  # the sweep run itself FINISHED (it did its job); the exit code tells scripts and CI
        raise PartialSweep(sweep_id, len(failed), len(outcomes))
    return sweep_id


class PartialSweep(PipelineError):
    """A sweep that finished with failed configurations: its id is printed, the exit code is 1."""

    exit_code = 1

    def __init__(self, sweep_id: str, failed: int, total: int):
        super().__init__(f"{failed} of {total} configurations of sweep {sweep_id} failed (listed above and in "
                         "its summary.md); the report covers the rest")
        self.sweep_id = sweep_id
