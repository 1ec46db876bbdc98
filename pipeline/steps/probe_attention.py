"""The ``probe-attention`` step: rebuild a finished ``train`` run's best model and record the
attention of test images.

Artefacts (of its own run): ``attention/channel_weights.npy`` (float32, [N, C]),
``attention/spatial_maps.npy`` (float16, [N, H, W]), ``attention/labels.npy`` (int64, [N]),
``attention/logits.npy`` (float32, [N, K]), ``attention/cam.npy`` (float16, [N, h, w]: the
class activation map of each image's true class on the final feature map, the classical
weakly-supervised localisation baseline), ``attention/grid_images.npy`` (uint8, the first
six probed images, which the report's spatial-map grid draws), ``attention/meta.json`` and
``tables/per_class_accuracy.csv``; for a dataset with localisation ground truth also
``attention/masks.npy`` (bool, [N, H, W]) and ``attention/boxes.npy`` (int64, [N, 4], half-open
x0, y0, x1, y1), at the images' native size (compute-metrics resizes them as the images are),
and ``attention/randomised_spatial_maps.npy`` / ``attention/randomised_cam.npy`` (float16): the
maps of the same architecture re-initialised as training started (the floor of a network that
knows nothing; metric ``randomised_test_acc``). Metrics: ``test_acc``, ``test_top5`` (percent) and
``test_map`` (macro one-vs-rest average precision, scikit-learn) of the probed images.
The probed images are the first ``num_images`` of the test set, in order, so row 0 is the
notebook's single image. A train run without CBAM (position none, the baseline) has no
attention: its channel weights are stored with shape [N, 0] and its maps [N, 0, 0].
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from pipeline.attention_hooks import read_attention
from pipeline.checkpoint import load_model
from pipeline.config import ProbeConfig
from pipeline.errors import PipelineError
from pipeline.contracts import (
    ATTENTION_DIR,
    ATTENTION_META,
    BEST_CHECKPOINT,
    BOXES,
    CAMS,
    CHANNEL_WEIGHTS,
    DATASET_DIGEST_TAG,
    FAITHFULNESS_CURVES,
    FAITHFULNESS_PREFIX,
    GRID_IMAGES,
    GRID_SIZE,
    LABELS,
    LOGITS,
    MASKS,
    PER_CLASS_ACCURACY,
    PREPARE_DATA,
    PROBE_ATTENTION,
    RANDOMISED_CAMS,
    RANDOMISED_SPATIAL_MAPS,
    REUSE_KEY_TAG,
    SPATIAL_MAPS,
    TRAIN,
    UNDEFINED_TAG,
    UPSTREAM_TAGS,
)
from pipeline.reuse import reuse_key
from pipeline.data import Dataset, content_digest, load_dataset
from pipeline.devices import resolve_device
from pipeline.metrics import mean_average_precision
from pipeline.models import AttentionResNet
from pipeline.tracking import download_artifact, experiment_of, get_step_run, read_config, step_run
from pipeline.results import StepResult
from pipeline.training import score_logits

log = logging.getLogger("pipeline")


@dataclass
class ProbeResult(StepResult):
    """The run and what it recorded, as compute-metrics reads it (``channel_weights``,
    ``spatial_maps`` as stored, ``labels``, ``meta``)."""

    channel_weights: np.ndarray  # (N, C) float32
    spatial_maps: np.ndarray  # (N, H, W) float16
    labels: np.ndarray  # (N,) int64
    logits: np.ndarray  # (N, K) float32
    meta: dict
    cams: np.ndarray | None = None  # (N, h, w) float16
    masks: np.ndarray | None = None  # (N, H, W) bool, native size; None: no ground truth
    boxes: np.ndarray | None = None  # (N, 4) int64
    randomised_spatial_maps: np.ndarray | None = None  # (N, H, W) float16: the re-initialised network's
    randomised_cams: np.ndarray | None = None  # (N, h, w) float16


def per_class_accuracy(labels: np.ndarray, logits: np.ndarray, classes) -> pd.DataFrame:
    predicted = logits.argmax(axis=1)
    rows = []
    for k, name in enumerate(classes):
        mask = labels == k
        n = int(mask.sum())
        rows.append({"class_index": k, "class": name, "images": n,
                     "accuracy_pct": 100.0 * float((predicted[mask] == k).mean()) if n else float("nan")})
    return pd.DataFrame(rows)


def params_config(params: dict[str, str]) -> dict:
    """What the probe needs of a train run made before steps logged ``config.json``, from its
    parameters (logged as strings; MLflow writes integers given on its command line as ``64.0``)."""
    return {"dataset": params.get("dataset"), "data_dir": params.get("data_dir", "data"),
            "image_size": int(float(params.get("image_size", 224))), "seed": params.get("seed", "")}


def measure_faithfulness(model: AttentionResNet, probed, attention, image_size: int, n: int, config: ProbeConfig,
                         seed: int, seconds_per_image: float,
                         randomised: AttentionResNet | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Channel ablation and pixel deletion / insertion on the first ``n`` probed images
    (``pipeline.faithfulness.judge_faithfulness``, maps: the CBAM spatial map and the CAM;
    ``randomised``: the network re-initialised, whose channel ablation is the floor),
    logs its cost first (passes, and seconds at ``seconds_per_image``, the probe's own speed),
    then the defined summaries as ``faith/<name>`` on the active run; returns the curves' rows
    and the undefined measures with why (not logged: the report shows them as n/a)."""
    from pipeline.console import progress
    from pipeline.faithfulness import forward_passes, judge_faithfulness

    maps = {"cam": attention.cams[:n].astype(np.float32)}
    if attention.spatial_maps.size:  # SE and ECA have no spatial map: channel ablation only
        maps["cbam"] = attention.spatial_maps[:n].astype(np.float32)
        if probed.has_ground_truth:  # the ceiling: the best map of the CBAM map's grid, ranked like the others
            from pipeline.localisation import ceiling_maps

            maps["ceiling"] = ceiling_maps(probed.masks[:n].numpy(), maps["cbam"].shape[1:], image_size)
    passes = forward_passes(n, model.cbam.channels, config.faithfulness_draws, len(maps) if "cbam" in maps else 0,
                            randomised=randomised is not None)
    log.info("faithfulness of %d images, %d random draws: %d image passes through part of the network (up to the "
             "block, or from it) and %d through the whole of it, at most about %.0f s at this probe's speed", n,
             config.faithfulness_draws,
             passes["partial"], passes["full"], (passes["partial"] + passes["full"]) * seconds_per_image)
    started = time.perf_counter()
    judged = judge_faithfulness(
        model, probed.subset(torch.arange(n)), image_size, maps, draws=config.faithfulness_draws, seed=seed,
        fill=config.ablation_fill, imputation=config.deletion_imputation, batch_size=config.batch_size,
        progress=lambda steps, total, desc: progress(steps, total=total, desc=desc, unit="curve"),
        randomised=randomised)
    seconds = time.perf_counter() - started
    summaries = judged.summaries
    logged = {f"{FAITHFULNESS_PREFIX}{k}": v for k, v in summaries.items() if math.isfinite(v)}
    mlflow.log_metrics({**logged, f"{FAITHFULNESS_PREFIX}seconds": seconds})
    for note in judged.notes:
        log.warning("faithfulness: %s", note)

    def shown(key: str) -> str:
        return f"{summaries[key]:.2f}" if math.isfinite(summaries[key]) else "n/a"

    spatial = (f", deletion advantage {shown('deletion_advantage_acc')}, insertion advantage "
               f"{shown('insertion_advantage_acc')}") if "cbam" in maps else " (no spatial map)"
    floor = (f"; re-initialised {summaries['channel_randomised_advantage_acc']:.2f}"
             if "channel_randomised_advantage_acc" in summaries else "")
    log.info("faithfulness of %d images in %.1f s: channel advantage %.2f (random draws' std %.2f%s)%s "
             "(accuracy areas, percent)", n, seconds, summaries["channel_advantage_acc"],
             summaries["channel_advantage_acc_std"], floor, spatial)
    return pd.DataFrame(judged.rows), {f"{FAITHFULNESS_PREFIX}{what}": why for what, why in judged.undefined.items()}


