"""How a sweep runs its configurations: a small interface, three executors, each handed the
chain to run (``run_main``, by the sweep step) so nothing here imports a step.

- ``InlineExecutor`` (``inline``, the default): in the sweep's own process, one
  configuration after another, each ``main`` run nested under the sweep run, datasets loaded
  once for all of them. The fastest on one GPU or a CPU: nothing is imported or loaded twice.
- ``ProcessExecutor`` (``process``): ``jobs`` worker processes on this host, each running
  ``python -m pipeline main --parent-run-id <sweep run>`` for one configuration at a time,
  spread over the visible GPUs (``CUDA_VISIBLE_DEVICES``) or sharing the CPU cores
  (``OMP_NUM_THREADS``). Workers die with the sweep: the parent-death signal ends them if the
  sweep process dies, and an interrupted sweep stops them and marks their runs KILLED.

- ``RayExecutor`` (``ray``): one Ray task per configuration, on a local Ray cluster started
  for the sweep or on a cluster given by ``ray_address`` / ``RAY_ADDRESS``; Ray places each task
  on a node with the CPUs and GPUs it asks for and sets its ``CUDA_VISIBLE_DEVICES``. A task
  whose worker dies is retried and resumes its train run from the last checkpoint.

An executor takes the configurations and reports one ``Outcome`` per configuration as it
lands (``progress.done``), calling ``progress.tick()`` while it waits.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from pipeline.config import MainConfig
from pipeline.errors import PipelineError, one_line
from pipeline.processes import die_with_parent
from pipeline.tracking import end_running_children, failed_main_run, param_string, run_metrics, tracking_uri

log = logging.getLogger("pipeline")

STOP_GRACE_S = 10.0


@dataclass
class Outcome:
    label: str  # the main run's name
    status: str  # FINISHED, FAILED or KILLED
    main_run_id: str = ""
    error: str = ""
    test_acc: float | None = None


class Progress(Protocol):
    def done(self, outcome: Outcome) -> None:
        """A configuration landed."""

    def tick(self) -> None:
        """Called while the executor waits (cheap; the progress decides how often to look)."""


class Executor(Protocol):
    def run(self, configs: list[MainConfig], parent_run_id: str, experiment_id: str,
            progress: Progress) -> list[Outcome]:
        """Run every configuration as a main run under ``parent_run_id``; a configuration that
        fails is reported FAILED and the others go on; Ctrl-C / SIGTERM (KeyboardInterrupt)
        stops them all, their runs KILLED, and re-raises."""
        ...


#: What an executor runs for each configuration: ``chain(config, datasets=..., parent_run_id=...,
#: report=False, adopt=...)`` returns the main run's id (``pipeline.steps.main.run_main``).
Chain = Callable[..., str]


class InlineExecutor:
    def __init__(self, chain: Chain, datasets=None):
        self.chain = chain
        self.datasets = datasets  # a DatasetCache the driver filled already (its data checked), or None

    def run(self, configs, parent_run_id, experiment_id, progress):
        from pipeline.data import DatasetCache

        datasets = self.datasets or DatasetCache()
        outcomes = []
        for config in configs:
            try:
                run_id = self.chain(config, datasets=datasets, report=False)
                outcome = Outcome(config.label(), "FINISHED", run_id)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # the failed runs are marked FAILED by step_run; go on
                if not isinstance(exc, PipelineError):
                    log.exception("%s failed", config.label())
                outcome = Outcome(config.label(), "FAILED",
                                  failed_main_run(parent_run_id, experiment_id, config.label()), one_line(exc))
            outcomes.append(outcome)
            progress.done(outcome)
        return outcomes


def worker_command(config: MainConfig, parent_run_id: str) -> list[str]:
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
    """``jobs`` worker processes; with ``gpus`` visible, slot i runs on GPU i mod gpus (several
    share one when jobs > gpus: ``pipeline.sharing.plan_process_workers`` checked they fit)."""

    def __init__(self, jobs: int, gpus: int = 0):
        self.jobs, self.gpus = jobs, gpus

    def environment(self, config: MainConfig, experiment_id: str, slot: int) -> dict[str, str]:
        gpus = self.gpus
        env = {k: v for k, v in os.environ.items()
               if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")}
        env.update(MLFLOW_TRACKING_URI=tracking_uri(), MLFLOW_EXPERIMENT_ID=experiment_id,
                   PYTHONUNBUFFERED="1")
        if gpus and config.train.device in ("auto", "cuda"):  # an explicit cuda:N is the user's choice
            visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
            ids = visible if len(visible) == gpus else [str(i) for i in range(gpus)]
            env["CUDA_VISIBLE_DEVICES"] = ids[slot % gpus]  # slot i on GPU i mod gpus
        elif "OMP_NUM_THREADS" not in os.environ:
            # parallel CPU jobs share the cores: without this each takes all of them, and
            # oversubscription makes a training step many times slower
            from pipeline.devices import cpu_count

            env["OMP_NUM_THREADS"] = str(max(1, cpu_count() // self.jobs))
        return env

    def run(self, configs, parent_run_id, experiment_id, progress):
        pending = list(configs)
        running: list[Worker] = []
        outcomes: list[Outcome] = []
        try:
            while pending or running:
                free = sorted(set(range(self.jobs)) - {w.slot for w in running})
                while pending and free:
                    config, slot = pending.pop(0), free.pop(0)
                    env = self.environment(config, experiment_id, slot)
                    process = subprocess.Popen(worker_command(config, parent_run_id), env=env,
                                               stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
                    running.append(Worker(config, process, slot))
                    log.info("sweep: %s started in worker process %d%s", config.label(), process.pid,
                             f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env and self.gpus else "")
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
                    progress.done(outcome)
                progress.tick()
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


def ray_address(option: str) -> str:
    """The cluster to join: the option, else ``RAY_ADDRESS``; "" for a new local cluster."""
    return (option or os.environ.get("RAY_ADDRESS", "")).strip()


def check_ray(address: str, tracking_uri: str) -> None:
    """One-line errors, before the sweep starts, for what cannot work: Ray not installed, or a
    cluster (whose workers may run on other hosts) told to log into a file or SQLite store on
    this one."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise PipelineError("executor=ray needs Ray: pip install -e '.[ray]' (or pip install 'ray>=2.40,<3')") from None
    if address and address != "local" and not tracking_uri.startswith(("http://", "https://")):
        raise PipelineError(
            f"executor=ray with the Ray cluster {address!r} needs a tracking server its workers can reach, not "
            f"the local store {tracking_uri!r}: start one (python -m pipeline server --host <this host's address>, "
            "or use a team server) and set MLFLOW_TRACKING_URI=http://<host>:<port>")


