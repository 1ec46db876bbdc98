"""The ``train`` step: fine-tune a CBAM-ResNet18 with one channel gate, tracked in MLflow.

Logs every parameter; per epoch (step = the epoch's number, counted from 1, as everywhere a
person reads it) ``train_loss``, ``train_acc``,
``val_loss``, ``val_acc`` and the gate's learnable values (``gate_scale``,
``gate_temperature``, ``gate_alpha``); ``gradients/grad_flow.json`` (mean |grad| of each
weight tensor per epoch); the best-by-``val_acc`` checkpoint as ``checkpoints/best.pt``;
and ``test_acc``, ``test_top5`` (percent) and ``test_loss`` of that checkpoint.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch

from pipeline.checkpoint import load_model, read_checkpoint, save_checkpoint
from pipeline.config import TrainConfig
from pipeline.contracts import (
    BEST_CHECKPOINT,
    CONFIG_JSON,
    DATASET_DIGEST_TAG,
    DATASET_JSON,
    EPOCH_ATTENTION_PREFIX,
    GRAD_FLOW,
    LAST_CHECKPOINT,
    PREPARE_DATA,
    REUSE_KEY_TAG,
    SUM_TO_ONE_GATES,
    TRAIN,
    UPSTREAM_TAGS,
    VAL_INDICES,
)
from pipeline.reuse import reuse_key
from pipeline.data import (Dataset, Splits, batch_bounds, content_digest, fresh_canvases, load_dataset, split_validation,
                           splits_from_val_indices)
from pipeline.devices import compiled, configure, flag_on, memory_format, resolve_device
from pipeline.errors import PipelineError, one_line
from pipeline.models import AttentionResNet, build_model
from pipeline.disk import DiskFullError, disk_full, is_disk_full
from pipeline.outbox import Outbox, deliver_kept
from pipeline.results import StepResult
from pipeline.tracking import delete_artifact, download_artifact, get_step_run, metric_steps, step_run
from pipeline.processes import deferred_interrupts
from pipeline.randomness import restore_rng_state, rng_state, seed_everything
from pipeline.training import Evaluation, GradientFlow, evaluate, train_one_epoch

log = logging.getLogger("pipeline")


@dataclass
class TrainResult(StepResult):
    model: AttentionResNet  # the best checkpoint's model, in eval mode, on the training device
    test: Evaluation


def splits_from_prepare_run(config: TrainConfig, dataset: Dataset) -> Splits:
    """The split recorded by a finished prepare-data run, after checking it is this dataset."""
    get_step_run(config.prepare_run_id, PREPARE_DATA, VAL_INDICES)
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


#: The per-epoch attention metrics, logged as ``attention/<name>`` with step = epoch.
EPOCH_ATTENTION_METRICS = ("gini", "entropy", "sparsity", "avg_score", "focus_pct")


def attention_sample(val, n: int):
    """A fixed set of ``n`` validation images (seeded on its own: the training's random streams
    are untouched, so a resumed run stays bit-exact), or None for n = 0."""
    if n <= 0 or len(val) == 0:
        return None
    order = torch.randperm(len(val), generator=torch.Generator().manual_seed(20240917))
    return val.subset(order[: min(n, len(val))].to(val.labels.device))


def attention_metrics(model, images, image_size: int) -> dict[str, float]:
    """Mean over ``images`` of each ``EPOCH_ATTENTION_METRICS`` of the model's channel weights."""
    from pipeline.attention_hooks import read_attention
    from pipeline.metrics import per_image_metrics

    weights = read_attention(model, images, image_size, desc="attention").channel_weights
    values = per_image_metrics(weights)
    out = {}
    for name in EPOCH_ATTENTION_METRICS:
        v = values[name][np.isfinite(values[name])]
        if v.size:
            out[f"{EPOCH_ATTENTION_PREFIX}{name}"] = float(v.mean())
    return out


