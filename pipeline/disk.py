"""A full disk, said in one line: which folder, the space a file needs and the space there is,
and how to go on; files replaced whole or not at all."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from pipeline.errors import PipelineError


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(PipelineError):
    """A file did not fit on its disk; what was stored before is intact."""

    def __init__(self, message: str, path: str | Path = "", needed: int | None = None):
        super().__init__(message)
        self.path, self.needed = path, needed


def disk_full(path: str | Path, needed_bytes: int | None, run_id: str | None = None) -> DiskFullError:
    """The one-line error for a file that did not fit at ``path``: the folder, the space the file
    needs and the space there is, and how to go on."""
    folder = Path(path).parent
    try:
        free = shutil.disk_usage(folder).free / 2**20
        free_text = f"{free:.0f} MB free"
    except OSError:
        free_text = "free space unknown"
    need = f"needs {needed_bytes / 2**20:.0f} MB, " if needed_bytes else ""
    then = (f"; free some space, then resume: python -m pipeline train --resume-run-id {run_id}" if run_id
            else "; free some space and run it again")
    return DiskFullError(f"no space left on the device of {folder} for {Path(path).name} ({need}{free_text}); "
                         f"what was stored before is intact{then}", path, needed_bytes)


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The folder of a local (file) artefact store, None for any other store."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and artifact_uri[1:3] == ":\\"):  # a path
        return Path(artifact_uri)
    return None


def copy_atomically(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` whole or not at all (a full disk leaves the old file)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f".{dst.name}.partial")
    try:
        shutil.copyfile(src, partial)
        os.replace(partial, dst)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(dst, src.stat().st_size) from None
        raise
