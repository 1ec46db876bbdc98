"""Nothing lost: interruption and resume, divergence, determinism, hostile input."""
import signal
import subprocess
import time

import mlflow
import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.steps.train import run_train
from cifar_files import write_cifar10
from helpers import REPO, all_runs, artifact_file, start_training, wait_for_epochs

FAKE = ["--dataset", "fake", "--weights", "none", "--device", "cpu", "--batch-size", "32"]


def histories(run_id):
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    out = {}
    for key in run.data.metrics:
        values = {}
        for m in client.get_metric_history(run_id, key):
            values[m.step] = m.value  # a resumed epoch logged twice keeps its (identical) last value
        out[key] = values
    return out


def interrupt_after_epochs(sig, args, cwd, n_epochs: int) -> tuple[str, str]:
    """Start ``train``, send ``sig`` once ``n_epochs`` epochs are logged; (run id, stderr)."""
    proc = start_training(args, cwd)
    run_id = wait_for_epochs(proc, n_epochs)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert mlflow.MlflowClient().get_run(run_id).info.status == "KILLED"
    assert f"python -m pipeline train --resume-run-id {run_id}" in err
    assert err.strip().splitlines()[-1] == "Error: interrupted"
    return run_id, err


@pytest.mark.system
def test_sigint_at_random_moments_resumes_from_exactly_the_last_epoch_the_run_shows(tracking_uri, tmp_path):
    """An epoch is one unit: wherever a Ctrl-C lands (between batches, while metrics are logged,
    while a checkpoint is written), the epochs the run shows are the epochs its last.pt holds.
    Then two resumes started at once: one trains, the other is refused in one line, and the run
    ends with every epoch logged exactly once, each value equal, to the last digit, to a run
    that was never interrupted."""
    import random

    rng = random.Random(14)  # the moments are random but the same in every CI run
    epochs, client = 5, mlflow.MlflowClient()
    run_id, shown, moments = None, 0, []
    for attempt in range(3):
        proc = start_training(["--resume-run-id", run_id] if attempt else
                              [*FAKE, "--image-size", "32", "--epochs", str(epochs), "--seed", "3",
                               "--activation", "scaled_tanh"], tmp_path)  # a gate that learns a value
        run_id = wait_for_epochs(proc, shown + 1)
        started = time.monotonic()
        time.sleep(rng.uniform(0.0, 1.5))  # an epoch takes about 1 s here
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        moments.append(round(time.monotonic() - started, 2))
        assert proc.returncode == 130 and client.get_run(run_id).info.status == "KILLED", err[-2000:]
        assert f"python -m pipeline train --resume-run-id {run_id}" in err
        assert err.strip().splitlines()[-1] == "Error: interrupted"
        steps = [m.step for m in client.get_metric_history(run_id, "val_acc")]
        assert steps == list(range(1, len(steps) + 1)), steps  # in order, each once
        shown = len(steps)
        last = torch.load(artifact_file(run_id, "checkpoints/last.pt"), map_location="cpu", weights_only=True)
        assert last["epoch"] == shown, (moments, last["epoch"], shown)
        if shown == epochs:  # KILLED in the test pass after the last epoch: a resume still ends it
            break
    both = [start_training(["--resume-run-id", run_id], tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in both]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    [(out, resumed)] = [(out, err) for code, out, err in results if code == 0]
    assert out.strip().splitlines()[-1] == run_id and "resuming train run" in resumed  # the same MLflow run
    [refused] = [err for code, _, err in results if code == 2]
    assert refused.strip().splitlines()[-1].startswith(f"Error: run '{run_id}' is being resumed by pid "), refused
    assert len(refused.strip().splitlines()) == 1, refused
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("train_loss", "val_acc", "attention/gini"):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, epochs + 1)), (key, moments)
    reference = run_train(TrainConfig(dataset="fake", weights="none", device="cpu", batch_size=32, image_size=32,
                                      epochs=epochs, activation="scaled_tanh", seed=3)).run_id
    got, want = histories(run_id), histories(reference)
    assert set(got) == set(want) and "gate_scale" in want
    for key in want:
        assert got[key] == want[key], key  # to the last digit


