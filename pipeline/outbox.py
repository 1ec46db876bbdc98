"""Training goes on while the tracking server is away.

A train run sends each epoch's checkpoints and metrics through an ``Outbox``: straight to
MLflow while the server answers; when it does not, they are kept, in order, in a local folder
(``$PIPELINE_OUTBOX/<run id>``, default ``~/.cache/cbam-gates/outbox/<run id>``) and sent
before anything newer once it answers again, each exactly once, metrics with the time they
were measured. When training is over and the server has still not answered for
``PIPELINE_OUTAGE_WAIT_S`` seconds (default 600), the step stops with one line naming the
server and the folder, and ``python -m pipeline sync`` delivers the rest later and ends the run
with the status it reached; so does resuming the run (``train --resume-run-id``), before it
reads its last checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline.disk import DiskFullError, copy_atomically, disk_full, local_artifact_dir  # noqa: F401 - re-exported
from pipeline.errors import PipelineError, one_line

log = logging.getLogger("pipeline")

QUEUE = "queue.jsonl"
RETRY_EVERY_S = 5.0


def outage_wait_s() -> float:
    return float(os.environ.get("PIPELINE_OUTAGE_WAIT_S", "600"))


def outbox_root() -> Path:
    return Path(os.environ.get("PIPELINE_OUTBOX") or Path.home() / ".cache" / "cbam-gates" / "outbox")


class OutageError(PipelineError):
    """The tracking server stayed away longer than the step may wait; nothing is lost."""


@contextmanager
def fail_fast():
    """MLflow calls in the block fail at once when the server does not answer, instead of
    retrying for minutes (MLflow reads these settings at each request)."""
    saved = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = saved


def server_answers(uri: str | None = None) -> bool:
    """True for a local store, else whether the server answers /health within 3 s."""
    import mlflow

    from pipeline.server import health

    uri = uri or mlflow.get_tracking_uri()
    return not uri.startswith(("http://", "https://")) or health(uri, timeout=3.0)


OUTAGE_MARKERS = ("Max retries exceeded", "Connection refused", "ConnectionError", "Failed to establish",
                  "Read timed out", "RemoteDisconnected", "Connection aborted", "status code 50",
                  "INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE")


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the server is away or failing (as opposed to a wrong request)."""
    import requests

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
        return True
    return any(marker in str(exc) for marker in OUTAGE_MARKERS)


