"""What a person reads: progress bars on a terminal only.

A log redirected to a file (a cluster job, ``nohup``, CI) gets no bar fragments: there each
epoch's one-line summary (the ``pipeline`` logger) is the progress, and a loop that runs longer
than ``LOG_EVERY_S`` seconds logs one line every so often (done, elapsed, left).
``PIPELINE_PROGRESS=1`` forces bars, ``0`` turns them off on a terminal too (and the lines)."""
from __future__ import annotations

import logging
import os
import sys
import time

from tqdm import tqdm


def bars_on() -> bool:
    forced = os.environ.get("PIPELINE_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    return sys.stderr.isatty()


#: How often a long loop logs its progress where no bar is drawn.
LOG_EVERY_S = 30.0


def progress(iterable, **kwargs):
    """``tqdm(iterable, **kwargs)`` on a terminal; elsewhere the iterable, logging a line every
    ``LOG_EVERY_S`` seconds when ``total`` is known (unless ``PIPELINE_PROGRESS=0``)."""
    if bars_on():
        return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)
    if kwargs.get("total") and os.environ.get("PIPELINE_PROGRESS", "").strip().lower() not in ("0", "false", "no", "off"):
        return logged_progress(iterable, kwargs["total"], kwargs.get("desc", "progress"), kwargs.get("unit", "it"))
    return iterable


def logged_progress(iterable, total: int, desc: str, unit: str, every: float | None = None):
    """Yield from ``iterable``; each time ``every`` seconds (default ``LOG_EVERY_S``) have
    passed since the last line, log ``desc: batch i of total, elapsed, about N s left``."""
    log = logging.getLogger("pipeline")
    every = LOG_EVERY_S if every is None else every
    start = last = time.monotonic()
    for i, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= every and i < total:
            last = now
            left = (now - start) / i * (total - i)
            log.info("%s: %s %d of %d, %.0f s, about %.0f s left", desc, unit, i, total, now - start, left)