def trained_digest(train_run) -> tuple[str, str]:
    """The content digest of the data the train run trained on, and where it was recorded: the
    train run's own tag, else its prepare-data run's; ("", "") for a run made before either."""
    digest = train_run.data.tags.get(DATASET_DIGEST_TAG, "")
    if digest:
        return digest, f"train run {train_run.info.run_id}"
    prepare_id = train_run.data.tags.get(UPSTREAM_TAGS[PREPARE_DATA]) or train_run.data.params.get("prepare_run_id", "")
    if prepare_id:
        try:
            digest = mlflow.MlflowClient().get_run(prepare_id).data.tags.get(DATASET_DIGEST_TAG, "")
        except Exception:  # a deleted prepare-data run: nothing to check against
            digest = ""
        if digest:
            return digest, f"prepare-data run {prepare_id} of train run {train_run.info.run_id}"
    return "", ""


def check_trained_data(train_run, dataset: Dataset, data_dir: str) -> None:
    """One-line error, before the probe's run starts, when the data loaded from ``data_dir`` is
    not the data the train run trained on (content digests differ: other files, another seed of
    a generated set); a warning where the train run recorded no digest."""
    expected, where = trained_digest(train_run)
    if not expected:
        log.warning("probe: train run %s recorded no dataset digest (made before runs did): the %s data in %r "
                    "is not checked against what it trained on", train_run.info.run_id, dataset.name, data_dir)
        return
    actual = content_digest(dataset)
    if actual != expected:
        raise PipelineError(f"the {dataset.name} data in {data_dir!r} (content digest {actual[:12]}) is not the data "
                            f"{where} trained on (digest {expected[:12]}): give that run's data_dir, or train on this "
                            "data")


