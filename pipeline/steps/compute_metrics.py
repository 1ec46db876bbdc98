"""The ``compute-metrics`` step: attention metrics of a finished ``probe-attention`` run.

Logs, on its own run, each metric's mean over images as ``<name>`` with ``<name>_std``
beside it (``pipeline.metrics``, ``docs/metrics.md``); the notebook's single-image values
for image 0 as ``first_image/<name>`` (and ``first_image/notebook_gini``, the notebook's
formula on raw weights); the probe's ``test_acc``, ``test_top5`` and ``test_map``; and the
artefacts ``metrics/per_image.csv`` (one row per image) and ``metrics/summary.csv`` /
``metrics/summary.json`` (one row per metric: mean, std, n_defined). A probe of the baseline
without CBAM (channel weights of shape (N, 0)) has no attention to measure: its run logs the
accuracy metrics only, and its summary has no rows.

For a dataset with localisation ground truth (masks and boxes in the probe), it also logs
``loc/<map>_<metric>`` (``pipeline.localisation.judge_maps``: maps ``cbam``, ``cam``,
``uniform``, ``centre``; metrics ``pxap``, ``maxboxacc``, ``boxacc_iou30/50/70``,
``pointing_mask``, ``pointing_box``, ``energy_box``) and ``metrics/localisation.csv`` (one row
per map). A dataset without ground truth logs none of them.
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
    BOXES,
    CAMS,
    CHANNEL_WEIGHTS,
    CLASS_GINI,
    CLASS_WEIGHTS,
    COMPUTE_METRICS,
    FAITHFULNESS_PREFIX,
    LABELS,
    LOCALISATION_PREFIX,
    MASKS,
    METRICS_DIR,
    METRICS_SUMMARY,
    METRICS_SUMMARY_JSON,
    LOCALISATION_TABLE,
    PER_IMAGE_METRICS,
    PROBE_ATTENTION,
    RANDOMISED_CAMS,
    RANDOMISED_SPATIAL_MAPS,
    REUSE_KEY_TAG,
    SPATIAL_MAPS,
    TRAIN,
    UPSTREAM_TAGS,
)
from pipeline.reuse import reuse_key
from pipeline.metrics import class_means, gini, notebook_gini, per_image_metrics, summarise
from pipeline.results import StepResult
from pipeline.tracking import artifact_names, download_artifact, experiment_of, get_step_run, step_run

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
    cams: np.ndarray | None = None  # (N, h, w); None: a probe made before it recorded CAMs
    masks: np.ndarray | None = None  # (N, H, W) bool; None: no ground truth
    boxes: np.ndarray | None = None  # (N, 4) int64
    randomised_spatial_maps: np.ndarray | None = None  # the re-initialised network's; None: not recorded
    randomised_cams: np.ndarray | None = None


def load_probed(probe_run_id: str) -> Probed:
    with tempfile.TemporaryDirectory() as tmp:
        stored = artifact_names(probe_run_id, "attention")

        def optional(path: str):
            return np.load(download_artifact(probe_run_id, path, tmp)) if Path(path).name in stored else None

        return Probed(np.load(download_artifact(probe_run_id, CHANNEL_WEIGHTS, tmp)),
                      np.load(download_artifact(probe_run_id, SPATIAL_MAPS, tmp)),
                      np.load(download_artifact(probe_run_id, LABELS, tmp)),
                      json.loads(Path(download_artifact(probe_run_id, ATTENTION_META, tmp)).read_text()),
                      optional(CAMS), optional(MASKS), optional(BOXES), optional(RANDOMISED_SPATIAL_MAPS),
                      optional(RANDOMISED_CAMS))


def localisation_of(probed: Probed) -> dict[str, dict[str, float]]:
    """The localisation metrics of the probe's maps (``pipeline.localisation.judge_maps``);
    empty for a dataset without ground truth."""
    if probed.masks is None:
        return {}
    from pipeline.console import progress
    from pipeline.localisation import judge_maps

    meta = probed.meta
    spatial = probed.spatial_maps.astype(np.float32) if probed.channel_weights.shape[1] else None
    cams = probed.cams.astype(np.float32) if probed.cams is not None else None
    return judge_maps(spatial, cams, probed.masks, probed.boxes, int(meta.get("native_size", probed.masks.shape[-1])),
                      int(meta["image_size"]),
                      progress=lambda chunks, total: progress(chunks, total=total, desc="localisation", unit="chunk"),
                      more={name: None if m is None else m.astype(np.float32)
                            for name, m in (("cbam_randomised", probed.randomised_spatial_maps),
                                            ("cam_randomised", probed.randomised_cams))})


def run_compute_metrics(config: MetricsConfig, probed: Probed | None = None,
                        run_name: str | None = None) -> StepResult:
    """Run the step; ``probed``: the probe's arrays when the caller (``main``) holds them."""
    probe_run = get_step_run(config.probe_run_id, PROBE_ATTENTION, CHANNEL_WEIGHTS)
    probed = probed or load_probed(config.probe_run_id)
    weights, labels, meta = probed.channel_weights, probed.labels, probed.meta
    attention = weights.shape[1] > 0  # the baseline without CBAM (position none) has none
    maps = probed.spatial_maps.astype(np.float32) if probed.spatial_maps.size else None  # SE / ECA: no map
    values = per_image_metrics(weights, maps) if attention else {}
    summary = summarise(values) if attention else {}
    localised = localisation_of(probed)

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
        logged.update({k: v for k, v in probe_run.data.metrics.items()
                       if k in CARRIED_METRICS or k.startswith(FAITHFULNESS_PREFIX)})
        logged.update({f"{LOCALISATION_PREFIX}{kind}_{name}": value for kind, scores in localised.items()
                       for name, value in scores.items()})
        if localised:  # the CBAM map and the CAM, each between the floor (random maps) and the ceiling
            # (the pooled mask) of its own grid
            from pipeline.localisation import NORMALISED_BOUNDS, normalised_scores

            for kind in NORMALISED_BOUNDS:
                normalised = normalised_scores(localised, of=kind)  # {} without the map or its bounds
                logged.update({f"{LOCALISATION_PREFIX}{kind}_{name}_normalised": v for name, v in normalised.items()
                               if math.isfinite(v)})
                undefined = sorted(name for name, v in normalised.items() if not math.isfinite(v))
                if undefined:
                    log.warning("localisation: the %s's normalised %s undefined: its ceiling does not exceed its "
                                "floor (a grid too coarse to localise)", "CBAM map" if kind == "cbam" else "CAM",
                                ", ".join(undefined))
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
        if localised:
            pd.DataFrame([{"map": kind, **scores} for kind, scores in localised.items()]).to_csv(
                root / LOCALISATION_TABLE, index=False)
        mlflow.log_artifacts(str(root / METRICS_DIR), METRICS_DIR)
        if localised:
            log.info("localisation %s: %s", run.info.run_id, "; ".join(
                f"{kind} PxAP {v['pxap']:.1f} pointing {v['pointing_mask']:.3f}" for kind, v in localised.items()))
        else:
            log.info("metrics %s: dataset %s has no localisation ground truth: no localisation metrics",
                     run.info.run_id, meta["dataset"])
        if attention:
            mlflow.log_table(table, METRICS_SUMMARY_JSON)
            log.info("metrics %s over %d images: %s", run.info.run_id, weights.shape[0],
                     ", ".join(f"{k} {v['mean']:.4g}" for k, v in summary.items() if not math.isnan(v["mean"])))
        else:
            log.info("metrics %s: no attention to measure (position none, the baseline without CBAM); test_acc "
                     "%.2f%%", run.info.run_id, logged.get("test_acc", math.nan))
        return StepResult(run.info.run_id)
