"""A torchvision ResNet (18, 34 or 50) with one attention block after a stage
(``AttentionResNet``): CBAM (Woo et al. 2018, "CBAM: Convolutional Block Attention
Module", the notebook's), squeeze-and-excitation or ECA, with the channel gate chosen by name
(``pipeline.gates``).

As in the reference notebook: channel attention passes the average- and max-pooled
descriptors through one shared 1x1-conv MLP (reduction 16, no bias), sums them and applies
the gate; spatial attention stacks the channel mean and max, applies a 7x7 conv and a
sigmoid. Both gates are submodules (``channel.gate`` and ``spatial.gate``), so a forward
hook on them captures the channel weights (B, C, 1, 1) and the spatial map (B, 1, H, W).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from torch import nn

from pipeline.config import ModelConfig, check_weights  # noqa: F401  (ModelConfig re-exported: checkpoints name it)
from pipeline.contracts import (  # noqa: F401  (re-exported: the registries of this module)
    ATTENTIONS,
    BACKBONES,
    GATE_NORMS,
    NO_GATE,
    POSITIONS,
    SPATIAL_GATES,
    WEIGHTS,
    stage_channels,
)
from pipeline.errors import PipelineError, one_line
from pipeline.gates import create_gate

STAGES = ("layer1", "layer2", "layer3", "layer4")


def channel_gate(activation: str, channels: int, gate_norm: str = "none"):
    """The registry's gate for ``channels`` channel logits (B, C, 1, 1); ``gate_norm`` mean_one
    multiplies a sum-to-one gate's weights by C."""
    gate = create_gate(activation)
    if gate_norm == "mean_one" and gate.sums_to_one:
        gate.output_scale = float(channels)
    return gate


class ChannelAttention(nn.Module):
    """CBAM's channel attention: average- and max-pooled descriptors through one shared MLP,
    summed, then the gate."""

    def __init__(self, channels: int, activation: str, reduction: int = 16, gate_norm: str = "none"):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.channels = channels
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.gate = channel_gate(activation, channels, gate_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x))  # (B, C, 1, 1)
        return self.gate(logits)


class SEChannel(nn.Module):
    """Squeeze-and-excitation (Hu, Shen, Albanie, Sun & Wu, CVPR 2018 / TPAMI 2020): the
    average-pooled descriptor through FC (C -> C/r, with bias), ReLU, FC (C/r -> C), then the
    gate (SENet's is a sigmoid)."""

    def __init__(self, channels: int, activation: str, reduction: int = 16, gate_norm: str = "none"):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.channels = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = channel_gate(activation, channels, gate_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))  # (B, C, 1, 1)


def eca_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    """ECA's adaptive kernel size k = |(log2 C + b) / gamma|, odd, at least 3 (timm's EcaModule)."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class ECAChannel(nn.Module):
    """ECA (Wang, Wu, Zhu, Li, Zuo & Hu, CVPR 2020, "ECA-Net"): the average-pooled descriptor,
    a 1-D convolution of size ``eca_kernel_size`` across the channels (no MLP, no
    reduction), then the gate. The logits are laid out (B, C, 1, 1) before the gate, so a gate
    that normalises over channels normalises over channels here too (timm's EcaModule gates a
    (B, 1, C) tensor: a softmax over its dim 1 would normalise a single value)."""

    def __init__(self, channels: int, activation: str, gate_norm: str = "none"):
        super().__init__()
        k = eca_kernel_size(channels)
        self.channels = channels
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.gate = channel_gate(activation, channels, gate_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = self.conv(x.mean(dim=(2, 3)).view(b, 1, c))  # (B, 1, C): neighbouring channels mixed
        return self.gate(y.view(b, c, 1, 1))


class SpatialGate(nn.Module):
    """A registry gate over the H x W positions of a (B, 1, H, W) map: the map is laid out as
    (B, H*W, 1, 1), the gate normalises over that axis, and the result goes back to (B, 1, H, W).
    So softmax and sparsemax maps sum to 1 over each map's positions."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.inner = create_gate(name)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        b, _, h, w = logits.shape
        return self.inner(logits.reshape(b, h * w, 1, 1)).reshape(b, 1, h, w)