@pytest.mark.system
def test_sigterm_ends_killed_with_the_resume_command(tracking_uri, tmp_path):
    # what a scheduler (SLURM, Kubernetes) sends: the same clean end as Ctrl-C
    args = [*FAKE, "--image-size", "32", "--epochs", "3", "--activation", "swish", "--seed", "1"]
    run_id, _ = interrupt_after_epochs(signal.SIGTERM, args, tmp_path, 1)
    assert 1 <= len(mlflow.MlflowClient().get_metric_history(run_id, "val_acc")) < 3


@pytest.mark.system
def test_double_ctrl_c_in_the_first_epoch_is_one_line_and_offers_no_resume(tracking_uri, tmp_path):
    # a person pressing Ctrl-C twice before any epoch ended: no checkpoint exists, so no resume
    # command is offered, and the second Ctrl-C does not interrupt the clean-up
    proc = start_training([*FAKE, "--image-size", "64", "--epochs", "3"], tmp_path)
    for line in proc.stderr:
        if line.startswith("[pipeline] train ") and " epochs on cpu" in line:
            break
    run_id = line.split()[2].rstrip(":")
    time.sleep(0.3)  # inside epoch 1 (an epoch at 64 px takes seconds)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "resume" not in err.replace("to resume from", ""), err
    assert f"interrupted in epoch 1: run {run_id} ends KILLED before its first epoch ended, so there is no " \
           "checkpoint to resume from; start it again" in err
    assert err.strip().splitlines()[-1] == "Error: interrupted"
    assert mlflow.MlflowClient().get_run(run_id).info.status == "KILLED"
    assert mlflow.MlflowClient().get_metric_history(run_id, "val_acc") == []


def test_a_last_batch_of_one_image_joins_the_one_before(tracking_uri, caplog):
    # fake has 288 training images: batches of 287 would leave one image, on which BatchNorm fails
    config = TrainConfig(dataset="fake", weights="none", image_size=32, epochs=1, batch_size=287, device="cpu")
    with caplog.at_level("INFO", logger="pipeline"):
        result = run_train(config)
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train_size"] == "288"
    assert ("train: 288 images in batches of 287 would leave a last batch of 1 image, on which BatchNorm cannot "
            "train: it joins the batch before it (one batch of 288 per epoch)") in caplog.text


def test_divergence_fails_the_run_with_one_line_and_keeps_the_last_good_checkpoint(tracking_uri, cli_in_process):
    # Adam at lr 2e8: finite first epoch, NaN in the second (deterministic on a CPU)
    result = cli_in_process("train", *FAKE, "--image-size", "32", "--epochs", "3", "--lr", "2e8")
    assert result.returncode == 2
    error = [line for line in result.stderr.replace("\r", "\n").splitlines() if "Error:" in line]
    assert len(error) == 1 and "Traceback" not in result.stderr
    message = error[0][error[0].index("Error:"):]
    assert "non-finite loss" in message and "activation sigmoid in epoch 2" in message
    [run] = all_runs(tracking_uri)
    assert run.info.status == "FAILED" and run.info.run_id in message
    last = torch.load(artifact_file(run.info.run_id, "checkpoints/last.pt"), weights_only=True)
    assert last["epoch"] == 1 and last["best_epoch"] == 1  # the epoch whose loss was finite (numbered from 1)
    assert "optimizer" in last and "rng" in last


@pytest.fixture
def finished_train_run(tracking_uri):
    return run_train(TrainConfig(dataset="fake", weights="none", device="cpu", batch_size=32, image_size=32, epochs=1)).run_id


def assert_one_line_error(result, expected):
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and expected in lines[-1], result.stderr[-2000:]
    assert sum(line.startswith("Error: ") for line in lines) == 1


