"""CBAM (Woo et al. 2018, "CBAM: Convolutional Block Attention Module") on a torchvision
ResNet18, with the channel gate chosen by name (:mod:`pipeline.gates`).

As in the reference notebook: channel attention passes the average- and max-pooled
descriptors through one shared 1x1-conv MLP (reduction 16, no bias), sums them and applies
the gate; spatial attention stacks the channel mean and max, applies a 7x7 conv and a
sigmoid. Both gates are submodules (``channel.gate`` and ``spatial.gate``), so a forward
hook on them captures the channel weights (B, C, 1, 1) and the spatial map (B, 1, H, W).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import check_weights
from pipeline.contracts import GATE_NORMS, NO_GATE, POSITIONS, WEIGHTS  # noqa: F401  (re-exported: the registries of this module)
from pipeline.errors import PipelineError, one_line
from pipeline.gates import GATES, create_gate

STAGES = ("layer1", "layer2", "layer3", "layer4")


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, activation: str, reduction: int = 16, gate_norm: str = "none"):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.gate = create_gate(activation)
        if gate_norm == "mean_one" and self.gate.sums_to_one:
            self.gate.output_scale = float(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x))  # (B, C, 1, 1)
        return self.gate(logits)


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.gate(self.conv(pooled))  # (B, 1, H, W)


class CBAM(nn.Module):
    def __init__(self, channels: int, activation: str, reduction: int = 16, gate_norm: str = "none"):
        super().__init__()
        self.channel = ChannelAttention(channels, activation, reduction, gate_norm)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x).to(x.dtype)
        return x * self.spatial(x).to(x.dtype)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model from a checkpoint, without the CLI."""

    activation: str
    position: str
    num_classes: int
    reduction: int = 16
    gate_norm: str = "none"  # checkpoints from before the option hold none

    def __post_init__(self):
        if self.position not in POSITIONS:
            raise PipelineError(f"unknown position {self.position!r}; valid: {', '.join(POSITIONS)}")
        no_cbam = POSITIONS[self.position][0] is None
        if self.activation not in GATES and not (no_cbam and self.activation == NO_GATE):
            raise PipelineError(f"unknown activation {self.activation!r}; valid: {', '.join(GATES)}")
        if self.gate_norm not in GATE_NORMS:
            raise PipelineError(f"unknown gate_norm {self.gate_norm!r}; valid: {', '.join(GATE_NORMS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CBAMResNet18(nn.Module):
    """torchvision ResNet18 with one CBAM block after ``position``'s stage and a new head."""

    def __init__(self, config: ModelConfig, backbone: nn.Module | None = None):
        super().__init__()
        from torchvision.models import resnet18

        self.config = config
        base = backbone if backbone is not None else resnet18(weights=None)
        self.stem = nn.Sequential(base.conv1, base.bn1, base.relu, base.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = base.layer1, base.layer2, base.layer3, base.layer4
        self.avgpool = base.avgpool
        self.fc = nn.Linear(base.fc.in_features, config.num_classes)
        stage, channels = POSITIONS[config.position]
        self.cbam_after = stage
        self.cbam = CBAM(channels, config.activation, config.reduction, config.gate_norm) if stage else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in STAGES:
            x = getattr(self, name)(x)
            if name == self.cbam_after:
                x = self.cbam(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def attended(self, x: torch.Tensor) -> torch.Tensor:
        """The input (B, 3, S, S) -> the CBAM block's output (B, C, H, W): the features whose
        channels the gate weighted (what channel ablation edits)."""
        if self.cbam is None:
            raise PipelineError("a model without CBAM (position none) has no attended features")
        x = self.stem(x)
        for name in STAGES:
            x = getattr(self, name)(x)
            if name == self.cbam_after:
                return self.cbam(x)
        raise AssertionError(self.cbam_after)

    def from_attended(self, x: torch.Tensor) -> torch.Tensor:
        """The CBAM block's output -> logits: the rest of the network, so that
        ``from_attended(attended(x)) == forward(x)``."""
        for name in STAGES[STAGES.index(self.cbam_after) + 1:]:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    @property
    def gate(self):
        """The channel gate module, or None without CBAM."""
        return self.cbam.channel.gate if self.cbam is not None else None


def load_backbone(weights: str) -> nn.Module:
    """A torchvision ResNet18 with ``weights``: 'imagenet', 'none' or a state-dict file path."""
    from torchvision.models import ResNet18_Weights, resnet18

    if weights == "none":
        return resnet18(weights=None)
    if weights == "imagenet":
        from pipeline.data import offline

        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(ResNet18_Weights.IMAGENET1K_V1.url).name
        try:
            if offline() and not cached.is_file():
                raise OSError("PIPELINE_OFFLINE is set")
            return resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise PipelineError(
                "cannot get torchvision's ImageNet ResNet18 weights (offline and not in the torch "
                f"cache {torch.hub.get_dir()}): {type(exc).__name__}: {one_line(exc)}; use weights=none or the "
                "path of a local state-dict file"
            ) from None
    check_weights(weights)
    path = Path(weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PipelineError(f"cannot read weights file {weights!r}: {type(exc).__name__}: {one_line(exc)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model = resnet18(weights=None)
    if not isinstance(state, dict):
        raise PipelineError(f"weights file {weights!r} holds no state dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the head is replaced
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise PipelineError(
            f"weights file {weights!r} is not a ResNet18 state dict "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {(missing + unexpected)[0]!r})"
        )
    return model


def build_model(config: ModelConfig, weights: str = "none") -> CBAMResNet18:
    return CBAMResNet18(config, load_backbone(weights))