class SpatialAttention(nn.Module):
    """CBAM's spatial attention: channel mean and max stacked, a 7 x 7 conv, then the gate: the
    notebook's sigmoid per position (``nn.Sigmoid``), or a ``SpatialGate``."""

    def __init__(self, kernel_size: int = 7, gate: str = "sigmoid"):
        super().__init__()
        if gate not in SPATIAL_GATES:
            raise PipelineError(f"unknown spatial_gate {gate!r}; valid: {', '.join(SPATIAL_GATES)}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.gate = nn.Sigmoid() if gate == "sigmoid" else SpatialGate(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.gate(self.conv(pooled))  # (B, 1, H, W)


class AttentionBlock(nn.Module):
    """One attention block of ``design`` (CBAM, SE or ECA) on ``channels`` features: the
    channel gate's weights multiply the features (``channel.gate`` outputs (B, C, 1, 1)); CBAM
    then multiplies by its spatial map (``spatial.gate`` outputs (B, 1, H, W)); SE and ECA
    have no spatial branch (``spatial`` is None). The submodule names are CBAM's, so the
    checkpoints of the CBAM-only model load unchanged."""

    def __init__(self, channels: int, activation: str, reduction: int = 16, gate_norm: str = "none",
                 design: str = "cbam", spatial_gate: str = "sigmoid"):
        super().__init__()
        if design not in ATTENTIONS:
            raise PipelineError(f"unknown attention {design!r}; valid: {', '.join(ATTENTIONS)}")
        self.design = design
        self.channels = channels
        if design == "cbam":
            self.channel = ChannelAttention(channels, activation, reduction, gate_norm)
        elif design == "se":
            self.channel = SEChannel(channels, activation, reduction, gate_norm)
        else:
            self.channel = ECAChannel(channels, activation, gate_norm)
        self.spatial = SpatialAttention(gate=spatial_gate) if design == "cbam" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x).to(x.dtype)
        return x if self.spatial is None else x * self.spatial(x).to(x.dtype)


CBAM = AttentionBlock  # the notebook's block: AttentionBlock(design="cbam"), its default


class AttentionResNet(nn.Module):
    """A torchvision ResNet (``config.backbone``, ResNet18 by default) with one attention block
    (``AttentionBlock``: CBAM by default, or SE or ECA) after ``position``'s stage and a
    new head. The block is the attribute ``cbam`` whatever its design (the checkpoints' keys)."""

    def __init__(self, config: ModelConfig, backbone: nn.Module | None = None):
        super().__init__()
        from torchvision.models import get_model

        self.config = config
        base = backbone if backbone is not None else get_model(config.backbone, weights=None)
        self.stem = nn.Sequential(base.conv1, base.bn1, base.relu, base.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = base.layer1, base.layer2, base.layer3, base.layer4
        self.avgpool = base.avgpool
        self.fc = nn.Linear(base.fc.in_features, config.num_classes)
        stage = POSITIONS[config.position][0]
        channels = stage_channels(config.backbone, config.position)
        self.cbam_after = stage
        self.cbam = AttentionBlock(channels, config.activation, config.reduction, config.gate_norm,
                                   config.attention, config.spatial_gate) if stage else None

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


#: The class's name before it built SE, ECA and ResNet34/50 too; its checkpoints' keys are the same.
CBAMResNet18 = AttentionResNet


def load_backbone(weights: str, backbone: str = "resnet18") -> nn.Module:
    """A torchvision ResNet (``backbone``) with ``weights``: 'imagenet' (torchvision's
    IMAGENET1K_V1 of that ResNet), 'none' or a state-dict file path."""
    from torchvision.models import get_model, get_model_weights

    if backbone not in BACKBONES:
        raise PipelineError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    title = backbone.replace("resnet", "ResNet")
    if weights == "none":
        return get_model(backbone, weights=None)
    if weights == "imagenet":
        from pipeline.data import offline

        imagenet = get_model_weights(backbone).IMAGENET1K_V1
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet.url).name
        try:
            if offline() and not cached.is_file():
                raise OSError("PIPELINE_OFFLINE is set")
            return get_model(backbone, weights=imagenet)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise PipelineError(
                f"cannot get torchvision's ImageNet {title} weights (offline and not in the torch "
                f"cache {torch.hub.get_dir()}): {type(exc).__name__}: {one_line(exc)}; use weights=none or the "
                "path of a local state-dict file"
            ) from None
    model = get_model(backbone, weights=None)
    model.load_state_dict(backbone_state(weights, backbone), strict=False)  # the head (fc) is replaced
    return model


