"""The MLproject entry points run with `mlflow run`, as a user runs them, on the fake data at 64 px
(the real digits data goes through the chain in tests/steps/test_chain.py)."""
import os
import subprocess

import mlflow
import numpy as np
import pytest

from helpers import REPO, all_runs

pytestmark = pytest.mark.xdist_group("mlflow_project")  # one worker builds the module's train run



def mlflow_cli(*args, cwd, env, timeout=900):
    return subprocess.run(["mlflow", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def mlflow_run(*args, cwd, env):
    return mlflow_cli("run", str(REPO), "--env-manager", "local", *args, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("project")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PIPELINE_OFFLINE": "1"}
    mlflow.set_tracking_uri(uri)
    result = mlflow_run("-e", "train", "-P", "activation=swish", "-P", "dataset=fake", "-P", "weights=none",
                        "-P", "image_size=64", "-P", "epochs=2", cwd=tmp, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(uri)
    yield {"uri": uri, "env": env, "tmp": tmp, "train": run}
    mlflow.set_tracking_uri(None)


def test_mlflow_run_train(project):
    run, client = project["train"], mlflow.MlflowClient(project["uri"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["activation"], params["dataset"], params["image_size"], params["epochs"]) == \
        ("swish", "fake", "64", "2")
    assert params["lr"] == "0.001" and params["batch_size"] == "64" and params["train_size"] == "288"
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2]
    assert run.data.metrics["test_acc"] > 20 and run.data.metrics["test_top5"] >= run.data.metrics["test_acc"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt", "checkpoints/last.pt"]


def test_mlflow_run_probe_then_metrics_then_download(project):
    tmp, env, uri = project["tmp"], project["env"], project["uri"]
    train_id = project["train"].info.run_id
    # faithfulness on 16 of the 80 probed images: the entry point passes its parameters on
    result = mlflow_run("-e", "probe-attention", "-P", f"train_run_id={train_id}", "-P", "faithfulness_images=16",
                        "-P", "deletion_imputation=blur", cwd=tmp, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    [probe] = [r for r in all_runs(uri) if r.data.tags.get("pipeline.step") == "probe-attention"]
    result = mlflow_run("-e", "compute-metrics", "-P", f"probe_run_id={probe.info.run_id}", cwd=tmp, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    [metrics_run] = [r for r in all_runs(uri) if r.data.tags.get("pipeline.step") == "compute-metrics"]
    assert metrics_run.info.status == "FINISHED"
    assert {"gini", "gini_std", "entropy", "focus_area_ratio", "negative_pct", "first_image/gini",
            "test_map"} <= set(metrics_run.data.metrics)
    assert metrics_run.data.metrics["negative_pct"] > 0  # swish
    assert probe.data.params["faithfulness_images_used"] == "16" and probe.data.params["deletion_imputation"] == "blur"
    assert metrics_run.data.metrics["faith/channel_advantage_acc"] == probe.data.metrics["faith/channel_advantage_acc"]

    dst = tmp / "download"
    result = mlflow_cli("artifacts", "download", "--run-id", probe.info.run_id, "--artifact-path", "attention",
                        "--dst-path", str(dst), cwd=tmp, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    w = np.load(dst / "attention" / "channel_weights.npy")
    maps = np.load(dst / "attention" / "spatial_maps.npy")
    labels = np.load(dst / "attention" / "labels.npy")
    logits = np.load(dst / "attention" / "logits.npy")
    assert (w.dtype, w.shape) == (np.float32, (80, 512))
    assert (maps.dtype, maps.shape) == (np.float16, (80, 2, 2))  # 64 px / 32 after layer4
    assert (labels.dtype, labels.shape) == (np.int64, (80,))
    assert (logits.dtype, logits.shape) == (np.float32, (80, 10))
    assert probe.data.metrics["test_acc"] == pytest.approx(project["train"].data.metrics["test_acc"])


def test_mlflow_run_refuses_an_undeclared_parameter_in_one_line(project):
    # MLflow passes `-P image-size=64` on as an extra `--image-size 64` after the declared one
    before = {r.info.run_id for r in all_runs(project["uri"])}
    result = mlflow_run("-e", "train", "-P", "image-size=64", "-P", "dataset=fake", "-P", "weights=none",
                        cwd=project["tmp"], env=project["env"])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "image_size given twice" in errors[0] and "valid parameters of train:" in errors[0].lower()
    assert "epochs" in errors[0] and "train_loss" not in result.stderr  # refused before training
    [run] = [r for r in all_runs(project["uri"]) if r.info.run_id not in before]
    assert run.info.status == "FAILED"