def test_truncated_checkpoint_is_a_one_line_error(finished_train_run, tracking_uri, cli_in_process):
    best = artifact_file(finished_train_run, "checkpoints/best.pt")
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 3])
    result = cli_in_process("probe-attention", "--train-run-id", finished_train_run, "--faithfulness-images", "0")
    assert_one_line_error(result, "corrupt or not a checkpoint")
    assert all(r.info.status != "RUNNING" for r in all_runs(tracking_uri))
    assert len(all_runs(tracking_uri)) == 1  # the probe started no run


def test_corrupt_last_checkpoint_cannot_be_resumed(finished_train_run, tracking_uri, cli_in_process):
    client = mlflow.MlflowClient()
    client.set_terminated(finished_train_run, "KILLED")  # pretend it was interrupted
    last = artifact_file(finished_train_run, "checkpoints/last.pt")
    last.write_bytes(b"\x80\x02garbage" * 10)
    result = cli_in_process("train", "--resume-run-id", finished_train_run)
    assert_one_line_error(result, "corrupt or not a checkpoint")
    assert client.get_run(finished_train_run).info.status == "KILLED"  # left as it was


def test_resuming_a_finished_or_missing_run_is_refused(finished_train_run, tmp_path, cli_in_process):
    assert_one_line_error(cli_in_process("train", "--resume-run-id", finished_train_run), "nothing to resume")
    assert_one_line_error(cli_in_process("train", "--resume-run-id", "$(touch pwned)"), "does not exist")
    assert not (tmp_path / "pwned").exists()


def test_truncated_dataset_files(tracking_uri, tmp_path, cli_in_process):
    write_cifar10(tmp_path / "data")
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:1000])
    result = cli_in_process("train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--weights",
                            "none", "--image-size", "32", "--epochs", "1")
    assert_one_line_error(result, "data_batch_2")
    assert all_runs(tracking_uri) == []


def test_weights_directory_and_huge_image_size(tracking_uri, tmp_path, cli_in_process):
    assert_one_line_error(cli_in_process("train", *FAKE, "--weights", str(tmp_path)), "is a directory")
    assert_one_line_error(cli_in_process("train", *FAKE[2:], "--image-size", "10000"),
                          "image_size must be in [32, 1024] pixels, got 10000")
    assert all_runs(tracking_uri) == []


