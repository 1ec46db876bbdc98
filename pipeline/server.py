"""A real MLflow tracking server for a team, and a fast check that a tracking server answers.

``start_server`` runs ``mlflow server`` bound to 127.0.0.1 by default, with a SQLite backend
store in the folder the user names (or any SQLAlchemy URI, e.g. PostgreSQL) and served
artefacts in ``<store>/artifacts``, and waits until ``/health`` answers.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError, one_line

DEFAULT_HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
REACHABLE_TIMEOUT_S = 4.0
DEFAULT_WORKERS = 4  # MLflow's own default


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def health(uri: str, timeout: float = REACHABLE_TIMEOUT_S) -> bool:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_reachable(uri: str, attempts: int = 2, timeout: float = REACHABLE_TIMEOUT_S) -> None:
    """For an http(s) tracking URI, fail within ``attempts * timeout`` seconds (8 s by default)
    with a one-line error when the server does not answer, instead of MLflow's minutes of
    retries. Other URIs (sqlite, file) need no server."""
    if not uri.startswith(("http://", "https://")):
        return
    for attempt in range(attempts):
        if health(uri, timeout):
            return
        if attempt + 1 < attempts:
            time.sleep(0.5)
    raise PipelineError(
        f"the MLflow tracking server {uri} does not answer (GET /health failed); start it "
        "(python -m pipeline server) or fix MLFLOW_TRACKING_URI"
    )


@dataclass
class TrackingServer:
    process: subprocess.Popen
    uri: str
    store: Path
    log_path: Path

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM to the server's process group (all its workers), SIGKILL after ``timeout``."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "TrackingServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(store: str | Path, port: int, host: str = DEFAULT_HOST,
                 backend_store_uri: str | None = None, timeout: float = START_TIMEOUT_S,
                 workers: int = DEFAULT_WORKERS) -> TrackingServer:
    """Start ``mlflow server`` with ``workers`` web workers and return once it answers
    ``/health``. MLflow's job runner (huey consumers for its GenAI scorers and trace roll-ups,
    three more processes) stays off unless ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` is set."""
    store = Path(store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    backend = backend_store_uri or f"sqlite:///{store / 'mlflow.db'}"
    artifacts = store / "artifacts"
    artifacts.mkdir(exist_ok=True)
    log_path = store / f"server-{port}.log"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
               "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port),
               "--workers", str(workers)]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    with open(log_path, "ab") as log_file:
        # its own process group: Ctrl-C reaches us, and we stop all its workers together
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=env)
    uri = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    server = TrackingServer(process, uri, store, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise PipelineError(f"mlflow server exited with code {process.returncode}: {one_line(tail[0])} "
                                f"(log: {log_path})")
        if health(uri, timeout=2.0):
            return server
        time.sleep(0.5)
    server.stop()
    raise PipelineError(f"mlflow server did not answer {uri}/health within {timeout:.0f} s (log: {log_path})")


def serve(port: int, store: str, host: str = DEFAULT_HOST, backend_store_uri: str = "",
          workers: int = DEFAULT_WORKERS) -> None:
    """The ``server`` command: start the server, print the URI to export, and keep it running
    until Ctrl-C or SIGTERM, then stop it with all its workers."""
    import click

    if not 1 <= port <= 65535:
        raise PipelineError(f"port must be in [1, 65535], got {port}")
    if workers < 1:
        raise PipelineError(f"workers must be at least 1, got {workers}")
    running = start_server(store, port, host, backend_store_uri or None, workers=workers)
    click.echo(f"MLflow tracking server running (pid {running.process.pid}), log: {running.log_path}", err=True)
    click.echo(f"export MLFLOW_TRACKING_URI={running.uri}")
    click.echo(f"MLflow UI: {running.uri}/#/experiments?workflowType=machine_learning (each main and sweep "
               "logs the link to its experiment's comparison view)", err=True)
    try:
        while running.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("stopping the tracking server ...", err=True)
        code = running.stop()
        click.echo(f"tracking server stopped (exit code {code})", err=True)
        return
    raise PipelineError(f"the tracking server exited by itself with code {running.process.returncode} "
                        f"(log: {running.log_path})")
