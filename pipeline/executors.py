"""How a sweep runs its configurations: a small interface, two executors.

- :class:`InlineExecutor` (``inline``, the default): in the sweep's own process, one
  configuration after another, each ``main`` run nested under the sweep run, datasets loaded
  once for all of them. The fastest on one GPU or a CPU: nothing is imported or loaded twice.
- :class:`ProcessExecutor` (``process``): ``jobs`` worker processes on this host, each running
  ``python -m pipeline main --parent-run-id <sweep run>`` for one configuration at a time,
  spread over the visible GPUs (``CUDA_VISIBLE_DEVICES``) or sharing the CPU cores
  (``OMP_NUM_THREADS``). Workers die with the sweep: the parent-death signal ends them if the
  sweep process dies, and an interrupted sweep stops them and marks their runs KILLED.

An executor takes the configurations and reports one :class:`Outcome` per configuration as it
lands; a distributed executor fits behind the same :meth:`Executor.run`.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from pipeline.config import MainConfig
from pipeline.errors import PipelineError, one_line
from pipeline.tracking import param_string

log = logging.getLogger("pipeline")

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 10.0


@dataclass
class Outcome:
    label: str  # position/activation/seedN
    status: str  # FINISHED, FAILED or KILLED
    main_run_id: str = ""
    error: str = ""


class Executor(Protocol):
    def run(self, configs: list[MainConfig], parent_run_id: str, experiment_id: str,
            on_done: Callable[[Outcome], None]) -> list[Outcome]:
        """Run every configuration as a main run under ``parent_run_id``; a configuration that
        fails is reported FAILED and the others go on; Ctrl-C / SIGTERM (KeyboardInterrupt)
        stops them all, their runs KILLED, and re-raises."""
        ...


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the OS to send ``sig`` to this process when its parent dies (Linux; a no-op
    elsewhere). Exits at once if the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call
        os.kill(os.getpid(), sig)


class InlineExecutor:
    def run(self, configs, parent_run_id, experiment_id, on_done):
        from pipeline.data import DatasetCache
        from pipeline.steps.main import run_main

        datasets = DatasetCache()
        outcomes = []
        for config in configs:
            try:
                run_id = run_main(config, datasets=datasets, report=False)
                outcome = Outcome(config.label(), "FINISHED", run_id)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # the failed runs are marked FAILED by step_run; go on
                if not isinstance(exc, PipelineError):
                    log.exception("%s failed", config.label())
                outcome = Outcome(config.label(), "FAILED",
                                  failed_main_run(parent_run_id, experiment_id, config.label()), one_line(exc))
            outcomes.append(outcome)
            on_done(outcome)
        return outcomes


def failed_main_run(parent_run_id: str, experiment_id: str, label: str) -> str:
    """The id of the (failed or killed) main run ``label`` under the sweep run, "" if none started."""
    import mlflow

    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`mlflow.runName` = '{label}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else ""


def main_command(config: MainConfig, parent_run_id: str) -> list[str]:
    """The ``python -m pipeline main`` command line of one configuration."""
    args = [sys.executable, "-m", "pipeline", "main"]
    for name, value in config.params().items():
        args += [f"--{name.replace('_', '-')}", param_string(value)]
    return args + ["--parent-run-id", parent_run_id, "--no-report"]


@dataclass
class Worker:
    config: MainConfig
    process: subprocess.Popen
    slot: int


class ProcessExecutor:
    def __init__(self, jobs: int):
        self.jobs = jobs

    def environment(self, config: MainConfig, experiment_id: str, slot: int, gpus: int) -> dict[str, str]:
        import mlflow

        env = {k: v for k, v in os.environ.items()
               if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")}
        env.update(MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(), MLFLOW_EXPERIMENT_ID=experiment_id,
                   PYTHONUNBUFFERED="1")
        if gpus and config.train.device in ("auto", "cuda"):  # an explicit cuda:N is the user's choice
            visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
            ids = visible if len(visible) == gpus else [str(i) for i in range(gpus)]
            env["CUDA_VISIBLE_DEVICES"] = ids[slot % gpus]  # one GPU per worker slot
        elif "OMP_NUM_THREADS" not in os.environ:
            # parallel CPU jobs share the cores: without this each takes all of them, and
            # oversubscription makes a training step many times slower
            from pipeline.devices import cpu_count

            env["OMP_NUM_THREADS"] = str(max(1, cpu_count() // self.jobs))
        return env

    def run(self, configs, parent_run_id, experiment_id, on_done):
        from pipeline.devices import visible_gpus

        gpus = visible_gpus()
        pending = list(configs)
        running: list[Worker] = []
        outcomes: list[Outcome] = []
        try:
            while pending or running:
                free = sorted(set(range(self.jobs)) - {w.slot for w in running})
                while pending and free:
                    config, slot = pending.pop(0), free.pop(0)
                    process = subprocess.Popen(main_command(config, parent_run_id),
                                               env=self.environment(config, experiment_id, slot, gpus),
                                               stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
                    running.append(Worker(config, process, slot))
                    log.info("sweep: %s started in worker process %d", config.label(), process.pid)
                for worker in list(running):
                    code = worker.process.poll()
                    if code is None:
                        continue
                    running.remove(worker)
                    lines = worker.process.stdout.read().strip().splitlines()
                    if code == 0 and lines:
                        outcome = Outcome(worker.config.label(), "FINISHED", lines[-1])
                    else:
                        outcome = Outcome(worker.config.label(), "KILLED" if code in (130, -2, -15) else "FAILED",
                                          failed_main_run(parent_run_id, experiment_id, worker.config.label()),
                                          f"worker exited with code {code}")
                    outcomes.append(outcome)
                    on_done(outcome)
                time.sleep(0.2)
        except KeyboardInterrupt:
            stop_workers(running)
            end_running_children(parent_run_id)
            raise
        return outcomes


def stop_workers(workers: list[Worker]) -> None:
    """SIGTERM to every live worker (each ends its runs KILLED), SIGKILL after a grace time."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for worker in workers:
        try:
            worker.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


def end_running_children(parent_run_id: str, status: str = "KILLED") -> None:
    """Mark every run below ``parent_run_id`` (children, grandchildren) that is still RUNNING."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    todo = [parent_run_id]
    while todo:
        parent = todo.pop()
        for run in client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'"):
            todo.append(run.info.run_id)
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status)


def make_executor(name: str, jobs: int) -> Executor:
    if name == "inline":
        if jobs > 1:
            log.warning("jobs=%d is ignored by executor=inline (one configuration at a time); "
                        "use executor=process to run several at once", jobs)
        return InlineExecutor()
    if name == "process":
        return ProcessExecutor(jobs)
    raise PipelineError(f"unknown executor {name!r}; valid: inline, process")
