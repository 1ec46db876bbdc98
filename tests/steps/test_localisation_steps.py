"""Probe and compute-metrics on a dataset with localisation ground truth, in this process, against
a temporary store: the probe stores the masks, boxes and CAMs; compute-metrics logs the
localisation metrics, which are checked against independent recomputations."""
import json
import logging
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from pipeline.config import MetricsConfig, ProbeConfig
from pipeline.contracts import BEST_CHECKPOINT
from pipeline.data import load_dataset, to_model_input
from pipeline.models import AttentionResNet, ModelConfig
from pipeline.steps.compute_metrics import run_compute_metrics
from pipeline.steps.probe_attention import run_probe
from helpers import store_in, untrained_train_run

pytestmark = pytest.mark.xdist_group("localisation_store")
IMAGE_SIZE = 128
PROBED = 24


def _train_run(dataset: str, position: str, seed: int = 0) -> str:
    """A finished train run of a seeded, untrained model (what probe-attention reads: the best
    checkpoint and the typed config), logged through the step layer's own run helper."""
    torch.manual_seed(seed)
    model = AttentionResNet(ModelConfig(activation="sigmoid", position=position, num_classes=10))
    return untrained_train_run(model, {"dataset": dataset, "data_dir": "data", "image_size": IMAGE_SIZE, "seed": seed,
                                       "activation": "sigmoid", "position": position})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loc_store")
    with store_in(tmp):
        train_id = _train_run("cluttered-digits", "middle")
        probe = run_probe(ProbeConfig(train_run_id=train_id, num_images=PROBED, device="cpu", batch_size=12,
                                      faithfulness_images=0))
        yield {"train_id": train_id, "probe": probe, "tmp": tmp}


def _artefacts(run_id, dst):
    path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="attention", dst_path=str(dst)))
    return {p.stem: np.load(p) for p in path.glob("*.npy")}, json.loads((path / "meta.json").read_text())