def resume_point(run_id: str, force: bool = False) -> tuple[TrainConfig, dict]:
    """The config and last checkpoint of an interrupted train run (refused while its process is
    alive, unless ``force``)."""
    from pipeline.liveness import claim_for_resume, refuse_if_alive

    run = get_step_run(run_id, TRAIN, None, finished=False)
    if run.info.status == "FINISHED":
        raise PipelineError(f"train run {run_id!r} is FINISHED: there is nothing to resume")
    refuse_if_alive(run, force)
    claim_for_resume(run_id, force)  # no second process resumes (or delivers its kept entries) at the same time
    if deliver_kept(run_id) and get_step_run(run_id, TRAIN, None, finished=False).info.status == "FINISHED":
        raise PipelineError(f"train run {run_id!r} had finished during a tracking-server outage; its kept logs are "
                            "now delivered and it is FINISHED: there is nothing to resume")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            typed = json.loads(download_artifact(run_id, CONFIG_JSON, tmp).read_text())
            path = download_artifact(run_id, LAST_CHECKPOINT, tmp)
        except Exception:
            raise PipelineError(f"train run {run_id!r} has no {LAST_CHECKPOINT} to resume from "
                                "(it stopped before its first epoch ended)") from None
        ckpt = read_checkpoint(path, f"train run {run_id}'s {LAST_CHECKPOINT}")
    missing = [k for k in ("optimizer", "rng", "epoch", "best_val_acc", "best_epoch") if k not in ckpt]
    if missing:
        raise PipelineError(f"{LAST_CHECKPOINT} of run {run_id!r} lacks {', '.join(missing)}: cannot resume")
    return TrainConfig(**{k: typed[k] for k in TrainConfig.field_names() if k in typed}), ckpt


def checkpoint_bytes(model) -> int:
    """About what ``last.pt`` takes: the weights and Adam's two moments of each."""
    return 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values())


def log_checkpoint_metrics(run_id: str, ckpt: dict) -> None:
    """Log the metrics of the checkpoint's epoch if the run lacks them (its process died after
    storing the checkpoint, before logging them)."""
    epoch, metrics = int(ckpt["epoch"]), ckpt.get("metrics") or {}
    logged = set(metric_steps(run_id, "val_acc"))
    if metrics and epoch not in logged:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch)
        log.info("train %s: logged epoch %d's metrics from its checkpoint", run_id, epoch)


def start_or_resume(config: TrainConfig | None, resume_run_id: str, dataset: Dataset | None,
                    splits: Splits | None, force: bool) -> tuple[TrainConfig, dict | None, torch.device, Splits, str]:
    """The config, the last checkpoint (None for a new run), the device (checked before any
    data is loaded), the data splits of the run, and the data's content digest where the run
    splits the data itself ("" where a prepare-data run recorded it: the probe reads it there)."""
    digest = ""
    ckpt = None
    if resume_run_id:
        config, ckpt = resume_point(resume_run_id, force)
    assert config is not None
    device = resolve_device(config.device)
    if splits is None:
        dataset = dataset or load_dataset(config.dataset, config.data_dir)
        if config.prepare_run_id:
            splits = splits_from_prepare_run(config, dataset)
        else:
            digest = content_digest(dataset)
            splits = split_validation(dataset, config.val_fraction, config.seed)
    return config, ckpt, device, splits, digest


def learning_rate_schedule(config: TrainConfig, optimizer, train_images: int):
    """The run's schedule, stepped after every optimizer step: None for a constant rate; for
    onecycle torch's ``OneCycleLR`` peaking at ``lr`` over every step of every epoch (the batches
    of an epoch as ``batch_bounds`` cuts them)."""
    if config.lr_schedule == "constant":
        return None
    steps = len(batch_bounds(train_images, config.batch_size, no_single=True))
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps * config.epochs)


