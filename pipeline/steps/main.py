"""``main``: one configuration's chain, prepare-data -> train -> probe-attention ->
compute-metrics, in this process, each step a nested child run of the ``main`` run.

The steps are called as functions and hand each other what they hold in memory (the loaded
dataset and its split, the trained model, the probed arrays); each step still runs alone as a
command from the ids of its upstream runs. A step is reused, not rerun, when a FINISHED run
of it carries the same reuse key (``pipeline.reuse.reuse_key``: the step's typed
config, which names its upstream runs, and the code version of the modules it depends on)
and still has its artefacts; ``rerun`` forces steps (and all downstream of them) to run again.
"""
from __future__ import annotations

import importlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import mlflow

from pipeline.config import MainConfig, MetricsConfig, TrainConfig, check_writable_folder
from pipeline.contracts import (
    COMPUTE_METRICS,
    MAIN,
    PREPARE_DATA,
    PROBE_ATTENTION,
    REPORT,
    REPORT_DIR,
    LAST_CHECKPOINT,
    REPORT_KEY_TAG,
    REUSED_STEPS_TAG,
    STEP_TAG,
    TRAIN,
    UPSTREAM_TAGS,
)
from pipeline.reuse import reuse_key
from pipeline.results import StepResult
from pipeline.tracking import (
    child_runs,
    download_artifact,
    end_run_as,
    experiment_of,
    config_digest,
    find_reusable_run,
    log_view_hint,
    mark_report_folder,
    missing_artifacts,
    orphaned_main_run,
    planned_experiment_id,
    report_folder,
    run_metrics,
    step_run,
)

if TYPE_CHECKING:
    from pipeline.data import DatasetCache

log = logging.getLogger("pipeline")


def lazy(module: str, function: str) -> Callable:
    """A step function imported when first called: a fully reused chain never imports torch."""
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), function)(*args, **kwargs)

    return call


run_prepare = lazy("pipeline.steps.prepare_data", "run_prepare")
run_train = lazy("pipeline.steps.train", "run_train")
run_probe = lazy("pipeline.steps.probe_attention", "run_probe")
run_compute_metrics = lazy("pipeline.steps.compute_metrics", "run_compute_metrics")


@dataclass
class Chain:
    """Runs or reuses the steps of one main run."""

    experiment_id: str
    forced: set[str]
    name: Callable[[str], str]  # step -> its run's name
    run_ids: dict[str, str] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)

    def step(self, step: str, config, run: Callable[[str], StepResult]) -> StepResult | None:
        """The step's result when it ran here, None when a finished run was reused."""
        if step not in self.forced:
            previous = find_reusable_run(step, reuse_key(step, config.to_dict()), self.experiment_id)
            if previous is not None:
                log.info("%s: reusing finished run %s (same configuration, upstream runs and code)",
                         step, previous.info.run_id)
                self.run_ids[step] = previous.info.run_id
                self.reused.append(step)
                return None
        log.info("%s: %s", step, "running again (rerun)" if step in self.forced else "starting a new run")
        result = run(self.name(step))
        self.run_ids[step] = result.run_id
        return result


def check_up_front(train: TrainConfig, backbones, forced: set[str], datasets: "DatasetCache | None",
                   parent_run_id: str | None = None) -> "DatasetCache | None":
    """What can be judged before any run starts, judged: the weights file against every backbone
    (a file fits one architecture), and the data (CIFAR label range, split sizes), loaded now when
    its prepare-data step is going to run (a reused one has loaded it before; a fully reused chain
    loads nothing). Returns the dataset cache, filled where it loaded."""
    from pipeline.contracts import WEIGHTS

    if train.weights not in WEIGHTS:
        from pipeline.models import check_weights_fit

        check_weights_fit(train.weights, backbones)
    prepare = train.prepare()
    if PREPARE_DATA not in forced and find_reusable_run(
            PREPARE_DATA, reuse_key(PREPARE_DATA, prepare.to_dict()),
            planned_experiment_id(train.experiment(), parent_run_id)) is not None:
        return datasets
    if datasets is None:
        from pipeline.data import DatasetCache

        datasets = DatasetCache()
    datasets.get(train.dataset, train.data_dir)
    return datasets


def report_owner_of(config: MainConfig) -> str:
    """Whose report a main run's report folder holds: the configuration (everything but where the
    report goes and what is rerun), so a rerun of the same configuration replaces its report and
    one that differs in a setting its run name leaves out (lr, weights, ...) gets a folder of its own."""
    return config_digest({k: v for k, v in config.to_dict().items() if k not in ("out", "rerun")})


def write_main_report(metrics_id: str, out: Path, experiment_id: str, reuse: bool) -> None:
    """The report of one main run, into ``out`` and the run's ``report/`` artefacts. The report
    of the same compute-metrics run made by the same report code is copied from the finished
    main run that made it (tag ``pipeline.report_key``) rather than drawn again."""
    key = reuse_key(REPORT, {"metrics_run_id": metrics_id})
    found = find_reusable_run(REPORT, key, experiment_id, tag=REPORT_KEY_TAG) if reuse else None
    previous = found.info.run_id if found else None
    if previous:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(download_artifact(previous, REPORT_DIR, tmp), out, dirs_exist_ok=True)
        log.info("report: reusing the report of main run %s (same compute-metrics run and report code)", previous)
    else:
        from pipeline.report.write import write_report

        write_report([metrics_id], out, title=f"compute-metrics run {metrics_id}")
    mlflow.log_artifacts(str(out), REPORT_DIR)
    mlflow.set_tag(REPORT_KEY_TAG, key)