def run_probe(config: ProbeConfig, model: AttentionResNet | None = None, dataset: Dataset | None = None,
              run_name: str | None = None, train_config: dict | None = None) -> ProbeResult:
    """Run the step. ``model`` / ``dataset`` / ``train_config``: the train run's best model, its
    data and its typed configuration when the caller (``main``) holds them already; otherwise
    they are loaded from the train run (its ``config.json``)."""
    train_run = get_step_run(config.train_run_id, TRAIN, BEST_CHECKPOINT)
    device = resolve_device(config.device)
    if train_config is None:
        train_config = read_config(config.train_run_id) or params_config(train_run.data.params)
    if model is None:
        with tempfile.TemporaryDirectory() as tmp:
            model, ckpt = load_model(download_artifact(config.train_run_id, BEST_CHECKPOINT, tmp),
                                     f"train run {config.train_run_id}'s {BEST_CHECKPOINT}")
        checkpoint_epoch = ckpt.get("epoch")
    else:
        checkpoint_epoch = int(train_run.data.metrics.get("best_epoch", -1))
    dataset_name = train_config["dataset"]
    data_dir = config.data_dir or train_config.get("data_dir", "data")
    image_size = int(train_config["image_size"])
    if dataset is None or dataset.name != dataset_name:
        dataset = load_dataset(dataset_name, data_dir)
        check_trained_data(train_run, dataset, data_dir)
    test = dataset.test
    n_total = len(test)
    n = n_total if config.num_images == -1 else config.num_images
    if n > n_total:
        log.warning("num_images=%d is more than the %d test images: probing all %d", n, n_total, n_total)
        n = n_total
    indices = np.arange(n)
    probed = test.subset(torch.from_numpy(indices)).to(device)

    faithful_n = 0 if model.cbam is None else (n if config.faithfulness_images == -1
                                                else min(config.faithfulness_images, n))
    params = {**config.params(), "num_images_probed": n, "faithfulness_images_used": faithful_n, "activation": model.config.activation,
              "position": model.config.position, "dataset": dataset_name, "image_size": image_size,
              "seed": train_config.get("seed", "")}
    tags = {UPSTREAM_TAGS[TRAIN]: config.train_run_id, REUSE_KEY_TAG: reuse_key(PROBE_ATTENTION, config.to_dict())}
    with step_run(PROBE_ATTENTION, params, config.to_dict(), run_name=run_name or f"{model.config.activation} · probe-attention",
                  tags=tags, experiment=experiment_of(train_run)) as run, \
            tempfile.TemporaryDirectory() as tmp:
        # the train run's seed: each seed its own faithfulness draws, and its re-initialised network
        seed = int(train_config.get("seed", 0)) if str(train_config.get("seed", 0)).isdigit() else 0
        probe_started = time.perf_counter()
        attention = read_attention(model.to(device), probed, image_size, config.batch_size)
        seconds_per_image = (time.perf_counter() - probe_started) / max(n, 1)
        labels = probed.labels.cpu().numpy()
        scores = score_logits(torch.from_numpy(attention.logits), torch.from_numpy(labels))
        test_map = mean_average_precision(labels, attention.logits, num_classes=model.config.num_classes)
        undefined: dict[str, str] = {}
        if not math.isfinite(test_map):
            undefined["test_map"] = f"{len(np.unique(labels))} class(es) among the {n} probed images; mAP needs two"
        mlflow.log_metrics({"test_acc": scores.acc, "test_top5": scores.top5,
                            **({"test_map": test_map} if math.isfinite(test_map) else {})})

        root = Path(tmp)
        (root / ATTENTION_DIR).mkdir()
        np.save(root / CHANNEL_WEIGHTS, attention.channel_weights.astype(np.float32))
        np.save(root / SPATIAL_MAPS, attention.spatial_maps.astype(np.float16))
        np.save(root / LABELS, labels.astype(np.int64))
        np.save(root / LOGITS, attention.logits.astype(np.float32))
        np.save(root / CAMS, attention.cams.astype(np.float16))
        masks = boxes = None
        randomised_maps = randomised_cams = None
        # the floor of a network that knows nothing: the same architecture re-initialised, its maps
        # (where there is ground truth to score them) and its channel ablation (where faithfulness runs)
        initial = None
        if model.cbam is not None and (probed.has_ground_truth or faithful_n):
            from pipeline.models import initial_model

            initial = initial_model(model.config, seed).to(device)
        if probed.has_ground_truth:
            masks, boxes = probed.masks.numpy().astype(bool), probed.boxes.numpy().astype(np.int64)
            np.save(root / MASKS, masks)
            np.save(root / BOXES, boxes)
            if initial is not None:
                randomised = read_attention(initial, probed, image_size, config.batch_size, desc="randomised")
                randomised_maps = randomised.spatial_maps.astype(np.float16)
                randomised_cams = randomised.cams.astype(np.float16)
                np.save(root / RANDOMISED_SPATIAL_MAPS, randomised_maps)
                np.save(root / RANDOMISED_CAMS, randomised_cams)
                mlflow.log_metric("randomised_test_acc", score_logits(
                    torch.from_numpy(randomised.logits), torch.from_numpy(labels)).acc)
        # the images the report's spatial-map grid draws under the maps: it needs no dataset
        np.save(root / GRID_IMAGES, probed.images[:GRID_SIZE].cpu().numpy().astype(np.uint8))
        meta = {
            "activation": model.config.activation, "position": model.config.position,
            "image_size": image_size, "dataset": dataset_name, "source_run_id": config.train_run_id,
            "checkpoint_epoch": checkpoint_epoch, "classes": list(dataset.classes),
            "num_images": n, "indices": indices.tolist(), "split": "test",
            "channel_weights_shape": list(attention.channel_weights.shape),
            "spatial_maps_shape": list(attention.spatial_maps.shape),
            "cam_shape": list(attention.cams.shape), "native_size": int(test.images.shape[-1]),
            "ground_truth": probed.has_ground_truth,
        }
        (root / ATTENTION_META).write_text(json.dumps(meta, indent=1))
        table = per_class_accuracy(labels, attention.logits, meta["classes"] or range(model.config.num_classes))
        table_path = root / PER_CLASS_ACCURACY
        table_path.parent.mkdir()
        table.to_csv(table_path, index=False)
        if faithful_n:
            curves, undefined_faith = measure_faithfulness(model, probed, attention, image_size, faithful_n, config,
                                                           seed=seed, seconds_per_image=seconds_per_image,
                                                           randomised=initial)
            undefined.update(undefined_faith)
            curves.to_csv(root / FAITHFULNESS_CURVES, index=False)
        mlflow.log_artifacts(tmp)
        what = (f"channel weights {attention.channel_weights.shape}, spatial maps {attention.spatial_maps.shape}"
                if model.cbam is not None else "no attention (no CBAM)")
        if undefined:  # said once in the log and kept on the run: the report shows these as n/a
            mlflow.set_tag(UNDEFINED_TAG, "; ".join(f"{k}: {why}" for k, why in undefined.items()))
            for k, why in undefined.items():
                log.warning("probe %s: %s undefined (not logged): %s", run.info.run_id, k, why)
        shown_map = f"{test_map:.4f}" if math.isfinite(test_map) else "n/a"
        log.info("probe %s: %d images, %s; test_acc %.2f%% test_map %s", run.info.run_id, n, what,
                 scores.acc, shown_map)
        # the arrays as stored (maps in float16), so metrics from memory equal metrics from the artefacts
        return ProbeResult(run.info.run_id, attention.channel_weights.astype(np.float32),
                           attention.spatial_maps.astype(np.float16), labels.astype(np.int64),
                           attention.logits.astype(np.float32), meta, attention.cams.astype(np.float16),
                           masks, boxes, randomised_maps, randomised_cams)
