"""The only reader of MLflow in the report: which compute-metrics runs a report covers
(``metrics_runs_of``) and their typed ``Record``\\ s
(``gather``), read from what the steps logged: each run's ``config.json``, the
compute-metrics metrics and its class arrays, the train run's metric histories and gradient
flow, and the probe's channel weights, spatial maps and grid images. Nothing is re-derived.
"""
from __future__ import annotations

import functools
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import ReportConfig
from pipeline.contracts import (
    ATTENTION_META,
    BOXES,
    CAMS,
    CHANNEL_WEIGHTS,
    FAITHFULNESS_CURVES,
    CLASS_GINI,
    CLASS_WEIGHTS,
    COMPUTE_METRICS,
    CONFIG_JSON,
    ERROR_TAG,
    FAILED_TAG,
    EPOCH_ATTENTION_PREFIX,
    GRAD_FLOW,
    GRID_IMAGES,
    LABELS,
    MAIN,
    MASKS,
    PROBE_ATTENTION,
    SPATIAL_MAPS,
    STEP_TAG,
    SWEEP,
    TRAIN,
    UPSTREAM_TAGS,
)
from pipeline.errors import PipelineError, one_line
from pipeline.report.schema import CURVES, GATE_PARAMETERS, GRID_SIZE, GROUP_KEYS, Record, with_design_defaults
from pipeline.report.stats import distinct_seeds
from pipeline.tracking import (
    artifact_names,
    child_runs,
    download_artifact,
    experiment_of,
    finished_step_runs,
    get_run,
    metric_history,
    param_string,
)

log = logging.getLogger("pipeline")


@dataclass
class Source:
    """What a report covers: its compute-metrics runs, a title, and where its run goes."""

    metrics_run_ids: list[str]
    title: str
    experiment: str  # name
    name: str  # of the report run and its folder
    #: a sweep's configurations that did not finish: (label, main run id or "", error), and how
    #: many configurations it had (0: not a sweep)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    configurations: int = 0


def metrics_runs_of(config: ReportConfig) -> Source:
    """The compute-metrics runs of the report's source: every FINISHED one of an experiment,
    those of a sweep's FINISHED main runs, or that of one main run."""
    if config.experiment_name:
        exp, runs = finished_step_runs(config.experiment_name, COMPUTE_METRICS)
        return Source([r.info.run_id for r in runs], f"experiment {config.experiment_name}", exp.name,
                      "report · experiment")
    run_id = config.sweep_run_id or config.main_run_id
    step = SWEEP if config.sweep_run_id else MAIN
    run = get_run(run_id)
    if run.data.tags.get(STEP_TAG) != step:
        raise PipelineError(f"run {run_id!r} is not a {step} run")
    experiment = experiment_of(run)
    name = f"report · {run.info.run_name or run_id}"
    key = UPSTREAM_TAGS[COMPUTE_METRICS]
    if step == MAIN:
        metrics_id = run.data.tags.get(key)
        if not metrics_id or run.info.status != "FINISHED":
            raise PipelineError(f"main run {run_id!r} is {run.info.status} and has no compute-metrics run to "
                                "report on; run it again (python -m pipeline main ...) or report another run")
        return Source([metrics_id], f"main run {run_id}", experiment, name)
    children = child_runs(run_id, run.info.experiment_id)
    finished = [c for c in children if c.info.status == "FINISHED"]
    failed = sweep_failures(run, children)
    total = int(run.data.metrics.get("configurations", len(finished) + len(failed)))
    return Source([c.data.tags[key] for c in finished if key in c.data.tags], f"sweep run {run_id}", experiment, name,
                  failed, total)