class Training:
    """One train run's state from its first epoch to its test evaluation: ``epochs`` trains
    and stores each epoch (checkpoints before metrics), ``finish`` evaluates the best epoch's
    weights on the test set and delivers the rest. ``stored`` is the last epoch whose checkpoint
    is in the run (0: none), what an interrupt or a full disk leaves to resume from."""

    def __init__(self, config: TrainConfig, ckpt: dict | None, splits: Splits, model: AttentionResNet,
                 device: torch.device, run_id: str, tmp: str):
        self.config, self.device, self.run_id, self.tmp = config, device, run_id, Path(tmp)
        configure(device)
        self.channels_last = flag_on(config.channels_last, self.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.grad_history: list[list[float]] = []
        self.best_acc, self.best_epoch, first_epoch = -1.0, 0, 1  # epochs are numbered from 1
        if ckpt is not None:
            model.load_state_dict(ckpt["state_dict"])
        self.model = model.to(self.device, memory_format=memory_format(self.channels_last))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr,
                                          fused=flag_on(config.fused_adam, self.device))
        self.scheduler = learning_rate_schedule(config, self.optimizer, len(splits.train))
        if ckpt is not None:  # after the schedule: its start must not overwrite the restored learning rate
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(ckpt["scheduler"])
            restore_rng_state(ckpt["rng"], self.generator)
            self.best_acc, self.best_epoch = float(ckpt["best_val_acc"]), int(ckpt["best_epoch"])
            self.grad_history = [list(g) for g in ckpt.get("grad_history", [])]
            first_epoch = int(ckpt["epoch"]) + 1
            log.info("resuming train run %s after epoch %d of %d", run_id, first_epoch - 1, config.epochs)
            log_checkpoint_metrics(run_id, ckpt)
        self.first_epoch = self.epoch = first_epoch
        self.stored = first_epoch - 1
        self.train, self.val, self.test = (splits.train.to(self.device), splits.val.to(self.device),
                                           splits.test.to(self.device))
        self.placement = splits.placement
        if len(self.train) > config.batch_size and len(self.train) % config.batch_size == 1:
            log.info("train: %d images in batches of %d would leave a last batch of 1 image, on which BatchNorm "
                     "cannot train: it joins the batch before it (one batch of %d per epoch)", len(self.train),
                     config.batch_size, config.batch_size + 1)
        self.watched = attention_sample(self.val, config.attention_images) if self.model.cbam is not None else None
        self.grad_flow = GradientFlow(self.model)
        self.forward = compiled(self.model, config.compile, self.device)
        self.outbox = Outbox(run_id)  # epochs go on while the tracking server is away
        self.best_path, self.last_path = self.tmp / "best.pt", self.tmp / "last.pt"
        self.common = dict(image_size=config.image_size, amp=config.amp, channels_last=self.channels_last)
        self.extra = dict(classes=list(splits.classes), image_size=config.image_size, dataset=config.dataset,
                          source_run_id=run_id)
        self.best_state = None

    def epochs(self) -> None:
        config, model = self.config, self.model
        design = config.design_label()
        log.info("train %s: %s%s at %s on %s (%d train / %d val / %d test), %d epochs on %s", self.run_id,
                 config.activation, f" ({design})" if design else "", config.position, config.dataset,
                 len(self.train), len(self.val), len(self.test), config.epochs, self.device)
        for epoch in range(self.first_epoch, config.epochs + 1):
            self.epoch = epoch
            start = time.perf_counter()
            self.grad_flow.reset()
            # fresh canvases: this epoch's, seeded by (seed, epoch), so a resumed run sees an uninterrupted one's
            train = fresh_canvases(self.train, self.placement, config.seed, epoch) if config.canvases == "fresh" \
                else self.train
            result = train_one_epoch(model, train, self.optimizer, batch_size=config.batch_size,
                                     generator=self.generator, grad_flow=self.grad_flow,
                                     desc=f"epoch {epoch}/{config.epochs}", forward=self.forward,
                                     scheduler=self.scheduler, **self.common)
            val_eval = evaluate(model, self.val, **self.common)
            if not all(math.isfinite(v) for v in (result.loss, val_eval.loss)):
                kept = (f"{LAST_CHECKPOINT} of run {self.run_id}, after epoch {epoch - 1}" if epoch > 1
                        else "none (it diverged in the first epoch)")
                raise PipelineError(
                    f"training diverged: non-finite loss (train {result.loss}, val {val_eval.loss}) with "
                    f"activation {config.activation} in epoch {epoch}; last good checkpoint: {kept}")
            self.grad_history.append(self.grad_flow.epoch_means())
            metrics = {"train_loss": result.loss, "train_acc": result.acc, "val_loss": val_eval.loss,
                       "val_acc": val_eval.acc, **(model.gate.learnable_values() if model.gate is not None else {})}
            if self.scheduler is not None:  # where the schedule stands after the epoch, charted beside the losses
                metrics["lr"] = float(self.scheduler.get_last_lr()[0])
            if self.watched is not None:
                metrics.update(attention_metrics(model, self.watched, config.image_size))
            self.store(epoch, val_eval.acc, metrics)
            log.info("epoch %d/%d: train_loss %.4f train_acc %.2f%% | val_loss %.4f val_acc %.2f%% (%.1f s)",
                     epoch, config.epochs, result.loss, result.acc, val_eval.loss, val_eval.acc,
                     time.perf_counter() - start)

    def store(self, epoch: int, val_acc: float, metrics: dict) -> None:
        """The epoch's checkpoints, then its metrics: a run never shows an epoch it cannot resume
        from, and a resume logs the metrics a checkpoint holds if the process died between the two
        (each epoch's metrics exactly once). Ctrl-C / SIGTERM wait until the epoch is stored whole."""
        with deferred_interrupts():
            if val_acc > self.best_acc:
                self.best_acc, self.best_epoch = val_acc, epoch
                self.best_state = save_checkpoint(self.best_path, self.model, epoch=epoch, val_acc=val_acc,
                                                  **self.extra)
                self.outbox.put_artifact(self.best_path, "checkpoints")
            # everything needed to continue exactly here (resume_run_id)
            save_checkpoint(self.last_path, self.model, epoch=epoch, val_acc=val_acc,
                            optimizer=self.optimizer.state_dict(), rng=rng_state(self.generator),
                            **({"scheduler": self.scheduler.state_dict()} if self.scheduler is not None else {}),
                            best_val_acc=self.best_acc, best_epoch=self.best_epoch, grad_history=self.grad_history,
                            metrics=metrics, **self.extra)
            self.outbox.put_artifact(self.last_path, "checkpoints")
            self.outbox.put_metrics(metrics, step=epoch)
            self.stored = epoch

    @contextmanager
    def stopping_cleanly(self):
        """Around the epochs: a full disk becomes one line naming the run to resume once space is
        freed; an interrupt says what it leaves (the command that continues the run, or that there
        is no checkpoint yet), and re-raises."""
        try:
            yield
        except DiskFullError as exc:
            raise disk_full(exc.path, exc.needed, self.run_id if self.stored else None) from None
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise disk_full(exc.filename or self.tmp, checkpoint_bytes(self.model),
                            self.run_id if self.stored else None) from None
        except KeyboardInterrupt:
            if self.stored:
                log.error("interrupted in epoch %d: run %s ends KILLED, its checkpoint after epoch %d kept; "
                          "resume with:\n  python -m pipeline train --resume-run-id %s",
                          self.stored + 1, self.run_id, self.stored, self.run_id)
            else:
                log.error("interrupted in epoch %d: run %s ends KILLED before its first epoch ended, so there is "
                          "no checkpoint to resume from; start it again", self.epoch, self.run_id)
            raise

    def finish(self) -> TrainResult:
        """The gradient flow, the best epoch's weights evaluated on the test set, everything
        delivered (the run ends FINISHED only once everything is logged)."""
        config = self.config
        grad_path = self.tmp / Path(GRAD_FLOW).name
        grad_path.write_text(json.dumps({"layers": self.grad_flow.names, "epochs": list(range(1, config.epochs + 1)),
                                         "mean_abs_grad": self.grad_history}))
        self.outbox.put_artifact(grad_path, str(Path(GRAD_FLOW).parent))
        if self.best_state is not None:  # the best epoch's weights, still in memory
            self.model.load_state_dict(self.best_state)
            best_model = self.model
        else:  # resumed after the best epoch: it is among the run's artefacts
            best_model, _ = load_model(download_artifact(self.run_id, BEST_CHECKPOINT, self.tmp / "download"))
            best_model = best_model.to(self.device, memory_format=memory_format(self.channels_last))
        best_model.eval()
        test_eval = evaluate(best_model, self.test, **self.common)
        self.outbox.put_metrics({"test_acc": test_eval.acc, "test_top5": test_eval.top5,
                                 "test_loss": test_eval.loss, "best_epoch": self.best_epoch})
        self.outbox.deliver_or_stop()
        log.info("best epoch %d (val_acc %.2f%%): test_acc %.2f%%, test_top5 %.2f%%",
                 self.best_epoch, self.best_acc, test_eval.acc, test_eval.top5)
        return TrainResult(self.run_id, best_model, test_eval)


