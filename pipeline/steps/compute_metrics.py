"""The ``compute-metrics`` step: attention metrics of a finished ``probe-attention`` run.

Logs, on its own run, each metric's mean over images as ``<name>`` with ``<name>_std``
beside it (:mod:`pipeline.metrics`, ``docs/metrics.md``); the notebook's single-image values
for image 0 as ``first_image/<name>`` (and ``first_image/notebook_gini``, the notebook's
formula on raw weights); the probe's ``test_acc``, ``test_top5`` and ``test_map``; and the
artefacts ``metrics/per_image.csv`` (one row per image) and ``metrics/summary.csv`` /
``metrics/summary.json`` (one row per metric: mean, std, n_defined).
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from pipeline.config import StepConfig
from pipeline.errors import PipelineError
from pipeline.metrics import notebook_gini, per_image_metrics, summarise
from pipeline.steps.probe import CHANNEL_WEIGHTS, LABELS, META, SPATIAL_MAPS
from pipeline.steps.probe import STEP as PROBE_STEP
from pipeline.tracking import download_artifact, get_step_run, step_run

log = logging.getLogger("pipeline")

STEP = "compute-metrics"
PER_IMAGE = "metrics/per_image.csv"
SUMMARY = "metrics/summary.csv"
CARRIED_METRICS = ("test_acc", "test_top5", "test_map")


@dataclass(frozen=True)
class MetricsConfig(StepConfig):
    probe_run_id: str = ""

    def __post_init__(self):
        if not self.probe_run_id.strip():
            raise PipelineError("probe_run_id is required: the id of a finished probe-attention run")


def run_compute_metrics(config: MetricsConfig) -> str:
    probe_run = get_step_run(config.probe_run_id, PROBE_STEP, CHANNEL_WEIGHTS)
    with tempfile.TemporaryDirectory() as tmp:
        weights = np.load(download_artifact(config.probe_run_id, CHANNEL_WEIGHTS, tmp))
        maps = np.load(download_artifact(config.probe_run_id, SPATIAL_MAPS, tmp))
        labels = np.load(download_artifact(config.probe_run_id, LABELS, tmp))
        meta = json.loads(Path(download_artifact(config.probe_run_id, META, tmp)).read_text())
    values = per_image_metrics(weights, maps.astype(np.float32))
    summary = summarise(values)

    params = {**config.to_dict(), **{k: meta[k] for k in ("activation", "position", "dataset", "image_size")},
              "num_images": int(weights.shape[0]), "train_run_id": meta["source_run_id"],
              "seed": probe_run.data.params.get("seed", "")}
    tags = {"pipeline.probe_run_id": config.probe_run_id, "pipeline.train_run_id": meta["source_run_id"]}
    with step_run(STEP, params, tags=tags) as run, tempfile.TemporaryDirectory() as tmp:
        logged = {}
        for name, stats in summary.items():
            logged[name] = stats["mean"]
            logged[f"{name}_std"] = stats["std"]
        first = weights[0]
        logged.update({f"first_image/{name}": float(v[0]) for name, v in values.items()})
        logged["first_image/notebook_gini"] = notebook_gini(first)
        logged.update({k: probe_run.data.metrics[k] for k in CARRIED_METRICS if k in probe_run.data.metrics})
        mlflow.log_metrics(logged)

        per_image = pd.DataFrame({"image_index": meta["indices"], "label": labels, **values})
        table = pd.DataFrame([{"metric": k, **v} for k, v in summary.items()])
        out = Path(tmp)
        per_image.to_csv(out / "per_image.csv", index=False)
        table.to_csv(out / "summary.csv", index=False)
        mlflow.log_artifact(str(out / "per_image.csv"), "metrics")
        mlflow.log_artifact(str(out / "summary.csv"), "metrics")
        mlflow.log_table(table, "metrics/summary.json")
        log.info("metrics %s over %d images: %s", run.info.run_id, weights.shape[0],
                 ", ".join(f"{k} {v['mean']:.4g}" for k, v in summary.items() if not math.isnan(v["mean"])))
        return run.info.run_id
