"""A sweep whose configurations share a GPU: refused before its run starts when they would not
fit, run in worker processes placed on the GPU when they do. Only the GPU's free memory is
faked (this machine has no GPU: the workers, told CUDA_VISIBLE_DEVICES=0, train on the CPU)."""
import logging

import pytest

from pipeline import sharing
from pipeline.config import MainConfig, SweepConfig, TrainConfig
from pipeline.errors import PipelineError
from pipeline.steps.sweep import run_sweep
from helpers import all_runs


def sweep_config(tmp_path, **options) -> SweepConfig:
    train = TrainConfig(dataset="fake", weights="none", image_size=32, epochs=1, batch_size=32)  # device auto
    return SweepConfig(activations=("sigmoid", "swish"), executor="process",
                       main=MainConfig(train=train, faithfulness_images=0, out=str(tmp_path / "out")), **options)


def test_a_sweep_that_would_not_fit_is_refused_before_its_run_starts(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setattr(sharing, "gpu_free_memory", lambda: [2 * sharing.GIB])
    with pytest.raises(PipelineError, match=r"^jobs_per_gpu=2 puts 2 configurations on one GPU at once, needing "
                                            r"about .* but GPU 0 has 2.0 GiB free; use jobs_per_gpu=1$"):
        run_sweep(sweep_config(tmp_path, jobs_per_gpu=2))
    assert all_runs(tracking_uri) == []  # no sweep run, nothing left RUNNING


@pytest.mark.system  # worker processes
def test_two_configurations_share_the_gpu_that_has_room(tracking_uri, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sharing, "gpu_free_memory", lambda: [100 * sharing.GIB])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # on this CPU the two workers share its cores
    caplog.set_level(logging.INFO, "pipeline")
    sweep_id = run_sweep(sweep_config(tmp_path, jobs_per_gpu=2))
    lines = [r.getMessage() for r in caplog.records]
    assert sum(" started in worker process " in line and line.endswith(" on GPU 0") for line in lines) == 2, lines
    assert any(line.startswith("sweep: up to 2 configurations share each GPU") for line in lines)
    runs = all_runs(tracking_uri)
    assert {r.info.status for r in runs} == {"FINISHED"}
    mains = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep_id]
    assert sorted(r.data.params["activation"] for r in mains) == ["sigmoid", "swish"]
