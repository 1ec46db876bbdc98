"""``main`` and ``sweep``: chain the steps as MLflow Project runs, reusing finished ones.

``main`` runs prepare-data -> train -> probe-attention -> compute-metrics for one
configuration, each as a child run of the ``main`` run (``mlflow.run`` with the same
environment manager as the ``main`` run itself), then writes a report of that run.
A step is reused, not rerun, when a FINISHED run of it exists in the experiment with the
same parameters (compared after converting both to the step's types, so ``64``, ``"64"``
and ``"64.0"`` match), hence the same upstream runs (their ids are parameters), and the
same code version (tag ``pipeline.code_version``).

``sweep`` runs ``main`` for every (position, activation, seed), ``jobs`` at a time, as
children of one sweep run named like ``late/swish/seed0``; a failed configuration is
marked FAILED and the sweep goes on, listing the failures at the end.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus

from pipeline.config import StepConfig, TrainConfig, check_choice
from pipeline.errors import PipelineError
from pipeline.gates import GATES
from pipeline.models import POSITIONS
from pipeline.steps.compute_metrics import MetricsConfig
from pipeline.steps.prepare import PrepareConfig
from pipeline.steps.probe import ProbeConfig
from pipeline.tracking import CODE_VERSION_TAG, STEP_TAG, code_version, param_string, step_run

log = logging.getLogger("pipeline")

PROJECT_ENV_TAG = "mlflow.project.env"
TERMINAL = {"FINISHED", "FAILED", "KILLED"}


def project_dir() -> Path:
    """The folder holding MLproject: the checkout this package runs from."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "MLproject").is_file():
        raise PipelineError(f"main and sweep need the project folder with MLproject; none at {root}")
    return root


def current_env_manager() -> str:
    """The env manager of the ``mlflow run`` that started this process ('local' when none
    was recorded: MLflow tags conda / virtualenv / uv runs, not local ones)."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return "local"
    env = mlflow.MlflowClient().get_run(run_id).data.tags.get(PROJECT_ENV_TAG)
    return env if env in ("conda", "virtualenv", "uv") else "local"


def normalise(config_cls: type[StepConfig], params: dict[str, Any]) -> dict[str, Any]:
    """The step's parameters as its config types: ``"64.0"`` -> 64, ``"false"`` -> False."""
    out = {}
    for f in fields(config_cls):  # type: ignore[arg-type]
        default = f.default
        value = params.get(f.name, default)
        if isinstance(default, bool):
            value = value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            value = int(float(value))
        elif isinstance(default, float):
            value = float(value)
        else:
            value = str(value)
            if value in ("''", '""'):  # MLflow logs an empty -P value as its shell quoting
                value = ""
        out[f.name] = value
    return out


def find_reusable_run(step: str, config_cls, params: dict[str, Any], experiment_id: str):
    """A FINISHED run of ``step`` with the same normalised parameters and code version, or None."""
    filter_string = (
        f"tags.`{STEP_TAG}` = '{step}' and tags.`{CODE_VERSION_TAG}` = '{code_version()}' "
        "and attributes.status = 'FINISHED'"
    )
    wanted = normalise(config_cls, params)
    for run in mlflow.MlflowClient().search_runs([experiment_id], filter_string,
                                                  order_by=["attributes.start_time DESC"]):
        if normalise(config_cls, run.data.params) == wanted:
            return run
    return None


def finish_if_running(run_id: str, ok: bool) -> None:
    """Mark a child run terminated if its process died before it could say so itself."""
    client = mlflow.MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


def launch(entry_point: str, params: dict[str, Any], env_manager: str, experiment_id: str,
           run_name: str | None = None, synchronous: bool = True):
    # The child gets --experiment-id; an MLFLOW_EXPERIMENT_NAME inherited beside it makes the
    # `mlflow run` CLI refuse to start ("Specify only one of ..."). Our own run already has its
    # experiment, so the variables are no longer needed here.
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    return mlflow.run(
        str(project_dir()), entry_point=entry_point,
        parameters={k: param_string(v) for k, v in params.items()},
        env_manager=env_manager, experiment_id=experiment_id, run_name=run_name, synchronous=synchronous,
    )


