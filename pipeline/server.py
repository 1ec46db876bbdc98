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


def listener_of(port: int) -> str:
    """Who listens on TCP ``port`` on this host: "pid N (command line)", from /proc (Linux);
    "" where that cannot be told."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return ""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    # the group leader says what it is (a web worker's own command line does not)
                    leader = os.getpgid(int(proc.name))
                    argv = (Path("/proc") / str(leader) / "cmdline").read_bytes().decode(errors="replace")
                    words = [w for w in argv.split("\0") if w]
                    cmd = " ".join([Path(words[0]).name, *words[1:]]) if words else "?"
                    return f"pid {leader}: {cmd[:160]}"
        except OSError:
            continue
    return ""


def check_port_free(host: str, port: int) -> None:
    """One-line error when ``host:port`` is taken: by a server that answers ``/health`` (an
    MLflow server left running: runs would land in its store, not in the one asked for) or by
    anything else."""
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    answering = health(f"http://{probe_host}:{port}", timeout=2.0)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            taken = False
        except OSError:
            taken = True
    if answering or taken:
        who = listener_of(port) or "another process"
        what = "a tracking server already answers there" if answering else "it is in use"
        raise PipelineError(f"port {port} on {host}: {what} ({who}); stop it or choose another --port")


def supervise(parent_pid: int, command: list[str]) -> int:
    """Run ``command`` in this process's group and end the whole group (the MLflow server and
    its web workers) when this process is told to stop (SIGTERM, SIGINT, SIGHUP) or its parent,
    the ``server`` command, dies however it dies (the parent-death signal)."""
    from pipeline.processes import die_with_parent, group_members

    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the parent-death signal was set
        return 1
    child = subprocess.Popen(command)

    def others() -> list[int]:
        return [pid for pid in group_members(os.getpgrp()) if pid != os.getpid()]

    def stop(signum, frame):
        for pid in others():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20.0
        while others() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in others():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    return child.wait()


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
    check_port_free(host, port)
    # the supervisor (``python -m pipeline.server``) leads the server's process group and dies
    # with this process, taking the group with it, whatever ends us (SIGKILL, SIGHUP included)
    command = [sys.executable, "-m", "pipeline.server", str(os.getpid()),
               sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
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
    try:  # from here a Ctrl-C stops the server cleanly, even one that lands while these lines print
        click.echo(f"MLflow tracking server running (pid {running.process.pid}), log: {running.log_path}", err=True)
        click.echo(f"export MLFLOW_TRACKING_URI={running.uri}")
        click.echo(f"MLflow UI: {running.uri}/#/experiments?workflowType=machine_learning (each main and sweep "
                   "logs the link to its experiment's comparison view)", err=True)
        while running.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("stopping the tracking server ...", err=True)
        code = running.stop()
        click.echo(f"tracking server stopped (exit code {code})", err=True)
        return
    raise PipelineError(f"the tracking server exited by itself with code {running.process.returncode} "
                        f"(log: {running.log_path})")


if __name__ == "__main__":  # the supervisor of start_server: python -m pipeline.server <parent pid> <command...>
    sys.exit(supervise(int(sys.argv[1]), sys.argv[2:]))
