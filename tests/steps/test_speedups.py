"""The CUDA speed-ups (channels_last, fused Adam, bf16 autocast) each run on a CPU too, so
none of them is code that only a GPU would ever execute."""
import math

import mlflow
import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.devices import flag_on
from pipeline.steps.train import run_train

BASE = dict(dataset="fake", weights="none", image_size=32, epochs=1, batch_size=32, device="cpu", seed=4)


def conv_weight(model) -> torch.Tensor:
    return next(p for p in model.parameters() if p.dim() == 4)


def test_auto_means_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not flag_on("auto", cpu) and flag_on("auto", cuda)
    assert flag_on("true", cpu) and not flag_on("false", cuda)


def test_channels_last_fused_adam_and_bf16_autocast_train_on_a_cpu(tracking_uri):
    plain = run_train(TrainConfig(**BASE))
    fast = run_train(TrainConfig(**BASE, channels_last="true", fused_adam="true", amp=True))
    assert not conv_weight(plain.model).is_contiguous(memory_format=torch.channels_last)
    assert conv_weight(fast.model).is_contiguous(memory_format=torch.channels_last)
    client = mlflow.MlflowClient()
    logged = client.get_run(fast.run_id).data
    assert (logged.params["channels_last"], logged.params["fused_adam"], logged.params["amp"]) == ("true", "true", "true")
    a, b = client.get_run(plain.run_id).data.metrics, logged.metrics
    assert math.isfinite(b["train_loss"]) and math.isfinite(b["test_loss"])
    # bf16 arithmetic changes the numbers, not the learning: same model, same data, same seed
    assert b["train_loss"] != a["train_loss"]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)

    # each switch alone trains too, and fused Adam alone matches plain Adam closely
    fused = run_train(TrainConfig(**BASE, fused_adam="true"))
    assert client.get_run(fused.run_id).data.metrics["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
    assert conv_weight(run_train(TrainConfig(**BASE, channels_last="true")).model).is_contiguous(
        memory_format=torch.channels_last)