def _reference_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """Every tensor of ``backbone``'s state dict but the head, name -> shape (built on the meta
    device: no memory, no time)."""
    from torchvision.models import get_model

    with torch.device("meta"):
        model = get_model(backbone, weights=None)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("fc.")}


def _misfit(state: dict, backbone: str) -> str:
    """Why ``state`` is not ``backbone``'s state dict (head excluded), or "" where it fits."""
    expected = _reference_shapes(backbone)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        return (f"{len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
                f"{(missing + unexpected)[0]!r}")
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            return f"{key!r} holds a {type(value).__name__}, not a tensor"
        if tuple(value.shape) != shape:
            return f"{key!r} has shape {tuple(value.shape)}, {backbone}'s has {shape}"
    return ""


def backbone_state(weights: str, backbone: str) -> dict[str, torch.Tensor]:
    """The state dict in the weights file ``weights`` (a bare state dict, or a dict holding one
    under ``state_dict``), without the head, after checking that every key and shape is
    ``backbone``'s: a one-line error naming the first misfit, and the backbone it fits, if any
    (``load_state_dict(strict=False)`` still raises, with a many-line message, on a size
    mismatch)."""
    check_weights(weights)
    try:
        state = torch.load(Path(weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PipelineError(f"cannot read weights file {weights!r}: {type(exc).__name__}: {one_line(exc)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PipelineError(f"weights file {weights!r} holds no state dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    why = _misfit(state, backbone)
    if why:
        fits = [b for b in BACKBONES if b != backbone and not _misfit(state, b)]
        hint = f"; it fits backbone {fits[0]}" if fits else ""
        title = backbone.replace("resnet", "ResNet")
        raise PipelineError(f"weights file {weights!r} is not a {title} state dict ({why}){hint}")
    return state


def check_weights_fit(weights: str, backbones) -> None:
    """One-line error, before any run starts, unless the weights (a name, or a file) fit every
    backbone of ``backbones``: a file fits one architecture."""
    if weights in WEIGHTS:
        return
    check_weights(weights)
    stat = Path(weights).stat()
    for backbone in dict.fromkeys(backbones):
        _checked_fit(weights, str(Path(weights).resolve()), stat.st_mtime_ns, stat.st_size, backbone)


@functools.lru_cache(maxsize=32)
def _checked_fit(weights: str, path: str, mtime_ns: int, size: int, backbone: str) -> None:
    """``backbone_state``'s check, once per file version (its resolved ``path``, time and size)
    and backbone in a process (a sweep's driver and each of its inline configurations would read
    the same file again); errors name the file as given; the state itself is not kept."""
    backbone_state(weights, backbone)


def build_model(config: ModelConfig, weights: str = "none") -> AttentionResNet:
    return AttentionResNet(config, load_backbone(weights, config.backbone))


def initial_model(config: ModelConfig, seed: int) -> AttentionResNet:
    """The architecture of ``config`` with the weights a train run of ``seed`` started from when
    its weights were none (torch seeded with ``seed``, as training seeds it before building):
    every layer re-initialised, the full cascade of Adebayo et al.'s model-parameter
    randomisation ("Sanity Checks for Saliency Maps", NeurIPS 2018), the network that knows
    nothing. This process's random state is left as it was. In eval mode, on the CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(config, "none").eval()
