import mlflow
import pytest

from pipeline.cli import main
from helpers import all_runs, run_cli

FAST = ["--dataset", "fake", "--weights", "none", "--image-size", "32", "--epochs", "1", "--device", "cpu"]

BAD_INPUTS = [
    (["--activation", "relu"], "valid: sigmoid, softmax, sparsemax"),
    (["--position", "top"], "valid: early, middle, late, none"),
    (["--activation", "none"], "activation none is the baseline without CBAM: give position none for it"),
    (["--dataset", "mnist"], "valid: cifar10, digits, cluttered-digits, cluttered-cifar10, fake"),
    (["--weights", "resnet50"], "valid: imagenet, none"),
    (["--epochs", "0"], "epochs must be positive"),
    (["--batch-size", "-1"], "batch_size must be at least 2"),
    (["--batch-size", "1"], "batch_size must be at least 2 (BatchNorm cannot train on batches of one image)"),
    (["--seed", "-1"], "seed must be in [0, 4294967295], got -1"),
    (["--seed", "1099511627776"], "seed must be in [0, 4294967295], got 1099511627776"),
    (["--seed", "1e30"], "seed must be in [0, 4294967295], got 1000000000000000019884624838656"),
    (["--seed", "0.5"], "'0.5' is not a whole number"),
    (["--resume-run-id", " "], "resume_run_id is blank: give the id of an interrupted train run"),
    (["--lr", "0"], "lr must be positive"),
    (["--val-fraction", "0"], "val_fraction must be in (0, 1)"),
    (["--val-fraction", "1"], "val_fraction must be in (0, 1)"),
    (["--image-size", "16"], "image_size must be in [32, 1024]"),
    (["--epochs", "two"], "'two' is not a valid integer"),
]


@pytest.mark.parametrize("args,expected", BAD_INPUTS, ids=[a[0] + "=" + a[1] for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_nonzero_and_leaves_no_run(args, expected, tracking_uri, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *FAST, *args])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("Error: ") and expected in lines[0], err
    assert all_runs(tracking_uri) == []


OTHER_BAD_INPUTS = [
    (["prepare-data", "--dataset", "fake", "--seed", "-1"], "seed must be in [0, 4294967295], got -1"),
    (["main", *FAST, "--seed", "-1"], "seed must be in [0, 4294967295], got -1"),
    (["sweep", *FAST, "--seeds", "0,-1"], "seed must be in [0, 4294967295], got -1"),
    (["main", *FAST, "--out", "/dev/null/x"], "out '/dev/null/x' is not a folder this process can write to"),
    (["sweep", *FAST, "--out", "/dev/null/x"], "out '/dev/null/x' is not a folder this process can write to"),
    (["report", "--experiment-name", "Default", "--out", "/dev/null/x"],
     "out '/dev/null/x' is not a folder this process can write to"),
    (["compute-metrics", "--probe-run-id", "0123456789abcdef"], "run '0123456789abcdef' does not exist"),
]


@pytest.mark.parametrize("args,expected", OTHER_BAD_INPUTS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in OTHER_BAD_INPUTS])
def test_bad_input_to_every_command_is_one_line_before_any_run(args, expected, tracking_uri, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("Error: ") and expected in lines[0], err
    assert all_runs(tracking_uri) == []


def test_bad_input_from_a_real_process(tracking_uri):
    result = run_cli("train", *FAST, "--activation", "gelu")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "Error: unknown activation 'gelu'; valid: sigmoid, softmax, sparsemax, scaled_tanh, "
        "parametric_sigmoid, swish, entmax15, alpha_entmax"
    ]
    assert all_runs(tracking_uri) == []


def test_offline_imagenet_weights_from_a_real_process(tracking_uri):
    result = run_cli("train", "--dataset", "fake", "--image-size", "32", "--epochs", "1")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "weights=none" in error_lines[0]
    assert all(r.info.status != "RUNNING" for r in all_runs(tracking_uri))


def test_help_lists_the_steps_and_mlflow_parameter_names():
    result = run_cli("--help")
    assert result.returncode == 0 and "train" in result.stdout
    result = run_cli("train", "--help")
    for option in ("--activation", "--image-size", "--batch-size", "--val-fraction", "--data-dir", "--amp"):
        assert option in result.stdout


def test_cli_train_prints_the_run_id(tracking_uri):
    result = run_cli("train", *FAST, "--activation", "softmax")
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip().splitlines()[-1]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["activation"] == "softmax"
    # stderr is a pipe here, as in a log file: no progress-bar fragments, one line per epoch
    assert "\r" not in result.stderr and "batch/s" not in result.stderr and "it/s" not in result.stderr
    epochs = [line for line in result.stderr.splitlines() if "train_loss" in line]
    assert len(epochs) == int(run.data.params["epochs"]) and epochs[0].startswith("[pipeline] epoch 1/")


def test_report_of_a_failed_main_run_is_one_line(tracking_uri, capsys):
    client = mlflow.MlflowClient()
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id,
                            tags={"pipeline.step": "main"}, run_name="swish · late · fake 32px 1ep · seed0")
    client.set_terminated(run.info.run_id, "FAILED")
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--main-run-id", run.info.run_id, "--out", "out"])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (f"Error: main run '{run.info.run_id}' is FAILED and has no compute-metrics run to report on; run "
                    "it again (python -m pipeline main ...) or report another run")
    assert [r.data.tags["pipeline.step"] for r in all_runs(tracking_uri)] == ["main"]  # no report run started
