import json

import mlflow
import pytest

from pipeline.checkpoint import load_model
from pipeline.config import TrainConfig
from pipeline.data import load_dataset
from pipeline.steps.train import run_train
from pipeline.training import evaluate


def fake_config(**overrides):
    base = dict(dataset="fake", weights="none", image_size=32, epochs=2, batch_size=32, device="cpu")
    return TrainConfig(**{**base, **overrides})


def test_train_logs_params_metrics_gate_values_gradients_and_best_checkpoint(tracking_uri, tmp_path):
    config = fake_config(activation="scaled_tanh", epochs=3)
    run_id = run_train(config).run_id
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["pipeline.step"] == "train"
    for key, value in config.to_dict().items():
        assert run.data.params[key] == (str(value).lower() if isinstance(value, bool) else str(value))
    assert run.data.params["train_size"] == "288" and run.data.params["val_size"] == "32"
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "gate_scale"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3], key  # epochs from 1
    assert "gate_temperature" not in run.data.metrics
    # attention over epochs: the channel weights of a fixed set of validation images, per epoch
    for name in ("gini", "entropy", "sparsity", "avg_score", "focus_pct"):
        history = client.get_metric_history(run_id, f"attention/{name}")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3], name
    gini = [m.value for m in sorted(client.get_metric_history(run_id, "attention/gini"), key=lambda m: m.step)]
    assert all(0 <= g < 1 for g in gini)
    scales = [m.value for m in client.get_metric_history(run_id, "gate_scale")]
    assert scales[-1] != 1.0  # the scale is learnt

    grad_flow = json.loads(mlflow.artifacts.load_text(
        f"runs:/{run_id}/gradients/grad_flow.json"))
    assert len(grad_flow["mean_abs_grad"]) == 3
    assert len(grad_flow["mean_abs_grad"][0]) == len(grad_flow["layers"])
    assert "cbam.channel.gate.scale" in grad_flow["layers"]
    assert all(v >= 0 for v in grad_flow["mean_abs_grad"][0]) and max(grad_flow["mean_abs_grad"][0]) > 0

    # the best checkpoint is the epoch of the highest val_acc, and reproduces test_acc
    val_acc = [m.value for m in client.get_metric_history(run_id, "val_acc")]
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/best.pt",
                                               dst_path=str(tmp_path))
    model, ckpt = load_model(path)
    assert ckpt["epoch"] == val_acc.index(max(val_acc)) + 1 == int(run.data.metrics["best_epoch"])  # from 1
    assert ckpt["model_config"] == {"activation": "scaled_tanh", "position": "late", "num_classes": 10,
                                    "reduction": 16, "gate_norm": "none", "attention": "cbam",
                                    "spatial_gate": "sigmoid", "backbone": "resnet18"}
    test = load_dataset("fake").test
    result = evaluate(model, test, image_size=32)
    assert result.acc == pytest.approx(run.data.metrics["test_acc"], abs=1e-9)
    assert result.top5 == pytest.approx(run.data.metrics["test_top5"], abs=1e-9)
    assert 0 <= run.data.metrics["test_acc"] <= run.data.metrics["test_top5"] <= 100


def test_training_learns_the_fake_classes(tracking_uri):
    run_id = run_train(fake_config(activation="sigmoid", epochs=3, lr=1e-3)).run_id
    metrics = mlflow.MlflowClient().get_run(run_id).data.metrics
    assert metrics["test_acc"] > 50.0  # chance is 10 %


def test_parametric_and_alpha_gates_log_their_values(tracking_uri):
    client = mlflow.MlflowClient()
    for activation, key in (("parametric_sigmoid", "gate_temperature"), ("alpha_entmax", "gate_alpha")):
        run_id = run_train(fake_config(activation=activation, epochs=1)).run_id
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [1]
        assert history[0].value > (1.0 if key == "gate_alpha" else 0.0)


def test_keep_last_checkpoint_false_drops_last_pt_once_finished(tracking_uri):
    run_id = run_train(fake_config(epochs=1, keep_last_checkpoint=False)).run_id
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/best.pt"]
    kept = run_train(fake_config(epochs=1)).run_id  # the default keeps the resume point
    assert [a.path for a in client.list_artifacts(kept, "checkpoints")] == ["checkpoints/best.pt",
                                                                            "checkpoints/last.pt"]

