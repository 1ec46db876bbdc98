"""Sweeps as real processes: the process executor's workers, and what killing a sweep leaves
behind (nothing running, no run left RUNNING, interrupted runs KILLED)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from helpers import REPO, all_runs

FAKE = ["--dataset", "fake", "--weights", "none", "--device", "cpu"]


def sweep_env(uri: str) -> dict:
    # create the store's tables now: a child process and this test's polling creating them at
    # once race in MLflow's SQLite schema set-up
    mlflow.MlflowClient(uri).search_experiments()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PIPELINE_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    return env


def session_processes(sid: int) -> list[int]:
    """Live processes of the session ``sid`` (the sweep and everything it started)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == sid and "(Z)" not in (entry / "stat").read_text().split(")")[1][:3]:
                alive.append(int(entry.name))
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return alive


def wait_for_training(uri: str, runs: int, process: subprocess.Popen, timeout: float = 240.0) -> None:
    """Until ``runs`` train runs are RUNNING and each has finished at least one epoch."""
    client = mlflow.MlflowClient(uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().replace("\r", "\n")
            problems = [line for line in err.splitlines() if "rror" in line or "FAILED" in line or "failed" in line]
            raise AssertionError(f"the sweep ended early with code {process.returncode}: " + "\n".join(problems[-30:]))
        training = [r for r in all_runs(uri) if r.data.tags.get("pipeline.step") == "train"
                    and r.info.status == "RUNNING"]
        if len(training) >= runs and all(client.get_metric_history(r.info.run_id, "val_acc") for r in training):
            return
        time.sleep(0.5)
    process.kill()
    raise AssertionError(f"fewer than {runs} train runs got through an epoch in {timeout} s: "
                         f"{process.stderr.read()[-3000:]}")


def test_process_executor_runs_each_configuration_in_a_worker(tracking_uri, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "sweep", "--executor", "process", "--jobs", "2",
         "--activations", "sigmoid,swish", *FAKE, "--image-size", "32", "--epochs", "1",
         "--faithfulness-images", "0", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, env=sweep_env(tracking_uri), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_id = result.stdout.strip().splitlines()[-1]
    runs = all_runs(tracking_uri)
    mains = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep_id]
    assert sorted(r.data.tags["mlflow.runName"] for r in mains) == ["sigmoid · late · fake 32px 1ep · seed0",
                                                                     "swish · late · fake 32px 1ep · seed0"]
    unfinished = [(r.info.run_name, r.info.status) for r in runs if r.info.status != "FINISHED"]
    errors = [line for line in result.stderr.splitlines() if "rror" in line or "failed" in line]
    assert not unfinished, (unfinished, errors[-20:])
    for main in mains:  # each main holds its own chain (the two workers raced to prepare the data)
        steps = {r.data.tags["pipeline.step"] for r in runs if r.data.tags.get("mlflow.parentRunId") == main.info.run_id}
        assert {"train", "probe-attention", "compute-metrics"} <= steps
    # worker processes printed their own logs; the sweep wrote one report for both
    assert result.stderr.count("started in worker process") == 2
    assert (tmp_path / "out" / "cbam-gates-fake" / "sweep_sigmoid,swish_late_seeds_0_fake_32px_1ep" / "summary.md").is_file()


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_sigterm_to_the_top_process_leaves_nothing_running(executor, tracking_uri, tmp_path):
    """`mlflow run -e sweep` killed with SIGTERM: MLflow does not pass the signal on, our
    processes notice their parent's death and end their runs KILLED."""
    jobs = 2 if executor == "process" else 1
    top = subprocess.Popen(
        ["mlflow", "run", str(REPO), "-e", "sweep", "--env-manager", "local", "-P", f"executor={executor}",
         "-P", f"jobs={jobs}", "-P", "activations=sigmoid,swish", "-P", "dataset=fake", "-P", "weights=none",
         "-P", "image_size=32", "-P", "epochs=30", "-P", "device=cpu", "-P", f"out={tmp_path / 'out'}"],
        cwd=tmp_path, env=sweep_env(tracking_uri), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        wait_for_training(tracking_uri, jobs, top)
        top.send_signal(signal.SIGTERM)
        top.wait(30)
        deadline = time.monotonic() + 15
        while session_processes(top.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session_processes(top.pid) == [], "pipeline processes still alive 15 s after SIGTERM"
    finally:
        if session_processes(top.pid):
            os.killpg(top.pid, signal.SIGKILL)
    runs = all_runs(tracking_uri)
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    train = [r for r in runs if r.data.tags.get("pipeline.step") == "train"]
    assert len(train) == jobs and all(r.info.status == "KILLED" for r in train)
    assert {r.info.status for r in runs if r.data.tags.get("pipeline.step") in ("main", "sweep")} == {"KILLED"}


def test_ctrl_c_ends_every_interrupted_run_killed(tracking_uri, tmp_path):
    """Ctrl-C in a terminal: SIGINT to the whole foreground process group, workers included."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sweep", "--executor", "process", "--jobs", "2",
         "--activations", "sigmoid,softmax,swish", *FAKE, "--image-size", "32", "--epochs", "30",
         "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=sweep_env(tracking_uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        wait_for_training(tracking_uri, 2, proc)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "Error: interrupted"
    runs = all_runs(tracking_uri)
    by_step = {}
    for r in runs:
        by_step.setdefault(r.data.tags.get("pipeline.step"), []).append(r.info.status)
    assert by_step["train"] == ["KILLED", "KILLED"] and by_step["sweep"] == ["KILLED"]
    assert by_step["main"] == ["KILLED", "KILLED"]  # the third configuration never started
    assert "RUNNING" not in {r.info.status for r in runs}
