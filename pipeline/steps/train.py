"""The ``train`` step: fine-tune a CBAM-ResNet18 with one channel gate, tracked in MLflow.

Logs every parameter; per epoch (step = epoch index) ``train_loss``, ``train_acc``,
``val_loss``, ``val_acc`` and the gate's learnable values (``gate_scale``,
``gate_temperature``, ``gate_alpha``); ``gradients/grad_flow.json`` (mean |grad| of each
weight tensor per epoch); the best-by-``val_acc`` checkpoint as ``checkpoints/best.pt``;
and ``test_acc``, ``test_top5`` (percent) and ``test_loss`` of that checkpoint.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch

from pipeline.checkpoint import load_model, save_checkpoint
from pipeline.config import TrainConfig
from pipeline.data import (
    Dataset,
    Splits,
    content_digest,
    load_dataset,
    split_validation,
    splits_from_val_indices,
)
from pipeline.errors import PipelineError
from pipeline.models import ModelConfig, build_model
from pipeline.tracking import download_artifact, get_step_run, step_run
from pipeline.training import (
    GradientFlow,
    evaluate,
    resolve_device,
    seed_everything,
    train_one_epoch,
)

log = logging.getLogger("pipeline")

STEP = "train"
BEST_CHECKPOINT = "checkpoints/best.pt"
GRAD_FLOW = "gradients/grad_flow.json"


def splits_from_prepare_run(config: TrainConfig, dataset: Dataset) -> Splits:
    """The split recorded by a finished prepare-data run, after checking it is this dataset."""
    from pipeline.steps.prepare import DATASET_JSON, VAL_INDICES
    from pipeline.steps.prepare import STEP as PREPARE_STEP

    get_step_run(config.prepare_run_id, PREPARE_STEP, VAL_INDICES)
    with tempfile.TemporaryDirectory() as tmp:
        identity = json.loads(download_artifact(config.prepare_run_id, DATASET_JSON, tmp).read_text())
        val_indices = np.load(download_artifact(config.prepare_run_id, VAL_INDICES, tmp))
    if identity["dataset"] != config.dataset or float(identity["val_fraction"]) != config.val_fraction:
        raise PipelineError(
            f"prepare-data run {config.prepare_run_id!r} prepared {identity['dataset']} with val_fraction "
            f"{identity['val_fraction']}, not {config.dataset} with {config.val_fraction}"
        )
    if identity["content_sha256"] != content_digest(dataset):
        raise PipelineError(
            f"the {config.dataset} data in {config.data_dir!r} differs from what prepare-data run "
            f"{config.prepare_run_id!r} recorded (content digest mismatch)"
        )
    return splits_from_val_indices(dataset, val_indices)


def run_train(config: TrainConfig) -> str:
    """Run the step with a validated config; returns the MLflow run id."""
    device = resolve_device(config.device)
    dataset = load_dataset(config.dataset, config.data_dir)
    if config.prepare_run_id:
        splits = splits_from_prepare_run(config, dataset)
    else:
        splits = split_validation(dataset, config.val_fraction, config.seed)
    seed_everything(config.seed)
    model_config = ModelConfig(config.activation, config.position, num_classes=len(splits.classes))
    model = build_model(model_config, config.weights)

    params = {
        **config.to_dict(),
        "num_classes": len(splits.classes),
        "train_size": len(splits.train),
        "val_size": len(splits.val),
        "test_size": len(splits.test),
    }
    with step_run(STEP, params) as run, tempfile.TemporaryDirectory() as tmp:
        run_id = run.info.run_id
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        channels_last = device.type == "cuda"
        model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        train, val, test = splits.train.to(device), splits.val.to(device), splits.test.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=device.type == "cuda")
        generator = torch.Generator().manual_seed(config.seed)
        grad_flow = GradientFlow(model)
        grad_history: list[list[float]] = []
        best_acc, best_epoch = -1.0, -1
        best_path = Path(tmp) / "best.pt"
        common = dict(image_size=config.image_size, amp=config.amp, channels_last=channels_last)
        log.info(
            "train %s: %s at %s on %s (%d train / %d val / %d test), %d epochs on %s",
            run_id, config.activation, config.position, config.dataset,
            len(train), len(val), len(test), config.epochs, device,
        )
        for epoch in range(config.epochs):
            start = time.perf_counter()
            grad_flow.reset()
            result = train_one_epoch(
                model, train, optimizer, batch_size=config.batch_size, generator=generator,
                grad_flow=grad_flow, desc=f"epoch {epoch + 1}/{config.epochs}", **common,
            )
            val_eval = evaluate(model, val, **common)
            grad_history.append(grad_flow.epoch_means())
            metrics = {
                "train_loss": result.loss,
                "train_acc": result.acc,
                "val_loss": val_eval.loss,
                "val_acc": val_eval.acc,
                **(model.gate.learnable_values() if model.gate is not None else {}),
            }
            mlflow.log_metrics(metrics, step=epoch)
            if val_eval.acc > best_acc:
                best_acc, best_epoch = val_eval.acc, epoch
                save_checkpoint(best_path, model, epoch=epoch, val_acc=val_eval.acc,
                                classes=list(splits.classes), image_size=config.image_size,
                                dataset=config.dataset, source_run_id=run_id)
                mlflow.log_artifact(str(best_path), "checkpoints")
            log.info(
                "epoch %d/%d: train_loss %.4f train_acc %.2f%% | val_loss %.4f val_acc %.2f%% (%.1f s)",
                epoch + 1, config.epochs, result.loss, result.acc, val_eval.loss, val_eval.acc,
                time.perf_counter() - start,
            )
        mlflow.log_dict(
            {"layers": grad_flow.names, "epochs": list(range(config.epochs)), "mean_abs_grad": grad_history},
            GRAD_FLOW,
        )
        best_model, _ = load_model(best_path)
        best_model = best_model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        test_eval = evaluate(best_model, test, **common)
        mlflow.log_metrics({"test_acc": test_eval.acc, "test_top5": test_eval.top5,
                            "test_loss": test_eval.loss, "best_epoch": best_epoch})
        log.info("best epoch %d (val_acc %.2f%%): test_acc %.2f%%, test_top5 %.2f%%",
                 best_epoch + 1, best_acc, test_eval.acc, test_eval.top5)
    return run_id
