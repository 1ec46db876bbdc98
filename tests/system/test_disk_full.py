"""A full disk under the artefact store: one line naming the folder and the space needed, the
run FAILED, the last good checkpoint intact (checkpoints replace the old ones atomically), and
the run resumes once space is freed. Needs a small tmpfs (root): skipped where it cannot mount."""
import os
import shutil
import subprocess
import sys

import mlflow
import pytest
import torch

from helpers import start_training, wait_for_epochs

FAKE = ["--dataset", "fake", "--weights", "none", "--device", "cpu", "--batch-size", "32", "--image-size", "32"]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_artefact_store_is_one_line_keeps_the_last_checkpoint_and_resumes(tracking_uri, small_disk, tmp_path):
    client = mlflow.MlflowClient()
    client.create_experiment("small-disk", artifact_location=str(small_disk / "artifacts"))
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "small-disk"
    try:
        proc = start_training([*FAKE, "--epochs", "3"], tmp_path)
        run_id = wait_for_epochs(proc, 1)
        free = shutil.disk_usage(small_disk).free
        with open(small_disk / "filler", "wb") as fh:  # another job fills the disk: 10 MB stay free
            fh.truncate(0)
            fh.write(b"\0" * (free - 10 * 2**20))
        out, err = proc.communicate(timeout=300)
    finally:
        del os.environ["MLFLOW_EXPERIMENT_NAME"]
    assert proc.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    checkpoints = small_disk / "artifacts" / run_id / "artifacts" / "checkpoints"
    assert last.startswith(f"Error: no space left on the device of {checkpoints} for ") and "MB free)" in last, err
    assert "(needs " in last and last.endswith(f"free some space, then resume: python -m pipeline train "
                                                f"--resume-run-id {run_id}")
    assert "Traceback" not in err
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1]  # the epoch it can resume from
    kept = torch.load(checkpoints / "last.pt", weights_only=True)
    assert kept["epoch"] == 1 and not list(checkpoints.glob(".*partial"))

    (small_disk / "filler").unlink()
    resumed = subprocess.run([sys.executable, "-m", "pipeline", "train", "--resume-run-id", run_id],
                             capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_acc")) == [1, 2, 3]