def absolute_local_uri(uri: str) -> str:
    """A relative ``sqlite:///`` or file-store URI made absolute: Ray workers do not run in the
    driver's working directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    if uri.startswith("file://") and not uri.startswith("file:///"):
        return Path(uri[len("file://"):]).resolve().as_uri()
    return uri


#: The dataset cache of a Ray worker process: a worker that runs several configurations in turn
#: loads each dataset once.
_WORKER_DATASETS = None


def run_configuration(chain: Chain, config: MainConfig, parent_run_id: str, threads: int) -> dict:
    """One configuration's ``main`` chain in a Ray worker; the main run's id and test accuracy.
    A retry (its first worker died) continues the run that worker left."""
    global _WORKER_DATASETS
    logging.basicConfig(level=logging.INFO, format="[pipeline] %(message)s", stream=sys.stderr)
    logging.getLogger("pipeline").setLevel(logging.INFO)
    import torch

    from pipeline.data import DatasetCache

    torch.set_num_threads(max(1, threads))
    _WORKER_DATASETS = _WORKER_DATASETS or DatasetCache()
    run_id = chain(config, datasets=_WORKER_DATASETS, parent_run_id=parent_run_id, report=False, adopt=True)
    return {"main_run_id": run_id, "test_acc": run_metrics(run_id).get("test_acc")}


class RayExecutor:
    def __init__(self, chain: Chain, address: str = "", gpus_per_job: str = "auto", cpus_per_job: float = 1.0,
                 max_retries: int = 1):
        self.chain = chain
        self.address = ray_address(address)
        self.gpus_per_job, self.cpus_per_job, self.max_retries = gpus_per_job, cpus_per_job, max_retries

    def run(self, configs, parent_run_id, experiment_id, progress):
        import ray

        if not sys.stderr.isatty():  # the workers' log lines reach a file or CI: no colour codes
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        # each worker's lines belong to its configuration: Ray's de-duplication would merge equal
        # lines of different configurations into one "[repeated 2x across cluster]"
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        uri = tracking_uri()
        env = {"MLFLOW_TRACKING_URI": uri if self.address else absolute_local_uri(uri),
               "MLFLOW_EXPERIMENT_ID": experiment_id, "PYTHONUNBUFFERED": "1", "PIPELINE_PROGRESS": "0",
               **{k: v for k, v in os.environ.items() if k in FORWARDED_ENV}}
        if self.address:
            ray.init(address=self.address, runtime_env={"env_vars": env}, logging_level=logging.WARNING)
        else:  # a local cluster for this sweep, gone with it
            ray.init(runtime_env={"env_vars": env}, include_dashboard=False, logging_level=logging.WARNING,
                     configure_logging=True)
        try:
            resources = ray.cluster_resources()
            gpus = (1.0 if resources.get("GPU", 0) > 0 else 0.0) if self.gpus_per_job == "auto" \
                else float(self.gpus_per_job)
            log.info("sweep: Ray cluster %s with %g CPUs and %g GPUs; %g CPUs and %g GPUs per configuration, "
                     "%d retries", self.address or "(local)", resources.get("CPU", 0), resources.get("GPU", 0),
                     self.cpus_per_job, gpus, self.max_retries)
            if gpus > resources.get("GPU", 0) or self.cpus_per_job > resources.get("CPU", 0):
                raise PipelineError(
                    f"a configuration asks for {self.cpus_per_job:g} CPUs and {gpus:g} GPUs, more than the Ray "
                    f"cluster has ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs): lower "
                    "cpus_per_job / gpus_per_job")
            task = ray.remote(run_configuration).options(
                num_cpus=self.cpus_per_job, num_gpus=gpus, max_retries=self.max_retries, retry_exceptions=False)
            threads = max(1, int(self.cpus_per_job))
            refs = {task.remote(self.chain, config, parent_run_id, threads): config for config in configs}
            return self.collect(ray, refs, parent_run_id, experiment_id, progress)
        finally:
            ray.shutdown()

    def collect(self, ray, refs: dict, parent_run_id: str, experiment_id: str, progress) -> list[Outcome]:
        pending, outcomes = list(refs), []
        interrupted = threading.Event()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def note_interrupt(signum, frame):  # then whatever handled it before (the CLI: KeyboardInterrupt)
            interrupted.set()
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            else:
                raise KeyboardInterrupt

        if threading.current_thread() is threading.main_thread():
            for sig in previous:
                signal.signal(sig, note_interrupt)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in ready:
                    label = refs[ref].label()
                    try:
                        result = ray.get(ref)
                        outcome = Outcome(label, "FINISHED", result["main_run_id"], test_acc=result.get("test_acc"))
                    except ray.exceptions.RayTaskError as exc:  # the chain raised: its runs ended FAILED
                        cause = getattr(exc, "cause", None) or exc
                        outcome = Outcome(label, "FAILED", failed_main_run(parent_run_id, experiment_id, label),
                                          one_line(cause))
                    except ray.exceptions.RayError as exc:  # its worker died on every try
                        main_id = failed_main_run(parent_run_id, experiment_id, label)
                        if main_id:
                            end_running_children(main_id, "FAILED", include_self=True)
                        outcome = Outcome(label, "FAILED", main_id,
                                          f"its worker died ({type(exc).__name__}) on all {self.max_retries + 1} tries")
                    outcomes.append(outcome)
                    progress.done(outcome)
                progress.tick()
        except BaseException as exc:
            # a Ctrl-C or SIGTERM, also where Ray's own code turned the KeyboardInterrupt into another error
            if not (isinstance(exc, KeyboardInterrupt) or interrupted.is_set()):
                raise
            log.warning("sweep interrupted: cancelling %d Ray tasks (their runs end KILLED)", len(pending))
            try:
                for ref in pending:  # a KeyboardInterrupt in each running task: its runs end KILLED
                    ray.cancel(ref)
                _, stuck = ray.wait(pending, num_returns=len(pending), timeout=STOP_GRACE_S)
                # force only the tasks that did not stop: force-cancelling a task whose result is
                # landing races Ray's completion of it ("Tried to complete task that was not
                # pending") and aborts this process
                for ref in stuck:
                    ray.cancel(ref, force=True)
            except Exception as cancel_error:  # noqa: BLE001 - the runs are ended below all the same
                log.warning("sweep: cancelling the Ray tasks failed: %s", one_line(cancel_error))
            end_running_children(parent_run_id)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise KeyboardInterrupt from exc
        finally:
            for sig, handler in previous.items():  # unless the CLI's handler now ignores further signals
                if threading.current_thread() is threading.main_thread() and signal.getsignal(sig) is note_interrupt:
                    signal.signal(sig, handler)
        return outcomes


#: Environment a Ray worker takes from the driver (the tracking URI and experiment are set anyway).
FORWARDED_ENV = ("PIPELINE_OFFLINE", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_TOKEN", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                 "TORCH_HOME", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")


def make_executor(config, chain: Chain, workers: int = 0, gpus: int = 0) -> Executor:
    """The executor a ``SweepConfig`` names, running ``chain`` for each
    configuration (the process executor runs it as ``python -m pipeline main`` in ``workers``
    processes, default ``jobs``, over ``gpus`` GPUs: ``pipeline.sharing.plan_process_workers``)."""
    if config.executor == "inline":
        if config.jobs > 1:
            log.warning("jobs=%d is ignored by executor=inline (one configuration at a time); "
                        "use executor=process or ray to run several at once", config.jobs)
        return InlineExecutor(chain)
    if config.executor == "process":
        return ProcessExecutor(workers or config.jobs, gpus)
    if config.executor == "ray":
        return RayExecutor(chain, config.ray_address, config.gpus_per_job, config.cpus_per_job, config.max_retries)
    raise PipelineError(f"unknown executor {config.executor!r}; valid: inline, process, ray")
