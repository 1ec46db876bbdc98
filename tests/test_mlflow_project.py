"""The MLproject entry points run with `mlflow run`, as a user runs them."""
import os
import subprocess
from pathlib import Path

import mlflow
import pytest

from conftest import REPO, all_runs


def mlflow_run(*args, cwd, timeout=900):
    return subprocess.run(["mlflow", "run", str(REPO), "--env-manager", "local", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout, env=dict(os.environ))


@pytest.mark.slow
def test_mlflow_run_train_on_digits(tracking_uri, tmp_path):
    result = mlflow_run("-e", "train", "-P", "activation=swish", "-P", "dataset=digits",
                        "-P", "weights=none", "-P", "image_size=64", "-P", "epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(tracking_uri)
    client = mlflow.MlflowClient()
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["activation"], params["dataset"], params["image_size"], params["epochs"]) == \
        ("swish", "digits", "64", "2")
    assert params["lr"] == "0.001" and params["batch_size"] == "64" and params["train_size"] == "1293"
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1]
    assert run.data.metrics["test_acc"] > 20 and run.data.metrics["test_top5"] >= run.data.metrics["test_acc"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]


@pytest.mark.slow
def test_mlflow_run_bad_parameter_fails_the_run(tracking_uri, tmp_path):
    result = mlflow_run("-e", "train", "-P", "activation=nope", "-P", "dataset=digits", cwd=tmp_path)
    assert result.returncode != 0
    assert "Error: unknown activation 'nope'" in result.stderr and "Traceback (most recent" not in result.stderr
    [run] = all_runs(tracking_uri)
    assert run.info.status == "FAILED"