def run_or_reuse(step: str, config_cls, params: dict[str, Any], env_manager: str, experiment_id: str,
                 reused: list[str], label: str = "") -> str:
    previous = find_reusable_run(step, config_cls, params, experiment_id)
    if previous is not None:
        log.info("%s: reusing finished run %s (same parameters and code version %s)",
                 step, previous.info.run_id, code_version())
        reused.append(step)
        return previous.info.run_id
    log.info("%s: starting a new run", step)
    try:
        submitted = launch(step, params, env_manager, experiment_id, run_name=f"{step} {label}".strip())
    except mlflow.exceptions.ExecutionException as exc:
        raise PipelineError(f"step {step} failed: {exc}") from None
    return submitted.run_id


@dataclass(frozen=True)
class MainConfig(TrainConfig):
    num_images: int = -1
    out: str = "out"

    def __post_init__(self):
        super().__post_init__()
        if self.prepare_run_id:
            raise PipelineError("main runs its own prepare-data step; do not give prepare_run_id")
        ProbeConfig(train_run_id="-", num_images=self.num_images, device=self.device)


def run_main(config: MainConfig) -> str:
    from pipeline.steps.report import write_report

    env_manager = current_env_manager()
    train_fields = {f.name for f in fields(TrainConfig)}
    with step_run("main", config.to_dict(),
                  run_name=f"{config.position}/{config.activation}/seed{config.seed}") as run:
        experiment_id = run.info.experiment_id
        reused: list[str] = []
        c = config.to_dict()
        label = f"{config.position}/{config.activation}/seed{config.seed}"
        prepare_id = run_or_reuse("prepare-data", PrepareConfig,
                                  {k: c[k] for k in ("dataset", "data_dir", "val_fraction", "seed")},
                                  env_manager, experiment_id, reused, label)
        train_params = {k: v for k, v in c.items() if k in train_fields}
        train_params["prepare_run_id"] = prepare_id
        train_id = run_or_reuse("train", TrainConfig, train_params, env_manager, experiment_id, reused, label)
        probe_id = run_or_reuse("probe-attention", ProbeConfig,
                                {"train_run_id": train_id, "num_images": config.num_images, "device": config.device},
                                env_manager, experiment_id, reused, label)
        metrics_id = run_or_reuse("compute-metrics", MetricsConfig, {"probe_run_id": probe_id},
                                  env_manager, experiment_id, reused, label)
        mlflow.set_tags({"pipeline.prepare_run_id": prepare_id, "pipeline.train_run_id": train_id,
                         "pipeline.probe_run_id": probe_id, "pipeline.metrics_run_id": metrics_id,
                         "pipeline.reused_steps": ",".join(reused) or "none"})
        mlflow.log_metrics(mlflow.MlflowClient().get_run(metrics_id).data.metrics)
        out = Path(config.out) / f"main-{run.info.run_id}"
        write_report([metrics_id], out, title=f"main run {run.info.run_id}")
        mlflow.log_artifacts(str(out), "report")
        log.info("main %s: %d of 4 steps reused (%s); report in %s", run.info.run_id, len(reused),
                 ", ".join(reused) or "none", out)
        return run.info.run_id


def parse_list(name: str, text: str, valid=None, cast=str) -> list:
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise PipelineError(f"{name} is empty; give a comma-separated list")
    out = []
    for item in items:
        if valid is not None:
            check_choice(name.rstrip("s"), item, valid)
        try:
            out.append(cast(item))
        except ValueError:
            raise PipelineError(f"{name}: {item!r} is not a valid {cast.__name__}") from None
    return out


