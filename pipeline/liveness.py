"""Is a RUNNING run alive? Every step run records where it runs (tags ``pipeline.host``,
``pipeline.pid``) and, while it runs, a heartbeat (tag ``pipeline.heartbeat``: Unix time,
refreshed every ``pipeline.tracking.HEARTBEAT_S`` seconds by a background thread,
``pipeline.tracking.Heartbeat``).

A RUNNING run is *stale* (its process is gone and nothing will end it) when, on this host,
its pid is dead; on another host, when its heartbeat is older than ``stale_after`` seconds
(a run from before heartbeats: its start time). ``python -m pipeline runs --stale`` lists
them and ``--mark killed`` ends them KILLED; resuming a run whose process is alive is refused,
and so is resuming a run another process is starting to resume (``claim_for_resume``).
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

from pipeline.contracts import HEARTBEAT_TAG, HOST_TAG, PID_TAG, RESUMER_TAG
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

STALE_AFTER_S = 600.0  # 10 heartbeats missed


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
    from pipeline.tracking import running_step_runs

    found = []
    for run in running_step_runs(experiment_ids):
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


#: How long a process that claims a run for resuming waits before it checks that the claim is
#: still its own: longer than another process takes from reading the run to writing its claim.
CLAIM_WAIT_S = float(os.environ.get("PIPELINE_CLAIM_WAIT_S", "0.5"))
#: How long a claim from another host counts while its run is not RUNNING yet (the resumer's
#: start-up: loading data, building the model).
CLAIM_STARTUP_S = 300.0


def _claim_holder(run, now: float) -> str | None:
    """Who is starting to resume ``run`` (``pid 12 on this host``), if a live process claimed it
    after the run last ended and has not made it RUNNING yet; None otherwise."""
    claim = run.data.tags.get(RESUMER_TAG, "")
    try:
        host, pid, stamp, _ = claim.rsplit(":", 3)
        pid_number, claimed_at = int(pid), float(stamp)
    except ValueError:
        return None
    if run.info.end_time and claimed_at * 1000 < run.info.end_time:  # a claim the run has outlived
        return None
    if host == socket.gethostname():
        return f"pid {pid} on this host" if pid_number != os.getpid() and pid_alive(pid_number) else None
    return f"pid {pid} on {host}" if now - claimed_at <= CLAIM_STARTUP_S else None


def claim_for_resume(run_id: str, force: bool = False) -> None:
    """Claim the interrupted run ``run_id`` for this process to resume, or refuse in one line
    when another live process resumes it already or claims it at the same moment (two resumes
    of one KILLED run started together: each sees no live process, and both would train it).
    The claim (tag ``pipeline.resumer`` = host:pid:time:nonce) is written, then read back after
    ``CLAIM_WAIT_S``: of two claimants the later writer wins. ``force`` claims regardless."""
    import uuid

    from pipeline.tracking import get_run, set_run_tag

    holder = _claim_holder(get_run(run_id), time.time())
    if holder and not force:
        raise PipelineError(f"run {run_id!r} is being resumed by {holder}: resuming it here too would train it "
                            "twice at once; wait for that process, or pass --force if it is gone")
    mine = f"{socket.gethostname()}:{os.getpid()}:{time.time():.3f}:{uuid.uuid4().hex[:8]}"
    set_run_tag(run_id, RESUMER_TAG, mine)
    if force:
        return
    time.sleep(CLAIM_WAIT_S)
    now = get_run(run_id).data.tags.get(RESUMER_TAG, "")
    if now != mine:
        host, pid = (now.rsplit(":", 3) + ["?", "?"])[:2]
        where = "this host" if host == socket.gethostname() else host
        raise PipelineError(f"run {run_id!r} is being resumed by pid {pid} on {where}, which claimed it at the "
                            "same moment as this process: that one goes on, this one stops")