def sweep_failures(sweep, children) -> list[tuple[str, str, str]]:
    """The configurations of ``sweep`` that did not finish, as its own report listed them: the
    labels its failed tag names (with the newest main run of each and that run's error tag, or
    "failed before its main run started"). A sweep without the tag was interrupted (listed: its
    main runs that are not FINISHED) or made before sweeps recorded failures (nothing listed, as
    its reports then did)."""
    latest: dict[str, object] = {}
    for child in sorted(children, key=lambda c: c.info.start_time or 0):
        latest[child.info.run_name] = child  # a retried configuration: its newest main run counts
    named = sweep.data.tags.get(FAILED_TAG)
    if named is None:
        if sweep.info.status == "FINISHED":
            return []
        labels = [label for label, c in latest.items() if c.info.status != "FINISHED"]
    else:
        labels = [label for label in named.split(",") if label and label != "none"]
    failed = []
    for label in labels:
        run = latest.get(label)
        if run is None:
            failed.append((label, "", "failed before its main run started"))
        else:
            failed.append((label, run.info.run_id, run.data.tags.get(ERROR_TAG, run.info.status.lower())))
    return failed


_LISTED: dict[tuple[Path, str], set[str]] = {}


def _names(run_id: str, tmp: Path) -> set[str]:
    """What is in the run's artefact root, listed once per gather."""
    if (tmp, run_id) not in _LISTED:
        _LISTED[(tmp, run_id)] = artifact_names(run_id)
    return _LISTED[(tmp, run_id)]


def _folder(run_id: str, folder: str, tmp: Path) -> Path:
    """The run's artefact folder, downloaded once (one store round trip for all its files);
    an empty folder where the run logged nothing there (any other failure is raised)."""
    local = tmp / run_id / folder
    if not local.exists():
        if folder in _names(run_id, tmp):
            download_artifact(run_id, folder, tmp / run_id)
        local.mkdir(parents=True, exist_ok=True)
    return local


def _file(run_id: str, path: str, tmp: Path) -> Path | None:
    """A logged file of the run, None where the run did not log it (a run made before the
    artefact existed)."""
    folder, _, name = path.rpartition("/")
    if folder:
        local = _folder(run_id, folder, tmp) / name
    else:
        local = tmp / run_id / name
        if not local.exists() and name in _names(run_id, tmp):
            download_artifact(run_id, path, tmp / run_id)
    return local if local.exists() else None


def _required(run_id: str, path: str, tmp: Path) -> Path:
    local = _file(run_id, path, tmp)
    if local is None:
        raise PipelineError(f"run {run_id!r} has no artefact {path!r}: it cannot be reported on")
    return local


def _json(run_id: str, path: str, tmp: Path) -> dict | None:
    local = _file(run_id, path, tmp)
    return json.loads(local.read_text()) if local is not None else None


def _config(run, train, probe, tmp: Path) -> tuple[dict[str, str], str, dict]:
    """The grouping keys as logged, the seed, and the train run's typed config: from each run's
    ``config.json``; for runs made before steps logged it, from their parameters (as the report
    read them then: the train run's, else the compute-metrics run's; ``num_images`` the probe's)."""
    train_config = _json(train.info.run_id, CONFIG_JSON, tmp)
    probe_config = _json(probe.info.run_id, CONFIG_JSON, tmp)
    if train_config is not None and probe_config is not None:
        typed = {**train_config, "num_images": probe_config.get("num_images", "")}
        config = {k: param_string(typed[k]) if k in typed else "" for k in GROUP_KEYS}
        return with_design_defaults(config), param_string(train_config.get("seed", "")), train_config
    p, params = run.data.params, train.data.params
    config = {k: params.get(k, p.get(k, "")) for k in GROUP_KEYS}
    config.update(activation=p["activation"], position=p["position"], num_images=probe.data.params.get("num_images", ""))
    return with_design_defaults(config), p.get("seed", params.get("seed", "")), {"dataset": params.get("dataset"),
                                                           "data_dir": params.get("data_dir", "data")}


@functools.lru_cache(maxsize=4)
def _test_images(dataset: str, data_dir: str):
    from pipeline.data import load_dataset

    return load_dataset(dataset, data_dir).test.images


def _grid_images_from_dataset(train_config: dict, indices: list[int]) -> np.ndarray | None:
    """For probe runs made before the probe stored its grid images: the same images, from the
    dataset (a report of newer runs needs no dataset)."""
    try:
        images = _test_images(train_config["dataset"], train_config.get("data_dir", "data"))
    except PipelineError as exc:
        log.warning("report: no spatial-map grid (%s)", one_line(exc))
        return None
    return images[indices].numpy()


