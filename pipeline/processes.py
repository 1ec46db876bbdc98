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


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid`` (from /proc; [] where there is none)."""
    members = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z" and os.getpgid(int(proc.name)) == pgid:  # zombies are gone already
                    members.append(int(proc.name))
            except (OSError, IndexError):
                continue
    return members
