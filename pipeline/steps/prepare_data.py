"""The ``prepare-data`` step: fetch or verify a dataset, record its identity and fix the
validation split.

Logs the dataset as MLflow dataset inputs (contexts ``train``, ``validation``, ``test``, with
our content digest), the parameters ``dataset``, ``data_dir``, ``val_fraction``, ``seed``, the
split sizes, and the artefacts ``dataset.json`` (name, split sizes, class names, SHA-256
content digest) and ``split/val_indices.npy`` (int64 indices into the training set), which
``train --prepare-run-id`` uses.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np

from pipeline.config import PrepareConfig, default_experiment
from pipeline.contracts import DATASET_DIGEST_TAG, DATASET_JSON, PREPARE_DATA, REUSE_KEY_TAG, VAL_INDICES
from pipeline.reuse import reuse_key
from pipeline.data import Dataset, Splits, content_digest, load_dataset, split_validation
from pipeline.tracking import step_run
from pipeline.results import StepResult

log = logging.getLogger("pipeline")

SOURCES = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "digits": "sklearn.datasets.load_digits",
    "cluttered-digits": "pipeline.data.load_cluttered_digits",
    "cluttered-cifar10": "pipeline.data.load_cluttered_cifar10",
    "fake": "pipeline.data.load_fake",
}


@dataclass
class PrepareResult(StepResult):
    splits: Splits  # what a train step in the same process uses directly
    digest: str


def log_input(dataset, context: str, attempts: int = 5) -> None:
    """``mlflow.log_input``, again when a concurrent run inserted the same dataset first: MLflow's
    SQL stores get-or-create a dataset row in two statements, so two sweep workers preparing the
    same data at once collide on its unique key (the retry finds the row and links it)."""
    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except mlflow.exceptions.MlflowException as exc:
            text = str(exc)
            if attempt == attempts - 1 or not any(s in text for s in ("UNIQUE constraint", "IntegrityError",
                                                                    "duplicate key", "already exists")):
                raise
            time.sleep(0.2 * (attempt + 1))


def _mlflow_dataset(dataset: Dataset, part: str, images, labels, digest: str):
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    source = SOURCES[dataset.name]
    src = HTTPDatasetSource(source) if source.startswith("https://") else CodeDatasetSource({"loader": source})
    return mlflow.data.from_numpy(images.numpy(), targets=labels.numpy(), source=src,
                                  name=f"{dataset.name}-{part}", digest=digest[:16])


def run_prepare(config: PrepareConfig, dataset: Dataset | None = None, run_name: str | None = None) -> PrepareResult:
    """Run the step; ``dataset``: the loaded data when the caller has it already."""
    dataset = dataset or load_dataset(config.dataset, config.data_dir)
    splits = split_validation(dataset, config.val_fraction, config.seed)
    digest = content_digest(dataset)
    identity = {
        "dataset": dataset.name, "classes": list(dataset.classes), "content_sha256": digest,
        "train_size": len(splits.train), "val_size": len(splits.val), "test_size": len(dataset.test),
        "image_shape": list(dataset.train.images.shape[1:]), "val_fraction": config.val_fraction,
        "seed": config.seed, "ground_truth": "masks and boxes" if dataset.test.has_ground_truth else "none",
    }
    params = {**config.params(), "train_size": len(splits.train), "val_size": len(splits.val),
              "test_size": len(dataset.test), "num_classes": len(dataset.classes)}
    tags = {DATASET_DIGEST_TAG: digest, REUSE_KEY_TAG: reuse_key(PREPARE_DATA, config.to_dict())}
    with step_run(PREPARE_DATA, params, config.to_dict(), run_name=run_name or f"{config.dataset} · prepare-data", tags=tags,
                  experiment=default_experiment(config.dataset)) as run, \
            tempfile.TemporaryDirectory() as tmp:
        for part, data in (("train", splits.train), ("validation", splits.val), ("test", splits.test)):
            log_input(_mlflow_dataset(dataset, part, data.images, data.labels, digest), part)
        (Path(tmp) / DATASET_JSON).write_text(json.dumps(identity, indent=1))
        (Path(tmp) / VAL_INDICES).parent.mkdir(parents=True)
        np.save(Path(tmp) / VAL_INDICES, splits.val_indices.numpy().astype(np.int64))
        mlflow.log_artifacts(tmp)
        log.info("prepare-data %s: %s, %d train / %d val / %d test, sha256 %s", run.info.run_id, dataset.name,
                 len(splits.train), len(splits.val), len(dataset.test), digest[:12])
        return PrepareResult(run.info.run_id, splits, digest)
