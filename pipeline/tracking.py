"""The one module that talks to MLflow for the steps: runs that always end (FINISHED,
FAILED or KILLED, never left RUNNING), parameters logged once, and checked look-ups of
upstream runs and their artefacts."""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from pipeline import contracts
from pipeline.contracts import CONFIG_JSON, REUSE_KEY_TAG, STEP_TAG
from pipeline.reuse import STEP_MODULES, code_version
from pipeline.errors import PipelineError
from pipeline.outbox import end_run_quietly

log = logging.getLogger("pipeline")
# MLflow's artefact upload/download bars fill redirected logs with fragments; the pipeline says
# what it stores and fetches in its own log lines (a user's explicit setting is kept)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

#: Seconds between two heartbeats of a running step (tag ``pipeline.heartbeat``, ``pipeline.liveness``).
HEARTBEAT_S = float(os.environ.get("PIPELINE_HEARTBEAT_S", "60"))


def param_string(value: Any) -> str:
    """How a parameter value is logged: bools and numbers in one canonical spelling, lists
    comma-separated (as they are given on the command line)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return ",".join(param_string(v) for v in value)
    return str(value)


def log_params_once(params: dict[str, Any]) -> None:
    """Log the params the active run does not have yet.

    ``mlflow run`` logs the entry point's parameters in the spelling of the command line
    (``1e-3``); re-logging ``0.001`` under the same key would fail the run, so keys already
    present are left as they are (the typed values are in the run's ``config.json``).
    """
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params
    new = {k: param_string(v) for k, v in params.items() if k not in existing}
    if new:
        mlflow.log_params(new)


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = contracts.EXPERIMENT_KIND_TAG, contracts.EXPERIMENT_KIND


def ensure_experiment(default: str | None = None) -> str | None:
    """The id of the experiment to start a top-level run in, created if missing: the one named
    by ``MLFLOW_EXPERIMENT_NAME``, else ``default`` (``cbam-gates-<dataset>``). None where the
    experiment is chosen already (``MLFLOW_EXPERIMENT_ID``, a run `mlflow run` created, an
    experiment set with ``mlflow.set_experiment``) or nothing names one (MLflow's default).

    MLflow's own get-or-create races when several processes start at once against a new
    experiment name (all but one fail with RESOURCE_ALREADY_EXISTS); here the losers of
    that race simply look the experiment up again."""
    from mlflow.tracking import fluent

    if os.environ.get("MLFLOW_RUN_ID") or os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return None
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or (None if fluent._active_experiment_id else default)
    if not name:
        return None
    client = mlflow.MlflowClient()
    for _ in range(5):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                raise
    raise PipelineError(f"cannot create or find the experiment {name!r}")


def planned_experiment_id(default: str | None = None, parent_run_id: str | None = None) -> str:
    """The experiment a step run started now would go to (as ``step_run`` chooses it), before
    it starts: the active run's, the parent's, the run `mlflow run` created, else
    ``ensure_experiment``'s or MLflow's current one."""
    from mlflow.tracking import fluent

    active = mlflow.active_run()
    if active is not None:
        return active.info.experiment_id
    if parent_run_id or os.environ.get("MLFLOW_RUN_ID"):
        return mlflow.MlflowClient().get_run(parent_run_id or os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    return ensure_experiment(default) or fluent._get_experiment_id()


def experiment_of(run) -> str:
    """The name of the experiment ``run`` is in: a step started on its own from an upstream run
    goes where that run is, unless the user names an experiment."""
    return mlflow.MlflowClient().get_experiment(run.info.experiment_id).name


def report_folder(out: str | Path, experiment: str, run_name: str, owner: str, run_id: str = "") -> Path:
    """``out/<experiment>/<run name>/``, emptied, for the report of ``owner`` (what the report is
    of: a configuration's digest for ``main``, so that a rerun of the same configuration replaces
    its report; the sweep run's id for a sweep). A folder of that name that holds another owner's
    report (its ``report.json``), or a report made before reports recorded their owner, is never
    replaced: this report goes to ``<run name>_<owner's first 8 characters>`` instead, and the log
    says so. Names are made file-system safe (``swish_late_digits_64px_2ep_seed0``)."""
    import re
    import shutil

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9.,=+-]+", "_", text.replace(" · ", "_")).strip("_") or "run"

    base = Path(out) / safe(experiment)
    folder = base / safe(run_name)
    if folder.is_dir() and any(folder.iterdir()) and report_owner(folder) != owner:
        other = report_owner(folder) or "an unrecorded source (written before reports recorded theirs)"
        taken = folder
        folder = base / f"{safe(run_name)}_{safe(owner)[:8]}"
        log.warning("report folder %s holds the report of %s; this report (of %s) goes to %s instead", taken,
                    other, owner, folder)
        if folder.is_dir() and any(folder.iterdir()) and report_owner(folder) != owner:
            raise PipelineError(f"report folders {taken} and {folder} both hold other reports; give another --out")
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    mark_report_folder(folder, owner, run_id)
    return folder


def report_owner(folder: Path) -> str:
    """The owner recorded in a report folder's ``report.json``; "" where there is none."""
    try:
        return str(json.loads((folder / contracts.REPORT_SOURCE).read_text()).get("owner", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def mark_report_folder(folder: Path, owner: str, run_id: str = "") -> None:
    """Record in ``folder/report.json`` whose report it holds (and which run wrote it)."""
    (folder / contracts.REPORT_SOURCE).write_text(json.dumps({"owner": owner, "written_by_run": run_id}, indent=1))


def config_digest(config: dict) -> str:
    """A configuration's identity, 16 hex digits of SHA-256 over its JSON (keys sorted)."""
    import hashlib

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: The experiment view the project shares through an experiment tag (MLflow's "share view"):
#: main runs only, ranked by test accuracy (MLflow lists runs flat, not folded under their sweep,
#: when they are sorted by a metric), with the columns a comparison needs.
VIEW_KEY = "cbam-gates"
VIEW_STATE = {
    "searchFilter": f"tags.`{STEP_TAG}` = '{contracts.MAIN}'", "orderByKey": "metrics.`test_acc`",
    "orderByAsc": False, "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [],
    "modelVersionFilter": "All Runs",
    "selectedColumns": [*(f"params.`{k}`" for k in ("activation", "attention", "backbone", "position", "dataset",
                                                   "image_size", "epochs", "seed")),
                        *(f"metrics.`{k}`" for k in ("test_acc", "gini", "entropy", "sparsity")),
                        # localisation, on datasets with ground truth (empty cells elsewhere)
                        *(f"metrics.`{contracts.LOCALISATION_PREFIX}{k}`" for k in ("cbam_pxap", "cbam_pointing_mask",
                                                                                    "cam_pxap")),
                        # faithfulness: how much more the attention's order matters than a random one
                        *(f"metrics.`{contracts.FAITHFULNESS_PREFIX}{k}`" for k in ("channel_advantage_acc",
                                                                                    "deletion_advantage_acc"))],
    "runsExpanded": {}, "runsPinned": [], "runsHidden": [], "runListHidden": False,
}


def prepare_experiment(experiment_id: str) -> None:
    """Make the experiment open well in MLflow's UI (once per change; it may have been created
    by `mlflow run --experiment-name` or by hand): marked as machine learning (runs, not GenAI
    traces) and holding the project's shared view (``VIEW_STATE``, see ``view_url``)."""
    client = mlflow.MlflowClient()
    tags = client.get_experiment(experiment_id).tags
    if tags.get(EXPERIMENT_KIND_TAG) is None:
        _set_experiment_tag(client, experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    view = json.dumps(VIEW_STATE)
    if tags.get(f"mlflow.sharedViewState.{VIEW_KEY}") != view:
        _set_experiment_tag(client, experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", view)


def _set_experiment_tag(client: mlflow.MlflowClient, experiment_id: str, key: str, value: str) -> None:
    """Set an experiment tag that several processes may set at once (runs starting together in one
    experiment): MLflow's SQL store inserts a missing tag, so the second writer of a new key gets a
    UNIQUE-constraint error. That writer re-reads the tag and tries again if it is still not ``value``."""
    for attempt in range(3):
        try:
            client.set_experiment_tag(experiment_id, key, value)
            return
        except MlflowException:
            if client.get_experiment(experiment_id).tags.get(key) == value:
                return
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def view_url(experiment_id: str, server: str | None = None) -> str:
    """The MLflow UI page of the experiment's comparison view. ``server``: the UI's address
    (default: the tracking URI when it is a server, else ``mlflow ui``'s http://127.0.0.1:5000)."""
    uri = server or mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def log_view_hint(experiment_id: str) -> None:
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        log.info("compare the runs in the MLflow UI: %s", view_url(experiment_id))
    else:
        log.info("compare the runs in the MLflow UI: mlflow ui --backend-store-uri %s, then open %s",
                 uri, view_url(experiment_id))


@contextmanager
def step_run(
    step: str,
    params: dict[str, Any],
    config: dict[str, Any] | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    experiment: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start the step's run and always end it: nested under the active run if there is one
    (``main`` and ``sweep`` chaining in-process), under ``parent_run_id`` (a sweep's worker
    process), or continuing ``run_id`` (a resume) or the run ``mlflow run`` created.

    A top-level run goes to ``experiment`` (a name; see ``ensure_experiment``) unless the
    user chose one. Logs ``params`` (flat) once, ``config`` (typed; default ``params``) as ``config.json``, and
    the step and code-version tags. Exceptions end it FAILED, Ctrl-C and SIGTERM (as
    KeyboardInterrupt) KILLED; both re-raise.
    """
    nested = mlflow.active_run() is not None
    if nested:  # MLflow puts a nested run in its default experiment, not its parent's
        experiment_id = mlflow.active_run().info.experiment_id
    else:
        experiment_id = None if run_id or parent_run_id else ensure_experiment(experiment)
    run = mlflow.start_run(run_id=run_id, run_name=run_name, nested=nested, experiment_id=experiment_id,
                           parent_run_id=parent_run_id)
    try:
        if not nested and not parent_run_id:  # a sweep's workers: the sweep prepared it
            prepare_experiment(run.info.experiment_id)
        version = {contracts.CODE_VERSION_TAG: code_version(step)} if step in STEP_MODULES else {}
        where = {contracts.HOST_TAG: socket.gethostname(), contracts.PID_TAG: str(os.getpid())}
        mlflow.set_tags({STEP_TAG: step, **version, **where, **(tags or {})})
        if run_name:  # also when continuing the run that `mlflow run` created
            mlflow.set_tag(contracts.RUN_NAME_TAG, run_name)
        log_params_once(params)
        mlflow.log_dict(config if config is not None else params, CONFIG_JSON)
        heartbeat = Heartbeat(run.info.run_id)
        try:
            yield run
        finally:
            heartbeat.stop()
    except KeyboardInterrupt:
        end_run_quietly(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as exc:
        tag_error_quietly(exc)
        end_run_quietly(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def tag_error_quietly(exc: BaseException) -> None:
    """The active run's one-line error as its ``ERROR_TAG`` (what a report
    rebuilt later lists beside a failed configuration); skipped at once when the server is away
    (ending the run matters more than its error text)."""
    from pipeline.errors import one_line
    from pipeline.outbox import fail_fast, server_answers

    try:
        if server_answers():
            with fail_fast():
                mlflow.set_tag(contracts.ERROR_TAG, one_line(exc, limit=1000) or type(exc).__name__)
    except Exception:
        pass


class Heartbeat:
    """Sets the run's heartbeat tag now and every ``every`` seconds until stopped; a failed
    update (the server is briefly away) is skipped, never raised into the step."""

    def __init__(self, run_id: str, every: float = HEARTBEAT_S):
        self.run_id, self.every = run_id, every
        self.client = mlflow.MlflowClient()
        self.stopped = threading.Event()
        self.beat()
        self.thread = threading.Thread(target=self.loop, name=f"heartbeat-{run_id[:8]}", daemon=True)
        self.thread.start()

    def beat(self) -> None:
        try:
            self.client.set_tag(self.run_id, contracts.HEARTBEAT_TAG, f"{time.time():.0f}")
        except Exception as exc:  # the next beat tries again
            log.debug("heartbeat of %s not recorded: %s", self.run_id, exc)

    def loop(self) -> None:
        while not self.stopped.wait(self.every):
            self.beat()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


def missing_artifacts(run_id: str, paths) -> list[str]:
    """Which of ``paths`` the run's artefact store no longer lists."""
    listed: dict[str, set[str]] = {}
    missing = []
    for path in paths:
        folder, _, name = path.rpartition("/")
        if folder not in listed:
            try:
                listed[folder] = artifact_names(run_id, folder)
            except Exception:  # the store itself is gone or unreadable
                listed[folder] = set()
        if name not in listed[folder]:
            missing.append(path)
    return missing


def find_reusable_run(step: str, key: str, experiment_id: str, tag: str = REUSE_KEY_TAG):
    """The newest FINISHED run whose ``tag`` (the step's reuse key by default) is ``key`` and
    whose required artefacts are all still there, or None (a run with lost artefacts is passed
    over, and the log says so)."""
    query = f"tags.`{tag}` = '{key}' and attributes.status = 'FINISHED'"
    for run in mlflow.MlflowClient().search_runs([experiment_id], query, order_by=["attributes.start_time DESC"]):
        lost = missing_artifacts(run.info.run_id, contracts.REQUIRED_ARTIFACTS.get(step, ()))
        if not lost:
            return run
        log.warning("%s: finished run %s matches but has lost %s; running the step again",
                    step, run.info.run_id, ", ".join(lost))
    return None


def get_step_run(run_id: str, step: str, artifact: str | None = None, finished: bool = True):
    """The finished run ``run_id`` of ``step``; one-line errors when it does not exist, belongs
    to another step, did not finish (unless ``finished`` is False), or lacks ``artifact``."""
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception:
        raise PipelineError(
            f"run {run_id!r} does not exist in the tracking store {mlflow.get_tracking_uri()!r}"
        ) from None
    actual = run.data.tags.get(STEP_TAG)
    if actual != step:
        raise PipelineError(f"run {run_id!r} is a {actual or 'non-pipeline'} run, not a {step} run")
    if finished and run.info.status != "FINISHED":
        raise PipelineError(f"{step} run {run_id!r} is {run.info.status}, not FINISHED")
    if artifact is not None and missing_artifacts(run_id, [artifact]):
        raise PipelineError(f"{step} run {run_id!r} has no artefact {artifact!r}")
    return run


def download_artifact(run_id: str, artifact: str, dst: str | os.PathLike) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(dst)))


# Queries the steps, the executors and the report share: each written once, here. -----------

def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


#: What MLflow answers for a run id that is not in the store (malformed ids included).
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def get_run(run_id: str):
    """The run ``run_id``; a one-line error naming the store when it does not exist (any other
    failure, a server away say, is raised as MLflow raised it)."""
    try:
        return mlflow.MlflowClient().get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in NOT_FOUND_CODES:
            raise
        raise PipelineError(f"run {run_id!r} does not exist in the tracking store {mlflow.get_tracking_uri()!r}") from None


def artifact_names(run_id: str, folder: str = "") -> set[str]:
    """The names of the files and folders directly in the run's artefact ``folder`` ("" = root)."""
    return {Path(f.path).name for f in mlflow.MlflowClient().list_artifacts(run_id, folder or None)}


def set_run_tag(run_id: str, key: str, value: str) -> None:
    mlflow.MlflowClient().set_tag(run_id, key, value)


def read_config(run_id: str) -> dict | None:
    """The typed configuration a step run logged (its ``config.json``); None for a run made
    before steps logged it."""
    import tempfile

    if CONFIG_JSON not in artifact_names(run_id):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(download_artifact(run_id, CONFIG_JSON, tmp).read_text())


def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of each metric of the run."""
    return dict(mlflow.MlflowClient().get_run(run_id).data.metrics)


def metric_history(run_id: str, key: str) -> list[float]:
    """Every value logged for ``key``, in step order."""
    return [m.value for m in sorted(mlflow.MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)]


def metric_steps(run_id: str, key: str) -> list[int]:
    """The steps at which ``key`` was logged."""
    return [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key)]


def child_runs(parent_run_id: str, experiment_id: str | None = None, *, status: str | None = None,
               unfinished: bool = False, name: str | None = None, newest_first: bool = False,
               limit: int | None = None) -> list:
    """The runs directly below ``parent_run_id`` (tag ``PARENT_RUN_TAG``),
    optionally only those with ``status``, not FINISHED (``unfinished``) or named ``name``."""
    client = mlflow.MlflowClient()
    if experiment_id is None:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.`{contracts.PARENT_RUN_TAG}` = '{parent_run_id}'"
    if name is not None:
        query += f" and tags.`{contracts.RUN_NAME_TAG}` = '{name}'"
    if status is not None:
        query += f" and attributes.status = '{status}'"
    if unfinished:
        query += " and attributes.status != 'FINISHED'"
    kwargs: dict[str, Any] = {"order_by": ["attributes.start_time DESC"]} if newest_first else {}
    if limit is not None:
        kwargs["max_results"] = limit
    return client.search_runs([experiment_id], query, **kwargs)


def failed_main_run(parent_run_id: str, experiment_id: str, label: str) -> str:
    """The id of the newest main run ``label`` under the sweep run (a failed or killed
    configuration), "" if none started."""
    runs = child_runs(parent_run_id, experiment_id, name=label, newest_first=True, limit=1)
    return runs[0].info.run_id if runs else ""


def orphaned_main_run(parent_run_id: str, label: str):
    """The RUNNING main run ``label`` under ``parent_run_id``, or None: what a sweep's task
    whose worker died left (labels are unique within a sweep, and a retry starts only once
    the first attempt's process is gone)."""
    runs = child_runs(parent_run_id, status="RUNNING", name=label, newest_first=True, limit=1)
    return runs[0] if runs else None


def end_running_children(parent_run_id: str, status: str = "KILLED", include_self: bool = False) -> None:
    """Mark every run below ``parent_run_id`` (children, grandchildren; and itself with
    ``include_self``) that is still RUNNING."""
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    experiment_id = parent.info.experiment_id
    if include_self and parent.info.status == "RUNNING":
        client.set_terminated(parent_run_id, status)
    todo = [parent_run_id]
    while todo:
        for run in child_runs(todo.pop(), experiment_id):
            todo.append(run.info.run_id)
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status)


def end_run_as(run_id: str, status: str) -> None:
    mlflow.MlflowClient().set_terminated(run_id, status)


def experiment_ids(name: str = "") -> list[str]:
    """The id of the experiment ``name`` (a one-line error if it does not exist), or of every
    experiment for ""."""
    client = mlflow.MlflowClient()
    if not name:
        return [e.experiment_id for e in client.search_experiments()]
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise PipelineError(f"experiment {name!r} does not exist")
    return [exp.experiment_id]


def running_step_runs(experiment_ids: list[str]) -> list:
    """The pipeline's RUNNING runs in these experiments, oldest first."""
    return mlflow.MlflowClient().search_runs(
        experiment_ids, f"attributes.status = 'RUNNING' and tags.`{STEP_TAG}` != ''",
        order_by=["attributes.start_time ASC"])


def delete_artifact(run_id: str, path: str) -> None:
    """Delete an artefact of the run from its store (any store MLflow can delete from: local,
    the tracking server's proxied artefacts, S3, ...)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(mlflow.get_run(run_id).info.artifact_uri).delete_artifacts(path)


def finished_step_runs(experiment_name: str, step: str):
    """(the experiment, its FINISHED runs of ``step``); a one-line error if it does not exist."""
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        raise PipelineError(f"experiment {experiment_name!r} does not exist")
    runs = client.search_runs([exp.experiment_id], f"tags.`{STEP_TAG}` = '{step}' and attributes.status = 'FINISHED'")
    return exp, runs