def test_num_images_beyond_the_test_set_is_clamped_and_one_image_has_no_map(finished_train_run, cli_in_process):
    result = cli_in_process("probe-attention", "--train-run-id", finished_train_run, "--num-images", "1000000",
                            "--faithfulness-images", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "num_images=1000000 is more than the 80 test images: probing all 80" in result.stderr
    probe = mlflow.MlflowClient().get_run(result.stdout.strip().splitlines()[-1])
    assert probe.data.params["num_images_probed"] == "80"
    # one probed image: one class, so mAP is undefined (it would be 1.0 whatever the scores): not logged, said why
    one = cli_in_process("probe-attention", "--train-run-id", finished_train_run, "--num-images", "1",
                         "--faithfulness-images", "0")
    assert one.returncode == 0 and "test_map n/a" in one.stderr, one.stderr[-2000:]
    probe = mlflow.MlflowClient().get_run(one.stdout.strip().splitlines()[-1])
    assert "test_map" not in probe.data.metrics and "test_acc" in probe.data.metrics
    assert probe.data.tags["pipeline.undefined"] == "test_map: 1 class(es) among the 1 probed images; mAP needs two"


@pytest.mark.system
def test_shell_syntax_in_parameters_is_never_executed(tracking_uri, tmp_path):
    marker = tmp_path / "pwned"
    cases = (("activation", f"sigmoid; touch {marker}"), ("data_dir", f"$(touch {marker})"),
             ("weights", f"`touch {marker}`"), ("dataset", f"digits && touch {marker}"))
    procs = {name: subprocess.Popen(["mlflow", "run", str(REPO), "-e", "train", "--env-manager", "local",
                                     "-P", f"{name}={value}", "-P", "epochs=1", "-P", "image_size=32",
                                     *([] if name == "weights" else ["-P", "weights=none"]),
                                     *([] if name == "dataset" else ["-P", "dataset=fake"])],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for name, value in cases}  # side by side: each is mostly MLflow's and torch's start-up
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert not marker.exists(), name
        if name == "data_dir":  # a strange folder name is just a folder name: fake data needs none
            assert proc.returncode == 0, err[-2000:]
        else:  # a bad parameter fails the run `mlflow run` made, in one line, naming the parameter
            assert proc.returncode != 0 and "Traceback (most recent" not in err, (name, err[-2000:])
            [error] = [line for line in err.splitlines() if line.startswith("Error:")]
            assert error.startswith(f"Error: unknown {name} "), (name, error)
    status = sorted(r.info.status for r in all_runs(tracking_uri))
    assert status == ["FAILED", "FAILED", "FAILED", "FINISHED"]



def test_same_seed_same_device_gives_identical_metrics_captured_and_resumed_too(tracking_uri, monkeypatch):
    """One seed, one device: a graph-captured (compile=graphs) run, and one interrupted after its
    first epoch and resumed (a fresh capture of the restored model), log every value identically,
    to the last digit; another seed does not. (Captured and eager runs agree to float rounding,
    not to the last digit: tests/unit/test_compile.py.) Its training canvases are placed anew each
    epoch and its learning rate follows a one-cycle schedule: the resumed run sees the canvases and
    the learning rate of the uninterrupted one (a small training split: val_fraction 0.9)."""
    import pipeline.steps.train as train_step

    config = dict(dataset="cluttered-digits", weights="none", device="cpu", batch_size=32, image_size=32, epochs=2,
                  activation="scaled_tanh", seed=5, compile="graphs", canvases="fresh", lr_schedule="onecycle",
                  val_fraction=0.9, attention_images=0)
    reference = histories(run_train(TrainConfig(**config)).run_id)
    calls, real = [], train_step.train_one_epoch

    seen = []

    def interrupted_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        seen.append(args[1])  # the epoch's training images
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_step, "train_one_epoch", interrupted_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_train(TrainConfig(**config))
    monkeypatch.setattr(train_step, "train_one_epoch", real)
    client = mlflow.MlflowClient()
    [killed] = [r for r in client.search_runs([client.get_experiment_by_name(TrainConfig(**config).experiment()).experiment_id])
                if r.info.status == "KILLED"]
    assert [m.step for m in client.get_metric_history(killed.info.run_id, "val_acc")] == [1]
    resumed = run_train(resume_run_id=killed.info.run_id, force=True)
    assert resumed.run_id == killed.info.run_id and client.get_run(resumed.run_id).info.status == "FINISHED"
    assert client.get_run(resumed.run_id).data.params["compile"] == "graphs"
    got = histories(resumed.run_id)
    assert set(got) == set(reference) and "gate_scale" in reference and reference["train_loss"].keys() == {1, 2}
    assert reference["lr"][1] > reference["lr"][2] > 0  # one cycle: annealed by the end of the last epoch
    for key in reference:
        assert got[key] == reference[key], key  # to the last digit
    other = histories(run_train(TrainConfig(**{**config, "seed": 6, "compile": "false"})).run_id)
    assert other["train_loss"] != reference["train_loss"]
    # the first epoch trained on the canvases placed for (seed 5, epoch 1) from the training split alone
    from pipeline.data import fresh_canvases, load_dataset, split_validation

    split = split_validation(load_dataset("cluttered-digits"), 0.9, 5)
    assert torch.equal(seen[0].images, fresh_canvases(split.train, split.placement, 5, 1).images)
    assert not torch.equal(seen[0].images, split.train.images)  # not the fixed canvases
