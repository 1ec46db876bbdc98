"""Frozen, validated configurations of the steps. Building one validates it: a bad value
raises :class:`~pipeline.errors.PipelineError` with the valid values or range, before any
MLflow run is started."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from pipeline.data import DATASETS
from pipeline.errors import PipelineError
from pipeline.gates import GATES
from pipeline.models import POSITIONS, check_weights

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024


def check_choice(name: str, value: str, valid) -> None:
    if value not in valid:
        raise PipelineError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def check_positive(name: str, value) -> None:
    if not value > 0:
        raise PipelineError(f"{name} must be positive, got {value}")


def check_device(device: str) -> None:
    import torch

    if device in ("auto", "cpu"):
        return
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise PipelineError(f"device {device!r} asked for, but CUDA is not available; use device=cpu or auto")
        return
    raise PipelineError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N")


class StepConfig:
    """Shared behaviour of the step configurations (frozen dataclasses)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]


@dataclass(frozen=True)
class TrainConfig(StepConfig):
    activation: str = "sigmoid"
    position: str = "late"
    dataset: str = "cifar10"
    data_dir: str = "data"
    weights: str = "imagenet"
    image_size: int = 224
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.1
    device: str = "auto"
    amp: bool = False
    prepare_run_id: str = ""  # a finished prepare-data run whose split to use ("" : split here)

    def __post_init__(self):
        check_choice("activation", self.activation, GATES)
        check_choice("position", self.position, POSITIONS)
        check_choice("dataset", self.dataset, DATASETS)
        check_weights(self.weights)
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise PipelineError(
                f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] pixels, got {self.image_size}"
            )
        check_positive("epochs", self.epochs)
        check_positive("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        if not 0.0 < self.val_fraction < 1.0:
            raise PipelineError(f"val_fraction must be in (0, 1), exclusive, got {self.val_fraction}")
        check_device(self.device)
