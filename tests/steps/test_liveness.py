"""Orphans: where each run's process runs and its heartbeat, ``runs --stale`` / ``--mark killed``,
and a resume refused while the run's process is alive."""
import os
import socket
import subprocess
import sys
import time

import mlflow
import pytest

from pipeline.cli import main
from pipeline.tracking import Heartbeat, step_run
from helpers import start_training, wait_for_epochs


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def running_run(tags: dict, name: str, start_time: int | None = None) -> str:
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("Default")
    run = client.create_run(exp.experiment_id, start_time=start_time, run_name=name,
                            tags={"pipeline.step": "train", **tags})
    return run.info.run_id


def test_every_step_run_records_host_pid_and_a_heartbeat(tracking_uri, monkeypatch):
    client = mlflow.MlflowClient()
    with step_run("train", {"a": 1}, run_name="heartbeat check") as run:
        first = float(client.get_run(run.info.run_id).data.tags["pipeline.heartbeat"])
        beat = Heartbeat(run.info.run_id, every=0.2)  # the step's own beats come every minute
        time.sleep(1.3)
        beat.stop()
        tags = client.get_run(run.info.run_id).data.tags
    assert tags["pipeline.host"] == socket.gethostname() and tags["pipeline.pid"] == str(os.getpid())
    assert abs(first - time.time()) < 30 and float(tags["pipeline.heartbeat"]) > first


def test_runs_stale_lists_orphans_and_marks_them_killed(tracking_uri, capsys):
    now_ms = int(time.time() * 1000)
    host = socket.gethostname()
    orphan = running_run({"pipeline.host": host, "pipeline.pid": str(dead_pid())}, "sigmoid · train · seed0")
    alive = running_run({"pipeline.host": host, "pipeline.pid": str(os.getpid())}, "alive here")
    remote_lost = running_run({"pipeline.host": "gpu-7", "pipeline.pid": "4242",
                               "pipeline.heartbeat": f"{time.time() - 3600:.0f}"}, "lost host")
    remote_alive = running_run({"pipeline.host": "gpu-8", "pipeline.pid": "4242",
                                "pipeline.heartbeat": f"{time.time() - 30:.0f}"}, "busy host")
    old_no_beat = running_run({"pipeline.host": "gpu-9"}, "before heartbeats", start_time=now_ms - 7200_000)

    with pytest.raises(SystemExit) as code:
        main(["runs", "--stale"])
    assert code.value.code == 0
    out, err = capsys.readouterr()
    listed = {line.split("\t")[0]: line.split("\t") for line in out.strip().splitlines()}
    assert set(listed) == {orphan, remote_lost, old_no_beat}
    assert listed[orphan][1:] == ["train", "sigmoid · train · seed0",
                                  f"pid {mlflow.MlflowClient().get_run(orphan).data.tags['pipeline.pid']} on this host is gone"]
    assert listed[remote_lost][3].startswith("heartbeat 36") and listed[remote_lost][3].endswith(" s ago on gpu-7")
    assert listed[old_no_beat][3].startswith("started (no heartbeat) 72")
    assert err.strip() == "3 stale runs"
    client = mlflow.MlflowClient()
    assert all(client.get_run(r).info.status == "RUNNING" for r in (orphan, alive, remote_lost))  # listing only

    with pytest.raises(SystemExit):
        main(["runs", "--stale", "--mark", "killed", "--stale-after", "7000"])
    out, err = capsys.readouterr()
    # with a longer threshold the run started 2 h ago (7200 s) is still stale, the lost host (3600 s) is not
    assert {line.split("\t")[0] for line in out.strip().splitlines()} == {orphan, old_no_beat}
    assert err.strip() == "2 stale runs marked KILLED"
    status = {r: client.get_run(r).info.status for r in (orphan, alive, remote_lost, remote_alive, old_no_beat)}
    assert status == {orphan: "KILLED", alive: "RUNNING", remote_lost: "RUNNING", remote_alive: "RUNNING",
                      old_no_beat: "KILLED"}


@pytest.mark.system
def test_a_sigkilled_train_is_found_stale_marked_killed_and_resumes(tracking_uri, tmp_path, cli_in_process):
    proc = start_training(["--dataset", "fake", "--weights", "none", "--device", "cpu", "--image-size", "32",
                           "--batch-size", "32", "--epochs", "2"], tmp_path)
    run_id = wait_for_epochs(proc, 1)
    proc.kill()  # SIGKILL: no handler runs, the run stays RUNNING
    proc.wait(60)
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"
    listed = cli_in_process("runs", "--stale")
    assert listed.returncode == 0 and listed.stdout.strip().splitlines()[0].split("\t")[0] == run_id, listed.stderr
    assert listed.stdout.strip().splitlines()[0].endswith(f"\tpid {proc.pid} on this host is gone")
    marked = cli_in_process("runs", "--stale", "--mark", "killed")
    assert marked.returncode == 0 and marked.stderr.strip().splitlines()[-1] == "1 stale run marked KILLED"
    assert client.get_run(run_id).info.status == "KILLED"
    resumed = cli_in_process("train", "--resume-run-id", run_id)
    assert resumed.returncode == 0 and f"resuming train run {run_id} after epoch" in resumed.stderr, resumed.stderr
    assert client.get_run(run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_acc")) == [1, 2]


def test_resuming_a_run_whose_process_is_alive_is_refused_unless_forced(tracking_uri, capsys):
    run_id = running_run({"pipeline.host": socket.gethostname(), "pipeline.pid": str(os.getpid())}, "in use")
    with pytest.raises(SystemExit) as code:
        main(["train", "--resume-run-id", run_id])
    assert code.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (f"Error: run '{run_id}' is still running (pid {os.getpid()} on this host is running): resuming it "
                    "would train it twice at once; stop that process first (Ctrl-C ends it KILLED, ready to resume), "
                    "or pass --force if it is gone")
    with pytest.raises(SystemExit) as code:  # forced: past the liveness check, to the checkpoint look-up
        main(["train", "--resume-run-id", run_id, "--force"])
    assert "has no checkpoints/last.pt to resume from" in capsys.readouterr().err
    assert mlflow.MlflowClient().get_run(run_id).info.status == "RUNNING"


def test_runs_starting_together_set_the_experiment_view_once_without_a_race(tracking_uri):
    """Eight runs starting at once in a new experiment all write its view tags: MLflow's SQL
    store inserts a new tag, so all but the first writer used to fail with a UNIQUE-constraint
    error (seen in CI with eight `train` processes against one server)."""
    import json
    import threading

    from pipeline.tracking import VIEW_KEY, VIEW_STATE, prepare_experiment

    client = mlflow.MlflowClient()
    errors = []
    for trial in range(3):
        experiment_id = client.create_experiment(f"race-{trial}")
        barrier = threading.Barrier(8)

        def start():
            barrier.wait()
            try:
                prepare_experiment(experiment_id)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert json.loads(client.get_experiment(experiment_id).tags[f"mlflow.sharedViewState.{VIEW_KEY}"]) == VIEW_STATE
    assert errors == []
