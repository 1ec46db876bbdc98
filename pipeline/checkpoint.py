"""Checkpoints: the weights plus the full model config, so a model is rebuilt without the
CLI. Only tensors, numbers, strings, lists and dicts are stored, so they load with
``torch.load(weights_only=True)``: loading one never executes code."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.errors import PipelineError
from pipeline.models import AttentionResNet, ModelConfig

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, model: AttentionResNet, **extra: Any) -> dict[str, torch.Tensor]:
    """Write the checkpoint; returns the weights it holds (a CPU copy), for use in memory."""
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    torch.save({"format_version": FORMAT_VERSION, "model_config": model.config.to_dict(),
                "state_dict": state, **extra}, path)
    return state


def read_checkpoint(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """The checkpoint at ``path``; errors call it ``name`` (e.g. "train run X's checkpoints/best.pt",
    rather than the temporary folder it was downloaded to)."""
    name = name or f"checkpoint {str(path)!r}"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PipelineError(f"{name} is corrupt or not a checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "state_dict" not in ckpt:
        raise PipelineError(f"{name} lacks model_config or state_dict")
    return ckpt


def load_model(path: str | Path, name: str | None = None) -> tuple[AttentionResNet, dict[str, Any]]:
    """Rebuild the model stored at ``path``; returns it (in eval mode, on CPU) and the checkpoint."""
    name = name or f"checkpoint {str(path)!r}"
    ckpt = read_checkpoint(path, name)
    try:
        model = AttentionResNet(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError) as exc:
        raise PipelineError(f"{name} does not fit its model config ({type(exc).__name__})") from None
    return model.eval(), ckpt
