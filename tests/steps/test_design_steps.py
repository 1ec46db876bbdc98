"""An SE or ECA block (no spatial branch) and a ResNet50 backbone through probe-attention and
compute-metrics, in this process against a temporary store: the probe reads the channel gate
through the same hook, records no spatial map, and faithfulness and the metrics cover what the
block has; a sum-to-one gate's recorded weights sum to one."""

import mlflow
import numpy as np
import pytest
import torch

from pipeline.config import MetricsConfig, ProbeConfig
from pipeline.metrics import gini
from pipeline.models import AttentionResNet, ModelConfig
from pipeline.steps.compute_metrics import run_compute_metrics
from pipeline.steps.probe_attention import run_probe
from helpers import store_in, untrained_train_run

pytestmark = pytest.mark.xdist_group("design_store")
IMAGE_SIZE = 64


def _train_run(attention: str, backbone: str = "resnet18", activation: str = "softmax") -> str:
    """A finished train run of a seeded, untrained model of this design."""
    torch.manual_seed(0)
    model = AttentionResNet(ModelConfig(activation=activation, position="late", num_classes=10, attention=attention,
                                     backbone=backbone))
    return untrained_train_run(model, {"dataset": "fake", "data_dir": "data", "image_size": IMAGE_SIZE, "seed": 0,
                                       "activation": activation, "position": "late", "attention": attention,
                                       "backbone": backbone})


@pytest.mark.parametrize("attention,backbone,channels", [("se", "resnet18", 512), ("eca", "resnet50", 2048)])
def test_a_block_without_spatial_branch_is_probed_measured_and_judged(tmp_path, attention, backbone, channels):
    with store_in(tmp_path):
        train_id = _train_run(attention, backbone)
        probe = run_probe(ProbeConfig(train_run_id=train_id, num_images=16, device="cpu", faithfulness_images=8))
        assert probe.channel_weights.shape == (16, channels) and probe.spatial_maps.shape == (16, 0, 0)
        np.testing.assert_allclose(probe.channel_weights.sum(axis=1), 1.0, atol=1e-5)  # softmax in this design too
        assert probe.meta["channel_weights_shape"] == [16, channels]
        run = mlflow.MlflowClient().get_run(probe.run_id)
        faith = {k for k in run.data.metrics if k.startswith("faith/")}
        assert "faith/channel_advantage_acc" in faith and not any(k.startswith("faith/deletion") for k in faith)
        metrics = mlflow.MlflowClient().get_run(run_compute_metrics(MetricsConfig(probe_run_id=probe.run_id)).run_id)
        assert {"gini", "entropy", "sparsity", "faith/channel_most_acc_area"} <= set(metrics.data.metrics)
        assert "focus_area_ratio" not in metrics.data.metrics  # no spatial map to measure
        assert metrics.data.metrics["gini"] == pytest.approx(float(np.mean(gini(probe.channel_weights))), rel=1e-6)
