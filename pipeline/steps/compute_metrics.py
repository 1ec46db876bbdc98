"""The ``compute-metrics`` step: attention metrics of a finished ``probe-attention`` run.

Logs, on its own run, each metric's mean over images as ``<name>`` with ``<name>_std``
beside it (:mod:`pipeline.metrics`, ``docs/metrics.md``); the notebook's single-image values
for image 0 as ``first_image/<name>`` (and ``first_image/notebook_gini``, the notebook's
formula on raw weights); the probe's ``test_acc``, ``test_top5`` and ``test_map``; and the
artefacts ``metrics/per_image.csv`` (one row per image) and ``metrics/summary.csv`` /
``metrics/summary.json`` (one row per metric: mean, std, n_defined). A probe of the baseline
without CBAM (channel weights of shape (N, 0)) has no attention to measure: its run logs the
accuracy metrics only, and its summary has no rows.
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

from pipeline.config import MetricsConfig
from pipeline.contracts import (
    ATTENTION_META,
    CHANNEL_WEIGHTS,
    CLASS_GINI,
    CLASS_WEIGHTS,
    COMPUTE_METRICS,
    LABELS,
    METRICS_DIR,
    METRICS_SUMMARY,
    METRICS_SUMMARY_JSON,
    PER_IMAGE_METRICS,
    PROBE_ATTENTION,
    REUSE_KEY_TAG,
    SPATIAL_MAPS,
    TRAIN,
    UPSTREAM_TAGS,
    reuse_key,
)
from pipeline.metrics import class_means, gini, notebook_gini, per_image_metrics, summarise
from pipeline.results import StepResult
from pipeline.tracking import download_artifact, experiment_of, get_step_run, step_run

log = logging.getLogger("pipeline")

CARRIED_METRICS = ("test_acc", "test_top5", "test_map")


@dataclass
class Probed:
    """What a probe-attention run recorded, as arrays: loaded from its artefacts here, or the
    probe step's own result (which has the same fields) when it ran in this process."""

    channel_weights: np.ndarray  # (N, C) float32
    spatial_maps: np.ndarray  # (N, H, W) float16
    labels: np.ndarray  # (N,) int64
    meta: dict


def load_probed(probe_run_id: str) -> Probed:
    with tempfile.TemporaryDirectory() as tmp:
        return Probed(np.load(download_artifact(probe_run_id, CHANNEL_WEIGHTS, tmp)),
                      np.load(download_artifact(probe_run_id, SPATIAL_MAPS, tmp)),
                      np.load(download_artifact(probe_run_id, LABELS, tmp)),
                      json.loads(Path(download_artifact(probe_run_id, ATTENTION_META, tmp)).read_text()))


def run_compute_metrics(config: MetricsConfig, probed: Probed | None = None,
                        run_name: str | None = None) -> StepResult:
    """Run the step; ``probed``: the probe's arrays when the caller (``main``) holds them."""
    probe_run = get_step_run(config.probe_run_id, PROBE_ATTENTION, CHANNEL_WEIGHTS)
    probed = probed or load_probed(config.probe_run_id)
    weights, labels, meta = probed.channel_weights, probed.labels, probed.meta
    attention = weights.shape[1] > 0  # the baseline without CBAM (position none) has none
    values = per_image_metrics(weights, probed.spatial_maps.astype(np.float32)) if attention else {}
    summary = summarise(values) if attention else {}

    params = {**config.params(), **{k: meta[k] for k in ("activation", "position", "dataset", "image_size")},
              "num_images": int(weights.shape[0]), "train_run_id": meta["source_run_id"],
              "seed": probe_run.data.params.get("seed", "")}
    tags = {UPSTREAM_TAGS[PROBE_ATTENTION]: config.probe_run_id, UPSTREAM_TAGS[TRAIN]: meta["source_run_id"],
            REUSE_KEY_TAG: reuse_key(COMPUTE_METRICS, config.to_dict())}
    with step_run(COMPUTE_METRICS, params, config.to_dict(), run_name=run_name or f"{meta['activation']} · compute-metrics",
                  tags=tags, experiment=experiment_of(probe_run)) as run, tempfile.TemporaryDirectory() as tmp:
        logged = {}
        for name, stats in summary.items():
            logged[name] = stats["mean"]
            logged[f"{name}_std"] = stats["std"]
        logged.update({f"first_image/{name}": float(v[0]) for name, v in values.items()})
        if attention:
            logged["first_image/notebook_gini"] = notebook_gini(weights[0])
        logged.update({k: probe_run.data.metrics[k] for k in CARRIED_METRICS if k in probe_run.data.metrics})
        mlflow.log_metrics(logged)

        per_image = pd.DataFrame({"image_index": meta["indices"], "label": labels, **values})
        table = pd.DataFrame([{"metric": k, **v} for k, v in summary.items()], columns=["metric", "mean", "std",
                                                                                       "n_defined"])
        root = Path(tmp)
        (root / METRICS_DIR).mkdir()
        per_image.to_csv(root / PER_IMAGE_METRICS, index=False)
        table.to_csv(root / METRICS_SUMMARY, index=False)
        if attention:
            classes = list(meta.get("classes") or range(int(labels.max()) + 1))
            means, counts = class_means(weights, labels, len(classes))
            np.save(root / CLASS_WEIGHTS, means.astype(np.float32))
            pd.DataFrame({"class": classes, "images": counts, "gini": gini(means)}).to_csv(root / CLASS_GINI,
                                                                                          index=False)
        mlflow.log_artifacts(str(root / METRICS_DIR), METRICS_DIR)
        if attention:
            mlflow.log_table(table, METRICS_SUMMARY_JSON)
            log.info("metrics %s over %d images: %s", run.info.run_id, weights.shape[0],
                     ", ".join(f"{k} {v['mean']:.4g}" for k, v in summary.items() if not math.isnan(v["mean"])))
        else:
            log.info("metrics %s: no attention to measure (position none, the baseline without CBAM); test_acc "
                     "%.2f%%", run.info.run_id, logged.get("test_acc", math.nan))
        return StepResult(run.info.run_id)
