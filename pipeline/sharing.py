"""Several configurations on one GPU at once: what each needs, what each GPU has free, and the
check a sweep makes before its run starts (``executor=process`` with ``jobs_per_gpu`` or more
jobs than GPUs, ``executor=ray`` with a fractional ``gpus_per_job``).

One small-batch ResNet18 process leaves most of a large GPU idle (the notebook's batch of 64 is
bound by kernel launches), so several share it; what they must not do is run out of memory
half-way through a sweep. What one configuration needs is estimated from its design, before
anything runs on the GPU:

- a CUDA context with its cuBLAS/cuDNN handles and workspaces (``CONTEXT_BYTES``);
- float32 weights, gradients and Adam's two moments: 16 bytes per parameter;
- the training split, validation and test images on the device (uint8, native size);
- the larger of one training batch's activations saved for backward (measured: one forward of
  two images through the real model on the CPU, with ``torch.autograd.graph.saved_tensors_hooks``,
  scaled to the batch) and an evaluation batch of 512 (three of its largest activations live
  at once);
- all of it times ``FRAGMENTATION``, the caching allocator's rounding and reuse.

It is an upper bound for ``amp`` (bf16 halves most activations) and for ``compile=inductor``
(fused kernels save fewer tensors). The GPU's free memory is read in a short child process, so
the sweep's own process never holds a CUDA context on the GPUs its workers share.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import subprocess
import sys

import torch

from pipeline.devices import EVAL_BATCH_SIZE
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

GIB = 1 << 30
CONTEXT_BYTES = GIB  # allowance per process for the CUDA context, cuBLAS/cuDNN handles and workspaces
STATE_BYTES_PER_PARAM = 16  # float32 weights, gradients, Adam's exp_avg and exp_avg_sq
FRAGMENTATION = 1.25


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def gpu_free_memory() -> list[int]:
    """Free bytes on each GPU this process sees (``CUDA_VISIBLE_DEVICES`` order); [] without CUDA."""
    if not torch.cuda.is_available():
        return []
    code = "import torch; print(*(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"could not read the GPUs' free memory: {last}")
    return [int(v) for v in done.stdout.split()]


@functools.cache
def activation_bytes(model_config, image_size: int) -> tuple[int, int, int]:
    """Per image: the bytes a training forward of the ``ModelConfig`` saves
    for backward and the largest of them; and the model's parameter count. Measured on two
    images (BatchNorm trains on a batch)."""
    from pipeline.models import build_model

    model = build_model(model_config, "none")
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # a tensor and its views share one storage
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.zeros(2, 3, image_size, image_size))
    return sum(saved.values()) // 2, max(saved.values()) // 2, sum(p.numel() for p in model.parameters())


def configuration_bytes(config) -> int:
    """The GPU memory one ``MainConfig`` needs, as the module docstring says."""
    from pipeline.data import DATASET_SHAPES

    t = config.train
    n, channels, height, width, classes = DATASET_SHAPES[t.dataset]
    saved, largest, params = activation_bytes(t.model_config(classes), t.image_size)
    data = n * (channels * height * width + 8)  # uint8 pixels, int64 labels
    work = max(saved * t.batch_size, 3 * largest * EVAL_BATCH_SIZE["cuda"])
    return int(FRAGMENTATION * (CONTEXT_BYTES + STATE_BYTES_PER_PARAM * params + data + work))


def check_sharing(configs, per_gpu: int, free: list[int], option: str, fix) -> None:
    """``per_gpu`` of ``configs`` at once on each GPU: the ``per_gpu`` largest must fit in the
    free memory of every GPU, else one line naming what they need, what the tightest GPU has and
    the setting that fits (``fix(k)`` words it for k configurations per GPU)."""
    needs = sorted(((configuration_bytes(c), c.label()) for c in configs), reverse=True)
    at_once = needs[:per_gpu]
    total = sum(b for b, _ in at_once)
    gpu = min(range(len(free)), key=free.__getitem__)
    if total <= free[gpu]:
        log.info("sweep: up to %d configurations share each GPU, about %s each (at most %s together); "
                 "GPU %d has %s free", len(at_once), gib(at_once[-1][0]), gib(total), gpu, gib(free[gpu]))
        return
    fits = 0
    while fits < len(at_once) and sum(b for b, _ in at_once[:fits + 1]) <= free[gpu]:
        fits += 1
    advice = f"use {fix(fits)}" if fits else "even one configuration alone does not fit: free the GPU"
    raise PipelineError(f"{option} puts {len(at_once)} configurations on one GPU at once, needing about "
                        f"{gib(total)} ({at_once[0][1]}: {gib(at_once[0][0])}), but GPU {gpu} has {gib(free[gpu])} "
                        f"free; {advice}")


def plan_process_workers(config, configs) -> tuple[int, int]:
    """``executor=process``: (worker processes, visible GPUs). With GPUs, ``jobs_per_gpu`` > 0
    runs that many on each GPU (``jobs`` is then ignored), 0 spreads ``jobs`` over them; where
    more than one would share a GPU, their memory is checked first (one-line error)."""
    uses_gpu = config.main.train.device in ("auto", "cuda")  # an explicit cpu or cuda:N is the user's choice
    free = gpu_free_memory() if uses_gpu else []
    gpus = len(free)
    if not gpus:
        if config.jobs_per_gpu:
            log.info("sweep: jobs_per_gpu=%d applies to GPUs; none is used here, so jobs=%d run at once",
                     config.jobs_per_gpu, config.jobs)
        return config.jobs, 0
    workers = gpus * config.jobs_per_gpu if config.jobs_per_gpu else config.jobs
    per_gpu = min(math.ceil(workers / gpus), math.ceil(len(configs) / gpus))
    if per_gpu > 1:
        option = f"jobs_per_gpu={config.jobs_per_gpu}" if config.jobs_per_gpu else f"jobs={config.jobs} on {gpus} GPU(s)"
        check_sharing(configs, per_gpu, free, option, lambda k: f"jobs_per_gpu={k}")
    return workers, gpus


def check_ray_sharing(config, configs) -> None:
    """``executor=ray``, before the sweep run starts: on a local cluster (no ``ray_address``) a
    configuration cannot ask for more GPUs or cores than this machine has; with ``gpus_per_job``
    below 1 Ray packs ``floor(1 / gpus_per_job)`` configurations on a GPU: the memory check of
    ``check_sharing``. A remote cluster's GPUs cannot be read from here: that is said, not checked."""
    from pipeline.executors import ray_address

    free = None
    if not ray_address(config.ray_address):  # a local cluster has this machine's GPUs and cores
        wanted = 0.0 if config.gpus_per_job == "auto" else float(config.gpus_per_job)
        free = gpu_free_memory() if wanted > 0 else []
        gpus, cpus = len(free), os.cpu_count() or 1
        if wanted > gpus:
            raise PipelineError(f"gpus_per_job={config.gpus_per_job} asks for more GPUs than this machine has ({gpus}), "
                                "and executor=ray without ray_address starts a local Ray cluster of this machine: "
                                "give gpus_per_job auto (or 0), or ray_address of a cluster with GPUs")
        if config.cpus_per_job > cpus:
            raise PipelineError(f"cpus_per_job={config.cpus_per_job:g} asks for more CPU cores than this machine has "
                                f"({cpus}) for its local Ray cluster: give cpus_per_job {cpus} or less")
    if config.gpus_per_job == "auto" or not 0 < float(config.gpus_per_job) < 1:
        return
    if ray_address(config.ray_address):
        log.warning("sweep: gpus_per_job=%s shares GPUs of a remote Ray cluster, whose free memory is not "
                    "checked from here", config.gpus_per_job)
        return
    free = gpu_free_memory() if free is None else free
    if free:
        per_gpu = min(math.floor(1 / float(config.gpus_per_job) + 1e-9), len(configs))
        if per_gpu > 1:
            check_sharing(configs, per_gpu, free, f"gpus_per_job={config.gpus_per_job}",
                          lambda k: f"gpus_per_job={1 / k:.3g}")