def test_probe_stores_ground_truth_and_the_cam_of_the_true_class(store, tmp_path):
    arrays, meta = _artefacts(store["probe"].run_id, tmp_path)
    test = load_dataset("cluttered-digits").test
    np.testing.assert_array_equal(arrays["masks"], test.masks[:PROBED].numpy())
    np.testing.assert_array_equal(arrays["boxes"], test.boxes[:PROBED].numpy())
    assert arrays["masks"].dtype == bool and meta["ground_truth"] is True and meta["native_size"] == 64
    # CAM by hand: the model's layers one by one, the final map weighted by fc's row of the true class
    with tempfile.TemporaryDirectory() as tmp:
        from pipeline.checkpoint import load_model

        model, _ = load_model(mlflow.artifacts.download_artifacts(run_id=store["train_id"],
                                                                  artifact_path=BEST_CHECKPOINT, dst_path=tmp))
    x = to_model_input(test.images[:PROBED], IMAGE_SIZE)
    with torch.no_grad():
        f = model.layer2(model.layer1(model.stem(x)))
        f = model.layer4(model.layer3(model.cbam(f)))  # (B, 512, 4, 4)
        w = model.fc.weight[test.labels[:PROBED]]  # (B, 512)
        expected = (f * w[:, :, None, None]).sum(dim=1).numpy()
    assert arrays["cam"].shape == (PROBED, 4, 4) and arrays["cam"].dtype == np.float16
    np.testing.assert_allclose(arrays["cam"], expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    # the floor of a network that knows nothing: the same architecture as its train run started, its maps
    from pipeline.attention_hooks import read_attention
    from pipeline.models import initial_model

    again = read_attention(initial_model(model.config, 0), test.subset(torch.arange(PROBED)), IMAGE_SIZE)
    # to float16 rounding: another batch size may take other kernels (the probe's batches were 12)
    np.testing.assert_allclose(arrays["randomised_spatial_maps"], again.spatial_maps, rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(arrays["randomised_cam"], again.cams, rtol=2e-3, atol=2e-3 * np.abs(again.cams).max())
    # this store's "trained" model is the seeded, untrained one: re-initialised, it is itself
    np.testing.assert_array_equal(arrays["randomised_spatial_maps"], arrays["spatial_maps"])


def test_compute_metrics_logs_localisation_checked_independently(store, tmp_path):
    metrics_id = run_compute_metrics(MetricsConfig(probe_run_id=store["probe"].run_id)).run_id
    logged = mlflow.MlflowClient().get_run(metrics_id).data.metrics
    expected = {f"loc/{kind}_{m}" for kind in ("cbam", "cam", "uniform", "centre", "ceiling", "random", "cam_ceiling",
                                                "cam_random", "cbam_randomised", "cam_randomised")
                for m in ("pxap", "maxboxacc", "boxacc_iou30", "boxacc_iou50", "boxacc_iou70", "pointing_mask",
                          "pointing_box", "energy_box")}
    assert expected <= set(logged)
    arrays, _ = _artefacts(store["probe"].run_id, tmp_path)
    masks = arrays["masks"].repeat(2, axis=1).repeat(2, axis=2)  # 64 -> 128 px, nearest neighbour
    # chance: a uniform map's PxAP is the object's pixel share; its pointing game the per-image share
    assert logged["loc/uniform_pxap"] == pytest.approx(100 * masks.mean())
    assert logged["loc/uniform_pointing_mask"] == pytest.approx(masks.mean(axis=(1, 2)).mean())
    # the CBAM map: PxAP by scikit-learn on the pooled, min-max-normalised, upsampled maps (the
    # metric's thresholds are 0.001 apart: equal to a tenth of a point), pointing game by argmax
    maps = torch.nn.functional.interpolate(torch.from_numpy(arrays["spatial_maps"].astype(np.float32))[:, None],
                                           size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                                           align_corners=False)[:, 0].numpy().astype(np.float64)
    low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    scores = (maps - low) / (high - low)
    assert logged["loc/cbam_pxap"] == pytest.approx(100 * average_precision_score(masks.ravel(), scores.ravel()),
                                                    abs=0.1)
    top = scores.reshape(PROBED, -1).argmax(axis=1)
    assert logged["loc/cbam_pointing_mask"] == pytest.approx(masks.reshape(PROBED, -1)[np.arange(PROBED), top].mean())
    # energy in box by hand
    boxes = arrays["boxes"] * 2
    inside = [scores[i, y0:y1, x0:x1].sum() / scores[i].sum() for i, (x0, y0, x1, y1) in enumerate(boxes)]
    assert logged["loc/cbam_energy_box"] == pytest.approx(np.mean(inside))
    table = mlflow.artifacts.download_artifacts(run_id=metrics_id, artifact_path="metrics/localisation.csv",
                                                dst_path=str(tmp_path))
    import pandas as pd

    rows = pd.read_csv(table).set_index("map")
    assert list(rows.index) == ["cbam", "cam", "uniform", "centre", "ceiling", "random", "cam_ceiling", "cam_random",
                                "cbam_randomised", "cam_randomised"]
    # the CBAM map between the floor and the ceiling of its grid
    assert logged["loc/cbam_pxap_normalised"] == pytest.approx(
        (logged["loc/cbam_pxap"] - logged["loc/random_pxap"]) / (logged["loc/ceiling_pxap"] - logged["loc/random_pxap"]))
    assert rows.loc["cam", "pxap"] == pytest.approx(logged["loc/cam_pxap"])
    # the CAM between the floor and the ceiling of its own grid (layer4's, 4 x 4 at 128 px)
    assert logged["loc/cam_pxap_normalised"] == pytest.approx(
        (logged["loc/cam_pxap"] - logged["loc/cam_random_pxap"])
        / (logged["loc/cam_ceiling_pxap"] - logged["loc/cam_random_pxap"]))
    assert logged["loc/cam_ceiling_pxap"] < logged["loc/ceiling_pxap"]  # 4 x 4 holds less than the CBAM map's 16 x 16


def test_dataset_without_ground_truth_logs_no_localisation(store, caplog):
    train_id = _train_run("fake", "late")
    probe = run_probe(ProbeConfig(train_run_id=train_id, num_images=8, device="cpu", faithfulness_images=0))
    assert probe.masks is None and probe.cams.shape == (8, 4, 4)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        metrics_id = run_compute_metrics(MetricsConfig(probe_run_id=probe.run_id)).run_id
    logged = mlflow.MlflowClient().get_run(metrics_id).data.metrics
    assert not [k for k in logged if k.startswith("loc/")] and "gini" in logged
    said = [r.message for r in caplog.records if "no localisation ground truth" in r.message]
    assert len(said) == 1 and "fake" in said[0]
