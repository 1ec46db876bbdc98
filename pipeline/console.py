"""What a person reads: progress bars on a terminal only.

A log redirected to a file (a cluster job, ``nohup``, CI) gets no bar fragments: there each
epoch's one-line summary (the ``pipeline`` logger) is the progress. ``PIPELINE_PROGRESS=1``
forces bars, ``0`` turns them off on a terminal too."""
from __future__ import annotations

import os
import sys

from tqdm import tqdm


def bars_on() -> bool:
    forced = os.environ.get("PIPELINE_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    return sys.stderr.isatty()


def progress(iterable, **kwargs):
    """``tqdm(iterable, **kwargs)`` on a terminal; the bare iterable otherwise."""
    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs) if bars_on() else iterable
