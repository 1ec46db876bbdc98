"""Is a RUNNING run alive? Every step run records where it runs (tags ``pipeline.host``,
``pipeline.pid``) and, while it runs, a heartbeat (tag ``pipeline.heartbeat``: Unix time,
refreshed every :data:`HEARTBEAT_S` seconds by a background thread).

A RUNNING run is *stale* (its process is gone and nothing will end it) when, on this host,
its pid is dead; on another host, when its heartbeat is older than ``stale_after`` seconds
(a run from before heartbeats: its start time). ``python -m pipeline runs --stale`` lists
them and ``--mark killed`` ends them KILLED; resuming a run whose process is alive is refused.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from pipeline.contracts import HEARTBEAT_TAG, HOST_TAG, PID_TAG, STEP_TAG
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

HEARTBEAT_S = float(os.environ.get("PIPELINE_HEARTBEAT_S", "60"))
STALE_AFTER_S = 600.0  # 10 heartbeats missed


class Heartbeat:
    """Sets the run's heartbeat tag now and every ``every`` seconds until stopped; a failed
    update (the server is briefly away) is skipped, never raised into the step."""

    def __init__(self, run_id: str, every: float = HEARTBEAT_S):
        import mlflow

        self.run_id, self.every = run_id, every
        self.client = mlflow.MlflowClient()
        self.stopped = threading.Event()
        self.beat()
        self.thread = threading.Thread(target=self.loop, name=f"heartbeat-{run_id[:8]}", daemon=True)
        self.thread.start()

    def beat(self) -> None:
        try:
            self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
        except Exception as exc:  # the next beat tries again
            log.debug("heartbeat of %s not recorded: %s", self.run_id, exc)

    def loop(self) -> None:
        while not self.stopped.wait(self.every):
            self.beat()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    from pipeline.processes import is_zombie

    return not is_zombie(pid)  # a zombie is dead


@dataclass
class Liveness:
    alive: bool
    why: str  # "pid 123 on this host is gone", "heartbeat 12 s ago on gpu-3", ...


def liveness(run, stale_after: float = STALE_AFTER_S, now: float | None = None) -> Liveness:
    """Whether the RUNNING ``run``'s process is alive, and how that was told."""
    tags = run.data.tags
    now = time.time() if now is None else now
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG)
    if host == socket.gethostname() and pid and pid.isdigit():
        if pid_alive(int(pid)):
            return Liveness(True, f"pid {pid} on this host is running")
        return Liveness(False, f"pid {pid} on this host is gone")
    beat = tags.get(HEARTBEAT_TAG)
    last = float(beat) if beat else run.info.start_time / 1000.0
    age = now - last
    where = f" on {host}" if host else ""
    what = "heartbeat" if beat else "started (no heartbeat)"
    return Liveness(age <= stale_after, f"{what} {age:.0f} s ago{where}")


def stale_runs(experiment_ids: list[str], stale_after: float = STALE_AFTER_S) -> list[tuple[object, Liveness]]:
    """The pipeline's RUNNING runs in these experiments whose process is gone."""
    import mlflow

    runs = mlflow.MlflowClient().search_runs(
        experiment_ids, f"attributes.status = 'RUNNING' and tags.`{STEP_TAG}` != ''",
        order_by=["attributes.start_time ASC"])
    found = []
    for run in runs:
        state = liveness(run, stale_after)
        if not state.alive:
            found.append((run, state))
    return found


def refuse_if_alive(run, force: bool, stale_after: float = STALE_AFTER_S) -> None:
    """One-line error when the RUNNING ``run`` is still being worked on by a live process
    (two processes would train one run: metrics logged twice, checkpoints overwritten)."""
    if run.info.status != "RUNNING" or force:
        return
    state = liveness(run, stale_after)
    if state.alive:
        raise PipelineError(
            f"run {run.info.run_id!r} is still running ({state.why}): resuming it would train it twice at once; "
            "stop that process first (Ctrl-C ends it KILLED, ready to resume), or pass --force if it is gone")