def send(run_id: str, item: dict, folder: Path, local: Path | None = None) -> None:
    """Deliver one entry; ``local``: the run's artefact folder when its store is local (atomic copies)."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    if item["kind"] == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, float(v), item["timestamp"], item.get("step", 0))
                                          for k, v in item["metrics"].items()])
    elif item["kind"] == "artifact":
        path = Path(item["path"]) if "path" in item else folder / item["file"]
        if local is not None:  # a local store: replace the file atomically (never a half-written checkpoint)
            copy_atomically(path, local / item["dir"] / item["name"])
            return
        with_name = path.parent / item["name"]
        if path.name != item["name"]:  # held files carry a sequence prefix; MLflow keeps the name
            with_name = folder / "send" / item["name"]
            with_name.parent.mkdir(exist_ok=True)
            shutil.copyfile(path, with_name)
        client.log_artifact(run_id, str(with_name), item["dir"])
    elif item["kind"] == "end":
        client.set_terminated(run_id, item["status"])
    else:
        raise PipelineError(f"unknown outbox entry {item['kind']!r} in {folder}")


class Outbox:
    """Ordered deliveries of one run; see the module's docstring."""

    def __init__(self, run_id: str, uri: str | None = None):
        import mlflow

        self.run_id, self.uri = run_id, uri or mlflow.get_tracking_uri()
        self.folder = outbox_root() / run_id
        self.items: list[dict] = []
        self.seq = 0
        self.away_since: float | None = None
        self.reason = ""  # the last failure: GET /health failed, an HTTP 500 (a full store), ...
        # where the run's artefacts live, looked up once (a local store gets atomic copies)
        self.local = local_artifact_dir(mlflow.MlflowClient().get_run(run_id).info.artifact_uri)

    # -- keeping -----------------------------------------------------------------------------
    def persist(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / (QUEUE + ".tmp")
        tmp.write_text("".join(json.dumps(item) + "\n" for item in self.items))
        os.replace(tmp, self.folder / QUEUE)

    def hold(self, item: dict) -> None:
        if "path" in item:  # the step reuses its temporary file next epoch: keep a copy
            self.seq += 1
            held = self.folder / "files" / f"{self.seq:06d}-{item['name']}"
            held.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.pop("path"), held)
            item["file"] = str(held.relative_to(self.folder))
        self.items.append(item)
        self.persist()

    # -- sending -----------------------------------------------------------------------------
    def put_metrics(self, metrics: dict, step: int | None = None) -> None:
        item = {"kind": "metrics", "metrics": {k: float(v) for k, v in metrics.items()},
                "timestamp": int(time.time() * 1000)}
        if step is not None:
            item["step"] = step
        self.put(item)

    def put_artifact(self, path: str | Path, artifact_dir: str) -> None:
        self.put({"kind": "artifact", "path": str(path), "name": Path(path).name, "dir": artifact_dir})

    def put(self, item: dict) -> None:
        """Send what waits, then ``item``; keep ``item`` (after them) while the server is away."""
        if not self.deliver():
            self.hold(item)
            return
        try:
            with fail_fast():
                send(self.run_id, item, self.folder, self.local)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.went_away(exc)
            self.hold(item)

    def went_away(self, why) -> None:
        self.reason = one_line(why) if isinstance(why, BaseException) else str(why)
        if self.away_since is None:
            self.away_since = time.monotonic()
            log.warning("the tracking server %s does not answer (%s): training goes on; what run %s cannot log "
                        "waits in %s and is sent when the server answers", self.uri,
                        one_line(why) if isinstance(why, BaseException) else why, self.run_id, self.folder)

    def deliver(self) -> bool:
        """Send what waits, oldest first; True when nothing waits any more."""
        if not self.items:
            return True
        if not server_answers(self.uri):
            self.went_away("GET /health failed")
            return False
        sent = 0
        try:
            with fail_fast():
                while self.items:
                    send(self.run_id, self.items[0], self.folder, self.local)
                    done = self.items.pop(0)
                    sent += 1
                    if "file" in done:
                        (self.folder / done["file"]).unlink(missing_ok=True)
                    self.persist()
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.went_away(exc)
            return False
        finally:
            if sent:
                log.info("the tracking server %s answers again: sent %d entries that waited for run %s%s",
                         self.uri, sent, self.run_id, "" if self.items else " (none left)")
        shutil.rmtree(self.folder, ignore_errors=True)
        self.away_since = None
        return True

    def deliver_or_stop(self, wait_s: float | None = None, status: str = "FINISHED") -> None:
        """Before the run may end: wait up to ``wait_s`` for the server to take everything; if it
        does not, keep the run's end (``status``) too and stop with one line."""
        wait_s = outage_wait_s() if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        while not self.deliver():
            if time.monotonic() >= deadline:
                self.hold({"kind": "end", "status": status})
                raise OutageError(
                    f"the tracking server {self.uri} has not taken run {self.run_id}'s logs for {wait_s:.0f} s "
                    f"(last: {self.reason[:200]}): the run stops "
                    f"here ({status.lower()} but not fully logged); everything it could not log is kept in "
                    f"{self.folder}; once the server answers: python -m pipeline sync {self.folder}")
            time.sleep(min(RETRY_EVERY_S, max(0.0, deadline - time.monotonic())))


def sync(folder: str | Path) -> tuple[str, int, str]:
    """Deliver a run's kept entries (``folder`` = an outbox run folder); (run id, entries sent,
    the status it ended with, "" if none was kept)."""
    folder = Path(folder)
    queue = folder / QUEUE
    if not queue.is_file():
        raise PipelineError(f"{folder} holds no {QUEUE}: it is not an outbox folder of a run")
    run_id = folder.name
    items = [json.loads(line) for line in queue.read_text().splitlines() if line.strip()]
    outbox = Outbox(run_id)
    outbox.folder, outbox.items = folder, items
    end = next((i["status"] for i in items if i["kind"] == "end"), "")
    n = len(items)
    if not outbox.deliver():
        raise PipelineError(f"the tracking server {outbox.uri} does not answer; nothing of {folder} was lost, "
                            "try again once it answers")
    return run_id, n, end


def deliver_kept(run_id: str) -> int:
    """Send what an earlier process of ``run_id`` kept in its outbox folder during an outage (it
    was interrupted, or stopped waiting), before this process reads the run: a resume starts
    from the checkpoint that process stored last, its epochs land before the new ones, and the
    folder is not overwritten. One-line error while the server does not answer; the number of
    entries sent (0: nothing was kept)."""
    folder = outbox_root() / run_id
    if not (folder / QUEUE).is_file():
        return 0
    _, n, _ = sync(folder)
    log.info("run %s: sent the %d entries an earlier process kept in %s during a tracking-server outage",
             run_id, n, folder)
    return n


def end_run_quietly(status: str) -> None:
    """``mlflow.end_run(status)``, at once and without raising when the server is away (the
    run then stays RUNNING there; ``runs --stale`` or ``sync`` end it later)."""
    import mlflow

    if server_answers():
        mlflow.end_run(status)
        return
    run = mlflow.active_run()
    try:
        with fail_fast():
            mlflow.end_run(status)
    except Exception:
        log.warning("run %s could not be marked %s: the tracking server does not answer",
                    run.info.run_id if run else "?", status)