def run_train(config: TrainConfig | None = None, resume_run_id: str = "", dataset: Dataset | None = None,
              splits: Splits | None = None, run_name: str | None = None, force: bool = False) -> TrainResult:
    """Run the step with a validated config, or continue the interrupted run ``resume_run_id``
    (in the same MLflow run, from its ``checkpoints/last.pt``). ``dataset`` / ``splits``: what
    the caller (``main``) has loaded already; ``splits`` must be those of ``prepare_run_id``.

    Phases: start or resume (config, checkpoint, splits, model), the epochs (inside
    ``Training.stopping_cleanly``), finish (test evaluation, delivery); then, once the run
    is FINISHED, ``last.pt`` is dropped if the config says so."""
    config, ckpt, device, splits, digest = start_or_resume(config, resume_run_id, dataset, splits, force)
    seed_everything(config.seed)
    model_config = config.model_config(len(splits.classes))
    if config.gate_norm != "none" and model_config.position != "none" and config.activation not in SUM_TO_ONE_GATES:
        log.info("gate_norm %s leaves %s unchanged: its weights do not sum to one", config.gate_norm,
                 config.activation)
    model = build_model(model_config, "none" if ckpt else config.weights)
    params = {**config.params(), "num_classes": len(splits.classes), "train_size": len(splits.train),
              "val_size": len(splits.val), "test_size": len(splits.test)}
    tags = {REUSE_KEY_TAG: reuse_key(TRAIN, config.to_dict())}
    if config.prepare_run_id:
        tags[UPSTREAM_TAGS[PREPARE_DATA]] = config.prepare_run_id
    if digest:  # what a probe of this run checks its data against
        tags[DATASET_DIGEST_TAG] = digest
    with step_run(TRAIN, params, config.to_dict(), run_name=run_name or config.label(), tags=tags,
                  run_id=resume_run_id or None, experiment=config.experiment()) as run, \
            tempfile.TemporaryDirectory() as tmp:
        training = Training(config, ckpt, splits, model, device, run.info.run_id, tmp)
        with training.stopping_cleanly():  # from the line that says training starts
            training.epochs()
        result = training.finish()
    if not config.keep_last_checkpoint:  # only once the run is FINISHED: until then it is the resume point
        drop_last_checkpoint(result.run_id)
    return result


def drop_last_checkpoint(run_id: str) -> None:
    """Delete ``checkpoints/last.pt`` of a finished run from its artefact store (any store MLflow
    can delete from: local, the tracking server's proxied artefacts, S3, ...)."""
    try:
        delete_artifact(run_id, LAST_CHECKPOINT)
        log.info("train %s: dropped %s (keep_last_checkpoint=false; best.pt is kept)", run_id, LAST_CHECKPOINT)
    except Exception as exc:  # the run is finished and complete; only the space is not freed
        log.warning("train %s: could not delete %s: %s", run_id, LAST_CHECKPOINT, one_line(exc))