@dataclass(frozen=True)
class SweepConfig(MainConfig):
    activations: str = ",".join(GATES)
    positions: str = "late"
    seeds: str = "0"
    jobs: int = 1

    def __post_init__(self):
        super().__post_init__()
        parse_list("activations", self.activations, GATES)
        parse_list("positions", self.positions, POSITIONS)
        parse_list("seeds", self.seeds, cast=int)
        if self.jobs < 1:
            raise PipelineError(f"jobs must be at least 1, got {self.jobs}")

    def configurations(self) -> list[dict[str, Any]]:
        return [
            {"position": p, "activation": a, "seed": s}
            for p in parse_list("positions", self.positions)
            for a in parse_list("activations", self.activations)
            for s in parse_list("seeds", self.seeds, cast=int)
        ]


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_sweep(config: SweepConfig) -> str:
    from pipeline.steps.report import write_report

    env_manager = current_env_manager()
    main_fields = [f.name for f in fields(MainConfig) if f.name != "prepare_run_id"]  # main makes its own
    base = {k: v for k, v in config.to_dict().items() if k in main_fields}
    gpus = visible_gpus()
    if config.jobs > 1 and gpus == 0 and "OMP_NUM_THREADS" not in os.environ:
        # parallel CPU jobs share the cores: without this, each takes all of them and
        # oversubscription makes a training step 20x slower
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // config.jobs))
    n = len(config.configurations())
    with step_run("sweep", config.to_dict(), run_name=f"sweep {config.positions} x {config.activations} "
                  f"x seeds {config.seeds} ({n} runs)"[:250]) as run:
        experiment_id = run.info.experiment_id
        pending = list(enumerate(config.configurations()))
        running: list[tuple[str, Any, dict]] = []
        finished, failed = [], []
        log.info("sweep %s: %d configurations, %d at a time", run.info.run_id, len(pending), config.jobs)
        try:
            while pending or running:
                while pending and len(running) < config.jobs:
                    index, combo = pending.pop(0)
                    params = {**base, **combo}
                    if config.device == "auto" and gpus > 1:
                        params["device"] = f"cuda:{index % gpus}"  # spread parallel configurations over GPUs
                    name = f"{combo['position']}/{combo['activation']}/seed{combo['seed']}"
                    submitted = launch("main", params, env_manager, experiment_id, run_name=name,
                                       synchronous=False)
                    log.info("sweep: started %s as run %s", name, submitted.run_id)
                    running.append((name, submitted, combo))
                for item in list(running):
                    name, submitted, combo = item
                    status = submitted.get_status()
                    if status in TERMINAL:
                        running.remove(item)
                        ok = status == "FINISHED"
                        finish_if_running(submitted.run_id, ok)
                        (finished if ok else failed).append((name, submitted.run_id))
                        log.info("sweep: %s %s (%d done, %d left)", name, status.lower(),
                                 len(finished) + len(failed), len(pending) + len(running))
                time.sleep(0.5)
        except KeyboardInterrupt:
            for name, submitted, _ in running:
                submitted.cancel()
                mlflow.MlflowClient().set_terminated(submitted.run_id, "KILLED")
            raise
        mlflow.log_metrics({"configurations": len(finished) + len(failed), "failed_configurations": len(failed)})
        mlflow.set_tag("pipeline.failed", ",".join(n for n, _ in failed) or "none")
        metrics_ids = [mlflow.MlflowClient().get_run(rid).data.tags.get("pipeline.metrics_run_id")
                       for _, rid in finished]
        metrics_ids = [m for m in metrics_ids if m]
        if metrics_ids:
            out = Path(config.out) / f"sweep-{run.info.run_id}"
            write_report(metrics_ids, out, title=f"sweep run {run.info.run_id}")
            mlflow.log_artifacts(str(out), "report")
        if failed and not finished:
            raise PipelineError(f"all {len(failed)} configurations of sweep {run.info.run_id} failed, e.g. "
                                f"{failed[0][0]} (run {failed[0][1]})")
        if failed:
            log.warning("sweep %s: %d of %d configurations failed:\n%s", run.info.run_id, len(failed),
                        len(finished) + len(failed), "\n".join(f"  {n} (run {rid})" for n, rid in failed))
        else:
            log.info("sweep %s: all %d configurations finished", run.info.run_id, len(finished))
        return run.info.run_id
