import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import metrics as M
from pipeline.checkpoint import load_model
from pipeline.cli import main
from pipeline.data import load_dataset, to_model_input
from pipeline.faithfulness import ablation_grid, area
from pipeline.report.schema import FAITHFULNESS_FLOOR, FAITHFULNESS_SUMMARIES
from pipeline.config import MetricsConfig, ProbeConfig
from pipeline.steps.compute_metrics import run_compute_metrics
from pipeline.steps.probe_attention import run_probe
from helpers import all_runs, store_in

pytestmark = pytest.mark.xdist_group("probe_store")  # one worker builds the module's train run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store with a finished train run (fake data, CBAM after layer2, 32 px)."""
    from pipeline.config import TrainConfig
    from pipeline.steps.train import run_train

    tmp = tmp_path_factory.mktemp("store")
    with store_in(tmp) as uri:
        train_id = run_train(TrainConfig(activation="sparsemax", position="middle", dataset="fake",
                                         weights="none", image_size=32, epochs=1, batch_size=32, device="cpu")).run_id
        yield {"uri": uri, "train_id": train_id, "tmp": tmp}


def load_arrays(run_id, dst):
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="attention", dst_path=str(dst))
    return {name: np.load(f"{path}/{name}.npy") for name in ("channel_weights", "spatial_maps", "labels", "logits")}, \
        json.loads(open(f"{path}/meta.json").read())


def test_probe_logs_documented_arrays_and_scores(store, tmp_path):
    probe_id = run_probe(ProbeConfig(train_run_id=store["train_id"], device="cpu", batch_size=32)).run_id
    client = mlflow.MlflowClient()
    run = client.get_run(probe_id)
    assert run.info.status == "FINISHED" and run.data.tags["pipeline.step"] == "probe-attention"
    arrays, meta = load_arrays(probe_id, tmp_path)
    w, maps = arrays["channel_weights"], arrays["spatial_maps"]
    assert w.dtype == np.float32 and w.shape == (80, 128)  # whole fake test set, CBAM after layer2
    assert maps.dtype == np.float16 and maps.shape == (80, 4, 4)  # 32 px / 8
    assert arrays["labels"].dtype == np.int64 and arrays["logits"].shape == (80, 10)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)  # sparsemax rows sum to one
    assert meta["activation"] == "sparsemax" and meta["position"] == "middle" and meta["image_size"] == 32
    assert meta["source_run_id"] == store["train_id"] and meta["indices"] == list(range(80))
    np.testing.assert_array_equal(arrays["labels"], load_dataset("fake").test.labels.numpy())
    # the report's spatial-map grid draws these: the first six probed images, as the dataset holds them
    grid = np.load(mlflow.artifacts.download_artifacts(run_id=probe_id, artifact_path="attention/grid_images.npy",
                                                       dst_path=str(tmp_path / "grid")))
    assert grid.dtype == np.uint8 and grid.shape == (6, 3, 32, 32)
    np.testing.assert_array_equal(grid, load_dataset("fake").test.images[:6].numpy())

    # scores: the same best checkpoint on the same test images as train's final evaluation
    train_metrics = client.get_run(store["train_id"]).data.metrics
    assert run.data.metrics["test_acc"] == pytest.approx(train_metrics["test_acc"])
    assert run.data.metrics["test_top5"] == pytest.approx(train_metrics["test_top5"])
    assert run.data.metrics["test_map"] == pytest.approx(M.mean_average_precision(arrays["labels"], arrays["logits"]))
    table = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=probe_id, artifact_path="tables/per_class_accuracy.csv", dst_path=str(tmp_path)))
    assert table["images"].sum() == 80
    weighted = (table["accuracy_pct"] * table["images"]).sum() / 80
    assert weighted == pytest.approx(run.data.metrics["test_acc"])

    # faithfulness of all 80 (fewer than the default 256): curves whose unperturbed points are test_acc
    assert run.data.params["faithfulness_images_used"] == "80"
    logged = {k.removeprefix("faith/") for k in run.data.metrics if k.startswith("faith/")}
    # what the report's family reads, and the time; the CAM at 32 px is 1 x 1, constant for every image: it
    # orders no pixel, so its deletion and insertion areas are undefined (not logged, the reason kept on the run)
    cam_areas = {f"{family}_cam_{m}_area" for family in ("deletion", "insertion") for m in ("acc", "prob")}
    assert logged == {*FAITHFULNESS_SUMMARIES, *FAITHFULNESS_FLOOR, "seconds"} - cam_areas  # floor: re-initialised
    assert "deletion/insertion of the cam map: every probed image's cam map is constant on its 1 x 1 grid" in \
        run.data.tags["pipeline.undefined"]
    curves = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=probe_id, artifact_path="tables/faithfulness_curves.csv", dst_path=str(tmp_path)))
    channel = curves[curves.family == "channel"]
    assert sorted(set(channel.k)) == ablation_grid(128) and set(channel.order) == {"most", "least", "random"}
    assert sorted(set(channel[channel.order == "random"].draw)) == [0, 1, 2]  # faithfulness_draws
    start = curves[((curves.family == "channel") & (curves.k == 0)) | ((curves.family == "deletion") & (curves.x == 0))]
    np.testing.assert_allclose(start.accuracy, run.data.metrics["test_acc"])
    assert set(curves[curves.family == "insertion"].order) == {"cbam", "random"}
    most = channel[channel.order == "most"].sort_values("k")
    assert run.data.metrics["faith/channel_most_acc_area"] == pytest.approx(area(most.k.tolist(), most.accuracy, 128))

    # row 0 is the notebook's vector: one test image through a forward hook
    model, _ = load_model(mlflow.artifacts.download_artifacts(
        run_id=store["train_id"], artifact_path="checkpoints/best.pt", dst_path=str(tmp_path)))
    seen = []
    model.cbam.channel.gate.register_forward_hook(lambda m, i, o: seen.append(o.flatten()))
    with torch.no_grad():
        model(to_model_input(load_dataset("fake").test.images[:1], 32))
    np.testing.assert_allclose(w[0], seen[0].numpy(), atol=1e-6)

    # compute-metrics on top of it
    metrics_id = run_compute_metrics(MetricsConfig(probe_run_id=probe_id)).run_id
    logged = client.get_run(metrics_id).data.metrics
    for name, fn in M.CHANNEL_METRICS.items():
        values = fn(w)
        assert logged[name] == pytest.approx(np.nanmean(values)), name
        assert logged[f"{name}_std"] == pytest.approx(np.nanstd(values)), name
        assert logged[f"first_image/{name}"] == pytest.approx(values[0]), name
    assert logged["focus_area_ratio"] == pytest.approx(M.focus_area_ratio(maps.astype(np.float32)).mean())
    assert logged["first_image/notebook_gini"] == pytest.approx(M.notebook_gini(w[0]))
    assert logged["sparsity"] > 0  # sparsemax zeroes channels
    assert logged["test_map"] == run.data.metrics["test_map"]
    per_image = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=metrics_id, artifact_path="metrics/per_image.csv", dst_path=str(tmp_path)))
    assert len(per_image) == 80 and per_image["gini"].tolist() == pytest.approx(M.gini(w).tolist())
    summary = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=metrics_id, artifact_path="metrics/summary.csv", dst_path=str(tmp_path)))
    assert set(summary["metric"]) == set(M.METRIC_NAMES)
    # per class: each class's mean channel weights, and the Gini of that vector
    labels = np.load(mlflow.artifacts.download_artifacts(run_id=probe_id, artifact_path="attention/labels.npy",
                                                         dst_path=str(tmp_path / "l")))
    class_weights = np.load(mlflow.artifacts.download_artifacts(
        run_id=metrics_id, artifact_path="metrics/class_channel_weights.npy", dst_path=str(tmp_path)))
    k = int(labels.max()) + 1
    assert class_weights.shape == (k, w.shape[1])
    for c in range(k):
        np.testing.assert_allclose(class_weights[c], w[labels == c].mean(axis=0), rtol=1e-5)
    class_gini = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=metrics_id, artifact_path="metrics/class_gini.csv", dst_path=str(tmp_path)))
    assert class_gini["gini"].tolist() == pytest.approx(M.gini(class_weights).tolist(), rel=1e-5)
    assert class_gini["images"].tolist() == np.bincount(labels, minlength=k).tolist()


