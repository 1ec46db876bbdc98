"""Sweeps on Ray (``--executor ray``): a Ray cluster started by the test as docs/scale-out.md
starts one (``ray start --head`` on 127.0.0.1, 2 CPUs, no dashboard) with a real
``python -m pipeline server``; a worker killed mid-training and the retry that resumes its
train run; a configuration that fails beside one that finishes; a local store refused for a
cluster; and the local cluster the sweep starts itself when given no address."""
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import mlflow
import pytest

from helpers import all_runs
from pipeline.server import free_port, health

pytest.importorskip("ray")
pytestmark = pytest.mark.xdist_group("ray")  # one cluster at a time on a 2-core machine

FAKE = ["--dataset", "fake", "--weights", "none", "--device", "cpu", "--image-size", "32", "--faithfulness-images", "0"]


def env_for(uri: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PIPELINE_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "RAY_ADDRESS"):
        env.pop(name, None)
    return env


def stop_group(process: subprocess.Popen, sig: int, grace: float) -> None:
    """``sig`` to the process's group (it leads its own session), SIGKILL after ``grace`` seconds."""
    os.killpg(process.pid, sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def cluster():
    """``ray start --head --block`` on 127.0.0.1 (its own session: the whole cluster stops with it),
    with token authentication as docs/scale-out.md sets it up (the token in the environment of
    every process that joins: the head, ``ray status``, the sweep)."""
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    saved = {k: os.environ.get(k) for k in token}
    os.environ.update(token)
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}", "--block"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise AssertionError(f"ray start failed: {head.stdout.read()[-3000:]}")
        check = subprocess.run(["ray", "status", f"--address={address}"], capture_output=True, text=True)
        if check.returncode == 0 and "CPU" in check.stdout:
            break
        time.sleep(1)
    else:
        os.killpg(head.pid, signal.SIGKILL)
        raise AssertionError("the Ray head did not come up in 120 s")
    yield address
    stop_group(head, signal.SIGTERM, 5)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """``python -m pipeline server`` on 127.0.0.1, as docs/scale-out.md starts it."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    store = tmp_path_factory.mktemp("ray-server")
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "server", "--port", str(port), "--store",
                                str(store), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not health(uri):
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"the server did not start: {process.stdout.read()[-3000:]}")
        time.sleep(0.5)
    yield uri
    stop_group(process, signal.SIGINT, 30)


def sweep(*args: str, env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "sweep", "--executor", "ray", *FAKE, *args,
                             "--out", str(cwd / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd, env=env)


def children(runs, parent_id: str):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


def check_finished_sweep(uri: str, sweep_id: str, labels: list[str], stderr: str, out: Path) -> list:
    runs = all_runs(uri)
    mains = children(runs, sweep_id)
    assert sorted(r.info.run_name for r in mains) == sorted(labels)
    problems = [line for line in stderr.splitlines() if "rror" in line or "failed (" in line]
    assert all(r.info.status == "FINISHED" for r in mains), ([(r.info.run_name, r.info.status) for r in mains],
                                                             problems[-20:])
    by_id = {r.info.run_id: r for r in runs}
    for main in mains:
        # the main's four steps, nested in it, unless reused (the data prepared by the other task)
        steps = {s: by_id[main.data.tags[f"pipeline.{tag}_run_id"]] for s, tag in
                 (("prepare-data", "prepare"), ("train", "train"), ("probe-attention", "probe"),
                  ("compute-metrics", "metrics"))}
        assert all(r.info.status == "FINISHED" and r.data.tags["pipeline.step"] == s for s, r in steps.items())
        assert {r.data.tags["pipeline.step"] for r in children(runs, main.info.run_id)} >= {
            "train", "probe-attention", "compute-metrics"}
        assert main.data.metrics["test_acc"] == steps["train"].data.metrics["test_acc"]
        # the driver printed the configuration's test accuracy as it landed
        assert f"{main.info.run_name} finished, test_acc {main.data.metrics['test_acc']:.2f}%" in stderr
    assert not [r for r in runs if r.info.status == "RUNNING"]
    summaries = list(out.glob("out/*/sweep_*/summary.md"))
    assert len(summaries) == 1, summaries
    return mains


def test_sweep_on_a_ray_cluster_with_a_tracking_server(cluster, tracking_server, tmp_path):
    process = sweep("--activations", "sigmoid,swish", "--epochs", "1", "--ray-address", cluster,
                    env=env_for(tracking_server), cwd=tmp_path)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    sweep_id = out.strip().splitlines()[-1]
    assert f"Ray cluster {cluster} with 2 CPUs and 0 GPUs; 1 CPUs and 0 GPUs per configuration" in err
    mains = check_finished_sweep(tracking_server, sweep_id, ["sigmoid · late · fake 32px 1ep · seed0",
                                                           "swish · late · fake 32px 1ep · seed0"], err, tmp_path)
    # each configuration ran in a Ray worker, not in the sweep's process
    sweep_pid = mlflow.MlflowClient(tracking_server).get_run(sweep_id).data.tags["pipeline.pid"]
    assert all(m.data.tags["pipeline.pid"] != sweep_pid for m in mains)
    assert "[2/2 done, 0 running, 0 failed]" in err


def wait_for_epoch(uri: str, position: str, process: subprocess.Popen, timeout: float = 300.0):
    """The RUNNING train run at ``position`` once it has logged its first epoch."""
    client = mlflow.MlflowClient(uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the sweep ended early: {process.stderr.read()[-3000:]}")
        for run in all_runs(uri):
            if (run.data.tags.get("pipeline.step") == "train" and run.data.params.get("position") == position
                    and run.info.status == "RUNNING" and client.get_metric_history(run.info.run_id, "val_acc")):
                return run
        time.sleep(0.5)
    process.kill()
    raise AssertionError(f"no train run at {position} finished an epoch in {timeout} s")


def test_a_killed_worker_is_retried_and_resumes_its_train_run_beside_a_failing_configuration(
        cluster, tracking_server, tmp_path):
    # sigmoid trains 3 epochs and its worker is SIGKILLed after the first; swish's train run
    # exists already with a damaged best.pt, so its probe (rerun) fails: the failure is reported
    # and does not stop the other configuration
    env = env_for(tracking_server)
    pre = subprocess.run([sys.executable, "-m", "pipeline", "main", "--activation", "swish", *FAKE, "--epochs", "3",
                          "--no-report"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert pre.returncode == 0, pre.stderr[-3000:]
    [damaged] = [r for r in all_runs(tracking_server) if r.data.tags.get("pipeline.step") == "train"
                 and r.data.params.get("activation") == "swish" and r.data.params.get("epochs") == "3"]
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    mlflow.MlflowClient(tracking_server).log_artifact(damaged.info.run_id, str(tmp_path / "best.pt"), "checkpoints")
    process = sweep("--activations", "sigmoid,swish", "--epochs", "3", "--rerun", "probe-attention", "--ray-address",
                    cluster, "--max-retries", "1", env=env, cwd=tmp_path)
    train = wait_for_epoch(tracking_server, "late", process)
    pid = int(train.data.tags["pipeline.pid"])
    assert pid != process.pid
    os.kill(pid, signal.SIGKILL)
    out, err = process.communicate(timeout=600)
    sweep_id = out.strip().splitlines()[-1] if out.strip() else ""
    assert sweep_id, err[-3000:]
    assert process.returncode == 1 and f"Error: 1 of 2 configurations of sweep {sweep_id} failed" in err
    runs = all_runs(tracking_server)
    mains = {r.info.run_name: r for r in children(runs, sweep_id)}
    assert sorted(mains) == ["sigmoid · late · fake 32px 3ep · seed0", "swish · late · fake 32px 3ep · seed0"]
    late, failing = mains["sigmoid · late · fake 32px 3ep · seed0"], mains["swish · late · fake 32px 3ep · seed0"]
    assert late.info.status == "FINISHED" and failing.info.status == "FAILED"
    # the retry continued the same main and train runs (one of each), in another process
    trains = [r for r in children(runs, late.info.run_id) if r.data.tags["pipeline.step"] == "train"]
    assert [r.info.run_id for r in trains] == [train.info.run_id]
    resumed = trains[0]
    assert resumed.info.status == "FINISHED" and int(resumed.data.tags["pipeline.pid"]) != pid
    client = mlflow.MlflowClient(tracking_server)
    for metric in ("train_loss", "val_acc", "attention/gini"):  # every epoch exactly once
        assert sorted(m.step for m in client.get_metric_history(resumed.info.run_id, metric)) == [1, 2, 3]
    assert f"resuming run {train.info.run_id} from its last checkpoint" in err
    # the failing configuration: reported in the log with its reason, its runs FAILED, none RUNNING
    assert "swish · late · fake 32px 3ep · seed0 failed (" in err
    assert f"train run {damaged.info.run_id}'s checkpoints/best.pt is corrupt or not a checkpoint" in err
    assert "1 of 2 configurations failed" in err
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert client.get_run(sweep_id).data.tags["pipeline.failed"] == "swish · late · fake 32px 3ep · seed0"


def test_a_local_store_with_a_cluster_is_refused_in_one_line(tracking_uri, tmp_path):
    started = time.monotonic()
    process = sweep("--activations", "sigmoid", "--epochs", "1", "--ray-address", "10.0.0.7:6379",
                    env=env_for(tracking_uri), cwd=tmp_path)
    out, err = process.communicate(timeout=120)
    assert process.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: executor=ray with the Ray cluster '10.0.0.7:6379' "
                                                   "needs a tracking server"), err
    assert "python -m pipeline server" in lines[0] and "MLFLOW_TRACKING_URI" in lines[0]
    assert all_runs(tracking_uri) == []  # refused before any run started
    assert time.monotonic() - started < 60


def test_sweep_on_ray_with_no_address_starts_a_local_cluster(tracking_uri, tmp_path):
    env = env_for(tracking_uri)
    process = sweep("--activations", "sigmoid,swish", "--epochs", "1", "--cpus-per-job", "1",
                    env=env, cwd=tmp_path)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    sweep_id = out.strip().splitlines()[-1]
    assert "Ray cluster (local) with" in err
    check_finished_sweep(tracking_uri, sweep_id, ["sigmoid · late · fake 32px 1ep · seed0",
                                                  "swish · late · fake 32px 1ep · seed0"], err, tmp_path)


def test_ctrl_c_on_the_driver_cancels_the_tasks_and_ends_their_runs_killed(cluster, tracking_server, tmp_path):
    process = sweep("--activations", "sigmoid,swish", "--epochs", "20", "--ray-address", cluster,
                    env=env_for(tracking_server), cwd=tmp_path)
    client = mlflow.MlflowClient(tracking_server)
    deadline = time.monotonic() + 300
    training = []
    while time.monotonic() < deadline and len(training) < 2:
        assert process.poll() is None, process.stderr.read()[-3000:]
        training = [r for r in all_runs(tracking_server) if r.data.tags.get("pipeline.step") == "train"
                    and r.info.status == "RUNNING" and client.get_metric_history(r.info.run_id, "val_acc")]
        time.sleep(0.5)
    assert len(training) == 2, "both configurations should be training"
    pids = [int(r.data.tags["pipeline.pid"]) for r in training]
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip().splitlines()[-1] == "Error: interrupted", err[-3000:]
    assert "cancelling 2 Ray tasks (their runs end KILLED)" in err
    status = {r.info.run_id: r.info.status for r in all_runs(tracking_server)}
    assert [status[r.info.run_id] for r in training] == ["KILLED", "KILLED"]  # the interrupted train runs
    assert "RUNNING" not in status.values()  # nothing left running: sweep, mains, steps
    time.sleep(2)
    assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []  # the workers' training stopped