def adopt_children(main_run_id: str) -> dict[str, str]:
    """The unfinished step runs a dead attempt of ``main_run_id`` left: an interrupted train run
    with a checkpoint is returned to be resumed ({step: run id}); every other one is ended KILLED."""
    resumable = {}
    for child in child_runs(main_run_id, unfinished=True, newest_first=True):
        step = child.data.tags.get(STEP_TAG)
        if step == TRAIN and TRAIN not in resumable and not missing_artifacts(child.info.run_id, [LAST_CHECKPOINT]):
            resumable[TRAIN] = child.info.run_id
        elif child.info.status == "RUNNING":
            end_run_as(child.info.run_id, "KILLED")
            log.info("%s run %s of a dead attempt ended KILLED", step, child.info.run_id)
    return resumable


def run_main(config: MainConfig, datasets: "DatasetCache | None" = None, parent_run_id: str | None = None,
             report: bool = True, adopt: bool = False) -> str:
    """Run the chain for one configuration; returns the main run's id. ``datasets``: a cache
    shared with other configurations of the same process; ``report``: write this run's report
    (a sweep writes one for all its configurations instead). ``adopt`` (a retried sweep task):
    continue the RUNNING main run of this configuration under ``parent_run_id`` that a dead
    worker left, resuming its train run from the last checkpoint."""
    t = config.train
    if report:
        check_writable_folder("out", config.out)
    orphan = orphaned_main_run(parent_run_id, config.label()) if adopt and parent_run_id else None
    resumable: dict[str, str] = {}
    if orphan is not None:
        log.info("main %s (%s): continuing the run a dead worker left", orphan.info.run_id, config.label())
        resumable = adopt_children(orphan.info.run_id)
    else:
        datasets = check_up_front(t, [t.backbone], config.forced_steps(), datasets, parent_run_id)
    with step_run(MAIN, config.params(), config.to_dict(), run_name=config.label(),
                  run_id=orphan.info.run_id if orphan else None,
                  parent_run_id=None if orphan else parent_run_id, experiment=t.experiment()) as run:
        chain = Chain(run.info.experiment_id, config.forced_steps(), config.step_run_name)

        def dataset():  # loaded (once per process) only if a step has to run
            nonlocal datasets
            if datasets is None:
                from pipeline.data import DatasetCache

                datasets = DatasetCache()
            return datasets.get(t.dataset, t.data_dir)

        prepare_config = t.prepare()
        prepared = chain.step(PREPARE_DATA, prepare_config,
                              lambda name: run_prepare(prepare_config, dataset(), run_name=name))

        train_config = replace(t, prepare_run_id=chain.run_ids[PREPARE_DATA])
        if TRAIN in resumable:  # a dead attempt's train run: continue it from its last checkpoint
            log.info("train: resuming run %s from its last checkpoint", resumable[TRAIN])
            # force: Ray retries a task only once its worker is dead, whatever the heartbeat says
            trained = run_train(resume_run_id=resumable[TRAIN], dataset=dataset(), run_name=config.step_run_name(TRAIN),
                                force=True)
            chain.run_ids[TRAIN] = trained.run_id
        else:
            trained = chain.step(TRAIN, train_config, lambda name: run_train(
                train_config, dataset=dataset(), splits=prepared.splits if prepared else None, run_name=name))

        probe_config = config.probe(chain.run_ids[TRAIN])
        probed = chain.step(PROBE_ATTENTION, probe_config, lambda name: run_probe(
            probe_config, model=trained.model if trained else None, dataset=dataset(), run_name=name,
            train_config=train_config.to_dict()))

        metrics_config = MetricsConfig(probe_run_id=chain.run_ids[PROBE_ATTENTION])
        chain.step(COMPUTE_METRICS, metrics_config,
                   lambda name: run_compute_metrics(metrics_config, probed, run_name=name))

        metrics_id = chain.run_ids[COMPUTE_METRICS]
        mlflow.set_tags({**{UPSTREAM_TAGS[s]: rid for s, rid in chain.run_ids.items()},
                         REUSED_STEPS_TAG: ",".join(chain.reused) or "none"})
        mlflow.log_metrics(run_metrics(metrics_id))
        where = ""
        if report:
            owner = report_owner_of(config)
            out = report_folder(config.out, experiment_of(run), config.label(), owner, run.info.run_id)
            write_main_report(metrics_id, out, run.info.experiment_id, REPORT not in chain.forced)
            mark_report_folder(out, owner, run.info.run_id)  # a copied report brought its maker's record
            where = f"; report in {out}"
        log.info("main %s (%s): %d of 4 steps reused (%s)%s", run.info.run_id, config.label(), len(chain.reused),
                 ", ".join(chain.reused) or "none", where)
        if report:  # a configuration of its own, not one of a sweep's
            log_view_hint(run.info.experiment_id)
        return run.info.run_id