def test_probe_num_images_and_clamp(store, tmp_path, caplog):
    five = run_probe(ProbeConfig(train_run_id=store["train_id"], num_images=5, device="cpu", faithfulness_images=0)).run_id
    arrays, meta = load_arrays(five, tmp_path / "a")
    assert arrays["channel_weights"].shape == (5, 128) and meta["indices"] == [0, 1, 2, 3, 4]
    with caplog.at_level("WARNING", logger="pipeline"):
        clamped = run_probe(ProbeConfig(train_run_id=store["train_id"], num_images=10_000, device="cpu",
                                          faithfulness_images=0)).run_id
    assert "probing all 80" in caplog.text
    arrays, _ = load_arrays(clamped, tmp_path / "b")
    assert arrays["channel_weights"].shape[0] == 80


@pytest.mark.parametrize("step,option", [("probe-attention", "--train-run-id"), ("compute-metrics", "--probe-run-id")])
def test_missing_or_wrong_upstream_runs(store, step, option, capsys):
    before = {r.info.run_id for r in all_runs(store["uri"])}
    client = mlflow.MlflowClient()
    # a finished run of the right step but without its artefacts
    empty = client.create_run(client.get_run(store["train_id"]).info.experiment_id,
                              tags={"pipeline.step": "train" if step == "probe-attention" else "probe-attention"})
    client.set_terminated(empty.info.run_id)
    wrong = store["train_id"] if step == "compute-metrics" else None
    cases = [("0123456789abcdef0123456789abcdef", "does not exist"), (empty.info.run_id, "has no artefact")]
    if wrong:
        cases.append((wrong, "is a train run, not a probe-attention run"))
    for run_id, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            main([step, option, run_id])
        assert exit_info.value.code != 0
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("Error: ") and expected in err[0], err
    after = {r.info.run_id for r in all_runs(store["uri"])}
    assert after - before == {empty.info.run_id}  # the failed steps started no run
    assert all(r.info.status != "RUNNING" for r in all_runs(store["uri"]))
