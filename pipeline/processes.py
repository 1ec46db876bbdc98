"""Processes that never outlive the one that started them (Linux's parent-death signal), and
the members of a process group."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the OS to send ``sig`` to this process when its parent dies (Linux; a no-op
    elsewhere). Exits at once if the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call
        os.kill(os.getpid(), sig)


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited but not been reaped (gone in all but name); False where /proc cannot tell."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid`` (from /proc; [] where there is none)."""
    members = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.getpgid(int(proc.name)) == pgid and not is_zombie(int(proc.name)):
                    members.append(int(proc.name))
            except OSError:
                continue
    return members
