"""The tracking server goes away while a train run is training: the epochs go on, what cannot be
logged waits in the outbox and reaches the server when it is back (every epoch exactly once),
or, if it stays away, the step stops with one line and `python -m pipeline sync` delivers it."""
import os
import signal
import subprocess
import sys
import threading
import time

import mlflow

from pipeline.server import free_port, start_server

FAKE = ["--dataset", "fake", "--weights", "none", "--device", "cpu", "--image-size", "64", "--batch-size", "32"]


def kill_server(server) -> None:
    os.killpg(server.process.pid, signal.SIGKILL)  # the supervisor leads the group: all of it, at once
    server.process.wait()


def start_train(uri: str, tmp_path, epochs: int, wait_s: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PIPELINE_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PIPELINE_OUTBOX": str(tmp_path / "outbox"), "PIPELINE_OUTAGE_WAIT_S": str(wait_s)}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    return subprocess.Popen([sys.executable, "-m", "pipeline", "train", *FAKE, "--epochs", str(epochs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)


def wait_for_first_epoch(uri: str, proc: subprocess.Popen, timeout: float = 180.0) -> str:
    client = mlflow.MlflowClient(uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"train ended early: {proc.stderr.read()[-3000:]}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "attributes.status = 'RUNNING'")
        if runs and client.get_metric_history(runs[0].info.run_id, "val_acc"):
            return runs[0].info.run_id
        time.sleep(0.3)
    raise AssertionError("no epoch logged")


def kill_until_an_epoch_waits(server, proc: subprocess.Popen) -> tuple[list[str], threading.Thread]:
    """Kill the server, then wait until the train says an epoch could not be logged; the lines
    of its stderr so far (a thread goes on collecting them) and that thread."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    kill_server(server)
    deadline = time.monotonic() + 120
    while not any("does not answer" in line for line in lines) and time.monotonic() < deadline:
        assert proc.poll() is None, "".join(lines)[-3000:]
        time.sleep(0.2)
    return lines, reader


def check_complete(uri: str, run_id: str, epochs: int) -> None:
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_acc", "attention/gini"):  # every epoch once, none lost, none twice
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, epochs + 1)), key
    assert "test_acc" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert {"checkpoints/best.pt", "checkpoints/last.pt"} <= names
    assert [a.path for a in client.list_artifacts(run_id, "gradients")] == ["gradients/grad_flow.json"]


def test_training_goes_on_through_a_server_outage_and_logs_everything_once(tmp_path):
    port, store = free_port(), tmp_path / "store"
    server = start_server(store, port, workers=1)
    try:
        proc = start_train(server.uri, tmp_path, epochs=6, wait_s=300)
        run_id = wait_for_first_epoch(server.uri, proc)
        lines, reader = kill_until_an_epoch_waits(server, proc)
        server = start_server(store, port, workers=1)
        out = proc.stdout.read()
        proc.wait(600)
        reader.join(30)
        err = "".join(lines)
        assert proc.returncode == 0, err[-3000:]
        assert out.strip().splitlines()[-1] == run_id
        assert f"the tracking server {server.uri} does not answer" in err and "training goes on" in err, err
        assert "answers again: sent" in err and "Traceback" not in err
        check_complete(server.uri, run_id, 6)
        assert not (tmp_path / "outbox" / run_id).exists()  # nothing left waiting
    finally:
        server.stop()


def test_a_server_that_stays_away_stops_the_step_in_one_line_and_sync_delivers_later(tmp_path):
    port, store = free_port(), tmp_path / "store"
    server = start_server(store, port, workers=1)
    try:
        proc = start_train(server.uri, tmp_path, epochs=3, wait_s=3)
        run_id = wait_for_first_epoch(server.uri, proc)
        kill_server(server)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 2
        folder = tmp_path / "outbox" / run_id
        last = err.strip().splitlines()[-1]
        assert last == (f"Error: the tracking server {server.uri} has not taken run {run_id}'s logs for 3 s (last: "
                        f"GET /health failed): the run stops here (finished but not fully logged); everything it "
                        f"could not log is kept in {folder}; once the server answers: python -m pipeline sync {folder}")
        assert "Traceback" not in err
        assert (folder / "queue.jsonl").is_file()

        server = start_server(store, port, workers=1)
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "PIPELINE_OUTBOX": str(tmp_path / "outbox")}
        synced = subprocess.run([sys.executable, "-m", "pipeline", "sync"], capture_output=True, text=True, env=env,
                                timeout=300)
        assert synced.returncode == 0, synced.stderr[-3000:]
        [line] = [line for line in synced.stdout.splitlines() if "\t" in line]  # MLflow prints its links too
        fields = line.split("\t")
        assert fields[0] == run_id and fields[1].endswith("entries sent") and fields[2] == "ended FINISHED"
        check_complete(server.uri, run_id, 3)
        assert not folder.exists()
    finally:
        server.stop()


def test_ctrl_c_during_an_outage_then_resume_delivers_the_kept_epochs_first(tmp_path):
    # interrupted while epochs wait in the outbox: the resume sends them before it reads the run,
    # so it continues from the last epoch trained (not the last one the server had) and every
    # epoch lands once
    port, store = free_port(), tmp_path / "store"
    server = start_server(store, port, workers=1)
    try:
        proc = start_train(server.uri, tmp_path, epochs=4, wait_s=300)
        run_id = wait_for_first_epoch(server.uri, proc)
        lines, reader = kill_until_an_epoch_waits(server, proc)
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
        reader.join(30)
        assert proc.returncode == 130, "".join(lines)[-3000:]
        folder = tmp_path / "outbox" / run_id
        assert (folder / "queue.jsonl").is_file()
        kept = [line for line in (folder / "queue.jsonl").read_text().splitlines() if '"metrics"' in line]
        assert kept  # at least one epoch's metrics waited

        server = start_server(store, port, workers=1)
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "PIPELINE_OUTBOX": str(tmp_path / "outbox"),
               "PIPELINE_OFFLINE": "1"}
        resumed = subprocess.run([sys.executable, "-m", "pipeline", "train", "--resume-run-id", run_id],
                                 capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        sent = [line for line in resumed.stderr.splitlines() if "an earlier process kept in" in line]
        assert len(sent) == 1, resumed.stderr[-3000:]
        held_epochs = len(kept)
        trained_before = 1 + held_epochs  # the first epoch reached the server; the held ones after it
        assert f"resuming train run {run_id} after epoch {trained_before} of 4" in resumed.stderr, resumed.stderr[-3000:]
        check_complete(server.uri, run_id, 4)
        assert not folder.exists()
    finally:
        server.stop()
