"""Bad input as a hostile user gives it (issue 31): one line before any run starts where the
input can be judged up front, nothing overwritten, and undefined measures left undefined. Each
test is a command run in-process against a temporary store."""
from __future__ import annotations

import mlflow
import pytest
import torch
import torchvision

from cifar_files import write_cifar10
from helpers import all_runs
from test_resilience import FAKE, assert_one_line_error

FAST = [*FAKE, "--image-size", "32", "--epochs", "1"]


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    """State dicts of other architectures and of broken kinds."""
    folder = tmp_path_factory.mktemp("weights")
    files = {"resnet18": folder / "r18.pt", "resnet50": folder / "r50.pt", "shape": folder / "shape.pt",
             "text": folder / "text.pt"}
    r18 = torchvision.models.resnet18().state_dict()
    torch.save(r18, files["resnet18"])
    torch.save(torchvision.models.resnet50().state_dict(), files["resnet50"])
    torch.save({**r18, "conv1.weight": torch.zeros(3)}, files["shape"])
    torch.save({**r18, "conv1.weight": "not a tensor"}, files["text"])
    return {k: str(v) for k, v in files.items()}


def test_a_weights_file_of_another_architecture_is_one_line_before_any_run(tracking_uri, cli_in_process,
                                                                            weights_files):
    w = weights_files
    extra = set(torch.load(w["resnet50"])) - set(torch.load(w["resnet18"]))  # every resnet18 key is in resnet50
    cases = [("train", w["resnet50"], "resnet18", f"is not a ResNet18 state dict (0 missing, {len(extra)} unexpected "
              "keys, e.g. 'layer1.0.conv3.weight'); it fits backbone resnet50"),
             ("train", w["resnet18"], "resnet50", "is not a ResNet50 state dict"),
             ("train", w["shape"], "resnet18", "'conv1.weight' has shape (3,), resnet18's has (64, 3, 7, 7)"),
             ("train", w["text"], "resnet18", "'conv1.weight' holds a str, not a tensor"),
             ("main", w["resnet50"], "resnet18", "it fits backbone resnet50")]
    for command, weights, backbone, expected in cases:
        args = [a for a in FAST if a not in ("--weights", "none")]
        assert_one_line_error(cli_in_process(command, *args, "--weights", weights, "--backbone", backbone), expected)
    # a sweep over two backbones with a file that fits one: refused before the sweep run starts
    sweep = cli_in_process("sweep", "--activations", "sigmoid", *[a for a in FAST if a not in ("--weights", "none")],
                           "--weights", w["resnet18"], "--backbones", "resnet18,resnet50")
    assert_one_line_error(sweep, "is not a ResNet50 state dict")
    assert all_runs(tracking_uri) == []


def test_cifar_labels_out_of_range_and_a_one_image_split_are_refused_at_load(tracking_uri, tmp_path, cli_in_process):
    import pickle

    write_cifar10(tmp_path / "bad")
    batch = tmp_path / "bad" / "cifar-10-batches-py" / "data_batch_3"
    entry = pickle.loads(batch.read_bytes())
    entry["labels"][2] = 57
    batch.write_bytes(pickle.dumps(entry, protocol=2))
    bad = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "bad"), "--weights", "none", "--image-size", "32",
           "--epochs", "1"]
    for command in ("train", "main", "prepare-data"):
        args = bad if command != "prepare-data" else bad[:4]
        assert_one_line_error(cli_in_process(command, *args), "has 1 labels outside 0..9 (e.g. 57 at index 2)")
    write_cifar10(tmp_path / "one", n_test=1)
    one = ["--dataset", "cluttered-cifar10", "--data-dir", str(tmp_path / "one"), "--weights", "none",
           "--image-size", "96", "--epochs", "1"]
    assert_one_line_error(cli_in_process("main", *one), "the test split of cifar10 has 1 image(s): it needs at least 2")
    assert all_runs(tracking_uri) == []  # main and train judged the data before their runs started


def test_the_probe_refuses_data_other_than_the_train_runs(tracking_uri, tmp_path, cli_in_process):
    write_cifar10(tmp_path / "a", seed=0)
    write_cifar10(tmp_path / "b", seed=1)
    result = cli_in_process("train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "a"), "--weights", "none",
                            "--image-size", "32", "--epochs", "1", "--batch-size", "8")
    assert result.returncode == 0, result.stderr[-2000:]
    train_id = result.stdout.strip().splitlines()[-1]
    from pipeline.data import content_digest, load_dataset

    digest_a = content_digest(load_dataset("cifar10", tmp_path / "a"))
    digest_b = content_digest(load_dataset("cifar10", tmp_path / "b"))
    assert mlflow.MlflowClient().get_run(train_id).data.tags["pipeline.dataset_sha256"] == digest_a
    other = cli_in_process("probe-attention", "--train-run-id", train_id, "--data-dir", str(tmp_path / "b"),
                           "--faithfulness-images", "0")
    assert_one_line_error(other, f"(content digest {digest_b[:12]}) is not the data train run {train_id} trained on "
                                 f"(digest {digest_a[:12]})")
    assert len(all_runs(tracking_uri)) == 1  # the probe started no run
    same = cli_in_process("probe-attention", "--train-run-id", train_id, "--data-dir", str(tmp_path / "a"),
                          "--faithfulness-images", "0")
    assert same.returncode == 0, same.stderr[-2000:]


def test_sweep_combinations_and_local_ray_resources_are_judged_before_the_sweep_run(tracking_uri, cli_in_process):
    from pipeline.config import SweepConfig

    # se and eca have no spatial branch: they run once, with the default gate, whatever is listed for cbam
    config = SweepConfig.from_options(attentions=("cbam", "se"), spatial_gates=("softmax",), activations=("sigmoid",),
                                      dataset="fake", weights="none")
    assert [(c.train.attention, c.train.spatial_gate) for c in config.configurations()] == [("cbam", "softmax"),
                                                                                            ("se", "sigmoid")]
    assert_one_line_error(cli_in_process("sweep", *FAST, "--attentions", "se,eca", "--spatial-gates", "softmax"),
                          "spatial_gates softmax need attention cbam, the only design with a spatial branch; "
                          "attentions are se,eca")
    assert_one_line_error(cli_in_process("sweep", *FAST, "--executor", "ray", "--gpus-per-job", "0.5"),
                          "gpus_per_job=0.5 asks for more GPUs than this machine has (0)")
    assert_one_line_error(cli_in_process("sweep", *FAST, "--executor", "ray", "--cpus-per-job", "64"),
                          "cpus_per_job=64 asks for more CPU cores than this machine has")
    assert_one_line_error(cli_in_process("probe-attention", "--train-run-id", "x", "--faithfulness-draws", "1000"),
                          "faithfulness_draws must be in [1, 30]")
    assert all_runs(tracking_uri) == []