#: metrics the report reads from the probe-attention run: the re-initialised network's accuracy
PROBE_ONLY_METRICS = ("randomised_test_acc",)


def read_record(run, tmp: Path) -> Record:
    """The record of one finished compute-metrics run."""
    metrics_id = run.info.run_id
    train_id = run.data.tags[UPSTREAM_TAGS[TRAIN]]
    probe_id = run.data.tags[UPSTREAM_TAGS[PROBE_ATTENTION]]
    train, probe = get_run(train_id), get_run(probe_id)
    config, seed, train_config = _config(run, train, probe, tmp)
    histories = {k: metric_history(train_id, k) for k in train.data.metrics  # what the run logged per epoch
                 if k in CURVES or k in GATE_PARAMETERS or k.startswith(EPOCH_ATTENTION_PREFIX)}
    flow = _json(train_id, GRAD_FLOW, tmp)  # None: a train run older than the artefact
    metrics = dict(run.data.metrics)
    for key in PROBE_ONLY_METRICS:  # logged by the probe alone, not carried by compute-metrics
        if key in probe.data.metrics:
            metrics.setdefault(key, probe.data.metrics[key])
    record = Record(config, seed, metrics, train_id, probe_id,
                    metrics_id, run.info.start_time or 0, histories,
                    (flow["layers"], flow["mean_abs_grad"][-1]) if flow else None)
    record.channel_weights = np.load(_required(probe_id, CHANNEL_WEIGHTS, tmp))
    meta = json.loads(_required(probe_id, ATTENTION_META, tmp).read_text())
    record.grid_indices = list(meta["indices"][:GRID_SIZE])
    images = _file(probe_id, GRID_IMAGES, tmp)
    record.grid_images = np.load(images) if images is not None else None
    cams, masks, boxes = (_file(probe_id, path, tmp) for path in (CAMS, MASKS, BOXES))
    record.grid_cams = np.load(cams)[:GRID_SIZE] if cams is not None else None  # None: a probe older than CAMs
    if masks is not None and boxes is not None:  # a dataset with localisation ground truth
        record.grid_masks, record.grid_boxes = np.load(masks)[:GRID_SIZE], np.load(boxes)[:GRID_SIZE]
    if not record.has_attention:
        return record
    record.classes = [str(c) for c in meta["classes"]]
    curves = _file(probe_id, FAITHFULNESS_CURVES, tmp)  # None: faithfulness_images 0, or a probe older than it
    record.faithfulness_curves = pd.read_csv(curves) if curves is not None else None
    weights_file, gini_file = _file(metrics_id, CLASS_WEIGHTS, tmp), _file(metrics_id, CLASS_GINI, tmp)
    if weights_file is not None and gini_file is not None:
        record.class_weights = np.load(weights_file)
        per_class = pd.read_csv(gini_file, dtype={"class": str})
        record.class_gini = dict(zip(per_class["class"], per_class["gini"].astype(float).tolist()))
    else:  # a compute-metrics run older than its class files: the same formula on the probe's arrays
        from pipeline.metrics import class_means, gini

        labels = np.load(_required(probe_id, LABELS, tmp))
        record.class_weights = class_means(record.channel_weights, labels, len(record.classes))[0]
        record.class_gini = dict(zip(record.classes, gini(record.class_weights).tolist()))
    record.grid_maps = np.load(_required(probe_id, SPATIAL_MAPS, tmp))[:GRID_SIZE]
    if record.grid_images is None:  # a probe run older than its grid images
        record.grid_images = _grid_images_from_dataset(train_config, record.grid_indices)
    return record


def gather(metrics_run_ids: list[str]) -> list[Record]:
    """The finished compute-metrics runs among these ids, each as a record of its chain; one
    record per configuration and seed (the newest run)."""
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for run_id in metrics_run_ids:
                run = get_run(run_id)
                if run.data.tags.get(STEP_TAG) != COMPUTE_METRICS or run.info.status != "FINISHED":
                    continue
                records.append(read_record(run, Path(tmp)))
        finally:
            for key in [k for k in _LISTED if k[0] == Path(tmp)]:
                del _LISTED[key]
    return distinct_seeds(records)
