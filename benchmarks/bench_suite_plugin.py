"""pytest plugin for ``bench_suite.py --mode cpu``: appends, for every test, the machine's busy
CPU seconds (``/proc/stat``, all processes) and the wall seconds from its set-up to its
teardown to the JSON-lines file named by ``BENCH_SUITE_RECORDS``. Meaningful only when the
tests run one after another (``-n 0``) on an otherwise idle machine."""
from __future__ import annotations

import json
import os
import time

import pytest


def busy_cpu_s() -> float:
    """CPU seconds spent by the whole machine since boot, idle and iowait excluded."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cpu, wall = busy_cpu_s(), time.monotonic()
    yield
    record = {"nodeid": item.nodeid, "cpu_s": round(busy_cpu_s() - cpu, 2), "wall_s": round(time.monotonic() - wall, 2)}
    with open(os.environ["BENCH_SUITE_RECORDS"], "a") as fh:
        fh.write(json.dumps(record) + "\n")
