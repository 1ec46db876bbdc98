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
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np

from pipeline.config import StepConfig, check_choice
from pipeline.data import DATASETS, Dataset, content_digest, load_dataset, split_validation
from pipeline.errors import PipelineError
from pipeline.tracking import step_run

log = logging.getLogger("pipeline")

STEP = "prepare-data"
VAL_INDICES = "split/val_indices.npy"
DATASET_JSON = "dataset.json"
SOURCES = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "digits": "sklearn.datasets.load_digits",
    "fake": "pipeline.data.load_fake",
}


@dataclass(frozen=True)
class PrepareConfig(StepConfig):
    dataset: str = "cifar10"
    data_dir: str = "data"
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        check_choice("dataset", self.dataset, DATASETS)
        if not 0.0 < self.val_fraction < 1.0:
            raise PipelineError(f"val_fraction must be in (0, 1), exclusive, got {self.val_fraction}")


def _mlflow_dataset(dataset: Dataset, part: str, images, labels, digest: str):
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    source = SOURCES[dataset.name]
    src = HTTPDatasetSource(source) if source.startswith("https://") else CodeDatasetSource({"loader": source})
    return mlflow.data.from_numpy(images.numpy(), targets=labels.numpy(), source=src,
                                  name=f"{dataset.name}-{part}", digest=digest[:16])


def run_prepare(config: PrepareConfig) -> str:
    dataset = load_dataset(config.dataset, config.data_dir)
    splits = split_validation(dataset, config.val_fraction, config.seed)
    digest = content_digest(dataset)
    identity = {
        "dataset": dataset.name, "classes": list(dataset.classes), "content_sha256": digest,
        "train_size": len(splits.train), "val_size": len(splits.val), "test_size": len(dataset.test),
        "image_shape": list(dataset.train.images.shape[1:]), "val_fraction": config.val_fraction,
        "seed": config.seed,
    }
    params = {**config.to_dict(), "train_size": len(splits.train), "val_size": len(splits.val),
              "test_size": len(dataset.test), "num_classes": len(dataset.classes)}
    with step_run(STEP, params, tags={"pipeline.dataset_sha256": digest}) as run, \
            tempfile.TemporaryDirectory() as tmp:
        for part, data in (("train", splits.train), ("validation", splits.val), ("test", splits.test)):
            mlflow.log_input(_mlflow_dataset(dataset, part, data.images, data.labels, digest), context=part)
        (Path(tmp) / DATASET_JSON).write_text(json.dumps(identity, indent=1))
        mlflow.log_artifact(str(Path(tmp) / DATASET_JSON))
        split_dir = Path(tmp) / "split"
        split_dir.mkdir()
        np.save(split_dir / "val_indices.npy", splits.val_indices.numpy().astype(np.int64))
        mlflow.log_artifacts(str(split_dir), "split")
        log.info("prepare-data %s: %s, %d train / %d val / %d test, sha256 %s", run.info.run_id, dataset.name,
                 len(splits.train), len(splits.val), len(dataset.test), digest[:12])
        return run.info.run_id
