"""Processes that never outlive the one that started them (Linux's parent-death signal), the
members of a process group, and signals held while a block that must not be cut runs."""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
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


@contextmanager
def deferred_interrupts():
    """Hold SIGINT and SIGTERM while the block runs, then deliver one that came (as the handler
    in place before, e.g. the CLI's KeyboardInterrupt): an epoch's checkpoint and metrics are
    stored whole or not at all. Outside the main thread (signals cannot be handled there) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])
