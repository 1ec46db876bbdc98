"""Helpers the tests import (``from helpers import ...``): fixtures stay in ``conftest.py``."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def store_in(folder: Path):
    """A sqlite store in ``folder`` for a module-scoped fixture (which cannot take the
    function-scoped ``monkeypatch``): the tracking URI set for this process and its children,
    offline, ``folder`` the working directory; all undone on exit. Yields the URI."""
    import pytest

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("PIPELINE_OFFLINE", "1")
        mp.chdir(folder)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(None)


def all_runs(uri: str):
    client = mlflow.MlflowClient(uri)
    exps = client.search_experiments()
    return client.search_runs([e.experiment_id for e in exps]) if exps else []


def artifact_file(run_id: str, path: str) -> Path:
    """The file behind an artefact of a run in a local store (to corrupt or delete it)."""
    from urllib.parse import urlparse

    root = mlflow.MlflowClient().get_run(run_id).info.artifact_uri
    return Path(urlparse(root).path if root.startswith("file:") else root) / path


def run_cli(*args: str, env: dict | None = None, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """Run ``python -m pipeline ARGS`` as a user would, in a child process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
        env=full_env, cwd=cwd, timeout=timeout,
    )


def start_training(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(proc, n_epochs: int, timeout: float = 180.0) -> str:
    """Wait until the train run of ``proc`` has logged ``n_epochs`` epochs and its last checkpoint."""
    uri = mlflow.get_tracking_uri()
    client = mlflow.MlflowClient()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"train exited {proc.returncode} early: {proc.stderr.read()[-2000:]}")
        runs = [r for r in all_runs(uri) if r.info.status == "RUNNING"]
        if runs:
            run_id = runs[0].info.run_id
            steps = [m.step for m in client.get_metric_history(run_id, "val_acc")]
            names = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
            if len(steps) >= n_epochs and "checkpoints/last.pt" in names:
                return run_id
        time.sleep(0.2)
    raise AssertionError(f"no run reached {n_epochs} epochs in {timeout} s")


def untrained_train_run(model, config: dict) -> str:
    """A finished train run of ``model`` as it is (seeded, untrained): what probe-attention reads,
    the best checkpoint and the typed ``config``, logged through the step layer's own run helper."""
    import tempfile

    from pipeline.checkpoint import save_checkpoint
    from pipeline.contracts import BEST_CHECKPOINT, TRAIN
    from pipeline.tracking import step_run

    with step_run(TRAIN, config, config, run_name="untrained") as run, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(BEST_CHECKPOINT).name
        save_checkpoint(path, model, epoch=0)
        mlflow.log_artifact(str(path), str(Path(BEST_CHECKPOINT).parent))
        mlflow.log_metric("best_epoch", 0)
        return run.info.run_id
