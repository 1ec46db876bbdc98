"""Channel-gate activations for CBAM's channel attention, looked up by name.

The notebook's six gates, with its definitions, plus two sparse ones from the
``entmax`` family (Peters, Niculae & Martins 2019, "Sparse Sequence-to-Sequence
Models"; Correia, Niculae & Martins 2019, "Adaptively Sparse Transformers"):

============== =====================================================================
name           definition (x: channel logits, normalised over channels where noted)
============== =====================================================================
sigmoid        1 / (1 + exp(-x))
softmax        exp(x_c) / sum_k exp(x_k)                    (over channels)
sparsemax      argmin_p ||p - x||^2 on the simplex          (over channels)
entmax15       1.5-entmax                                   (over channels)
alpha_entmax   alpha-entmax, learnable alpha > 1, init 1.5  (over channels)
scaled_tanh    (tanh(s * x) + 1) / 2, learnable s, init 1
parametric_sigmoid  sigmoid(x / T), learnable T > 0, init 1
swish          x * sigmoid(x)    (unbounded, negative for x < 0)
============== =====================================================================

Every gate computes in float32, also under autocast: bf16 sort/where/sigmoid
would change which channels sparsemax zeroes. Learnable values are reported by
``Gate.learnable_values`` under the names logged to MLflow.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.contracts import NOTEBOOK_GATES, check_gate  # noqa: F401 - the names live in contracts


class Gate(nn.Module):
    """Base class: maps channel logits (B, C, ...) to channel weights of the same shape."""

    #: True for gates whose weights sum to one over channels.
    sums_to_one = False
    #: Multiplies the gate's output (gate_norm mean_one sets C on sum-to-one gates, so their
    #: weights average 1 instead of 1/C); a plain attribute, not part of the state dict.
    output_scale = 1.0

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            weights = self.activate(logits.float())
            return weights * self.output_scale if self.output_scale != 1.0 else weights

    def activate(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def learnable_values(self) -> dict[str, float]:
        """Current values of the gate's learnable parameters, by MLflow metric name."""
        return {}


class Sigmoid(Gate):
    def activate(self, x):
        return torch.sigmoid(x)


class Softmax(Gate):
    sums_to_one = True

    def activate(self, x):
        return torch.softmax(x, dim=1)


@torch.compiler.disable
def entmax_gate(name: str, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """entmax's ``sparsemax``, ``entmax15`` or ``entmax_bisect`` over channels, run eagerly under
    ``torch.compile`` (``compile=graphs|inductor``): TorchDynamo cannot trace entmax's autograd
    Functions (their classmethod ``forward``), and failing inside one it would drop the whole
    model's top frame to eager; this way the capture breaks cleanly around the gate (each
    enclosing module's forward in two pieces: 11 graphs for the model, measured with
    ``torch._dynamo.explain``, against 1 for the sigmoid gate)."""
    import entmax

    return getattr(entmax, name)(x, dim=1, **kwargs)


class Sparsemax(Gate):
    sums_to_one = True

    def activate(self, x):
        return entmax_gate("sparsemax", x)


class Entmax15(Gate):
    sums_to_one = True

    def activate(self, x):
        return entmax_gate("entmax15", x)


class AlphaEntmax(Gate):
    """alpha-entmax with alpha = 1 + softplus(raw), so alpha stays above 1 (alpha=1 is softmax)."""

    sums_to_one = True

    def __init__(self, alpha: float = 1.5):
        super().__init__()
        self.raw_alpha = nn.Parameter(torch.tensor([math.log(math.expm1(alpha - 1.0))]))

    @property
    def alpha(self) -> torch.Tensor:
        return 1.0 + F.softplus(self.raw_alpha.float())

    def activate(self, x):
        return entmax_gate("entmax_bisect", x, alpha=self.alpha)  # alpha (1,) broadcasts over (B, 1, ...)

    def learnable_values(self):
        return {"gate_alpha": float(self.alpha.detach())}


class ScaledTanh(Gate):
    """(tanh(s x) + 1) / 2 with learnable s (init 1); equals sigmoid(2 s x)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(scale)]))

    def activate(self, x):
        return (torch.tanh(self.scale.float() * x) + 1.0) / 2.0

    def learnable_values(self):
        return {"gate_scale": float(self.scale.detach())}


class ParametricSigmoid(Gate):
    """sigmoid(x / T) with T = exp(log_T) > 0, init T = 1."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.log_temperature = nn.Parameter(torch.tensor([math.log(temperature)]))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.float().exp()

    def activate(self, x):
        return torch.sigmoid(x / self.temperature)

    def learnable_values(self):
        return {"gate_temperature": float(self.temperature.detach())}


class Swish(Gate):
    def activate(self, x):
        return x * torch.sigmoid(x)


GATES: dict[str, Callable[[], Gate]] = {
    "sigmoid": Sigmoid,
    "softmax": Softmax,
    "sparsemax": Sparsemax,
    "scaled_tanh": ScaledTanh,
    "parametric_sigmoid": ParametricSigmoid,
    "swish": Swish,
    "entmax15": Entmax15,
    "alpha_entmax": AlphaEntmax,
}



def create_gate(name: str) -> Gate:
    """Build a gate of the registry by name.

    Args:
        name: one of ``GATES`` (``pipeline.contracts.GATE_NAMES``).

    Returns:
        A new gate module.

    Raises:
        PipelineError: for an unknown name, listing the valid ones (``pipeline.contracts.check_gate``).
    """
    check_gate(name)
    return GATES[name]()
