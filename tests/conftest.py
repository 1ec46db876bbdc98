"""Shared fixtures: a real temporary MLflow sqlite store, and no network for anything.

Tests by speed: ``tests/unit`` (pure, seconds), ``tests/steps`` (steps in this process against
a temporary store), ``tests/system`` (``mlflow run``, servers, browsers, signals to real
processes). Everything under ``tests/system`` is marked ``system``, so ``pytest -m "not system"``
is the quick local loop."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmark scripts' functions are tested too


def pytest_collection_modifyitems(config, items):
    """Mark everything under ``tests/system`` ``system``, and hand the tests out slowest folder
    first (system, steps, unit): pytest-xdist gives each worker the next test when it is free,
    so the seconds-long unit tests fill the end and both workers finish together (a tracking
    server test handed out last kept one core idle for over a minute)."""
    here = Path(__file__).resolve().parent
    rank = {}
    for item in items:
        parents = Path(str(item.fspath)).resolve().parents
        rank[item.nodeid] = 0 if here / "system" in parents else 1 if here / "steps" in parents else 2
        if rank[item.nodeid] == 0:
            item.add_marker(pytest.mark.system)
    items.sort(key=lambda item: rank[item.nodeid])  # stable


def _threads_per_worker() -> int:
    """The cores each pytest-xdist worker may use (all of them without xdist): the suite runs
    tests side by side, and torch threads beyond the cores only fight each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    # Never download: datasets and weights fail at once instead of reaching the network.
    monkeypatch.setenv("PIPELINE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if "PYTEST_XDIST_WORKER" in os.environ:  # processes the tests start share the worker's cores
        monkeypatch.setenv("OMP_NUM_THREADS", str(_threads_per_worker()))
        import torch

        torch.set_num_threads(_threads_per_worker())


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory) -> Path:
    """An sqlite store with MLflow's tables, made once per worker (its schema migrations take ~2 s)."""
    path = tmp_path_factory.mktemp("store_template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch, _empty_store) -> str:
    """A fresh sqlite tracking store (artefacts beside it), active for this process and children.

    The store exists, with its tables, before the test starts a process: a child and the test
    creating the schema at once race in MLflow's SQLite set-up."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(_empty_store, db)
    with sqlite3.connect(db) as con:  # the Default experiment's artefacts go beside this store
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                    (str(tmp_path / "mlruns" / "0"),))
    con.close()
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the default artefact root ./mlruns lands in tmp_path
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def cli_in_process(capsys, caplog):
    """``python -m pipeline ARGS`` run in this process, through the same ``main`` (no interpreter
    and import start-up, ~4 s a process on 2 cores): a CompletedProcess whose stdout is what the
    command printed and whose stderr is the pipeline's log lines, then what it printed there
    (the ``Error:`` line). For what a real process adds (signals, pipes, exit codes of the
    interpreter) the tests start one (:func:`run_cli`)."""
    import logging
    import signal

    from pipeline.cli import main

    def invoke(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        caplog.clear()
        caplog.set_level(logging.INFO, logger="pipeline")
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        out, err = capsys.readouterr()
        as_printed = logging.Formatter("[pipeline] %(message)s")  # the CLI's format; with a logged traceback
        log = "".join(as_printed.format(r) + "\n" for r in caplog.records if r.name.startswith("pipeline"))
        return subprocess.CompletedProcess(["python", "-m", "pipeline", *args], code, out, log + err)

    return invoke
