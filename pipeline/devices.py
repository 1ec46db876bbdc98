"""Device helpers in one place: which device, which speed-ups on it, how big an eval batch.

The CUDA speed-ups (channels_last, fused Adam, bf16 autocast) are each selectable on a CPU as
well (``true``/``false``; ``auto`` turns the first two on for CUDA only), so every branch runs
in the CPU test suite, not only on a GPU.
"""
from __future__ import annotations

import os

import torch

from pipeline import contracts
from pipeline.errors import PipelineError

EVAL_BATCH_SIZE = {"cuda": 512, "cpu": 64}  # on a CPU, batches beyond 64 lose cache locality


def check_device(device: str) -> None:
    """One-line error for a device name that is unknown or not available here."""
    if device in ("auto", "cpu"):
        return
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise PipelineError(f"device {device!r} asked for, but CUDA is not available; use device=cpu or auto")
        return
    raise PipelineError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_count() -> int:
    """Cores this process may use (its affinity mask, where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def flag_on(setting: str | bool, device: torch.device) -> bool:
    """An ``auto``/``true``/``false`` speed-up setting: ``auto`` means on CUDA only."""
    if isinstance(setting, bool):
        return setting
    return device.type == "cuda" if setting == "auto" else setting == "true"


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.preserve_format


def autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)


def compiled(model: torch.nn.Module, mode: str, device: torch.device):
    """How the training step's model runs (``COMPILE_MODES``): ``false``
    eagerly, op by op; ``graphs`` captured once by TorchDynamo/AOTAutograd and replayed as CUDA
    graphs on a GPU (the same kernels as eager, no code generation; on a CPU the captured graph
    runs op by op, which is how the suite checks the capture: eager's numbers to float
    rounding, bit for bit with the sigmoid gate); ``inductor`` captured and compiled
    to fused kernels by TorchInductor, replayed as CUDA graphs on a GPU (``reduce-overhead``).

    The callable the training step runs ``model`` through (it shares the model's parameters,
    buffers and train/eval mode; checkpoints keep saving ``model`` itself). A batch of another
    shape (an epoch's last) is captured once more, never traced dynamically. A new capture
    starts from empty TorchDynamo caches, so a run's numbers do not depend on what ran before it
    in the process (a resumed run's are the interrupted one's)."""
    if mode not in contracts.COMPILE_MODES:
        raise PipelineError(f"unknown compile mode {mode!r}; valid: {', '.join(contracts.COMPILE_MODES)}")
    if mode == "false":
        return model
    # a capture independent of what this process captured before (an inline sweep's earlier
    # configurations, a test): TorchDynamo keeps code it once failed on, or captured for
    # another model, in its caches, and another split of the graph rounds otherwise
    torch._dynamo.reset()
    if mode == "graphs":
        return torch.compile(model, backend="cudagraphs" if device.type == "cuda" else "aot_eager", dynamic=False)
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else "default", dynamic=False)


def eval_batch_size(device: torch.device) -> int:
    return EVAL_BATCH_SIZE.get(device.type, 64)


def configure(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
