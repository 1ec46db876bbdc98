"""Configurations sharing a GPU: the memory estimate, the check, the placement. Nothing is faked
but the GPUs' free memory (``pipeline.sharing.gpu_free_memory``: this machine has none)."""
import logging

import pytest
import torch

from pipeline import sharing
from pipeline.config import MainConfig, SweepConfig, TrainConfig
from pipeline.errors import PipelineError
from pipeline.executors import ProcessExecutor
from pipeline.models import ModelConfig, build_model
from pipeline.sharing import GIB, activation_bytes, configuration_bytes, plan_process_workers

SIGMOID_LATE = ModelConfig("sigmoid", "late", num_classes=10)  # the notebook's CBAM after layer4, on a ResNet18
NOTEBOOK_GATES = ("sigmoid", "softmax", "sparsemax", "scaled_tanh", "parametric_sigmoid", "swish")


def table_sweep(**options) -> SweepConfig:
    """The notebook's table: six gates, CIFAR-10 at 224 px, batch 64."""
    return SweepConfig(activations=NOTEBOOK_GATES, executor="process",
                       main=MainConfig(train=TrainConfig(dataset="cifar10", weights="none")), **options)


def fake_gpus(monkeypatch, *free_gib: float):
    monkeypatch.setattr(sharing, "gpu_free_memory", lambda: [int(g * GIB) for g in free_gib])


def test_no_cuda_here_means_no_gpus():
    assert not torch.cuda.is_available() and sharing.gpu_free_memory() == []


def test_the_largest_saved_activation_is_conv1s_output_and_the_rest_scales_with_the_pixels():
    # closed form: ResNet's stem convolution writes 64 channels at half the input's side, float32
    for size in (64, 128):
        saved, largest, params = activation_bytes(SIGMOID_LATE, size)
        assert largest == 64 * (size // 2) ** 2 * 4
    model = build_model(SIGMOID_LATE, "none")
    assert params == sum(p.numel() for p in model.parameters())
    small = activation_bytes(SIGMOID_LATE, 64)[0]
    assert saved / small == pytest.approx(4.0, rel=0.03)  # every map has 4x the pixels at twice the side
    # a ResNet18 training forward saves far more than conv1's output and its BatchNorm's (input of
    # the ReLU, the max-pool's input): at least those, and less than 30 such maps
    assert 3 * largest <= saved <= 30 * largest


def test_a_table_configuration_needs_a_few_gib():
    config = table_sweep().configurations()[0]
    need = configuration_bytes(config)
    saved, largest, params = activation_bytes(SIGMOID_LATE, 224)
    assert saved * 64 == pytest.approx(1.33 * GIB, rel=0.02)  # measured: 1.33 GiB saved at batch 64
    parts = sharing.CONTEXT_BYTES + 16 * params + 60000 * (3 * 32 * 32 + 8) + max(64 * saved, 3 * 512 * largest)
    assert need == int(sharing.FRAGMENTATION * parts)
    assert 4 * GIB < need < 10 * GIB


def test_six_configurations_share_one_gpu_that_has_room(monkeypatch, caplog):
    fake_gpus(monkeypatch, 139.0)
    caplog.set_level(logging.INFO, "pipeline")
    config = table_sweep(jobs_per_gpu=6)
    assert plan_process_workers(config, config.configurations()) == (6, 1)
    [line] = [r.getMessage() for r in caplog.records if "share each GPU" in r.getMessage()]
    assert line.startswith("sweep: up to 6 configurations share each GPU, about ") and "139.0 GiB free" in line


def test_configurations_that_would_not_fit_are_refused_in_one_line(monkeypatch):
    config = table_sweep(jobs_per_gpu=6)
    need = configuration_bytes(config.configurations()[0])  # the six differ by a few bytes (gate parameters)
    fake_gpus(monkeypatch, 80.0, 2.5 * need / GIB)  # the second GPU holds two of them
    with pytest.raises(PipelineError) as err:
        plan_process_workers(config, config.configurations())
    message = str(err.value)
    assert "\n" not in message  # six configurations on two GPUs: three at most on each
    assert message.startswith("jobs_per_gpu=6 puts 3 configurations on one GPU at once, needing about ")
    assert f"but GPU 1 has {2.5 * need / GIB:.1f} GiB free; use jobs_per_gpu=2" in message


def test_jobs_beyond_the_gpus_are_checked_too_and_the_cpu_is_not(monkeypatch):
    fake_gpus(monkeypatch, 3.0, 3.0)
    config = table_sweep(jobs=4)  # two on each GPU
    with pytest.raises(PipelineError, match=r"^jobs=4 on 2 GPU\(s\) puts 2 configurations on one GPU .* even one "
                                            r"configuration alone does not fit: free the GPU$"):
        plan_process_workers(config, config.configurations())
    assert plan_process_workers(table_sweep(jobs=2), config.configurations()) == (2, 2)  # one each: not checked
    one = SweepConfig(activations=("swish",), executor="process", jobs_per_gpu=3,
                      main=MainConfig(train=TrainConfig(dataset="cifar10", weights="none")))
    assert plan_process_workers(one, one.configurations()) == (6, 2)  # one configuration shares nothing

    def no_gpu_asked():
        raise AssertionError("a CPU sweep asked for the GPUs' memory")

    monkeypatch.setattr(sharing, "gpu_free_memory", no_gpu_asked)
    cpu = SweepConfig(activations=NOTEBOOK_GATES, executor="process", jobs=2, jobs_per_gpu=6,
                      main=MainConfig(train=TrainConfig(dataset="cifar10", weights="none", device="cpu")))
    assert plan_process_workers(cpu, cpu.configurations()) == (2, 0)


def test_ray_fractions_are_checked_on_a_local_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    fake_gpus(monkeypatch, 10.0)
    config = SweepConfig(activations=NOTEBOOK_GATES, executor="ray", gpus_per_job="0.25",
                         main=MainConfig(train=TrainConfig(dataset="cifar10", weights="none")))
    with pytest.raises(PipelineError, match=r"^gpus_per_job=0.25 puts 4 configurations on one GPU at once.*"
                                            r"GPU 0 has 10.0 GiB free; use gpus_per_job=(0.5|1)$"):
        sharing.check_ray_sharing(config, config.configurations())
    fake_gpus(monkeypatch, 139.0)
    sharing.check_ray_sharing(config, config.configurations())  # fits: no error


def test_worker_slots_take_the_gpus_in_turn(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    config = table_sweep().configurations()[0]
    executor = ProcessExecutor(4, gpus=2)
    assert [executor.environment(config, "0", slot)["CUDA_VISIBLE_DEVICES"] for slot in range(4)] == \
        ["0", "1", "0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # the GPUs this sweep was given
    assert [executor.environment(config, "0", slot)["CUDA_VISIBLE_DEVICES"] for slot in range(3)] == \
        ["3", "5", "3"]


def test_jobs_per_gpu_must_not_be_negative():
    with pytest.raises(PipelineError, match=r"^jobs_per_gpu must be 0 \(spread jobs over the GPUs\) or more, got -1$"):
        SweepConfig(jobs_per_gpu=-1)
